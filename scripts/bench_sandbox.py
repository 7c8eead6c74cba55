"""What the sandbox adds to a code command: wall time from start to exit, on and off.

    .venv/bin/python scripts/bench_sandbox.py [--repeats 40] [--write]

Each round runs the same programs once with the sandbox and once without, alternating which
goes first, through `sandbox.run_python` (what `execute_python_code` calls): an empty
program, and one that imports json and writes a file in the workspace. Reports the median
and 90th percentile of each, and the added median. `--write` puts the table in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_doc_block

from offline_agent.sandbox import Sandbox, protections, run_python

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
PROGRAMS = {
    "empty program (`pass`)": "pass",
    "import json, write a file": "import json\nopen('out.json', 'w').write(json.dumps([1, 2]))",
}


def once(code: str, folder: Path, sandbox: Sandbox | None) -> float:
    """Seconds from start to exit of one run of `code`."""
    start = time.perf_counter()
    result = run_python(["-c", code], cwd=folder, timeout=30, output_limit=1000, sandbox=sandbox)
    elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        sys.exit(f"the program failed: {result.output.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--write", action="store_true", help="update docs/performance.md")
    args = parser.parse_args()
    box = Sandbox.default()
    held = protections()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, code in PROGRAMS.items():
            times: dict[str, list[float]] = {"off": [], "on": []}
            once(code, folder, box)  # warm the page cache
            for i in range(args.repeats):
                order = ("on", "off") if i % 2 else ("off", "on")
                for mode in order:
                    times[mode].append(once(code, folder, box if mode == "on" else None))
            med = {m: statistics.median(t) * 1000 for m, t in times.items()}
            p90 = {m: statistics.quantiles(t, n=10)[-1] * 1000 for m, t in times.items()}
            rows.append(f"| {label} | {med['off']:.1f} | {p90['off']:.1f} | {med['on']:.1f} | "
                        f"{p90['on']:.1f} | {med['on'] - med['off']:+.1f} |")  # fmt: skip
    table = "\n".join([
        "| program | off: median ms | off: p90 ms | on: median ms | on: p90 ms | added (median) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"{args.repeats} runs of each, alternating. Sandbox: {'; '.join(held)}. "
        f"Machine: {machine()}.",
    ])  # fmt: skip
    print(table)
    if args.write:
        write_doc_block(DOC, "sandbox-cost", table, "Performance", "The sandbox's cost")


if __name__ == "__main__":
    main()
