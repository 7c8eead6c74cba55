"""What the benchmark scripts share: progress lines, the machine, results written into docs/."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from offline_agent.bench.runner import describe_machine


def log(message: str) -> None:
    """A progress line on stderr, at once."""
    print(message, file=sys.stderr, flush=True)


def machine(*versions: str) -> str:
    """CPU model, cores, load average now, and the given library versions."""
    info = describe_machine()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return ", ".join(
        [f"{info['cpu']}, {info['cores']} cores (load average {load} at the end of the run)",
         *versions, f"Python {info['python']}"]
    )  # fmt: skip


def write_doc_block(doc: Path, marker: str, block: str, title: str, heading: str) -> None:
    """Put `block` between `<!-- marker:start -->` and `<!-- marker:end -->` in `doc`.

    The rest of the document is kept; without the markers, a section `heading` is added.
    """
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# {title}\n"
    section = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        text = re.sub(f"{re.escape(start)}.*?{re.escape(end)}", lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
