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
from offline_agent.replay import recorded_steps
from offline_agent.runs import read_entries, verify
from tests.conftest import FINISH, reply, script


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


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
    assert verify(run).lines == 5  # two commands announced, two steps, the end
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


def registered_mine(tmp_path: Path, rules: str) -> Path:
    """A models folder whose registry has a model `mine` with `rules` and no file."""
    models = tmp_path / "models"
    models.mkdir(parents=True)
    (models / "registry.toml").write_text(
        '[models.mine]\nfilename = "mine.gguf"\npath = "/nonexistent/mine.gguf"\n'
        'sha256 = "00"\nsize = 1\ncontext_length = 1\nchat_format = "chatml"\n'
        f"rules = {rules}\n"
    )
    return models


def test_a_models_bad_rule_in_the_registry_is_one_line_before_the_model_loads(
    tmp_path: Path, home: Path
) -> None:
    models = registered_mine(tmp_path, '["code_turn=maybe"]')
    code, out, err = invoke("run", "--goal", "g", "--model", "mine", "--models-dir", str(models))
    assert code == 2, out + err
    assert err.strip() == (
        "Error: the registry's rules for mine: rule code_turn takes on or off, not 'maybe'"
    )
    # The rules are the model's: a server's model of that name does not take them.
    code, out, err = invoke("run", "--goal", "g", "--model", "mine", "--models-dir", str(models),
                            "--base-url", "http://127.0.0.1:9/v1")  # fmt: skip
    assert "registry" not in err


def test_the_run_names_the_registry_rules_that_its_own_rules_leave_standing(
    tmp_path: Path, home: Path
) -> None:
    models = registered_mine(tmp_path, '["code_turn=on", "show_state=off"]')
    run = ("run", "--goal", "g", "--model", "mine", "--models-dir", str(models))
    _, _, err = invoke(*run)  # the file is missing: the notice comes before loading it
    assert "own rules from the registry: code_turn=on, show_state=off (" in err
    _, _, err = invoke(*run, "--rule", "show_state=on")
    assert "own rules from the registry: code_turn=on (" in err
    _, _, err = invoke(*run, "--rule", "show_state=on", "--rule", "code_turn=off")
    assert "registry" not in err
    models = registered_mine(tmp_path / "b", '["none", "code_turn=on"]')
    _, _, err = invoke("run", "--goal", "g", "--model", "mine", "--models-dir", str(models))
    assert "own rules from the registry: none, code_turn=on (" in err


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
        (["--goal", "g", "--model", "SCRIPT", "--n-ctx=-5"], 2, "'--n-ctx': -5 is not in the"),
        (["--goal", "g", "--model", "SCRIPT", "--python-timeout", "-1"], 2, "'--python-timeout'"),
        (["--goal", "g", "--model", "SCRIPT", "--threads", "0"], 2, "'--threads': 0"),
        (["--goal", "g", "--model", "SCRIPT", "--sandbox", "maybe"], 2, "'--sandbox'"),
        (["--goal", "g", "--model", "/"], 3, "/ is a folder"),
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
        # run.json; the first command line and its head; a.txt and its folder; the step line
        # and its head: then the disk is full.
        if len(calls) > 7:
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


def test_runs_list_show_and_replay_read_what_run_wrote(tmp_path: Path, home: Path) -> None:
    """A run made through the CLI: list shows its goal, show its workspace, and replaying a
    command whose output names the workspace's path finds no divergence."""
    model = script(tmp_path, [reply("execute_python_code", code="import os; print(os.getcwd())"),
                              FINISH])  # fmt: skip
    ws = tmp_path / "ws"
    code, out, _ = invoke("run", "--goal", "Print the folder", "--model", model, "--continuous",
                          "--no-memory", "--rule", "none", "--workspace", str(ws))  # fmt: skip
    assert code == 0, out
    (run,) = (home / "runs").iterdir()
    assert str(ws) in recorded_steps(run)[0]["result"]["output"]
    code, listed, _ = invoke("runs", "list")
    assert code == 0 and listed.rstrip().endswith("2 steps  Print the folder")
    code, shown, _ = invoke("runs", "show", run.name)
    assert shown.splitlines()[0] == f"{run.name}: model scripted, workspace {ws}"
    code, replayed, err = invoke("runs", "replay", run.name, "--workspace", str(tmp_path / "again"))
    assert code == 0, err
    assert "replayed 1 commands" in replayed and "every result matches" in replayed


def test_a_run_keeps_the_first_version_of_each_file_it_changes(tmp_path: Path, home: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "log.txt").write_text("the user's line\n")
    (ws / ".env").write_text("A=1\n")
    before = [
        reply("write_file", filename="log.txt", text="one"),
        reply("execute_python_code", code="open('made.txt', 'w').write('by code')"),
    ]
    after = [reply("write_file", filename="log.txt", text="two"),
             reply("write_file", filename="made.txt", text="changed"),  # the run's own file
             reply("append_file", filename=".env", text="B=2\n"), FINISH]  # fmt: skip
    model = script(tmp_path, [*before, *after])
    code, _, _ = invoke("run", "--goal", "g", "--model", model, "--continuous", "--no-memory",
                        "--rule", "none", "--workspace", str(ws), "--max-steps", "2")  # fmt: skip
    assert code == 10 and (ws / "log.txt").read_text() == "one"
    (run,) = (home / "runs").iterdir()
    code, out, err = invoke("runs", "resume", run.name, "--max-steps", "6")
    assert code == 0, out + err
    assert (ws / "log.txt").read_text() == "two" and (ws / "made.txt").read_text() == "changed"
    originals = run / "originals"
    assert sorted(p.name for p in originals.iterdir()) == [".env", "log.txt"]  # not made.txt
    assert (originals / "log.txt").read_text() == "the user's line\n"  # the first, kept
    code, shown, _ = invoke("runs", "show", run.name)
    assert shown.splitlines()[-1] == (
        f"first versions of the files it changed, kept in {originals}: .env, log.txt"
    )
    assert verify(run).lines > 0  # the copies do not disturb the record


def test_a_relative_workspace_is_resumed_where_it_was(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    writes = [reply("write_file", filename=f"{n}.txt", text=n) for n in ("one", "two")]
    model = script(tmp_path, [*writes, FINISH])
    monkeypatch.chdir(tmp_path / "a")
    code, _, _ = invoke("run", "--goal", "g", "--model", model, "--continuous", "--no-memory",
                        "--rule", "none", "--workspace", "W2", "--max-steps", "1")  # fmt: skip
    assert code == 10  # the step limit
    monkeypatch.chdir(tmp_path / "b")
    (run,) = (home / "runs").iterdir()
    code, out, err = invoke("runs", "resume", run.name, "--max-steps", "5")
    assert code == 0, out + err
    assert sorted(p.name for p in (tmp_path / "a" / "W2").iterdir()) == ["one.txt", "two.txt"]
    assert not (tmp_path / "b" / "W2").exists()


def test_a_refused_step_and_a_context_error_are_not_recorded_as_ok(
    tmp_path: Path, home: Path
) -> None:
    model = script(tmp_path, [reply("write_file", filename="a.txt", text="x")])
    code, _, _ = invoke("run", "--goal", "g", "--model", model, "--no-memory", "--rule", "none",
                        "--workspace", str(tmp_path / "ws"), input="n\n")  # fmt: skip
    assert code == 13
    (run,) = (home / "runs").iterdir()
    (step,) = recorded_steps(run)
    assert (step["status"], step["error"]) == ("rejected", "the user stopped the run")
    code, shown, _ = invoke("runs", "show", run.name)
    assert "rejected" in shown.splitlines()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "70000"], "'--port': 70000 is not in the range 1<=x<=65535"),
        (["bench", "--repeats", "0"], "'--repeats': 0 is not in the range x>=1"),
        (["memory", "search", "q", "-k", "0"], "'-k': 0 is not in the range x>=1"),
        (["runs", "resume", "x", "--max-steps", "0"], "'--max-steps': 0"),
    ],
)
def test_numbers_out_of_bounds_are_refused_before_anything_loads(
    home: Path, args: list[str], message: str
) -> None:
    code, _, err = invoke(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("Error: Invalid value for ") and message in lines[0]
    )


def test_rule_check_syntax_reaches_the_file_commands(tmp_path: Path, home: Path) -> None:
    broken = reply("write_file", filename="hello.py", text="Hello, World!")
    args = ["--goal", "g", "--model", script(tmp_path, [broken, FINISH]), "--continuous",
            "--no-memory", "--rule", "none", "--workspace", str(tmp_path / "ws")]  # fmt: skip
    code, out, _ = invoke("run", *args, "--rule", "check_syntax=on")
    assert code == 0, out
    assert "hello.py was left as it was: it is not valid Python" in out
    assert not (tmp_path / "ws" / "hello.py").exists()
    (run,) = (home / "runs").iterdir()
    steps = [e["step"] for e in read_entries(run) if "step" in e]
    assert steps[0]["result"]["ok"] is False
    code, out, _ = invoke("run", *args)  # off (the default): the text is written as it is
    assert (tmp_path / "ws" / "hello.py").read_text() == "Hello, World!"
