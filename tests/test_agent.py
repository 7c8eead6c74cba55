"""The loop and each of its failure modes, driven by the scripted model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from offline_agent.agent import AgentConfig, Approval
from offline_agent.errors import BackendError, ContextOverflowError
from offline_agent.prompt import step_starts
from offline_agent.records import Step
from offline_agent.runs import RunRecord, read_entries, verify
from offline_agent.state import Rules
from offline_agent.tools import ToolRegistry, builtin_tools
from tests.conftest import COMPACT_FINISH, FINISH, compact, explode, make_agent, reply


def steps_of(record: RunRecord) -> list[dict[str, Any]]:
    return [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]


def test_write_then_finish(tmp_path: Path) -> None:
    agent, model, record = make_agent(
        tmp_path, [reply("write_file", filename="output.txt", text="Washington"), FINISH]
    )
    result = agent.run()
    assert (result.status, result.steps, result.reason) == ("finished", 2, "done")
    assert (tmp_path / "ws" / "output.txt").read_text() == "Washington"
    steps = steps_of(record)
    assert [s["status"] for s in steps] == ["ok", "finished"]
    assert steps[0]["result"]["output"].startswith("Wrote 10 characters")
    # The second prompt is the first one, then its reply, the result and a new request.
    first, second = model.calls
    assert second[: len(first)] == first and first[0]["role"] == "system"
    assert second[2]["role"] == "assistant" and "write_file" in second[2]["content"]
    assert second[3]["content"].startswith("Command write_file returned: Wrote 10")
    assert second[4]["content"].rstrip().endswith("and that command.")
    assert verify(record.folder).lines == 4


def test_unknown_command_is_fed_back_then_recovers(tmp_path: Path) -> None:
    agent, model, _ = make_agent(tmp_path, [reply("browse_web", url="x"), FINISH])
    result = agent.run()
    assert result.status == "finished"
    feedback = model.calls[1][-2]["content"]
    assert "unknown command 'browse_web'" in feedback and "write_file" in feedback


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"filename": "a.txt"}, "missing argument text"),
        ({"filename": "a.txt", "text": "x", "mode": "w"}, "no argument named mode"),
        ({"filename": 3, "text": "x"}, "filename must be a string"),
        ({"filename": "a.txt", "text": "x" * 5000}, "too long"),
    ],
)
def test_bad_arguments_are_format_errors(
    tmp_path: Path, args: dict[str, Any], message: str
) -> None:
    agent, model, record = make_agent(tmp_path, [reply("write_file", **args), FINISH])
    assert agent.run().status == "finished"
    first = steps_of(record)[0]
    assert first["status"] == "format_error" and message in first["error"]
    assert message in model.calls[1][-2]["content"]
    assert not (tmp_path / "ws" / "a.txt").exists()


def test_a_tool_that_raises_is_an_observation(tmp_path: Path) -> None:
    tools = ToolRegistry([*builtin_tools(memory=False), explode])
    agent, model, record = make_agent(tmp_path, [reply("explode", what="x"), FINISH], tools=tools)
    assert agent.run().status == "finished"
    result = steps_of(record)[0]["result"]
    assert result == {"output": "Error: RuntimeError: boom: x", "ok": False}
    assert "Error: RuntimeError: boom: x" in model.calls[1][-2]["content"]


def test_truncated_reply_is_its_own_error(tmp_path: Path) -> None:
    cut = json.dumps(reply("write_file", filename="a.txt", text="long"))[:60] + "<<LENGTH>>"
    agent, _model, record = make_agent(tmp_path, [cut, FINISH])
    assert agent.run().status == "finished"
    first = steps_of(record)[0]
    assert first["status"] == "truncated" and "cut off by the token limit" in first["error"]


def test_repairable_json_from_an_unconstrained_model_is_accepted(tmp_path: Path) -> None:
    sloppy = "Sure! " + json.dumps(FINISH).replace('"', "'")  # prose + single quotes
    agent, _, _ = make_agent(tmp_path, [sloppy])
    assert agent.run().status == "finished"


def test_format_error_limit_ends_the_run(tmp_path: Path) -> None:
    agent, _, record = make_agent(
        tmp_path, ["not json at all", "[]", reply("nope")], config=AgentConfig(max_format_errors=3)
    )
    result = agent.run()
    assert (result.status, result.steps) == ("format_errors", 3)
    assert "3 invalid replies in a row" in result.reason
    assert len(steps_of(record)) == 3


def test_valid_reply_resets_the_format_error_count(tmp_path: Path) -> None:
    replies = ["x", "x", reply("list_files", directory="."), "x", "x", FINISH]
    agent, _, _ = make_agent(tmp_path, replies, config=AgentConfig(max_format_errors=3))
    assert agent.run().status == "finished"


def test_step_limit(tmp_path: Path) -> None:
    replies = [reply("write_file", filename=f"{i}.txt", text="x") for i in range(5)]
    agent, _, _ = make_agent(tmp_path, replies, config=AgentConfig(max_steps=3))
    result = agent.run()
    assert (result.status, result.steps) == ("step_limit", 3)
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["0.txt", "1.txt", "2.txt"]


def test_human_feedback_is_sent_instead_of_running_the_command(tmp_path: Path) -> None:
    answers = iter([Approval("feedback", feedback="use the name result.txt"), Approval("yes")])
    agent, model, record = make_agent(
        tmp_path,
        [reply("write_file", filename="output.txt", text="W"), FINISH],
        approve=lambda step: next(answers),
    )
    assert agent.run().status == "finished"
    assert not (tmp_path / "ws" / "output.txt").exists()
    assert model.calls[1][-2]["content"] == "Human feedback: use the name result.txt"
    first = steps_of(record)[0]
    assert (first["status"], first["human_feedback"]) == ("rejected", "use the name result.txt")


def test_yes_minus_n_runs_n_commands_without_asking(tmp_path: Path) -> None:
    asked: list[int] = []

    def approve(step: Step) -> Approval:
        asked.append(step.index)
        return Approval("yes", count=3)

    replies = [reply("write_file", filename=f"{i}.txt", text="x") for i in range(4)] + [FINISH]
    agent, _, _ = make_agent(tmp_path, replies, approve=approve)
    assert agent.run().status == "finished"
    assert asked == [1, 4]  # steps 2 and 3 ran on the `y -3` given at step 1


def test_no_stops_the_run(tmp_path: Path) -> None:
    agent, _, _ = make_agent(
        tmp_path,
        [reply("write_file", filename="a.txt", text="x")],
        approve=lambda s: Approval("stop"),
    )
    assert agent.run().status == "stopped_by_user"
    assert not (tmp_path / "ws" / "a.txt").exists()


def test_repeating_the_same_command_is_noticed_then_stopped(tmp_path: Path) -> None:
    same = reply("write_file", filename="a.txt", text="x")
    agent, model, record = make_agent(tmp_path, [same] * 5, config=AgentConfig(max_repeats=2))
    result = agent.run()
    assert (result.status, result.steps) == ("loop", 4)
    note = "ran just before or returned the same before (1 such step in a row)"
    assert note in model.calls[2][-1]["content"]
    # Step 3's grammar left the repeated command out, and validation holds to that grammar.
    step3 = steps_of(record)[2]
    assert step3["status"] == "format_error"
    assert step3["left_out"] == {"write_file": "repeat: it just returned what it returned before"}
    assert "write_file cannot be used now (repeat:" in step3["error"]
    assert "commands in a row ran just before or returned the same as before" in result.reason


def test_a_cycle_of_two_commands_is_noticed_then_stopped(tmp_path: Path) -> None:
    a, b = reply("list_files", directory="."), reply("list_agents")
    agent, model, _ = make_agent(tmp_path, [a, b, a, b, a, b, FINISH])
    result = agent.run()
    assert (result.status, result.steps) == ("loop", 5)  # steps 3, 4 and 5 repeat 1 and 2
    assert "list_files with these arguments ran just before or" in model.calls[3][-1]["content"]
    assert "list_agents with these arguments ran just before or" in model.calls[4][-1]["content"]


def test_a_command_returning_something_new_is_not_a_repeat(
    tmp_path: Path,
) -> None:
    run = reply("execute_python_file", filename="count.py")
    script = (
        "import pathlib\n"
        "p = pathlib.Path('n.txt')\n"
        "p.write_text(str(int(p.read_text()) + 1) if p.exists() else '1')\n"
        "print(p.read_text())\n"
    )
    write = reply("write_file", filename="count.py", text=script)
    read = reply("read_file", filename="count.py")
    agent, model, _ = make_agent(tmp_path, [write, run, read, run, read, run, FINISH])
    assert agent.run().status == "finished"  # each run prints a new number
    assert not any("execute_python_file with" in call[-1]["content"] for call in model.calls)


def test_a_backend_crash_still_records_the_step(tmp_path: Path) -> None:
    agent, _, record = make_agent(tmp_path, [reply("list_files", directory=".")])
    with pytest.raises(BackendError):
        agent.run()
    steps = steps_of(record)
    assert len(steps) == 2 and steps[1]["completion"] is None
    assert verify(record.folder).lines == 3


def test_prompt_never_exceeds_the_context_and_drops_history_in_blocks(tmp_path: Path) -> None:
    replies = [reply("write_file", filename=f"{i}.txt", text="y" * 300) for i in range(30)]
    config = AgentConfig(max_steps=30, reply_tokens=256)
    agent, model, _ = make_agent(tmp_path, replies, config=config, context_length=2048)
    agent.run()
    sizes = [model.count_tokens(call) for call in model.calls]
    assert max(sizes) <= 2048 - 256
    later = model.calls[1:]  # the first prompt has no history
    # History is cut where a step begins: right after the system message comes a request.
    assert all(call[1]["role"] == "user" and call[2]["role"] == "assistant" for call in later)
    firsts = [call[2]["content"] for call in later]
    # The oldest reply in view changes only when a block is dropped, not every step.
    changes = sum(1 for a, b in itertools.pairwise(firsts) if a != b)
    assert 1 <= changes <= len(firsts) // 3


def test_steps_begin_after_a_result_in_new_and_old_histories() -> None:
    def history(roles: str) -> list[Any]:
        names = {"u": "user", "a": "assistant"}
        return [{"role": names[r], "content": ""} for r in roles]

    assert step_starts(history("uau" * 3)) == [0, 3, 6]  # (request, reply, result)
    assert step_starts(history("au" * 3)) == [0, 2, 4]  # recorded before requests were kept
    assert step_starts(history("auau" + "uau")) == [0, 2, 4]  # such a run, resumed


def test_an_oversized_result_is_cut_with_a_notice(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "big.txt").write_text("z" * 50_000)
    config = AgentConfig(result_tokens=200)
    agent, model, _ = make_agent(
        tmp_path, [reply("read_file", filename="big.txt"), FINISH], config=config
    )
    agent.ctx.output_limit = 100_000
    agent.run()
    result_message = model.calls[1][-2]["content"]
    assert "[cut: the result had" in result_message
    assert model.count_tokens([{"role": "user", "content": result_message}]) < 300


def test_goals_are_in_the_system_prompt_and_repeated_last(tmp_path: Path) -> None:
    agent, model, _ = make_agent(tmp_path, [FINISH])
    agent.run()
    system, last = model.calls[0][0]["content"], model.calls[0][-1]["content"]
    assert "1. Write Washington to output.txt" in system
    assert "write_file:" in system and "finish:" in system
    goal_line, question = last.rstrip().splitlines()[-2:]
    assert goal_line == "GOAL 1: Write Washington to output.txt"
    assert question.startswith("Which command does GOAL 1 need next?")


def test_a_command_repeated_identically_is_left_out_of_the_next_grammar(tmp_path: Path) -> None:
    write = reply("write_file", filename="a.txt", text="x")
    agent, model, _ = make_agent(tmp_path, [write, write, FINISH])
    schemas: list[Any] = []
    complete = model.complete

    def recording(messages: Any, *, schema: Any, **options: Any) -> Any:
        schemas.append(schema)
        return complete(messages, schema=schema, **options)

    model.complete = recording  # type: ignore[method-assign]
    assert agent.run().status == "finished"

    def offered(schema: dict[str, Any]) -> list[str]:
        return [b["properties"]["name"]["const"] for b in schema["properties"]["command"]["anyOf"]]

    assert "write_file" in offered(schemas[0]) and "write_file" in offered(schemas[1])
    assert "write_file" not in offered(schemas[2]) and "finish" in offered(schemas[2])
    assert "running it again changes nothing" in model.calls[2][-1]["content"]


def test_a_step_broken_off_by_a_context_error_is_recorded_as_an_error(tmp_path: Path) -> None:
    agent, _, record = make_agent(tmp_path, [FINISH], context_length=300)
    with pytest.raises(ContextOverflowError):
        agent.run()
    (step,) = steps_of(record)
    assert step["status"] == "error" and step["result"] is None
    assert step["error"]


def test_a_program_that_crashed_does_not_unlock_finish(tmp_path: Path) -> None:
    """finish_after_success counts what succeeded: a program that exits with 1 has not."""
    crash = compact("execute_python_code", code="print(open('missing.txt').read())")
    write = compact("write_file", filename="output.txt", text="Washington")
    agent, _, record = make_agent(
        tmp_path, [crash, COMPACT_FINISH, write, COMPACT_FINISH], rules=Rules()
    )
    assert agent.run().status == "finished"
    steps = steps_of(record)
    assert [s["status"] for s in steps] == ["ok", "format_error", "ok", "finished"]
    assert steps[0]["result"]["ok"] is False
    assert "FileNotFoundError" in steps[0]["result"]["output"]
    assert steps[1]["left_out"]["finish"].startswith("finish_after_success")
    assert "finish" not in steps[3]["left_out"]
