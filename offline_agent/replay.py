"""Re-running a recorded run's commands without the model, to check the record tells the truth.

`replay` re-applies every executed command of a run, in order, to a fresh workspace and
compares each result with the recorded one; the first difference is reported. Commands whose
results depend on state outside the workspace (memory, sub-agents, MCP servers, the user's
own commands) are skipped and listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_agent.records import CommandCall
from offline_agent.runs import RunMeta, read_entries
from offline_agent.sandbox import Sandbox
from offline_agent.tools import ToolContext, ToolRegistry
from offline_agent.tools.base import execute_command
from offline_agent.workspace import Workspace

NOT_REPLAYABLE = frozenset(
    {"memory_add", "memory_search", "start_agent", "message_agent", "list_agents", "delete_agent"}
)
WORKSPACE_MARK = "<workspace>"


@dataclass
class Divergence:
    """The first step whose replayed result differs from the record."""

    step: int
    command: str
    recorded: str
    replayed: str


@dataclass
class ReplayReport:
    """What a replay did."""

    replayed: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    divergence: Divergence | None = None


def recorded_steps(folder: Path) -> list[dict[str, Any]]:
    """The step entries of a run record, in order."""
    return [entry["step"] for entry in read_entries(folder) if entry.get("type") == "step"]


def _normalised(text: str, *roots: str) -> str:
    for root in roots:
        if root:
            text = text.replace(root, WORKSPACE_MARK)
    return text


def replay(
    folder: Path, workspace: Workspace, tools: ToolRegistry, *, sandbox: bool = True
) -> ReplayReport:
    """Re-apply the recorded commands of the run in `folder` to `workspace`; recorded code
    runs in the sandbox unless `sandbox` is False (the caller's choice, never the record's:
    a record is data, and whoever edits it must not be able to switch the sandbox off)."""
    meta = RunMeta.load(folder)
    original_root = str(meta.workspace) if meta.workspace else ""
    ctx = ToolContext(workspace=workspace, sandbox=Sandbox.default() if sandbox else None)
    report = ReplayReport()
    for step in recorded_steps(folder):
        if step["status"] != "ok" or step["reply"] is None or step["result"] is None:
            continue  # nothing ran: an invalid reply, human feedback, or finish
        call = CommandCall(**step["reply"]["command"])
        if call.name in NOT_REPLAYABLE or call.name not in tools:
            report.skipped.append((step["index"], call.name))
            continue
        got = execute_command(tools, ctx, call).output
        recorded = step["result"]["output"]
        report.replayed += 1
        roots = (original_root, str(workspace.root))
        if _normalised(got, *roots) != _normalised(recorded, *roots):
            report.divergence = Divergence(step["index"], call.name, recorded, got)
            break
    return report
