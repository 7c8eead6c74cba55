"""Resume after SIGKILL: a real agent process is killed at several points and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent.cli import cli
from offline_agent.replay import recorded_steps
from offline_agent.runs import read_entries, verify
from tests.conftest import COMPACT_FINISH, FINISH, compact, reply, script, with_default_ctrl_c

SLOW = "import time; time.sleep(1.0); open({name!r}, 'w').write('done')"
REPLIES = [
    reply("write_file", filename="a.txt", text="first"),
    reply("execute_python_code", code=SLOW.format(name="b.txt")),
    reply("execute_python_code", code=SLOW.format(name="c.txt")),
    reply("append_file", filename="a.txt", text=" second"),
    FINISH,
]


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "offline_agent", *args]


def start_run(tmp_path: Path) -> subprocess.Popen[bytes]:
    script = tmp_path / "replies.jsonl"
    script.write_text("\n".join(json.dumps(r) for r in REPLIES))
    return subprocess.Popen(
        with_default_ctrl_c(agent_command(
            "run", "--goal", "g", "--model", f"scripted:{script}", "--continuous", "--no-memory",
            "--rule", "none",
            "--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "runs"),
        )),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


def step_lines(tmp_path: Path) -> int:
    runs = list((tmp_path / "runs").glob("*/steps.jsonl"))
    return len(runs[0].read_text().splitlines()) if runs else 0


@pytest.mark.slow
@pytest.mark.parametrize(("after_lines", "delay"), [(0, 0.0), (1, 0.4), (2, 0.6), (3, 0.05)])
def test_kill_then_resume_completes_with_nothing_lost(
    tmp_path: Path, after_lines: int, delay: float
) -> None:
    proc = start_run(tmp_path)
    wait_for(lambda: list((tmp_path / "runs").glob("*/run.json")) and step_lines(tmp_path)
             >= after_lines)  # fmt: skip
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = (tmp_path / "runs").iterdir()
    before = recorded_steps(run)
    assert len(before) <= after_lines + 1
    done = subprocess.run(
        agent_command("runs", "resume", run.name, "--runs-dir", str(tmp_path / "runs")),
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert verify(run).lines == len(read_entries(run))
    steps = recorded_steps(run)
    assert steps[: len(before)] == before  # nothing recorded before the kill was lost
    assert [s["reply"]["command"]["name"] for s in steps if s["reply"]][-1] == "finish"
    assert read_entries(run)[-1]["result"]["status"] == "finished"
    # Each command ran exactly once, or, if the kill came while it ran, is recorded as
    # interrupted (not run again) and the model was told to check its effect.
    ws = tmp_path / "ws"
    for step in steps:
        if step["status"] == "interrupted":
            # The request that chose the command is kept, as in a run never interrupted.
            request, _, told = step["history"]
            assert request["role"] == "user" and "Which command" in request["content"]
            assert "may or may not have taken effect" in told["content"]
    by_code = {s["reply"]["command"]["args"].get("code"): s for s in steps}
    for name in ("b.txt", "c.txt"):
        # Only commands that ran to the end are checked: the kill may come after a command
        # wrote its file but before its step was recorded.
        step = by_code[SLOW.format(name=name)]
        if step["status"] == "ok":
            assert (ws / name).read_text() == "done", step
    by_name = {s["reply"]["command"]["name"]: s["status"] for s in steps}
    firsts = ["first"] if by_name["write_file"] == "ok" else ["first", ""]
    seconds = [" second"] if by_name["append_file"] == "ok" else [" second", ""]
    assert (ws / "a.txt").read_text() in {a + b for a in firsts for b in seconds}


def test_a_finished_run_is_not_resumed(tmp_path: Path) -> None:
    proc = start_run(tmp_path)
    proc.wait(timeout=60)
    (run,) = (tmp_path / "runs").iterdir()
    done = subprocess.run(
        agent_command("runs", "resume", run.name, "--runs-dir", str(tmp_path / "runs")),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == f"Error: run {run.name} already finished; nothing to resume"


def test_ctrl_c_in_continuous_mode_stops_cleanly(tmp_path: Path) -> None:
    proc = start_run(tmp_path)
    wait_for(lambda: step_lines(tmp_path) >= 3)  # step 1 done, step 2's command running
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 13  # stopped by the user
    (run,) = (tmp_path / "runs").iterdir()
    assert verify(run).lines == len(read_entries(run))
    entries = read_entries(run)
    assert entries[-1]["result"]["status"] == "stopped_by_user"
    assert recorded_steps(run)[-1]["status"] == "interrupted"
    time.sleep(1.5)  # the interrupted command's process group was killed, not left running
    assert not (tmp_path / "ws" / "b.txt").exists()


# Default rules and no_rereads: a reread refused by the grammar (a format error), a write
# that returns what an earlier one did (a repeat, with its note), an invalid reply between
# repeats.
STEERED = [
    compact("write_file", filename="a.txt", text="alpha"),
    compact("read_file", filename="a.txt"),
    compact("read_file", filename="a.txt"),
    compact("write_file", filename="a.txt", text="alpha"),
    "not a reply",
    compact("write_file", filename="a.txt", text="alpha"),
    compact("write_file", filename="b.txt", text="beta"),
    COMPACT_FINISH,
]


def cli_run(tmp_path: Path, name: str, *more: str) -> Path:
    """A run of STEERED through the CLI in its own folder; the run's record folder."""
    CliRunner().invoke(cli, [
        "run", "--goal", "Write alpha to a.txt", "--continuous",
        "--model", script(tmp_path / name, STEERED), "--no-memory",
        "--workspace", str(tmp_path / name / "ws"), "--runs-dir", str(tmp_path / name / "runs"),
        "--rule", "no_rereads=on", *more,
    ])  # fmt: skip
    (run,) = (tmp_path / name / "runs").iterdir()
    return run


@pytest.mark.parametrize("stop_after", [2, 3, 4, 5, 6])
def test_a_resumed_run_prompts_as_one_that_never_stopped(tmp_path: Path, stop_after: int) -> None:
    """Each request after the resume, state lines, notes and grammar included, is the one
    the same run makes in one process: the repeat guard, the invalid replies in a row and
    the rules' view of the workspace are rebuilt from the record."""
    for name in ("whole", "cut"):
        (tmp_path / name).mkdir()
    whole = cli_run(tmp_path, "whole")
    cut = cli_run(tmp_path, "cut", "--max-steps", str(stop_after))
    assert read_entries(cut)[-1]["result"]["status"] == "step_limit"
    resumed = CliRunner().invoke(cli, ["runs", "resume", str(cut), "--max-steps", "20"])
    assert resumed.exit_code == 0, resumed.output
    expected, got = recorded_steps(whole), recorded_steps(cut)
    assert [s["status"] for s in got] == [s["status"] for s in expected]
    assert "format_error" in [s["status"] for s in expected]
    assert any("returned the same before" in m["content"] for s in expected for m in s["messages"])
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["messages"] == theirs["messages"], mine["index"]
        assert mine["grammar_sha256"] == theirs["grammar_sha256"]
        assert mine["history"] == theirs["history"]
    verify(cut)
