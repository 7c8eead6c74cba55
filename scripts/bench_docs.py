"""Put a benchmark's scoreboard and charts into docs/benchmarks.md.

    .venv/bin/offline-agent bench --suite builtin --model smollm2-135m --model gemma3-270m \
        --repeats 3 --out results/
    .venv/bin/python scripts/bench_docs.py results/

The report is rebuilt from the saved results (as `offline-agent bench report` does), the
chart images are copied to docs/benchmarks/, and the scoreboard replaces the marked block
of docs/benchmarks.md; the rest of the document is kept.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from benchlib import write_doc_block

from offline_agent.bench.report import markdown, write_report
from offline_agent.bench.runner import read_results, read_settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
IMAGES = DOC.parent / "benchmarks"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: bench_docs.py RESULTS_FOLDER")
    out = Path(sys.argv[1])
    report = write_report(out)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for chart in report.charts:
        shutil.copyfile(chart, IMAGES / chart.name)
    meta = read_settings(out)
    command = meta.get("command") or "offline-agent bench"
    block = f"Produced by `{command}`.\n\n" + markdown(meta, read_results(out), IMAGES.name)
    block = block.replace("### ", "#### ")
    write_doc_block(
        DOC, "scoreboard", block.rstrip(), "Benchmarks", "The built-in suite: scoreboard"
    )
    print(f"wrote {DOC} and {len(report.charts)} charts in {IMAGES}")


if __name__ == "__main__":
    main()
