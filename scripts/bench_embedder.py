"""Benchmark the embedders side by side, in one run, and write the table into docs/memory.md.

Every candidate runs the same model (all-MiniLM-L6-v2 from its package) on the same real
corpus: the docstrings of this Python's standard library, cut by `memory ingest`'s chunker.

    start      process start → first embedding, in a fresh subprocess (best of 3)
    ingest     chunks/s of `ingest()` over full (≥ 700-character) chunks into a fresh memory
               folder, in a fresh subprocess per try (best of --tries, default 3; interleaved)
    agreement  cosine with today's vector of each chunk and query; recall@10 of 50 queries
               against today's top 10, with the candidate's index ("own") and with today's
               index ("mixed": a memory built before, searched now)
    memory     peak RSS of a memory-on `offline-agent run` (scripted model, two steps), with
               the code before this change (git archive of --before) and now

Candidates: `sentence-transformers` (today: torch), `onnx-fp32` (the default now),
`onnx-int8` (dynamically quantized) and `sentence-transformers-bf16` (torch's bfloat16
autocast: what a large `memory ingest` uses on a CPU with AMX, `memory.fast.bulk_embedder`).
The exports are built first, into a temporary home.

With `--quantized`, the candidates are instead sentence-transformers, onnx-fp32 and each
quantization recipe in RECIPES (made from the fp32 export with onnxruntime.quantization),
measured for ingest and agreement only, into the "quantized" block of docs/memory.md.

Usage: flock /work/model.lock python scripts/bench_embedder.py [--quantized] [--no-write]
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import log, machine, write_doc_block

from offline_agent.memory import (
    FastEmbedder,
    SentenceTransformerEmbedder,
    chunk_text,
    ingest,
    open_memory,
    read_info,
)
from offline_agent.memory.embedder import DEFAULT_MODEL_ID, bundled_model_path
from offline_agent.memory.export import build_export, export_dir, read_export, variant
from offline_agent.memory.fast import bf16_embedder
from offline_agent.memory.onnxrt import OnnxEmbedder

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "memory.md"
CANDIDATES = ("sentence-transformers", "onnx-fp32", "onnx-int8", "sentence-transformers-bf16")
RECIPE = "int8 "
"""Prefix of a `--quantized` candidate: RECIPE + a key of RECIPES."""
K = 10
QUERIES = [
    "parse command line arguments and options",
    "read and write CSV files",
    "compress data with gzip",
    "send an email over SMTP",
    "generate random numbers from a distribution",
    "match text against a regular expression",
    "serialize Python objects to bytes and back",
    "run a shell command in a subprocess and capture its output",
    "create a temporary file that is deleted when closed",
    "compute a SHA-256 hash of some data",
    "parse an XML document into a tree",
    "format dates and times as strings",
    "start threads and wait for them to finish",
    "a queue shared between producer and consumer threads",
    "copy a directory tree recursively",
    "decode JSON text into Python objects",
    "open an HTTP connection and send a request",
    "parse a URL into its components",
    "log messages to a file with levels",
    "measure how long a small snippet of code takes",
    "compare two sequences and show the differences",
    "read configuration from an INI file",
    "encode binary data as base64",
    "an ordered dictionary that remembers insertion order",
    "count how many times each item occurs",
    "decimal fixed point arithmetic with exact rounding",
    "fractions with a numerator and denominator",
    "schedule coroutines on an event loop",
    "read a zip archive and extract its members",
    "walk the abstract syntax tree of Python source code",
    "inspect the signature of a function",
    "a binary heap priority queue",
    "bisect a sorted list to insert an element",
    "wrap long text into lines of a given width",
    "lock a file or share memory between processes",
    "a pool of worker processes that map a function over data",
    "copy an object deeply including nested objects",
    "the current working directory and environment variables",
    "find files whose names match a shell pattern",
    "print a stack trace of the current exception",
    "connect to a socket and listen for incoming connections",
    "an SQLite database connection and cursor",
    "read and write tar archives",
    "pretty print nested data structures",
    "get the size of the terminal window",
    "detect the MIME type of a file from its name",
    "cache the results of a function call",
    "create a context manager from a generator",
    "unit tests with assertions and test cases",
    "standard deviation and mean of a list of numbers",
]


# --- the corpus -----------------------------------------------------------------------


def stdlib_docs() -> list[tuple[str, str]]:
    """(module path, its docstrings joined) for each module of the standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "site-packages", "idlelib", "lib2to3", "tkinter", "turtledemo"}
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or "tests" in rel.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    parts.append(f"{getattr(node, 'name', str(rel))}: {doc}")
        if parts:
            docs.append((str(rel), "\n\n".join(parts)))
    return docs


def spread(items: list[str], n: int) -> list[str]:
    """`n` items evenly spaced through `items` (all of them if fewer)."""
    if len(items) <= n:
        return items
    return [items[int(i * len(items) / n)] for i in range(n)]


# --- workers: each measure in a fresh process -----------------------------------------


def make_embedder(
    kind: str, home: Path
) -> FastEmbedder | SentenceTransformerEmbedder | OnnxEmbedder:
    if kind.startswith("sentence-transformers"):
        return bf16_embedder() if kind.endswith("bf16") else SentenceTransformerEmbedder()
    if kind.startswith(RECIPE):
        export, why = read_export(
            export_dir(DEFAULT_MODEL_ID, "fp32", home / "embedders"), bundled_model_path()
        )
        if export is None:
            raise SystemExit(f"no fp32 export: {why}")
        return OnnxEmbedder(
            recipe_file(home, kind).read_bytes(),
            export.tokenizer_file,
            model_id=DEFAULT_MODEL_ID,
            dimension=export.info.dimension,
            max_tokens=export.info.max_tokens,
        )
    return FastEmbedder(
        variant=variant(kind.removeprefix("onnx-")), export_root=home / "embedders", build=False
    )


def worker(args: list[str]) -> None:
    task, kind, home = args[0], args[1], Path(args[2])
    embedder = make_embedder(kind, home)
    if task == "ingest":
        embedder.embed(["warm-up"])
        with tempfile.TemporaryDirectory() as tmp:
            memory = open_memory(Path(tmp) / "mem", embedder)
            memory.store()
            started = time.perf_counter()
            report = ingest(memory, [Path(args[3])])
            seconds = time.perf_counter() - started
        print(json.dumps({"chunks": report.added, "seconds": seconds}))
    elif task == "vectors":
        texts = json.loads(Path(args[3]).read_text())
        vectors = np.concatenate(
            [embedder.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)]
        )
        np.save(args[4], vectors)


def run_worker(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed:\n{out.stderr[-3000:]}")
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


START = """
import sys, time
from pathlib import Path
from typing import Any
from offline_agent.memory import FastEmbedder, SentenceTransformerEmbedder
from offline_agent.memory.fast import bf16_embedder
kind, home = sys.argv[1], Path(sys.argv[2])
if kind.startswith("sentence-transformers"):
    embedder = bf16_embedder() if kind.endswith("bf16") else SentenceTransformerEmbedder()
else:
    embedder = FastEmbedder(variant=kind[5:], export_root=home / "embedders", build=False)
embedder.embed(["first query"])
done = time.time()
print(done, "torch" in sys.modules, getattr(embedder, "fallback_reason", None))
"""
"""Only what a memory needs: the start of a process that embeds once, no benchmark helpers."""


# --- measures -------------------------------------------------------------------------


def build_exports(home: Path) -> dict[str, float]:
    seconds = {}
    for name in ("fp32", "int8"):
        log(f"building the {name} export")
        started = time.perf_counter()
        kind = variant(name)
        folder = export_dir(DEFAULT_MODEL_ID, kind, home / "embedders")
        build_export(bundled_model_path(), folder, kind, DEFAULT_MODEL_ID)
        seconds[name] = time.perf_counter() - started
    return seconds


def start_times(home: Path, tries: int) -> dict[str, tuple[float, bool]]:
    result = {}
    for kind in CANDIDATES:
        log(f"start: {kind}")
        best, torch = float("inf"), False
        for _ in range(tries):
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            began = time.time()
            out = subprocess.run(
                [sys.executable, "-c", START, kind, str(home)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            done, torch_loaded, fallback = out.stdout.split(maxsplit=2)
            if fallback.strip() != "None":
                raise SystemExit(f"{kind} fell back: {fallback}")
            best = min(best, float(done) - began)
            torch = torch_loaded == "True"
        result[kind] = (best, torch)
    return result


def ingest_rates(
    home: Path, docs: Path, tries: int, kinds: tuple[str, ...] = CANDIDATES
) -> dict[str, float]:
    best: dict[str, float] = {}
    for attempt in range(tries):
        for kind in kinds:
            log(f"ingest: {kind} ({attempt + 1}/{tries})")
            out = run_worker("ingest", kind, str(home), str(docs))
            rate = float(out["chunks"]) / float(out["seconds"])
            best[kind] = max(best.get(kind, 0.0), rate)
    return best


def agreement(
    home: Path, tmp: Path, chunks: list[str], kinds: tuple[str, ...] = CANDIDATES
) -> dict[str, dict[str, float]]:
    texts = tmp / "texts.json"
    texts.write_text(json.dumps(chunks + QUERIES))
    vectors = {}
    for kind in kinds:
        log(f"vectors: {kind}")
        out = tmp / f"{kind.replace(' ', '-')}.npy"
        run_worker("vectors", kind, str(home), str(texts), str(out))
        vectors[kind] = np.load(out)
    today = vectors["sentence-transformers"]
    n = len(chunks)

    def top(queries: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.argsort(-(queries @ index.T), axis=1)[:, :K]

    truth = top(today[n:], today[:n])

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))

    result = {}
    for kind, v in vectors.items():
        cos = (v * today).sum(axis=1)
        result[kind] = {
            "cos_min": float(cos.min()),
            "cos_p1": float(np.percentile(cos, 1)),
            "cos_mean": float(cos.mean()),
            "recall_own": recall(top(v[n:], v[:n])),
            "recall_mixed": recall(top(v[n:], today[:n])),
        }
    return result


SCRIPT = [
    {"thought": "t", "command": {"name": "write_file",
                                 "args": {"filename": "output.txt", "text": "Washington"}}},
    {"thought": "t", "command": {"name": "finish", "args": {"reason": "done"}}},
]  # fmt: skip


PEAK = """
import atexit, runpy, sys
def peak():
    hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    print("PEAK", hwm[0], "torch" in sys.modules, file=sys.stderr)
atexit.register(peak)
sys.argv = ["offline-agent", *sys.argv[1:]]
runpy.run_module("offline_agent", run_name="__main__", alter_sys=True)
"""
"""The CLI in a process that says, as it ends, its peak RSS (VmHWM: of this process alone,
unlike a child's ru_maxrss, which starts from its parent's) and whether torch was loaded."""


def peak_memory(home: Path, tmp: Path, before: str) -> dict[str, tuple[float, float, bool]]:
    """Peak RSS (MB), wall time (s) and torch loaded, of a memory-on scripted run: before
    and now."""
    old = tmp / "before"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", before], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(old, filter="data")
    replies = tmp / "replies.jsonl"
    replies.write_text("\n".join(json.dumps(r) for r in SCRIPT))
    result = {}
    for label, code in (("before", old), ("now", ROOT)):
        log(f"peak memory: {label}")
        argv = [sys.executable, "-c", PEAK, "run", "--model", f"scripted:{replies}",
                "--name", "FileBot", "--role", "an assistant that manages files",
                "--goal", "Write Washington to output.txt",
                "--workspace", str(tmp / f"ws-{label}"), "--continuous", "--limit", "5",
                "--memory-dir", str(tmp / f"mem-{label}")]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(code), "OFFLINE_AGENT_HOME": str(home)}
        began = time.perf_counter()
        # Not from ROOT: `python -c` puts the working folder first on sys.path, before
        # PYTHONPATH, and "before" would import this checkout's code.
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, cwd=tmp)
        wall = time.perf_counter() - began
        peaks = [line.split() for line in done.stderr.splitlines() if line.startswith("PEAK ")]
        stored = read_info(tmp / f"mem-{label}")
        if done.returncode != 0 or not peaks or stored is None or stored.count == 0:
            raise SystemExit(f"the {label} run failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
        log(f"  {stored.count} memories, {wall:.1f} s, {done.stderr.strip().splitlines()[-3:]}")
        result[label] = (int(peaks[-1][1]) / 1024, wall, peaks[-1][2] == "True")
    return result


# --- quantization recipes (--quantized) -----------------------------------------------

RECIPES: dict[str, dict[str, Any]] = {
    "dynamic, per-channel (the int8 variant)": {"per_channel": True},
    "dynamic, per-tensor": {"per_channel": False},
    "dynamic, per-channel, reduce_range": {"per_channel": True, "reduce_range": True},
    "dynamic, per-channel, uint8 weights": {"per_channel": True, "weight_type": "QUInt8"},
    "dynamic, per-channel, reduce_range, feed-forward only": {
        "per_channel": True, "reduce_range": True, "exclude": "attention"},
    "dynamic, per-channel, reduce_range, first and last layer float": {
        "per_channel": True, "reduce_range": True, "exclude": "ends"},
    "static QDQ, MinMax, weights only (no activation types)": {"static": "weights"},
    "static QDQ, MinMax, activations too (shapes inferred)": {"static": "activations"},
}  # fmt: skip
"""What `--quantized` measures: keyword arguments of quantize_dynamic, or a static recipe
calibrated on CALIBRATION chunks that are neither in the agreement index nor queries."""
CALIBRATION = 200


def recipe_file(home: Path, kind: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in kind.removeprefix(RECIPE))
    return home / "recipes" / f"{slug}.onnx"


def excluded(model_file: Path, which: str) -> list[str]:
    """Names of the nodes a recipe leaves in float: attention (Q/K/V and its output
    projection) or all of the first and the last layer."""
    import onnx  # noqa: PLC0415

    names = [node.name for node in onnx.load(str(model_file)).graph.node]
    if which == "attention":
        return [n for n in names if n.startswith("Attention_") or "attention/output" in n]
    last = max(int(n.split("_")[1]) for n in names if n.startswith("Attention_"))
    return [
        n for n in names
        if n in ("Attention_0", f"Attention_{last}") or "/layer.0/" in n or f"/layer.{last}/" in n
    ]  # fmt: skip


def build_recipes(home: Path, calibration: list[str]) -> dict[str, float]:
    """Each recipe's model file, made from the fp32 export; seconds each took."""
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415

    export, why = read_export(
        export_dir(DEFAULT_MODEL_ID, "fp32", home / "embedders"), bundled_model_path()
    )
    if export is None:
        raise SystemExit(f"no fp32 export: {why}")
    work = home / "recipes"
    work.mkdir(parents=True, exist_ok=True)
    fused = work / "fp32.onnx"
    fused.write_bytes(export.model)
    tokenizer = Tokenizer.from_file(str(export.tokenizer_file))
    tokenizer.enable_truncation(max_length=export.info.max_tokens)

    class Chunks(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.left = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            text = next(self.left, None)
            if text is None:
                return None
            ids = np.array([tokenizer.encode(text).ids])
            return {"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.zeros_like(ids)}  # fmt: skip

    seconds = {}
    for name, recipe in RECIPES.items():
        kind = RECIPE + name
        log(f"quantizing: {name}")
        began = time.perf_counter()
        out = recipe_file(home, kind)
        # The fused ops' outputs have no inferred type; they are float.
        extra: dict[str, object] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        if "static" in recipe:
            source = fused
            if recipe["static"] == "activations":
                source = work / "shaped.onnx"
                quant_pre_process(str(fused), str(source), skip_optimization=True)
            quantize_static(
                str(source), str(out), Chunks(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=["MatMul", "Attention"], extra_options=extra,
            )  # fmt: skip
        else:
            quantize_dynamic(
                str(fused), str(out),
                weight_type=getattr(QuantType, str(recipe.get("weight_type", "QInt8"))),
                per_channel=bool(recipe["per_channel"]),
                reduce_range=bool(recipe.get("reduce_range", False)),
                nodes_to_exclude=excluded(fused, str(recipe["exclude"]))
                if "exclude" in recipe else None,
                extra_options=extra,
            )  # fmt: skip
        seconds[kind] = time.perf_counter() - began
    return seconds


def quantized_table(
    rates: dict[str, float], agree: dict[str, dict[str, float]], kinds: tuple[str, ...]
) -> str:
    base = rates["sentence-transformers"]
    rows = [
        "| variant | ingest chunks/s | × today | × onnx-fp32 | cosine min / mean "
        "| recall@10 own / mixed |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for kind in kinds:
        a = agree[kind]
        rows.append(
            f"| {kind}{' (today)' if kind == 'sentence-transformers' else ''} "
            f"| {rates[kind]:.1f} | {rates[kind] / base:.2f}× "
            f"| {rates[kind] / rates['onnx-fp32']:.2f}× "
            f"| {a['cos_min']:.4f} / {a['cos_mean']:.4f} "
            f"| {a['recall_own']:.3f} / {a['recall_mixed']:.3f} |"
        )
    return "\n".join(rows)


# --- report ---------------------------------------------------------------------------


def table(
    builds: dict[str, float],
    starts: dict[str, tuple[float, bool]],
    rates: dict[str, float],
    agree: dict[str, dict[str, float]],
    peaks: dict[str, tuple[float, float, bool]],
    sizes: tuple[int, int],
) -> str:
    base = rates["sentence-transformers"]
    rows = [
        "| embedder | start (process → first vector) | torch imported | ingest chunks/s "
        "| × today | cosine min / p1 / mean | recall@10 own / mixed | export build |",
        "| --- | ---: | --- | ---: | ---: | --- | --- | ---: |",
    ]
    for kind in CANDIDATES:
        start, torch = starts[kind]
        a = agree[kind]
        build = builds.get(kind.removeprefix("onnx-"))
        rows.append(
            f"| {kind}{' (today)' if kind == 'sentence-transformers' else ''} "
            f"| {start:.2f} s | {'yes' if torch else 'no'} | {rates[kind]:.1f} "
            f"| {rates[kind] / base:.2f}× "
            f"| {a['cos_min']:.4f} / {a['cos_p1']:.4f} / {a['cos_mean']:.4f} "
            f"| {a['recall_own']:.3f} / {a['recall_mixed']:.3f} "
            f"| {'—' if build is None else f'{build:.0f} s'} |"
        )
    before, now = peaks["before"], peaks["now"]
    ingest_n, index_n = sizes
    return "\n".join([
        *rows,
        "",
        f"Ingest: {ingest_n} chunks of ≥ 700 characters; agreement: {index_n} chunks and "
        f"{len(QUERIES)} queries.",
        "",
        "| memory-on `offline-agent run` (scripted model, 2 steps) | peak RSS | wall time "
        "| torch loaded |",
        "| --- | ---: | ---: | --- |",
        *(
            f"| {label} | {mb:.0f} MB | {wall:.1f} s | {'yes' if torch else 'no'} |"
            for label, (mb, wall, torch) in (("before (sentence-transformers)", before),
                                             ("now (onnx-fp32)", now))
        ),
    ])  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-chunks", type=int, default=160)
    parser.add_argument("--index-chunks", type=int, default=500)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument(
        "--before", default=None, help="git revision of 'before' (default: merge-base with main)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--quantized", action="store_true", help="measure the quantization recipes instead"
    )
    args = parser.parse_args()
    before = args.before or subprocess.run(
        ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True,
        check=True).stdout.strip()  # fmt: skip
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    docs = stdlib_docs()
    chunks = [c for _, text in docs for c in chunk_text(text)]
    full = spread([c for c in chunks if len(c) >= 700], args.ingest_chunks)
    index = spread(chunks, args.index_chunks)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        folder = tmp / "docs"
        folder.mkdir()
        for i, chunk in enumerate(full):
            (folder / f"{i:04d}.txt").write_text(chunk)
        if args.quantized:
            quantized(args, home, folder, tmp, (chunks, full, index), started, load_at_start)
            return
        builds = build_exports(home)
        starts = start_times(home, 3)
        rates = ingest_rates(home, folder, args.tries)
        agree = agreement(home, tmp, index)
        peaks = peak_memory(home, tmp, before)
    versions = machine(f"torch {version('torch')}", f"onnxruntime {version('onnxruntime')}")
    block = (
        f"Measured {time.strftime('%Y-%m-%d')} with `scripts/bench_embedder.py` on {versions}; "
        f"load average {load_at_start[0]:.1f} at the start (other jobs shared the cores). "
        f"Run time {(time.perf_counter() - started) / 60:.1f} min.\n\n"
        + table(builds, starts, rates, agree, peaks, (len(full), len(index)))
    )
    print(block)
    if not args.no_write:
        write_doc_block(DOC, "embedders", block, "Long-term memory", "Embedders side by side")
        log(f"wrote {DOC}")


def quantized(
    args: argparse.Namespace,
    home: Path,
    folder: Path,
    tmp: Path,
    corpus: tuple[list[str], list[str], list[str]],
    started: float,
    load_at_start: tuple[float, float, float],
) -> None:
    """The --quantized run: each recipe against sentence-transformers and onnx-fp32."""
    chunks, full, index = corpus
    held_out = set(index) | set(QUERIES)
    calibration = spread([c for c in chunks if c not in held_out], CALIBRATION)
    build_exports(home)
    build_recipes(home, calibration)
    kinds = ("sentence-transformers", "onnx-fp32", *(RECIPE + name for name in RECIPES))
    rates = ingest_rates(home, folder, args.tries, kinds)
    agree = agreement(home, tmp, index, kinds)
    versions = machine(f"torch {version('torch')}", f"onnxruntime {version('onnxruntime')}")
    block = (
        f"Measured {time.strftime('%Y-%m-%d')} with `scripts/bench_embedder.py --quantized` on "
        f"{versions}; load average {load_at_start[0]:.1f} at the start. Run time "
        f"{(time.perf_counter() - started) / 60:.1f} min. Ingest: {len(full)} chunks of ≥ 700 "
        f"characters, best of {args.tries}; agreement: {len(index)} chunks and {len(QUERIES)} "
        f"queries; static recipes calibrated on {len(calibration)} other chunks.\n\n"
        + quantized_table(rates, agree, kinds)
    )
    print(block)
    if not args.no_write:
        write_doc_block(DOC, "quantized", block, "Long-term memory", "Quantized variants")
        log(f"wrote {DOC}")


if __name__ == "__main__":
    main()
