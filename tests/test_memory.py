"""Long-term memory with the deterministic HashEmbedder: storage, crash safety, ingest, CLI."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from offline_agent.cli.memory import memory
from offline_agent.errors import ConfigError, MemoryStoreError, StorageError, ToolError
from offline_agent.memory import (
    Entry,
    HashEmbedder,
    HNSWParams,
    IndexKind,
    LongTermMemory,
    MemoryStore,
    chunk_text,
    default_memory_dir,
    ingest,
    open_memory,
    read_info,
)
from offline_agent.memory.ingest import chunk_spans
from offline_agent.memory.onnxrt import _batches
from offline_agent.tools.base import ToolContext
from offline_agent.tools.memory import MEMORY_TOOLS, memory_add, memory_search
from offline_agent.workspace import Workspace

FACTS = [
    "The capital of France is Paris.",
    "Python lists are mutable sequences.",
    "The user's cat is called Miso.",
    "Backups run every night at 2 am.",
    "The project deadline is the 14th of March.",
    "Ravioli are a kind of stuffed pasta.",
]


@pytest.fixture
def mem(tmp_path: Path) -> LongTermMemory:
    return open_memory(tmp_path / "mem", HashEmbedder())


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


def entries(text_prefix: str, n: int) -> list[Entry]:
    return [Entry(f"{text_prefix} {i}", "fact", "2024-01-01T00:00:00+00:00") for i in range(n)]


# --- embedder --------------------------------------------------------------------------


def test_hash_embedder_is_deterministic_normalised_and_similarity_aware() -> None:
    emb = HashEmbedder(dimension=128)
    vectors = emb.embed(["the cat sat on the mat", "the cat sat on a mat", "quarterly tax report"])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > 0.7 > vectors[0] @ vectors[2]
    np.testing.assert_array_equal(
        vectors,
        HashEmbedder(dimension=128).embed(
            ["the cat sat on the mat", "the cat sat on a mat", "quarterly tax report"]
        ),
    )


def test_nothing_heavy_is_imported_until_memory_is_used(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import offline_agent.tools.memory\n"
        "from offline_agent.memory import open_memory\n"
        f"m = open_memory(Path({str(tmp_path / 'm')!r}))\n"
        "m.stats()\n"
        "heavy = ('torch', 'sentence_transformers', 'faiss', 'onnxruntime', 'tokenizers')\n"
        "heavy = [n for n in heavy if n in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "m").exists()


# --- remember, recall, persistence ----------------------------------------------------


def test_recall_returns_best_first_with_inner_product_scores(mem: LongTermMemory) -> None:
    for fact in FACTS:
        assert mem.remember(fact)
    hits = mem.recall("what is the cat called", k=3)
    assert hits[0][1] == "The user's cat is called Miso."
    scores = [score for score, _ in hits]
    assert scores == sorted(scores, reverse=True)
    query = HashEmbedder().embed(["what is the cat called"])[0]
    best = HashEmbedder().embed([hits[0][1]])[0]
    assert hits[0][0] == pytest.approx(float(query @ best), abs=1e-5)


def test_recall_on_empty_memory_and_k_larger_than_store(mem: LongTermMemory) -> None:
    assert mem.recall("anything") == []
    mem.remember(FACTS[0])
    assert [t for _, t in mem.recall("anything", k=10)] == [FACTS[0]]


def test_round_trip_keeps_texts_metadata_and_order(tmp_path: Path) -> None:
    first = open_memory(tmp_path / "mem", HashEmbedder())
    for step, fact in enumerate(FACTS):
        first.remember(fact, kind="step", run="run-1", step=step)
    before = first.search("stuffed pasta", k=6)

    again = open_memory(tmp_path / "mem", HashEmbedder())
    after = again.search("stuffed pasta", k=6)
    assert after == before
    stored = again.store().entries
    assert [e.text for e in stored] == FACTS
    assert stored[2].kind == "step"
    assert stored[2].meta == {"run": "run-1", "step": 2}
    info = again.stats()
    assert info is not None
    assert (info.count, info.model_id, info.dimension) == (6, "hash-trigrams-256", 256)


def test_identical_text_is_stored_once(tmp_path: Path, mem: LongTermMemory) -> None:
    assert mem.remember("same text")
    assert not mem.remember("same text", kind="step")
    assert mem.remember("same text ")  # not identical
    assert mem.remember_many(["a new one", "a new one", "same text"]) == 1
    reopened = open_memory(tmp_path / "mem", HashEmbedder())
    assert not reopened.remember("same text")
    assert len(reopened.store()) == 3


def test_blank_memory_is_refused(mem: LongTermMemory) -> None:
    with pytest.raises(ValueError, match="blank"):
        mem.remember("   ")


def test_clear_removes_everything_on_disk(tmp_path: Path, mem: LongTermMemory) -> None:
    for fact in FACTS:
        mem.remember(fact)
    assert mem.clear() == len(FACTS)
    assert mem.recall("cat") == []
    assert set(files_of(tmp_path / "mem")) == {"manifest.json"}
    assert open_memory(tmp_path / "mem", HashEmbedder()).recall("cat") == []
    assert mem.remember(FACTS[0])


def test_clear_without_loading_the_store(tmp_path: Path, mem: LongTermMemory) -> None:
    mem.remember(FACTS[0])
    fresh = open_memory(tmp_path / "mem", HashEmbedder())
    assert fresh.clear() == 1
    info = fresh.stats()
    assert info is not None
    assert info.count == 0


def test_many_single_saves_keep_few_segments(tmp_path: Path) -> None:
    store = MemoryStore.open(tmp_path, "m", 8)
    rng = np.random.default_rng(0)
    for e in entries("memory", 100):
        store.add([e], rng.standard_normal((1, 8)).astype(np.float32))
        store.save()
    info = read_info(tmp_path)
    assert info is not None
    assert info.count == 100
    assert info.segments <= 7  # binary counter: one segment per set bit of 100
    assert len(list(tmp_path.glob("seg-*.npy"))) == info.segments
    assert [e.text for e in MemoryStore.open(tmp_path, "m", 8).entries] == [
        f"memory {i}" for i in range(100)
    ]


# --- model and dimension checks -------------------------------------------------------


def test_another_model_is_refused_naming_both(tmp_path: Path, mem: LongTermMemory) -> None:
    mem.remember(FACTS[0])
    with pytest.raises(MemoryStoreError, match=r"hash-trigrams-256.*other-model") as err:
        open_memory(tmp_path / "mem", HashEmbedder(model_id="other-model"))
    assert err.value.exit_code == 8


def test_another_dimension_is_refused_naming_both(tmp_path: Path, mem: LongTermMemory) -> None:
    mem.remember(FACTS[0])
    same_name = open_memory(tmp_path / "mem", HashEmbedder(64, model_id="hash-trigrams-256"))
    with pytest.raises(MemoryStoreError, match=r"256 dimensions.*64 dimensions"):
        same_name.recall("x")


def test_an_empty_store_may_change_model(tmp_path: Path, mem: LongTermMemory) -> None:
    mem.remember(FACTS[0])
    mem.clear()
    other = open_memory(tmp_path / "mem", HashEmbedder(64))
    assert other.remember(FACTS[1])
    info = read_info(tmp_path / "mem")
    assert info is not None
    assert (info.model_id, info.dimension) == ("hash-trigrams-64", 64)


def test_unknown_index_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="flat, hnsw"):
        open_memory(tmp_path, HashEmbedder(), index="ivf")


# --- loading never writes; damage is reported ----------------------------------------


def test_loading_does_not_touch_the_files(tmp_path: Path, mem: LongTermMemory) -> None:
    for fact in FACTS:
        mem.remember(fact)
    folder = tmp_path / "mem"
    before = files_of(folder)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    reopened = open_memory(folder, HashEmbedder())
    reopened.recall("cat")
    reopened.stats()
    assert files_of(folder) == before
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "manifest.json").write_text("{not json"), "unreadable manifest"),
        (lambda d: next(d.glob("seg-*.jsonl")).write_text('{"text": "x"}\n'), "segment"),
        (lambda d: next(d.glob("seg-*.npy")).unlink(), "segment"),
        (
            lambda d: (d / "manifest.json").write_text(
                json.dumps({**json.loads((d / "manifest.json").read_text()), "format": 99})
            ),
            "format 99",
        ),
    ],
)
def test_damaged_store_fails_cleanly_and_is_left_alone(
    tmp_path: Path, mem: LongTermMemory, damage: Callable[[Path], Any], message: str
) -> None:
    for fact in FACTS:
        mem.remember(fact)
    folder = tmp_path / "mem"
    damage(folder)
    before = files_of(folder)
    with pytest.raises(MemoryStoreError, match=message):
        open_memory(folder, HashEmbedder()).recall("cat")
    assert files_of(folder) == before


# --- crash safety ---------------------------------------------------------------------


class Crash(BaseException):
    """Stands for a kill: not an Exception, so no cleanup handler runs."""


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], list[str]]]:
    """Make the n-th file-system step of a save (fsync, rename or delete) raise Crash."""
    calls: list[str] = []
    budget = {"left": -1}

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            if budget["left"] == 0:
                raise Crash(name)
            budget["left"] -= 1
            calls.append(name)
            return real(*args, **kwargs)

        return step

    for name in ("fsync", "replace", "unlink"):
        monkeypatch.setattr(os, name, wrap(name, getattr(os, name)))

    def arm(n: int) -> list[str]:
        calls.clear()
        budget["left"] = n
        return calls

    yield arm
    budget["left"] = -1


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_a_save_interrupted_at_any_step_leaves_old_or_new_state(
    tmp_path: Path, crash_at: Callable[[int], list[str]], index: IndexKind
) -> None:
    rng = np.random.default_rng(1)
    params = HNSWParams(m=8, ef_construction=20, ef_search=32)
    n = 0
    while True:
        folder = tmp_path / f"run{n}"
        store = MemoryStore.open(folder, "m", 16, index=index, hnsw=params, snapshot_every=3)
        old = entries("old", 3)
        store.add(old, rng.standard_normal((3, 16)).astype(np.float32))
        store.save()
        store.add(entries("old2", 3), rng.standard_normal((3, 16)).astype(np.float32))
        store.save()  # the next save merges both segments and writes a snapshot
        committed = [e.text for e in store.entries]
        new = entries("new", 6)  # as many as are saved: the save merges all into one
        store.add(new, rng.standard_normal((6, 16)).astype(np.float32))
        steps = crash_at(n)
        try:
            store.save()
        except Crash:
            crashed = True
        else:
            crashed = False
        crash_at(-1)

        loaded = MemoryStore.open(folder, "m", 16, index=index, hnsw=params)
        texts = [e.text for e in loaded.entries]
        assert texts in (committed, committed + [e.text for e in new]), (n, steps)
        assert len(loaded.search(rng.standard_normal(16).astype(np.float32), 3)) == 3
        # The next save cleans up whatever the crash left behind.
        loaded.add(entries("later", 1), rng.standard_normal((1, 16)).astype(np.float32))
        loaded.save(snapshot=True)
        manifest = json.loads((folder / "manifest.json").read_text())
        live = {f"seg-{s['id']}.{x}" for s in manifest["segments"] for x in ("npy", "jsonl")}
        if manifest["snapshot"]:
            live.add(f"index-{manifest['snapshot']['id']}.faiss")
        assert set(files_of(folder)) == live | {"manifest.json"}
        if not crashed:
            break
        n += 1
    assert n > 5  # the save really had that many steps to interrupt


def test_a_failed_write_keeps_the_memories_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore.open(tmp_path, "m", 4)
    store.add(entries("x", 2), np.eye(2, 4, dtype=np.float32))

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(MemoryStoreError, match="No space left"):
        store.save()
    monkeypatch.undo()
    assert store.unsaved == 2
    store.save()
    assert len(MemoryStore.open(tmp_path, "m", 4)) == 2


# --- index kinds and concurrent writers -----------------------------------------------


def test_hnsw_finds_what_flat_finds_and_reloads_from_its_snapshot(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    flat = MemoryStore.open(tmp_path / "flat", "m", 32)
    hnsw = MemoryStore.open(tmp_path / "hnsw", "m", 32, index="hnsw", snapshot_every=100)
    for store in (flat, hnsw):
        store.add(entries("v", 500), vectors)
        store.save()
    assert list(tmp_path.joinpath("hnsw").glob("index-*.faiss"))
    queries = vectors[:20] + 0.05 * rng.standard_normal((20, 32)).astype(np.float32)
    exact = [[h.entry.text for h in hits] for hits in flat.search_many(queries, 1)]
    approx = [[h.entry.text for h in hits] for hits in hnsw.search_many(queries, 1)]
    assert approx == exact
    hnsw.add(entries("w", 3), vectors[:3] * -1)  # more than the snapshot covers
    hnsw.save(snapshot=False)
    reloaded = MemoryStore.open(tmp_path / "hnsw", "m", 32, index="hnsw")
    assert len(reloaded) == 503
    assert reloaded.search(-vectors[1], 1)[0].entry.text == "w 1"
    as_flat = MemoryStore.open(tmp_path / "hnsw", "m", 32, index="flat")
    assert as_flat.search(-vectors[1], 1)[0].entry.text == "w 1"


def test_two_writers_on_one_folder_lose_nothing(tmp_path: Path) -> None:
    a = open_memory(tmp_path, HashEmbedder())
    b = open_memory(tmp_path, HashEmbedder())
    a.remember("written by a")
    b.remember("written by b")
    a.remember("written by a again")
    b.remember("written by a")  # a duplicate once b sees a's memories
    texts = [e.text for e in open_memory(tmp_path, HashEmbedder()).store().entries]
    assert sorted(texts) == ["written by a", "written by a again", "written by b"]


def test_a_clear_or_deletion_by_another_process_is_respected(
    tmp_path: Path, mem: LongTermMemory
) -> None:
    mem.remember("before the clear")
    open_memory(tmp_path / "mem", HashEmbedder()).clear()  # e.g. `offline-agent memory clear`
    mem.remember("after the clear")
    texts = [e.text for e in open_memory(tmp_path / "mem", HashEmbedder()).store().entries]
    assert texts == ["after the clear"]
    for path in (tmp_path / "mem").iterdir():
        path.unlink()
    (tmp_path / "mem").rmdir()
    mem.remember("after the deletion")
    texts = [e.text for e in open_memory(tmp_path / "mem", HashEmbedder()).store().entries]
    assert texts == ["after the deletion"]


def test_any_python_string_can_be_stored(tmp_path: Path, mem: LongTermMemory) -> None:
    odd = "lone surrogate \ud800, NUL \x00, line\u2028separator, CR\r, émoji 🙂"
    assert mem.remember(odd)
    again = open_memory(tmp_path / "mem", HashEmbedder())
    assert again.recall(odd, k=1) == [pytest.approx((1.0, odd))]
    assert not again.remember(odd)


# --- ingest ---------------------------------------------------------------------------


@given(
    text=st.text(alphabet="ab \n.", max_size=400),
    size=st.integers(1, 60),
    overlap_share=st.floats(0, 0.9),
)
def test_chunk_spans_cover_the_text_in_bounded_overlapping_pieces(
    text: str, size: int, overlap_share: float
) -> None:
    overlap = min(size - 1, int(size * overlap_share))
    spans = chunk_spans(text, size, overlap)
    if not text:
        assert spans == []
        return
    assert spans[0][0] == 0
    assert spans[-1][1] == len(text)
    for (a, b), (c, d) in itertools.pairwise(spans):
        assert a < c <= b < d  # each next chunk starts inside or at the end of the one before
    assert all(0 < b - a <= size for a, b in spans)


def test_chunks_break_at_words_and_overlap() -> None:
    words = " ".join(f"word{i:03d}" for i in range(300))
    chunks = chunk_text(words, size=100, overlap=30)
    assert all(len(c) <= 100 for c in chunks)
    assert all(c.split()[0].startswith("word") and len(c.split()[0]) == 7 for c in chunks)
    for first, second in itertools.pairwise(chunks):
        assert first.split()[-1] in second.split()[:4]  # shared words at the seam
    assert " ".join(dict.fromkeys(w for c in chunks for w in c.split())) == words


def test_ingest_reads_text_files_skips_binary_and_hidden(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".git").mkdir()
    (docs / "a.md").write_text(" ".join(f"Apple {i} is red." for i in range(100)))
    (docs / "sub" / "b.txt").write_text("Bananas are yellow.")
    (docs / "blob.bin").write_bytes(b"\0\1\2" * 10)
    (docs / ".git" / "config").write_text("hidden")
    mem = open_memory(tmp_path / "mem", HashEmbedder())
    seen: list[tuple[int, int]] = []
    report = ingest(mem, [docs], size=200, overlap=50, batch=4, progress=lambda *p: seen.append(p))
    assert report.files == 2
    assert report.skipped == [docs / "blob.bin"]
    assert report.added == report.chunks > 8
    assert seen[0] == (0, report.chunks)
    assert seen[-1] == (report.chunks, report.chunks)
    assert len(seen) == 1 + -(-report.chunks // 4)
    hit = mem.search("Bananas are yellow", 1)[0]
    assert hit.entry.text == f"From {docs / 'sub' / 'b.txt'}:\nBananas are yellow."
    assert hit.entry.kind == "document"
    assert hit.entry.meta == {"source": str(docs / "sub" / "b.txt"), "chunk": 0}
    assert ingest(mem, [docs], size=200, overlap=50).added == 0


def test_ingest_of_a_missing_path_is_a_storage_error(tmp_path: Path) -> None:
    mem = open_memory(tmp_path / "mem", HashEmbedder())
    with pytest.raises(StorageError, match="neither"):
        ingest(mem, [tmp_path / "nope"])


# --- commands -------------------------------------------------------------------------


def test_memory_commands(tmp_path: Path, mem: LongTermMemory) -> None:
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"), memory=mem, output_limit=400)
    assert [t.name for t in MEMORY_TOOLS] == ["memory_add", "memory_search"]
    assert memory_search(ctx, {"query": "cat"}) == "Nothing in memory yet."
    assert memory_add(ctx, {"text": "The user's cat is called Miso."}) == "Saved to memory."
    assert memory_add(ctx, {"text": "The user's cat is called Miso."}) == (
        "This is already in memory."
    )
    memory_add(ctx, {"text": "x" * 2000})
    result = memory_search(ctx, {"query": "what is the cat called"})
    assert result.startswith("1. (")
    assert "Miso" in result.splitlines()[0]
    assert len(result) <= 400


def test_memory_commands_when_memory_is_disabled(tmp_path: Path) -> None:
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"), memory=None)
    with pytest.raises(ToolError, match="memory is disabled"):
        memory_add(ctx, {"text": "x"})
    with pytest.raises(ToolError, match="memory is disabled"):
        memory_search(ctx, {"query": "x"})


# --- CLI (commands that need no embedder) ---------------------------------------------


def test_default_memory_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path))
    assert default_memory_dir() == tmp_path / "memory" / "Agent"  # run's default name
    assert default_memory_dir("Research GPT/../x") == tmp_path / "memory" / "Research-GPT-..-x"
    monkeypatch.delenv("OFFLINE_AGENT_HOME")
    assert default_memory_dir("a") == Path.home() / ".offline-agent" / "memory" / "a"


def test_memory_commands_default_to_the_folder_a_run_uses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without --memory-dir, `memory` commands use the folder `run` picks for the same agent
    name and goals (before, they used memory/default, which no default run reads)."""
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path))
    for args, folder in [
        ([], default_memory_dir("Agent")),
        (["--name", "Bot", "--goal", "a", "--goal", "b"], default_memory_dir("Bot", ("a", "b"))),
    ]:
        shown = CliRunner().invoke(memory, ["stats", *args])
        assert shown.output.splitlines()[0] == f"folder:     {folder}"


def test_cli_stats_and_clear(tmp_path: Path, mem: LongTermMemory) -> None:
    folder = str(tmp_path / "mem")
    runner = CliRunner()
    result = runner.invoke(memory, ["stats", "--memory-dir", folder])
    assert result.exit_code == 0
    assert "0 (nothing saved yet)" in result.output
    for fact in FACTS:
        mem.remember(fact)
    result = runner.invoke(memory, ["stats", "--memory-dir", folder])
    assert "memories:   6" in result.output
    assert "hash-trigrams-256 (256 dimensions)" in result.output

    result = runner.invoke(memory, ["clear", "--memory-dir", folder], input="n\n")
    assert result.exit_code == 1
    assert "Delete all 6 memories" in result.output
    assert read_info(tmp_path / "mem").count == 6  # type: ignore[union-attr]
    result = runner.invoke(memory, ["clear", "--memory-dir", folder, "--yes"])
    assert result.exit_code == 0
    assert "Deleted 6 memories" in result.output
    assert read_info(tmp_path / "mem").count == 0  # type: ignore[union-attr]


def test_cli_reports_library_errors_in_one_line(tmp_path: Path, mem: LongTermMemory) -> None:
    mem.remember(FACTS[0])
    (tmp_path / "mem" / "manifest.json").write_text("garbage")
    runner = CliRunner()
    for args in (["stats"], ["search", "cat"], ["clear", "--yes"], ["ingest", str(tmp_path)]):
        result = runner.invoke(memory, [*args, "--memory-dir", str(tmp_path / "mem")])
        assert result.exit_code == MemoryStoreError.exit_code, args
        assert result.stderr.startswith("Error: memory in"), args
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output


def counting_embedder() -> tuple[HashEmbedder, list[str]]:
    """A HashEmbedder and the list of every text it embeds, in order."""
    counting = HashEmbedder()
    embedded: list[str] = []
    real_embed = counting.embed

    def embed(texts: list[str]) -> Any:
        embedded.extend(texts)
        return real_embed(texts)

    counting.embed = embed  # type: ignore[method-assign]
    return counting, embedded


def test_ingest_of_nothing_usable_is_one_line_and_an_error_exit(tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "a.bin").write_bytes(b"\0\1\2" * 10)
    (tmp_path / "empty").mkdir()
    for folder, said in [("blobs", "(1 files not UTF-8 text)"), ("empty", "no text")]:
        result = CliRunner().invoke(
            memory, ["ingest", str(tmp_path / folder), "--memory-dir", str(tmp_path / "mem")]
        )
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("Error: nothing to ingest in ") and said in line


def test_a_second_ingest_embeds_only_what_is_new_or_changed(tmp_path: Path) -> None:
    """Each batch is saved as it is done, and stored chunks are not embedded again: an
    interrupted ingest run again, or a folder ingested after a change, costs only the new."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"{i}.txt").write_text(f"Document {i}. " + "words " * 300)
    counting, embedded = counting_embedder()
    mem = open_memory(tmp_path / "mem", counting)
    first = ingest(mem, [docs], batch=2)
    assert first.added == first.chunks == len(embedded) > 3
    embedded.clear()
    (docs / "1.txt").write_text("Document 1, rewritten. " + "other " * 10)
    second = ingest(mem, [docs], batch=2)
    assert second.added == len(embedded) == 1  # only the changed file's one new chunk
    assert embedded[0].startswith("Document 1, rewritten.")


def test_an_interrupted_ingest_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Stopped after two saved batches (Ctrl-C arrives as KeyboardInterrupt), the same ingest
    again embeds only the chunks not stored yet, and ends with every chunk stored once."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"{i}.txt").write_text(" ".join(f"Fact {i}.{j} is true." for j in range(150)))
    counting, embedded = counting_embedder()

    def stop_after_two(done: int, total: int) -> None:
        if done >= 2 * 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(open_memory(tmp_path / "mem", counting), [docs], batch=3, progress=stop_after_two)
    assert read_info(tmp_path / "mem").count == len(embedded) == 6  # type: ignore[union-attr]
    first = list(embedded)
    embedded.clear()
    report = ingest(open_memory(tmp_path / "mem", counting), [docs], batch=3)
    assert report.added == len(embedded) == report.chunks - 6
    assert not set(first) & set(embedded)
    assert read_info(tmp_path / "mem").count == report.chunks  # type: ignore[union-attr]


def test_memory_prepare_check_without_an_export_is_one_line_and_exit_8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path))
    result = CliRunner().invoke(memory, ["prepare", "--check"])
    assert result.exit_code == MemoryStoreError.exit_code == 8
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: no usable ONNX export in ")
    assert line.endswith(": there is none yet")
    assert not (tmp_path / "embedders").exists() or not any(
        (tmp_path / "embedders").rglob("*.onnx")
    )


@given(lengths=st.lists(st.integers(1, 300), max_size=60), budget=st.integers(256, 2048))
def test_onnx_batches_group_texts_of_similar_length_within_a_token_budget(
    lengths: list[int], budget: int
) -> None:
    groups = _batches(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)  # shortest first, so a batch pads little
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert len(group) == 1 or len(group) * longest <= budget
