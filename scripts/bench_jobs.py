"""Attempts per minute of `bench --jobs N`, for N = 1, 2, 4, and of `--ray local`, in one run.

    .venv/bin/python scripts/bench_jobs.py [--base-url URL --model NAME] [--challenges K] [--write]

With the scripted model (what the runner itself costs: workspaces, records, judging, the
sandbox) and, given `--base-url`, against a server (e.g. `offline-agent serve`), on the
first K challenges of the built-in suite with one repeat. Each configuration runs into a
fresh results folder; the results of every one must be the same for the scripted model,
which the script checks. The Ray column includes starting and stopping the local Ray
instance (as a `bench --ray local` invocation does). `--write` puts the table in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_doc_block

from offline_agent.bench.challenge import load_suite
from offline_agent.bench.cluster import RayRunner
from offline_agent.bench.parallel import ParallelRunner
from offline_agent.bench.runner import BenchSettings, Runner, read_results
from offline_agent.state import Rules

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
JOBS = (1, 2, 4, "ray")


def rate(settings: BenchSettings, k: int, jobs: int | str, folder: Path) -> tuple[float, list[str]]:
    """Attempts per minute with `jobs` ("ray": Ray tasks), and each attempt's outcome."""
    challenges = load_suite("builtin")[:k]
    start = time.perf_counter()
    runner = Runner(settings, challenges, folder)
    if jobs == "ray":
        runner = RayRunner(settings, challenges, folder, address="local")
    elif isinstance(jobs, int) and jobs > 1:
        runner = ParallelRunner(settings, challenges, folder, jobs=jobs)
    runner.run()
    minutes = (time.perf_counter() - start) / 60
    attempts = read_results(folder)
    outcomes = sorted(f"{a.challenge}:{a.passed}:{a.steps}:{a.status}" for a in attempts)
    return len(attempts) / minutes, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url")
    parser.add_argument("--model", default="smollm2-135m", help="the server's model")
    parser.add_argument("--challenges", type=int, default=12)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = ["| model | --jobs 1 | --jobs 2 | --jobs 4 | --ray local |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "replies.json"
        replies = [{"thoughts": {"text": "t", "reasoning": "r", "plan": "p", "criticism": "c"},
                    "command": {"name": name, "args": args_}}
                   for name, args_ in [("write_file", {"filename": "out.txt", "text": "x"}),
                                       ("finish", {"reason": "done"})]]  # fmt: skip
        script.write_text(json.dumps(replies))
        configs = [("scripted (the runner's own cost)",
                    BenchSettings("builtin", (f"scripted:{script}",), repeats=1,
                                  rules=Rules.none()))]  # fmt: skip
        if args.base_url:
            configs.append((f"{args.model} behind {args.base_url}",
                            BenchSettings("builtin", (args.model,), repeats=1,
                                          base_url=args.base_url)))  # fmt: skip
        for label, settings in configs:
            cells, first = [], None
            for jobs in JOBS:
                per_minute, outcomes = rate(settings, args.challenges, jobs,
                                            Path(tmp) / f"{len(rows)}-{jobs}")  # fmt: skip
                if label.startswith("scripted"):
                    first = first or outcomes
                    if outcomes != first:
                        sys.exit(f"{jobs} changed the results of the scripted model")
                cells.append(f"{per_minute:.1f}")
                print(f"{label}: {jobs}: {per_minute:.1f} attempts/min", flush=True)
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join([*rows, "",
                       f"Attempts per minute, the first {args.challenges} built-in challenges, one "
                       f"repeat. Machine: {machine()}."])  # fmt: skip
    print(table)
    if args.write:
        write_doc_block(DOC, "bench-jobs", table, "Benchmarks", "Attempts at once")


if __name__ == "__main__":
    main()
