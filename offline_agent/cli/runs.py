"""`offline-agent runs`: what happened in a run, whether its record is intact, replaying it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from offline_agent.cli.common import AT_LEAST_ONE, sandbox_option
from offline_agent.cli.console import ConsoleEvents, ask_user
from offline_agent.cli.run import drive
from offline_agent.errors import ReplayDivergedError, StorageError
from offline_agent.home import home_dir
from offline_agent.replay import recorded_steps, replay
from offline_agent.runs import ORIGINALS, TEMP_FILE, RunMeta, read_entries, verify
from offline_agent.session import Run
from offline_agent.tools import builtin_tools
from offline_agent.workspace import Workspace

runs_dir_option = click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Default: ~/.offline-agent/runs",
)


def _runs_dir(runs_dir: Path | None) -> Path:
    return runs_dir or home_dir() / "runs"


def _folder(run: str, runs_dir: Path | None) -> Path:
    """A run given by id (a folder in the runs dir) or by path."""
    for candidate in (Path(run), _runs_dir(runs_dir) / run):
        if (candidate / "run.json").is_file():
            return candidate
    raise StorageError(f"no run {run!r} in {_runs_dir(runs_dir)}")


def _ending(folder: Path) -> str:
    entries = read_entries(folder)
    if entries and entries[-1].get("type") == "end":
        return str(entries[-1]["result"]["status"])
    return "unfinished"


@click.group()
def runs() -> None:
    """List, show, verify, replay and resume recorded runs."""


@runs.command("list")
@runs_dir_option
def list_runs(runs_dir: Path | None) -> None:
    """One line per run: id, how it ended, steps, first goal."""
    folders = sorted(p for p in _runs_dir(runs_dir).glob("*") if (p / "run.json").is_file())
    if not folders:
        click.echo("No runs yet.")
    for folder in folders:
        goals = RunMeta.load(folder).goals or [""]
        steps = len(recorded_steps(folder))
        click.echo(f"{folder.name}  {_ending(folder):<16} {steps:>3} steps  {goals[0][:60]}")


@runs.command()
@click.argument("run")
@runs_dir_option
def show(run: str, runs_dir: Path | None) -> None:
    """What happened in RUN, step by step."""
    folder = _folder(run, runs_dir)
    meta = RunMeta.load(folder)
    click.echo(f"{folder.name}: model {meta.model}, workspace {meta.workspace}")
    for step in recorded_steps(folder):
        reply = step["reply"]
        command = (
            f"{reply['command']['name']} {json.dumps(reply['command']['args'])}" if reply else "-"
        )
        click.echo(f"{step['index']:>3} {step['status']:<12} {command[:100]}")
        if step.get("left_out"):  # records made before the step rules have none
            reasons = "; ".join(f"{name} ({why})" for name, why in step["left_out"].items())
            click.echo(f"      left out: {reasons[:300]}")
        if step["error"]:
            click.echo(f"      error: {step['error'][:200]}")
        if step["result"]:
            click.echo(f"      result: {step['result']['output'][:200]!r}")
    click.echo(f"ended: {_ending(folder)}")
    originals = folder / ORIGINALS
    if kept := sorted(p.relative_to(originals).as_posix() for p in originals.rglob("*")
                      if p.is_file() and not TEMP_FILE.match(p.name)):  # fmt: skip
        click.echo(f"first versions of the files it changed, kept in {originals}: "
                   + ", ".join(kept))  # fmt: skip


@runs.command("verify")
@click.argument("run")
@runs_dir_option
def verify_run(run: str, runs_dir: Path | None) -> None:
    """Check that RUN's run.json and record were not edited, and no line dropped or reordered.

    The chain has no key: it finds damage, and edits by someone who did not recompute it.
    """
    checked = verify(_folder(run, runs_dir))
    said = [f"intact: {checked.lines} lines, hash chain unbroken"]
    said += [", from run.json"] if checked.covers_meta else []
    said += [", none missing at the end"] if checked.has_head else []
    said += [] if checked.ended else ["; the run has not ended (runs resume continues it)"]
    click.echo("".join(said))
    if not checked.covers_meta or not checked.has_head:
        click.echo("recorded by an older version: run.json and a dropped last line are not "
                   "covered by the chain")  # fmt: skip


@runs.command("replay")
@click.argument("run")
@click.option(
    "--workspace",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to replay (default: a new temporary folder).",
)
@runs_dir_option
@sandbox_option
def replay_run(run: str, workspace: Path | None, runs_dir: Path | None, sandbox: str) -> None:
    """Re-run RUN's commands without the model and compare each result with the record."""
    folder = _folder(run, runs_dir)
    root = workspace or Path(tempfile.mkdtemp(prefix="offline-agent-replay-"))
    if workspace is not None and workspace.exists() and any(workspace.iterdir()):
        raise StorageError(f"{workspace} is not empty; replay needs a fresh workspace")
    report = replay(folder, Workspace.create(root), builtin_tools(), sandbox=sandbox == "on")
    for index, name in report.skipped:
        click.echo(
            f"step {index}: {name} not replayed (an MCP server's, your own, or a command that "
            "depends on state outside the workspace)"
        )
    if report.divergence is not None:
        d = report.divergence
        raise ReplayDivergedError(
            f"step {d.step} ({d.command}) diverged: recorded {d.recorded[:120]!r}, "
            f"replayed {d.replayed[:120]!r}"
        )
    click.echo(f"replayed {report.replayed} commands in {root}: every result matches the record")


@runs.command()
@click.argument("run")
@click.option("--max-steps", type=AT_LEAST_ONE, default=None, help="Raise the run's step limit.")
@runs_dir_option
def resume(run: str, max_steps: int | None, runs_dir: Path | None) -> None:
    """Continue RUN after a crash, a kill or Ctrl-C, with its settings, history and memory."""
    folder = _folder(run, runs_dir)
    meta = RunMeta.load(folder)
    # What the record makes this process load or start: say it before it happens.
    settings = meta.settings
    asked = []
    if settings.get("tools"):
        asked.append(f"commands from {', '.join(settings['tools'])}")
    if settings.get("mcp"):
        asked.append(f"MCP servers {', '.join(settings['mcp'])} (they act outside the "
                     "workspace and the sandbox)")  # fmt: skip
    if settings.get("sandbox") is False:
        asked.append("programs outside the sandbox (--sandbox off)")
    if asked:
        click.secho(f"This run's record asks for: {'; '.join(asked)}", fg="yellow", err=True)
    events = ConsoleEvents(meta.name)
    resumed = Run.resume(folder, events, ask_user, max_steps)
    click.echo(f"Resuming {folder.name} after {resumed.restored} recorded steps.")
    drive(resumed, events, interactive=resumed.agent.approve is not None)
