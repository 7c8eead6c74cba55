"""Tabulate an ablation: one row per benchmark results folder (one configuration each).

    python scripts/bench_ablation.py [--only NAME ...] [--repeat R] [--write MARKER] LABEL=DIR ...

Each folder is what `offline-agent bench --out DIR` wrote for one configuration (its rules
are in its bench.json). A row gives success with its 95% Wilson interval, steps, seconds per
attempt and per step, the share of valid replies, attempts that destroyed an input, and how
runs ended. `--only` restricts every folder to the named challenges, so that a row measured
on a subset compares with full runs cut to the same subset; `--repeat R` keeps repeat R
alone (seed R), so that a 3-repeat run compares with 1-repeat rows on the same seed.
`--write MARKER` puts the table between the `MARKER` markers of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchlib import write_doc_block

from offline_agent.bench.runner import read_results, read_settings
from offline_agent.bench.scoreboard import score
from offline_agent.state import Rules

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def row(label: str, folder: Path, only: set[str], repeat: int | None = None) -> list[str]:
    """One table row for one results folder."""
    attempts = [
        a
        for a in read_results(folder)
        if (not only or a.challenge in only) and (repeat is None or a.repeat == repeat)
    ]
    rules = read_settings(folder)["settings"].get("rules")
    if rules is None:
        changed = "?"
    elif Rules.from_json(rules) == Rules.none():
        changed = "all off (`--rule none`)"
    else:
        changed = ", ".join(f"`{c}`" for c in Rules.from_json(rules).changed())
    cells = []
    for s in score(attempts):
        steps = sum(a.steps for a in attempts if a.model == s.model)
        wall = sum(a.wall_seconds for a in attempts if a.model == s.model)
        endings = ", ".join(f"{k} {v}" for k, v in s.endings.items())
        cells.append([
            label, s.model, changed or "defaults",
            f"{s.rate:.0%} ({s.passed}/{s.attempts})", f"{s.ci[0]:.0%}–{s.ci[1]:.0%}",
            f"{s.steps:.1f}", f"{s.wall_mean:.1f}", f"{wall / steps:.2f}" if steps else "–",
            f"{s.valid_share:.0%}", str(s.destroyed), endings,
        ])  # fmt: skip
    return cells[0] if len(cells) == 1 else [label, "several models", "", "", "", "", "", "",
                                              "", "", ""]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RESULTS_DIR")
    parser.add_argument("--only", nargs="*", default=[], help="challenge names to keep")
    parser.add_argument("--repeat", type=int, help="keep only this repeat (seed) of each folder")
    parser.add_argument("--write", metavar="MARKER", help="update docs/benchmarks.md there")
    args = parser.parse_args()
    header = ["configuration", "model", "rules changed from the defaults", "success",
              "95% interval", "steps", "s/attempt", "s/step", "valid replies",
              "destroyed an input", "how runs ended"]  # fmt: skip
    pairs = [item.split("=", 1) for item in args.runs]
    rows = [row(label, Path(folder), set(args.only), args.repeat) for label, folder in pairs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_doc_block(DOC, args.write, table, "Benchmarks", "The step rules")


if __name__ == "__main__":
    main()
