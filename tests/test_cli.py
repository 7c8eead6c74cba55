"""The CLI: a scripted run end to end, and bad input as one line and its own exit code."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent import runs
from offline_agent.cli import cli
from offline_agent.runs import read_entries, verify
from tests.conftest import FINISH, reply


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def script(tmp_path: Path, replies: list[object]) -> str:
    path = tmp_path / "replies.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in replies))
    return f"scripted:{path}"


def invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_scripted_run_writes_the_file_and_a_verifiable_record(tmp_path: Path, home: Path) -> None:
    model = script(
        tmp_path, [reply("write_file", filename="output.txt", text="Washington"), FINISH]
    )
    code, out, _ = invoke(
        "run",
        "--goal",
        "Write Washington",
        "--model",
        model,
        "--workspace",
        str(tmp_path / "ws"),
        "--continuous",
        "--no-memory",
        "--rule",
        "none",
    )
    assert code == 0, out
    assert (tmp_path / "ws" / "output.txt").read_text() == "Washington"
    assert "NEXT ACTION: COMMAND = write_file" in out and "ended: finished after 2 steps" in out
    (run,) = (home / "runs").iterdir()
    assert verify(run) == 5  # two commands announced, two steps, the end
    assert read_entries(run)[-1]["result"]["status"] == "finished"


def test_interactive_y_then_feedback_then_n(tmp_path: Path, home: Path) -> None:
    model = script(
        tmp_path,
        [
            reply("write_file", filename="a.txt", text="1"),
            reply("write_file", filename="b.txt", text="2"),
            reply("write_file", filename="c.txt", text="3"),
        ],
    )
    code, out, err = invoke(
        "run",
        "--goal",
        "g",
        "--model",
        model,
        "--no-memory",
        "--rule",
        "none",
        "--workspace",
        str(tmp_path / "ws"),
        input="y\nnot b, please\nn\n",
    )
    assert code == 13, out + err
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["a.txt"]
    assert "stopped_by_user" in out


def test_ai_settings_file(tmp_path: Path, home: Path) -> None:
    settings = tmp_path / "ai_settings.yaml"
    settings.write_text("ai_name: Scribe\nai_role: writes\nai_goals:\n  - Write a poem\n")
    code, out, _ = invoke(
        "run",
        "--ai-settings",
        str(settings),
        "--model",
        script(tmp_path, [FINISH]),
        "--continuous",
        "--no-memory",
        "--rule",
        "none",
    )
    assert code == 0
    assert "Scribe starts" in out
    assert (home / "workspaces" / "Scribe").is_dir()


def test_ai_settings_switch_rules(tmp_path: Path, home: Path) -> None:
    settings = tmp_path / "ai_settings.yaml"
    settings.write_text(
        "ai_name: Boss\nai_role: delegates\nai_goals: [Ask a helper]\n"
        "rules: {agent_commands: on, show_state: off}\n"
    )
    replies = [reply("list_files", directory="."), FINISH]
    code, out, _ = invoke("run", "--ai-settings", str(settings), "--model",
                          script(tmp_path, replies), "--continuous", "--no-memory",
                          "--reply-format", "autogpt")  # fmt: skip
    assert code == 0, out
    (run,) = (home / "runs").iterdir()
    rules = json.loads((run / "run.json").read_text())["settings"]["rules"]
    assert rules["agent_commands"] is True and rules["show_state"] is False
    assert rules["reply_format"] == "autogpt" and rules["finish_after_success"] is True
    first = read_entries(run)[1]["step"]
    assert "Workspace files" not in first["messages"][-1]["content"]
    assert "start_agent" in first["messages"][0]["content"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "SCRIPT"], 2, "at least one goal"),
        (["--goal", "", "--model", "SCRIPT"], 2, "at least one goal"),
        (["--goal", "x" * 5000, "--model", "SCRIPT"], 2, "at most 1000"),
        (["--goal", "g", "--model", "no-such-model"], 3, "unknown model 'no-such-model'"),
        (["--goal", "g", "--model", "NOTGGUF"], 3, "not a GGUF file"),
        (["--goal", "g", "--model", "scripted:/nonexistent.json"], 2, "cannot read scripted"),
        (["--goal", "g", "--model", "SCRIPT", "--workspace", "/dev/null/ws"], 2, "workspace"),
        (["--ai-settings", "BADYAML", "--model", "SCRIPT"], 2, "not valid YAML"),
        (["--ai-settings", "NOGOALS", "--model", "SCRIPT"], 2, "lacks ai_goals"),
        (["--ai-settings", "/nonexistent.yaml", "--model", "SCRIPT"], 2, "cannot read"),
        (["--goal", "g", "--model", "SCRIPT", "--rule", "bogus=on"], 2, "unknown rule 'bogus=on'"),
        (["--goal", "g", "--model", "SCRIPT", "--rule", "show_state=maybe"], 2, "on or off"),
        (["--ai-settings", "BADRULES", "--model", "SCRIPT"], 2, "rules must be a mapping"),
    ],
)
def test_bad_input_is_one_line_and_its_own_exit_code(
    tmp_path: Path, home: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "bad.yaml").write_text("ai_name: [unclosed\n")
    (tmp_path / "nogoals.yaml").write_text("ai_name: A\nai_role: B\n")
    (tmp_path / "badrules.yaml").write_text("ai_name: A\nai_role: B\nai_goals: [g]\nrules: [x]\n")
    (tmp_path / "fake.gguf").write_bytes(b"not a model at all" * 100)
    replace = {
        "SCRIPT": script(tmp_path, [FINISH]),
        "BADYAML": str(tmp_path / "bad.yaml"),
        "NOGOALS": str(tmp_path / "nogoals.yaml"),
        "BADRULES": str(tmp_path / "badrules.yaml"),
        "NOTGGUF": str(tmp_path / "fake.gguf"),
    }
    argv = [replace.get(a, a) for a in args]
    exit_code, _, err = invoke("run", "--continuous", "--no-memory", *argv)
    assert exit_code == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_errors_print_no_traceback_from_the_real_entry_point(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "offline_agent", "run", "--goal", "g", "--model", "nope"],
        capture_output=True,
        text=True,
        check=False,
        env={"OFFLINE_AGENT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 3
    assert done.stderr.startswith("Error: unknown model 'nope'")
    assert "Traceback" not in done.stderr


def test_disk_full_while_recording_is_one_line_and_keeps_earlier_lines(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync, calls = runs.os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 3:  # run.json, then the first command and step lines succeed
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(runs.os, "fsync", fsync)
    model = script(tmp_path, [reply("write_file", filename="a.txt", text="1"),
                              reply("write_file", filename="b.txt", text="2"), FINISH])  # fmt: skip
    code, _, err = invoke("run", "--goal", "g", "--model", model, "--continuous", "--no-memory",
                          "--rule", "none", "--workspace", str(tmp_path / "ws"))  # fmt: skip
    assert code == 7
    assert err.strip().splitlines() == [
        "Error: cannot append to the run record: No space left on device"
    ]
    monkeypatch.setattr(runs.os, "fsync", real_fsync)
    (run,) = (home / "runs").iterdir()
    assert [e["type"] for e in read_entries(run)][:2] == ["command", "step"]
    assert (tmp_path / "ws" / "a.txt").read_text() == "1"
