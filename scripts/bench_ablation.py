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
import json
from dataclasses import fields
from pathlib import Path

from benchlib import write_doc_block

from offline_agent.bench.runner import Attempt, read_results, read_settings
from offline_agent.bench.scoreboard import score
from offline_agent.replay import recorded_steps
from offline_agent.state import Rules

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
READS = ("read_file", "list_files", "execute_python_file")


def failure_modes(folder: Path, attempts: list[Attempt]) -> tuple[int, int, int, int]:
    """From the attempts' run records: commands run, commands that failed, attempts that
    finished at their first step, and reads repeated with the same arguments."""
    commands = failed = finished_first = rereads = 0
    for attempt in attempts:
        steps = recorded_steps(folder / "runs" / attempt.run_id)
        seen: set[str] = set()
        for number, step in enumerate(steps):
            if step["reply"] is None:
                continue
            call = step["reply"]["command"]
            commands += 1
            finished_first += number == 0 and call["name"] == "finish"
            failed += bool(step["result"]) and not step["result"]["ok"]
            key = json.dumps(call, sort_keys=True)
            rereads += call["name"] in READS and key in seen
            seen.add(key)
    return commands, failed, finished_first, rereads


def _changed(rules: dict[str, object] | None, settings: dict[str, object]) -> str:
    """The rules of a row, as their changes from the defaults (or from `--rule none`)."""
    none = Rules.none()
    if rules is None:
        changed = "?"
    elif Rules.from_json(rules) == none:
        changed = "all off (`--rule none`)"
    elif len(Rules.from_json(rules).changed()) > len(Rules.parse(["none"]).changed()) // 2:
        # Closer to `--rule none` than to the defaults: say what is on.
        on = Rules.from_json(rules)
        items = [f"`{f.name}={getattr(on, f.name)}`" for f in fields(Rules)
                 if getattr(on, f.name) != getattr(none, f.name)]  # fmt: skip
        changed = "`none` + " + ", ".join(items)
    else:
        changed = ", ".join(f"`{c}`" for c in Rules.from_json(rules).changed())
    samples = settings.get("samples", 1)
    if isinstance(samples, int) and samples > 1:
        changed = ", ".join(filter(None, [changed, f"`--samples {samples}`"]))
    return changed or "defaults"


def row(
    label: str, folder: Path, only: set[str], repeat: int | None = None, modes: bool = False
) -> list[list[str]]:
    """The table's rows for one results folder: one per model in it."""
    attempts = [
        a
        for a in read_results(folder)
        if (not only or a.challenge in only) and (repeat is None or a.repeat == repeat)
    ]
    settings = read_settings(folder)["settings"]
    own = settings.get("model_rules", {})  # a model's rules of its own, from the registry
    cells = []
    for s in score(attempts):
        steps = sum(a.steps for a in attempts if a.model == s.model)
        wall = sum(a.wall_seconds for a in attempts if a.model == s.model)
        endings = ", ".join(f"{k} {v}" for k, v in s.endings.items())
        cells.append([
            label, s.model, _changed(own.get(s.model, settings.get("rules")), settings),
            f"{s.rate:.0%} ({s.passed}/{s.attempts})", f"{s.ci[0]:.0%}–{s.ci[1]:.0%}",
            f"{s.steps:.1f}", f"{s.wall_mean:.1f}", f"{wall / steps:.2f}" if steps else "–",
            f"{s.valid_share:.0%}", str(s.destroyed), endings,
        ])  # fmt: skip
        if modes:
            commands, failed, first, rereads = failure_modes(
                folder, [a for a in attempts if a.model == s.model]
            )
            cells[-1] += [f"{failed}/{commands}", str(first), str(rereads)]
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RESULTS_DIR")
    parser.add_argument("--only", nargs="*", default=[], help="challenge names to keep")
    parser.add_argument("--repeat", type=int, help="keep only this repeat (seed) of each folder")
    parser.add_argument(
        "--modes",
        action="store_true",
        help="add failure modes from the run records: failed commands, finish at step 1, "
        "repeated reads",
    )
    parser.add_argument("--write", metavar="MARKER", help="update docs/benchmarks.md there")
    args = parser.parse_args()
    header = ["configuration", "model", "changed from the defaults", "success",
              "95% interval", "steps", "s/attempt", "s/step", "valid replies",
              "destroyed an input", "how runs ended"]  # fmt: skip
    pairs = [item.split("=", 1) for item in args.runs]
    rows = [  # a folder of several models gives a row for each
        cells
        for label, folder in pairs
        for cells in row(label, Path(folder), set(args.only), args.repeat, args.modes)
    ]
    if args.modes:
        header += ["commands that failed", "finished at step 1", "repeated reads"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_doc_block(DOC, args.write, table, "Benchmarks", "The step rules")


if __name__ == "__main__":
    main()
