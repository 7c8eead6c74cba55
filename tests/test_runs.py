"""Run records: tamper evidence, torn lines, replay, restoring an agent from its record."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent.agent import Agent, AgentConfig
from offline_agent.cli import cli
from offline_agent.errors import StorageError
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.records import RunResult
from offline_agent.replay import recorded_steps, replay
from offline_agent.runs import (
    GENESIS,
    HEAD_FILE,
    META_FILE,
    STEPS_FILE,
    RunRecord,
    read_entries,
    verify,
)
from offline_agent.session import RunSettings, restore, run_tools, start
from offline_agent.state import Rules
from offline_agent.subagents import SubAgents
from offline_agent.tools import ToolContext, builtin_tools
from offline_agent.workspace import Workspace
from tests.conftest import (
    COMPACT_FINISH,
    FINISH,
    NONE,
    PROFILE,
    compact,
    make_agent,
    replied_step,
    reply,
)

REPLIES = [
    reply("write_file", filename="a.txt", text="alpha"),
    reply("append_file", filename="a.txt", text=" beta"),
    reply("execute_python_code", code="print(open('a.txt').read().upper())"),
    reply("read_file", filename="missing.txt"),
    FINISH,
]


def recorded_run(tmp_path: Path, replies: list[object] = REPLIES) -> RunRecord:
    ws = Workspace.create(tmp_path / "ws")
    record = RunRecord.create(tmp_path / "runs", "t", {"workspace": str(ws.root)})
    agent = Agent(PROFILE, ScriptedModel(replies), builtin_tools(memory=False),
                  ToolContext(workspace=ws), AgentConfig(), rules=NONE, record=record)  # fmt: skip
    record.write_end(agent.run())
    record.close()
    return record


def lines(record: RunRecord) -> list[str]:
    return (record.folder / STEPS_FILE).read_text().splitlines()


def rewrite(record: RunRecord, new: list[str]) -> None:
    (record.folder / STEPS_FILE).write_text("\n".join(new) + "\n")


def test_an_intact_record_verifies(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    assert verify(record.folder).lines == 11  # five commands announced, five steps, the end


def test_an_edited_line_is_detected(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    old = lines(record)
    rewrite(record, [old[0].replace("alpha", "gamma"), *old[1:]])
    with pytest.raises(StorageError, match="line 1: content does not match"):
        verify(record.folder)


def test_a_dropped_line_is_detected(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    old = lines(record)
    rewrite(record, [old[0], *old[2:]])
    with pytest.raises(StorageError, match="line 2: chain broken"):
        verify(record.folder)


def test_reordered_lines_are_detected(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    old = lines(record)
    rewrite(record, [old[1], old[0], *old[2:]])
    with pytest.raises(StorageError, match="line 1: chain broken"):
        verify(record.folder)


def test_a_torn_last_line_from_a_crash_is_skipped(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    old = lines(record)
    rewrite(record, [*old[:-1], old[-1][:40]])
    # The process died writing line 11: its head still counts the 10 lines before.
    tenth = json.loads(old[-2])["hash"]
    (record.folder / HEAD_FILE).write_text(json.dumps({"lines": 10, "hash": tenth}))
    assert len(read_entries(record.folder)) == 10
    assert verify(record.folder).lines == 10


def test_a_dropped_last_line_is_detected(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    assert verify(record.folder).ended
    rewrite(record, lines(record)[:-1])  # the end line: the run would look resumable
    with pytest.raises(StorageError, match=r"1 line\(s\) missing at the end"):
        verify(record.folder)


def test_a_line_written_as_the_process_died_is_kept(tmp_path: Path) -> None:
    """The head is rewritten after each line: a crash in between leaves it one behind."""
    record = recorded_run(tmp_path)
    old = lines(record)
    tenth = json.loads(old[-2])["hash"]
    (record.folder / HEAD_FILE).write_text(json.dumps({"lines": 10, "hash": tenth}))
    assert verify(record.folder).lines == 11


def test_an_edited_run_json_is_detected(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    meta = json.loads((record.folder / META_FILE).read_text())
    meta["settings"]["continuous"] = False
    (record.folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(StorageError, match=r"line 1: chain broken \(run.json was edited"):
        verify(record.folder)


def test_records_of_the_previous_version_still_verify_and_say_what_is_not_covered(
    tmp_path: Path,
) -> None:
    """Before run.json was chained, line 1 pointed back to zeros, and there was no head."""
    record = recorded_run(tmp_path)
    previous, rewritten = GENESIS, []
    for line in lines(record):
        entry = json.loads(line)
        entry["prev"] = previous
        entry.pop("hash")
        entry["hash"] = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
        previous = entry["hash"]
        rewritten.append(json.dumps(entry, sort_keys=True))
    rewrite(record, rewritten)
    (record.folder / HEAD_FILE).unlink()
    checked = verify(record.folder)
    assert (checked.lines, checked.covers_meta, checked.has_head) == (11, False, False)
    said = CliRunner().invoke(
        cli, ["runs", "verify", record.folder.name, "--runs-dir", str(tmp_path / "runs")]
    )
    assert said.exit_code == 0 and "older version" in said.output


def test_replay_reproduces_every_result(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    report = replay(record.folder, Workspace.create(tmp_path / "again"), builtin_tools())
    assert report.replayed == 4 and report.divergence is None
    assert (tmp_path / "again" / "a.txt").read_text() == "alpha beta"


def test_replay_reports_the_first_divergence(tmp_path: Path) -> None:
    record = recorded_run(tmp_path)
    fresh = Workspace.create(tmp_path / "again")
    (fresh.root / "missing.txt").write_text("now it exists")
    report = replay(record.folder, fresh, builtin_tools())
    assert report.divergence is not None
    assert (report.divergence.step, report.divergence.command) == (4, "read_file")


def test_runs_cli_list_show_verify_replay(tmp_path: Path) -> None:
    recorded_run(tmp_path)
    runs_dir = str(tmp_path / "runs")
    runner = CliRunner()
    listed = runner.invoke(cli, ["runs", "list", "--runs-dir", runs_dir])
    assert listed.exit_code == 0 and "finished" in listed.output
    run_id = listed.output.split()[0]
    shown = runner.invoke(cli, ["runs", "show", run_id, "--runs-dir", runs_dir])
    assert "append_file" in shown.output and "ended: finished" in shown.output
    checked = runner.invoke(cli, ["runs", "verify", run_id, "--runs-dir", runs_dir])
    assert checked.exit_code == 0 and "11 lines" in checked.output
    replayed = runner.invoke(cli, ["runs", "replay", run_id, "--runs-dir", runs_dir,
                                   "--workspace", str(tmp_path / "r")])  # fmt: skip
    assert replayed.exit_code == 0 and "replayed 4 commands" in replayed.output
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "missing.txt").write_text("x")
    diverged = runner.invoke(cli, ["runs", "replay", run_id, "--runs-dir", runs_dir,
                                   "--workspace", str(tmp_path / "r2")])  # fmt: skip
    assert diverged.exit_code == 7  # a non-empty workspace is refused
    missing = runner.invoke(cli, ["runs", "show", "nope", "--runs-dir", runs_dir])
    assert missing.exit_code == 7 and "no run 'nope'" in missing.stderr


def test_runs_show_says_which_rule_left_what_out(tmp_path: Path) -> None:
    replies = [
        COMPACT_FINISH,
        compact("write_file", filename="output.txt", text="x"),
        COMPACT_FINISH,
    ]
    tools = run_tools(Rules(), memory=False, shell=False)
    agent, _, record = make_agent(tmp_path, replies, rules=Rules(), tools=tools)
    record.write_end(agent.run())
    record.close()
    shown = CliRunner().invoke(
        cli, ["runs", "show", record.folder.name, "--runs-dir", str(tmp_path / "runs")]
    )
    lines = shown.output.splitlines()
    assert lines[1].split()[:2] == ["1", "format_error"]
    assert lines[2].strip().startswith("left out:")
    assert "read_file (unusable_commands: no file exists)" in lines[2]
    assert "finish (finish_after_success: no command has succeeded yet)" in lines[2]
    assert "error: finish cannot be used now" in lines[3]
    assert "ended: finished" in shown.output


def test_restoring_from_the_record_continues_with_the_same_prompt(tmp_path: Path) -> None:
    whole = ScriptedModel(REPLIES)
    ws = Workspace.create(tmp_path / "whole")
    Agent(PROFILE, whole, builtin_tools(memory=False), ToolContext(workspace=ws), rules=NONE).run()

    cut_ws = Workspace.create(tmp_path / "cut")
    record = RunRecord.create(tmp_path / "runs", "cut", {})
    tools, ctx = builtin_tools(memory=False), ToolContext(workspace=cut_ws)
    Agent(
        PROFILE,
        ScriptedModel(REPLIES[:2]),
        tools,
        ctx,
        AgentConfig(max_steps=2),
        rules=NONE,
        record=record,
    ).run()
    rest = ScriptedModel(REPLIES[2:])
    second = Agent(
        PROFILE, rest, builtin_tools(memory=False), ToolContext(workspace=cut_ws), rules=NONE
    )
    second.restore(recorded_steps(record.folder))
    assert second.run().status == "finished"
    assert rest.calls[0] == whole.calls[2]  # the third prompt is identical
    for got, expected in zip(rest.calls, whole.calls[2:], strict=True):
        for a, b in zip(got, expected, strict=True):
            assert a == b
    assert (cut_ws.root / "a.txt").read_text() == (ws.root / "a.txt").read_text()


def test_sub_agents_come_back_on_resume(tmp_path: Path) -> None:
    replies: list[object] = [
        {
            **reply("finish"),
            "command": {
                "name": "start_agent",
                "args": {"name": "helper", "task": "count", "prompt": "Count to two."},
            },
        },
        "one, two",  # the sub-agent's answer comes from the same model
        reply("message_agent", key=1, message="And to three?"),
        "one, two, three",
        FINISH,
    ]
    ws = Workspace.create(tmp_path / "ws")
    record = RunRecord.create(tmp_path / "runs", "t", {})
    model = ScriptedModel(replies)
    first = Agent(PROFILE, model, builtin_tools(memory=False),
                  ToolContext(workspace=ws, agents=SubAgents(model)), AgentConfig(max_steps=1),
                  rules=NONE, record=record)  # fmt: skip
    first.run()
    assert recorded_steps(record.folder)[0]["subagents"]["agents"]["1"]["name"] == "helper"

    again = ScriptedModel(replies)
    agents = SubAgents(again)
    ctx = ToolContext(workspace=ws, agents=agents)
    second = Agent(
        PROFILE, again, builtin_tools(memory=False), ctx, AgentConfig(), rules=NONE, record=record
    )
    restore(second, record.folder, record)
    assert agents.list() == [(1, "helper", "count")]
    assert second.run().status == "finished"
    conversation = [m["content"] for m in agents.snapshot()["agents"]["1"]["messages"]]
    assert conversation[1:] == ["Count to two.", "one, two", "And to three?", "one, two, three"]


def test_a_kept_original_is_in_the_hash_chain_and_verify_checks_it(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path / "runs", "t", {})
    source = tmp_path / "notes.txt"
    source.write_text("mine")
    record.keep_original("notes.txt", source)
    record.keep_original("notes.txt", source)  # the first version only, once
    (line,) = [e for e in read_entries(record.folder) if e["type"] == "original"]
    assert line["name"] == "notes.txt"
    assert line["sha256"] == hashlib.sha256(b"mine").hexdigest()
    assert verify(record.folder).lines == 1
    kept = record.folder / "originals" / "notes.txt"
    kept.write_text("edited")
    with pytest.raises(StorageError, match=r"line 1: originals/notes.txt does not match"):
        verify(record.folder)
    kept.unlink()
    with pytest.raises(StorageError, match=r"line 1: originals/notes.txt cannot be read"):
        verify(record.folder)


def test_a_command_killed_after_keeping_an_original_resumes_as_interrupted(
    tmp_path: Path,
) -> None:
    agent, _, record = make_agent(tmp_path, [FINISH])
    notes = agent.ctx.workspace.root / "notes.txt"
    notes.write_text("mine")
    step, _ = replied_step("write_file", filename="notes.txt", text="new")
    record.write_command(step)
    record.keep_original("notes.txt", notes)  # then the process died
    assert restore(agent, record.folder, record) == 1
    (interrupted,) = recorded_steps(record.folder)
    assert interrupted["status"] == "interrupted"
    assert interrupted["reply"]["command"]["name"] == "write_file"


def test_records_carry_the_digests_of_model_grammar_and_results(tmp_path: Path) -> None:
    script = tmp_path / "replies.json"
    script.write_text(json.dumps([FINISH]))
    settings = RunSettings(PROFILE, f"scripted:{script}", tmp_path, tmp_path / "ws", tmp_path / "r")
    record = start(settings, "scripted")
    meta = json.loads((record.folder / "run.json").read_text())
    assert meta["model_sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    folder = recorded_run(tmp_path).folder
    first = next(e for e in read_entries(folder) if e["type"] == "step")
    assert first["result_sha256"] == hashlib.sha256(b"Wrote 5 characters to a.txt.").hexdigest()
    assert len(first["step"]["grammar_sha256"]) == 64


def test_a_record_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    """A resume of a run that is still going (or two resumes at once) is refused: two
    writers would fork the hash chain and share one workspace."""
    record = recorded_run(tmp_path)
    held = RunRecord.reopen(record.folder)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from offline_agent.runs import RunRecord; RunRecord.reopen(Path(sys.argv[1]))",
         str(record.folder)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "is in use by another process" in done.stderr
    held.close()
    RunRecord.reopen(record.folder).close()  # free again once the holder let go


def test_a_ctrl_c_while_a_line_is_written_keeps_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ctrl-C lands after the line reached the disk (here: in fsync); it is delivered once
    the record knows the line, so the next line chains to it."""
    record = RunRecord.create(tmp_path / "runs", "t", {})
    real_fsync = os.fsync

    def fsync_then_ctrl_c(fd: int) -> None:
        real_fsync(fd)
        monkeypatch.setattr(os, "fsync", real_fsync)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "fsync", fsync_then_ctrl_c)
    ended = RunResult("stopped_by_user", 0, "Ctrl-C")
    # Python's own Ctrl-C handler, also where pytest runs with SIGINT ignored (a shell's
    # background job).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            record.write_end(ended)
    finally:
        signal.signal(signal.SIGINT, before)
    record.write_end(ended)
    record.close()
    assert verify(record.folder).lines == 2
