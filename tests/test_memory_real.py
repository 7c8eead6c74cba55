"""Retrieval with the real all-MiniLM-L6-v2 embedder, run by sentence-transformers (loads
torch: a few seconds) and by onnxruntime from its local export (built once per session)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from offline_agent.bundle.manifest import cpu_flags
from offline_agent.cli.memory import memory
from offline_agent.memory import (
    FastEmbedder,
    SentenceTransformerEmbedder,
    open_memory,
    read_info,
)
from offline_agent.memory.embedder import bundled_model_path
from offline_agent.memory.export import INFO, ensure_export, export_dir, read_export
from offline_agent.memory.fast import BULK_CHUNKS, bulk_embedder
from tests.conftest import with_default_ctrl_c

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


@pytest.fixture(scope="session")
def fast_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home folder whose embedders/ holds the fp32 export, built once (~20 s)."""
    home = tmp_path_factory.mktemp("home")
    ensure_export(bundled_model_path(), export_dir("all-MiniLM-L6-v2", root=home / "embedders"))
    return home


@pytest.fixture
def in_fast_home(fast_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(fast_home))
    return fast_home


@pytest.fixture(scope="module")
def fast(fast_home: Path) -> FastEmbedder:
    lines: list[str] = []
    embedder = FastEmbedder(export_root=fast_home / "embedders", build=False, notify=lines.append)
    assert embedder.backend == "onnxruntime", lines
    return embedder


def test_real_embedder_vectors(embedder: SentenceTransformerEmbedder) -> None:
    vectors = embedder.embed(["hello world", "good morning"])
    assert embedder.model_id == "all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
@pytest.mark.parametrize("runtime", ["sentence-transformers", "onnxruntime"])
def test_each_query_finds_its_passage_first(
    tmp_path: Path,
    embedder: SentenceTransformerEmbedder,
    fast: FastEmbedder,
    index: str,
    runtime: str,
) -> None:
    mem = open_memory(tmp_path / "mem", embedder if runtime != "onnxruntime" else fast, index)
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


def test_cli_ingest_then_search(tmp_path: Path, in_fast_home: Path) -> None:
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


# --- the ONNX embedder ----------------------------------------------------------------


def test_onnx_vectors_are_sentence_transformers_vectors(
    embedder: SentenceTransformerEmbedder, fast: FastEmbedder
) -> None:
    texts = [*PASSAGES.values(), *(q for q, _ in QUERIES), "x", "long " * 400, "é 漢字 🙂"]
    ours, theirs = fast.embed(texts), embedder.embed(texts)
    assert ours.shape == theirs.shape == (len(texts), 384)
    assert ours.dtype == np.float32
    assert fast.model_id == embedder.model_id  # one vector space: old memories stay usable
    assert (ours * theirs).sum(axis=1).min() > 0.9999
    assert fast.embed([]).shape == (0, 384)
    # Batched by length: the same text gets the same vector whatever it is batched with.
    alone = np.concatenate([fast.embed([t]) for t in texts[:4]])
    np.testing.assert_allclose(alone, ours[:4], atol=1e-5)


def test_bf16_vectors_are_float32_vectors(embedder: SentenceTransformerEmbedder) -> None:
    texts = [*PASSAGES.values(), *(q for q, _ in QUERIES), "long " * 400]
    half = SentenceTransformerEmbedder(bf16=True).embed(texts)
    assert half.dtype == np.float32 and half.shape == (len(texts), 384)
    assert (half * embedder.embed(texts)).sum(axis=1).min() > 0.999


def test_a_large_ingest_on_a_cpu_with_amx_embeds_in_bf16(fast_home: Path) -> None:
    assert isinstance(bulk_embedder(BULK_CHUNKS - 1), FastEmbedder)  # torch's import not paid
    large = bulk_embedder(BULK_CHUNKS)
    if "amx_bf16" in cpu_flags():
        assert isinstance(large, SentenceTransformerEmbedder) and large.bf16
    else:
        assert isinstance(large, FastEmbedder)
    assert large.model_id == FastEmbedder().model_id  # one vector space


def test_a_large_cli_ingest_is_stored_and_searchable(tmp_path: Path, in_fast_home: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    lines = [f"Entry {i}: the shelf holds item number {i}." for i in range(BULK_CHUNKS)]
    (docs / "inventory.txt").write_text("\n\n".join([*lines, PASSAGES["server"]]))
    folder = str(tmp_path / "mem")
    args = ["ingest", str(docs), "--memory-dir", folder, "--chunk-size", "60", "--overlap", "0"]
    result = CliRunner().invoke(memory, args)
    assert result.exit_code == 0, result.output
    added = re.search(r"Added (\d+) of (\d+) chunks", result.output)
    assert added and added[1] == added[2] and int(added[1]) > BULK_CHUNKS, result.output
    found = CliRunner().invoke(memory, ["search", "bad gateway error", "--memory-dir", folder])
    assert "Entry" not in found.output.splitlines()[0], found.output  # the passage's chunk
    assert ("in bfloat16 (AMX)" in result.output) == ("amx_bf16" in cpu_flags())


def run_python(code: str, home: Path) -> str:
    env = {**os.environ, "OFFLINE_AGENT_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_default_embedder_starts_without_torch(fast_home: Path, tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from offline_agent.memory import open_memory\n"
        f"m = open_memory(Path({str(tmp_path / 'm')!r}))\n"
        "m.remember('The user prefers tea to coffee.')\n"
        "m.remember('The build server is in the basement.')\n"
        "print(json.dumps([m.recall('what does the user drink', 1)[0][1], m.embedder.backend,\n"
        "                  sorted({'torch', 'transformers'} & set(sys.modules))]))\n"
    )
    found, backend, heavy = json.loads(run_python(code, fast_home))
    assert (found, backend, heavy) == ("The user prefers tea to coffee.", "onnxruntime", [])


def test_without_onnxruntime_it_falls_back_in_one_line(fast_home: Path) -> None:
    code = (
        "import json, sys\n"
        "sys.modules['onnxruntime'] = None  # as if it were not installed\n"
        "from offline_agent.memory import FastEmbedder\n"
        "lines = []\n"
        "e = FastEmbedder(notify=lines.append)\n"
        "v = e.embed(['hello world'])\n"
        "print(json.dumps([lines, e.backend, list(v.shape)]))\n"
    )
    lines, backend, shape = json.loads(run_python(code, fast_home))
    assert (backend, shape) == ("sentence-transformers", [1, 384])
    (line,) = lines
    assert line.startswith("Embedding with sentence-transformers (slower start): no ONNX")
    assert "onnxruntime" in line


def test_a_damaged_or_stale_export_is_not_used(fast_home: Path, tmp_path: Path) -> None:
    source = bundled_model_path()
    folder = tmp_path / "export"
    shutil.copytree(export_dir("all-MiniLM-L6-v2", root=fast_home / "embedders"), folder)
    found, why = read_export(folder, source)
    assert found is not None and why == ""
    info = json.loads((folder / INFO).read_text())
    model = folder / info["onnx_file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    assert read_export(folder, source) == (None, f"{model.name} does not match its sha256")
    info["source_files"]["model.safetensors"][1] += 1  # touched, the same content: still fine
    (folder / INFO).write_text(json.dumps(info))
    assert read_export(folder, source)[1] == f"{model.name} does not match its sha256"
    info["source_sha256"]["model.safetensors"] = "0" * 64  # the source changed after the build
    (folder / INFO).write_text(json.dumps(info))
    assert read_export(folder, source)[1] == f"the model in {source} changed since it was built"
    (folder / INFO).unlink()
    assert read_export(folder, source) == (None, "there is none yet")
    lines: list[str] = []
    fallback = FastEmbedder(export_root=tmp_path / "none", build=False, notify=lines.append)
    assert fallback.backend == "sentence-transformers"
    assert len(lines) == 1 and "there is none yet" in lines[0]


def test_another_installation_of_the_same_model_shares_the_export(
    fast_home: Path, tmp_path: Path
) -> None:
    source = bundled_model_path()  # each checkout's venv installs its own copy of it
    folder = export_dir("all-MiniLM-L6-v2", root=fast_home / "embedders")
    copy = tmp_path / "other-venv" / source.name
    shutil.copytree(source, copy)  # new path, new modification times
    found, why = read_export(folder, copy)
    assert found is not None and why == "" and found.tokenizer_file == copy / "tokenizer.json"
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = []  # the same size or not, another file
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert read_export(folder, copy) == (None, f"the model in {copy} changed since it was built")


def test_memory_prepare_builds_the_export_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path))
    runner = CliRunner()
    checked = runner.invoke(memory, ["prepare", "--check"])
    assert checked.exit_code == 8
    assert checked.stderr.strip().startswith("Error: no usable ONNX export in ")
    built = runner.invoke(memory, ["prepare"])
    assert built.exit_code == 0, built.output
    assert "Building the fast embedder" in built.stderr
    folder = export_dir("all-MiniLM-L6-v2", root=tmp_path / "embedders")
    assert f"is ready in {folder}" in built.stdout
    again = runner.invoke(memory, ["prepare"])
    assert again.exit_code == 0 and "Building" not in again.stderr
    assert runner.invoke(memory, ["prepare", "--check"]).exit_code == 0
    assert sorted(p.suffix for p in folder.iterdir() if p.name != ".lock") == [".json", ".onnx"]


def test_an_interrupted_cli_ingest_resumes_where_it_stopped(
    tmp_path: Path, fast_home: Path
) -> None:
    """Ctrl-C during `memory ingest`: exit 130 and one line saying how to go on; the same
    command again embeds only the chunks not stored yet, and ends with all of them."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"{i:02d}.txt").write_text(
            "\n\n".join(f"Note {i}.{j}: item {j} of file {i} is checked." * 12 for j in range(6))
        )
    folder = tmp_path / "mem"
    argv = [sys.executable, "-m", "offline_agent", "memory", "ingest", str(docs),
            "--memory-dir", str(folder)]  # fmt: skip
    env = {**os.environ, "OFFLINE_AGENT_HOME": str(fast_home)}
    proc = subprocess.Popen(
        with_default_ctrl_c(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while (read_info(folder) is None or read_info(folder).count == 0) and proc.poll() is None:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    stored = read_info(folder).count  # type: ignore[union-attr]
    line = err.strip().splitlines()[-1]
    assert (
        line.startswith("Interrupted: ") and "the same command again embeds only the rest" in line
    )
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    total = read_info(folder).count  # type: ignore[union-attr]
    assert 0 < stored < total
    last = again.stdout.strip().splitlines()[-1]
    assert last.startswith(f"Added {total - stored} of {total} chunks")
    assert last.endswith(f"({stored} were already there)")
