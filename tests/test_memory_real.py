"""Retrieval with the real all-MiniLM-L6-v2 embedder (loads torch: a few seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from offline_agent.cli.memory import memory
from offline_agent.memory import SentenceTransformerEmbedder, open_memory

pytestmark = pytest.mark.embedder

PASSAGES = {
    "bread": "To bake sourdough, feed the starter the day before, mix flour, water and salt, "
    "let the dough rise overnight and bake it in a hot Dutch oven.",
    "git": "git rebase -i lets you reorder, squash or edit commits before pushing a branch.",
    "tides": "Tides are caused mainly by the gravitational pull of the Moon on the oceans.",
    "budget": "The marketing budget for the third quarter was cut by twelve percent.",
    "python": "A Python generator yields values lazily, one at a time, instead of building "
    "a whole list in memory.",
    "cat": "The user's cat, Miso, must not be fed after 8 pm because of her diet.",
    "server": "The web server returned HTTP 502 because the upstream app had crashed.",
    "vaccine": "Vaccines train the immune system to recognise a pathogen without causing "
    "the disease.",
}

QUERIES = [
    ("how do I make a loaf of bread at home", "bread"),
    ("combine several commits into one before I push", "git"),
    ("why does the sea level go up and down every day", "tides"),
    ("how much money was removed from the advertising spending", "budget"),
    ("produce items lazily without holding them all in RAM", "python"),
    ("when should the pet get its last meal", "cat"),
    ("bad gateway error from nginx", "server"),
    ("how does immunisation protect people", "vaccine"),
]


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


def test_real_embedder_vectors(embedder: SentenceTransformerEmbedder) -> None:
    vectors = embedder.embed(["hello world", "good morning"])
    assert embedder.model_id == "all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_each_query_finds_its_passage_first(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, index: str
) -> None:
    mem = open_memory(tmp_path / "mem", embedder, index=index)
    assert mem.remember_many(list(PASSAGES.values()), kind="document") == len(PASSAGES)
    by_text = {text: name for name, text in PASSAGES.items()}
    for query, expected in QUERIES:
        hits = mem.recall(query, k=3)
        assert by_text[hits[0][1]] == expected, (query, hits)
        assert hits[0][0] > hits[1][0]


def test_recall_survives_a_restart_and_preload(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    open_memory(tmp_path / "mem", embedder).remember_many(list(PASSAGES.values()))
    fresh = SentenceTransformerEmbedder()
    again = open_memory(tmp_path / "mem", fresh)
    loaded_at_open = fresh.loaded
    again.preload()
    again.close()  # waits for the background load
    assert (loaded_at_open, fresh.loaded) == (False, True)
    assert again.recall("bad gateway error from nginx", k=1)[0][1] == PASSAGES["server"]


def test_cli_ingest_then_search(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in PASSAGES.items():
        (docs / f"{name}.txt").write_text(text)
    # Enough distinct chunks to show the progress bar.
    (docs / "log.txt").write_text("\n\n".join(f"Entry {i}: checked item {i}." for i in range(90)))
    folder = str(tmp_path / "mem")
    runner = CliRunner()
    result = runner.invoke(
        memory,
        ["ingest", str(docs), "--memory-dir", folder, "--chunk-size", "40", "--overlap", "0"],
    )
    assert result.exit_code == 0, result.output
    assert "Embedding chunks" in result.output
    assert "from 9 files" in result.output
    result = runner.invoke(
        memory, ["search", "bad gateway error", "-k", "2", "--memory-dir", folder]
    )
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert "server.txt" in first
    assert float(first.split()[0]) > 0.25
