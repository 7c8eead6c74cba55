"""Benchmark long-term memory on this machine and write the results into docs/memory.md.

Measures the embedder's start-up and throughput, adding and saving memories, and top-10
search latency and recall at 1k to 1M entries for the exact (flat) and the approximate (HNSW)
index. Scaling runs on synthetic 384-dimensional unit vectors, not embedded texts:

    uniform    i.i.d. points on the sphere: no neighbourhood structure, the worst case for HNSW
    clustered  points around topic centres, queries near a centre: closer to real embeddings

Usage: python scripts/bench_memory.py [--sizes 1000,10000,100000,1000000] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from benchlib import log, machine, write_doc_block

from offline_agent.memory import Entry, Hit, HNSWParams, MemoryStore, SentenceTransformerEmbedder
from offline_agent.memory.embedder import Vectors, normalise

DIM = 384
K = 10
HNSW = HNSWParams(m=32, ef_construction=40, ef_search=128)
EF_SWEEP = (32, 64, 128, 256, 512)
REPEATS = 3  # throughput is the best of REPEATS runs: other work shares these cores
DOC = Path(__file__).resolve().parent.parent / "docs" / "memory.md"
WORDS = [
    "agent",
    "file",
    "python",
    "memory",
    "search",
    "result",
    "command",
    "write",
    "read",
    "list",
    "error",
    "test",
    "model",
    "step",
    "budget",
    "plan",
    "task",
    "user",
    "goal",
    "code",
    "server",
    "data",
    "report",
    "note",
    "summary",
    "value",
    "index",
    "query",
]


@contextmanager
def timer(out: list[float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    out.append(time.perf_counter() - start)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=words)) + "."


def make_entries(prefix: str, n: int) -> list[Entry]:
    return [Entry(f"{prefix} {i}", "bench", "2024-01-01T00:00:00+00:00", {}) for i in range(n)]


def unit_vectors(n: int, rng: np.random.Generator) -> Vectors:
    """n i.i.d. points on the sphere."""
    return normalise(rng.standard_normal((n, DIM), dtype=np.float32))


def make_data(kind: str, n: int, nq: int, rng: np.random.Generator) -> tuple[Vectors, Vectors]:
    """n stored vectors and nq queries of one synthetic kind, built in blocks to bound memory."""
    if kind == "uniform":
        return np.concatenate(
            [unit_vectors(min(100_000, n - s), rng) for s in range(0, n, 100_000)]
        ), unit_vectors(nq, rng)
    centres = unit_vectors(max(1, n // 50), rng)
    data = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        noise = rng.standard_normal((m, DIM), dtype=np.float32)
        data[start : start + m] = normalise(
            centres[rng.integers(0, len(centres), m)] + 0.045 * noise
        )
    # A recall query lies near a topic, not on a stored memory.
    noise = rng.standard_normal((nq, DIM), dtype=np.float32)
    return data, normalise(centres[rng.integers(0, len(centres), nq)] + 0.05 * noise)


def latencies(search: Callable[[Vectors], object], qs: Vectors) -> list[float]:
    search(qs[0])  # warm-up
    times: list[float] = []
    for q in qs:
        with timer(times):
            search(q)
    return times


# --- embedder -------------------------------------------------------------------------

STARTUP = """
import time
t0 = time.perf_counter()
from offline_agent.memory import open_memory
t1 = time.perf_counter()
import sentence_transformers
t2 = time.perf_counter()
from offline_agent.memory import SentenceTransformerEmbedder
e = SentenceTransformerEmbedder()
e.load()
t3 = time.perf_counter()
e.embed(["first query"])
t4 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
"""


def bench_embedder(rng: np.random.Generator) -> list[str]:
    log("embedder: start-up in a fresh process")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs = []
    for _ in range(2):  # the first run also warms the page cache
        out = subprocess.run(
            [sys.executable, "-c", STARTUP], capture_output=True, text=True, check=True, env=env
        )
        runs.append([float(x) for x in out.stdout.split()])
    imp_memory, imp_torch, load, first = runs[-1]
    log("embedder: throughput")
    emb = SentenceTransformerEmbedder()
    emb.load()
    short = [sentence(rng, 12) for _ in range(512)]
    long = [" ".join(sentence(rng, 12) for _ in range(10))[:800] for _ in range(128)]
    emb.embed(short[:32])  # warm-up
    t_short: list[float] = []
    t_long: list[float] = []
    for _ in range(REPEATS):
        with timer(t_short):
            emb.embed(short)
        with timer(t_long):
            emb.embed(long)
    single = latencies(lambda q: emb.embed([str(q)]), np.array(long[:20], dtype=object))
    return [
        "| embedder measure | value |",
        "| --- | --- |",
        f"| `import offline_agent.memory` + `open_memory` (no torch) | {ms(imp_memory)} ms |",
        f"| import torch + sentence-transformers | {imp_torch:.2f} s |",
        f"| load all-MiniLM-L6-v2 from the package folder | {load:.2f} s |",
        f"| first embed after load | {ms(first)} ms |",
        f"| start-up total (cold process, warm page cache) | {imp_torch + load + first:.2f} s |",
        f"| throughput, 12-word sentences, batch 32 | {len(short) / min(t_short):.0f} texts/s |",
        f"| throughput, 800-character chunks, batch 32 | {len(long) / min(t_long):.0f} texts/s |",
        f"| one 800-character query (a recall), median | {ms(statistics.median(single))} ms |",
    ]


# --- adding and saving ----------------------------------------------------------------


def bench_adding(rng: np.random.Generator, tmp: Path) -> list[str]:
    log("adding: in memory, one at a time with a save, in ingest batches, save/load")
    rows = ["| add measure | value |", "| --- | --- |"]
    data = unit_vectors(100_000, rng)
    entries = make_entries("bulk", len(data))
    store = MemoryStore.open(tmp / "bulk", "bench", DIM)
    t: list[float] = []
    with timer(t):
        for start in range(0, len(data), 1000):
            store.add(entries[start : start + 1000], data[start : start + 1000])
    rows.append(
        f"| add 100k to a flat store in batches of 1000, in memory "
        f"| {len(data) / t[0]:,.0f} entries/s (HNSW: see build times below) |"
    )
    t = []
    store = MemoryStore.open(tmp / "flat-100k", "bench", DIM)
    store.add(entries, data)
    with timer(t):
        store.save()
    with timer(t):
        MemoryStore.open(tmp / "flat-100k", "bench", DIM)
    rows.append(f"| save 100k entries (one segment, fsync'd) | {t[0]:.2f} s |")
    rows.append(f"| open a saved 100k store (flat) | {t[1]:.2f} s |")

    store = MemoryStore.open(tmp / "steps", "bench", DIM)
    store.add(make_entries("seed", 10_000), data[:10_000])
    store.save()
    singles = make_entries("step", 200)
    times: list[float] = []
    for i, entry in enumerate(singles):
        with timer(times):
            store.add([entry], data[10_000 + i : 10_001 + i])
            store.save()
    rows.append(
        f"| one add + durable save on a 10k store (the agent's step), median / p95 / max "
        f"| {ms(statistics.median(times))} / {ms(percentile(times, 95))} / {ms(max(times))} ms |"
    )
    store = MemoryStore.open(tmp / "ingest", "bench", DIM)
    t = []
    with timer(t):
        for start in range(0, 10_000, 64):
            store.add(entries[start : start + 64], data[start : start + 64])
            store.save()
    rows.append(
        f"| add + save in batches of 64 (ingest), 10k entries | {10_000 / t[0]:,.0f} entries/s |"
    )
    return rows


# --- scaling --------------------------------------------------------------------------


@dataclass
class Scale:
    kind: str
    n: int
    flat: list[float]
    hnsw: list[float] | None
    build: float | None
    recall: float | None
    note: str = ""


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a[a >= 0]) & set(e)) for a, e in zip(approx, exact, strict=True)]
    return sum(hits) / (K * len(exact))


def flat_latencies(folder: Path, entries: list[Entry], data: Vectors, qs: Vectors) -> list[float]:
    """Single-query latencies of a flat store."""
    flat = MemoryStore.open(folder, "bench", DIM)
    flat.add(entries, data)
    return latencies(lambda q: flat.search(q, K), qs)


def bench_scale(
    kind: str,
    n: int,
    rng: np.random.Generator,
    tmp: Path,
    build_budget: float,
    last_rate: float | None,
) -> tuple[Scale, float | None, list[str]]:
    log(f"scale: {kind} {n:,}")
    data, qs = make_data(kind, n, 200 if n < 1_000_000 else 50, rng)
    exact_index = faiss.IndexFlatIP(DIM)
    exact_index.add(data)
    exact = exact_index.search(qs, K)[1]
    del exact_index
    entries = make_entries("v", n)
    flat_times = flat_latencies(tmp / f"{kind}-{n}-flat", entries, data, qs)
    projected = n / last_rate * 1.3 if last_rate else 0.0
    if last_rate and projected > build_budget:
        note = (
            f"HNSW not built: at {last_rate:,.0f} inserts/s measured one size down, "
            f"the build would take about {projected / 60:.0f} min"
        )
        return Scale(kind, n, flat_times, None, None, None, note), last_rate, []
    hnsw = MemoryStore.open(tmp / f"{kind}-{n}-hnsw", "bench", DIM, index="hnsw", hnsw=HNSW)
    t: list[float] = []
    with timer(t):
        for start in range(0, n, 100_000):
            hnsw.add(entries[start : start + 100_000], data[start : start + 100_000])
    hnsw_times = latencies(lambda q: hnsw.search(q, K), qs)
    approx = ids(hnsw.search_many(qs, K))
    sweep = []
    if n == 100_000:
        for ef in EF_SWEEP:
            hnsw.set_ef_search(ef)
            times = latencies(lambda q: hnsw.search(q, K), qs)
            sweep.append(
                f"| {kind} | {ef} | {ms(statistics.median(times))} "
                f"| {recall_at_k(ids(hnsw.search_many(qs, K)), exact):.3f} |"
            )
    scale = Scale(kind, n, flat_times, hnsw_times, t[0], recall_at_k(approx, exact))
    return scale, n / t[0], sweep


def ids(results: list[list[Hit]]) -> np.ndarray:
    """Positions of the hits (texts are "v <position>"), -1 where fewer than K came back."""
    out = np.full((len(results), K), -1, dtype=np.int64)
    for row, hits in enumerate(results):
        for col, hit in enumerate(hits):
            out[row, col] = int(hit.entry.text.split()[1])
    return out


def scale_rows(results: list[Scale]) -> list[str]:
    rows = [
        "| data | entries | flat p50 | flat p95 | HNSW p50 | HNSW p95 | HNSW build "
        "| HNSW recall@10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        hnsw = (
            (
                f"{ms(statistics.median(r.hnsw))} ms | {ms(percentile(r.hnsw, 95))} ms "
                f"| {r.build:.1f} s | {r.recall:.3f}"
            )
            if r.hnsw and r.build and r.recall is not None
            else "– | – | – | –"
        )
        rows.append(
            f"| {r.kind} | {r.n:,} | {ms(statistics.median(r.flat))} ms "
            f"| {ms(percentile(r.flat, 95))} ms | {hnsw} |"
        )
    return rows


# --- report ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--kinds", default="clustered,uniform")
    parser.add_argument(
        "--build-budget",
        type=float,
        default=240.0,
        help="seconds an HNSW build may be projected to take before it is skipped",
    )
    parser.add_argument("--no-embedder", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.no_embedder:
            sections.append("\n".join(bench_embedder(rng)))
        sections.append("\n".join(bench_adding(rng, tmp)))
        results: list[Scale] = []
        sweep: list[str] = []
        for kind in args.kinds.split(","):
            rate = None
            for n in (int(s) for s in args.sizes.split(",")):
                scale, rate, rows = bench_scale(kind, n, rng, tmp, args.build_budget, rate)
                results.append(scale)
                sweep.extend(rows)
    sections.append(
        f"Top-{K} search, one query at a time through `MemoryStore.search` (200 queries; 50 at "
        f"1M). HNSW: M={HNSW.m}, efConstruction={HNSW.ef_construction}, "
        f"efSearch={HNSW.ef_search}; recall@{K} is against the exact flat result.\n\n"
        + "\n".join(scale_rows(results))
        + "".join(f"\n\n{r.kind} {r.n:,}: {r.note}." for r in results if r.note)
    )
    if sweep:
        sections.append(
            "efSearch at 100k entries (HNSW p50, recall@10):\n\n| data | efSearch | p50 ms "
            "| recall@10 |\n| --- | ---: | ---: | ---: |\n" + "\n".join(sweep)
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sections.append(
        f"Benchmark run time: {(time.perf_counter() - started) / 60:.1f} min; load average "
        f"{load:.1f} at the end."
    )
    versions = machine(f"faiss {faiss.__version__}", f"numpy {np.__version__}")
    sections.insert(0, f"Measured {time.strftime('%Y-%m-%d')} on {versions}.")
    block = "\n\n".join(sections)
    print(block)
    if not args.no_write:
        write_doc_block(DOC, "bench", block, "Long-term memory", "Benchmark")
        log(f"wrote {DOC}")


if __name__ == "__main__":
    main()
