"""Sampling with checks (`--samples`): candidates are checked without a model, and the
likeliest sound one is kept; the run record holds them all."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from offline_agent.agent import AgentConfig
from offline_agent.cli import cli
from offline_agent.records import CommandCall, Completion, Message
from offline_agent.reply import reply_schema
from offline_agent.runs import read_entries
from offline_agent.sampling import RETRY_TEMPERATURE, Candidate, choose, sample
from offline_agent.state import Rules, Steering, python_problem
from offline_agent.tools import ToolContext, builtin_tools
from offline_agent.workspace import Workspace
from tests.conftest import compact, make_agent


def candidate(text: str, logprob: float | None, doubt: str = "") -> Candidate:
    return Candidate(Completion(text, "stop", logprob=logprob), doubt)


class SureModel:
    """Gives queued (reply, mean log-probability) pairs in order."""

    name = "sure"
    context_length = 4096

    def __init__(self, replies: Sequence[tuple[dict[str, Any], float | None]]) -> None:
        self.replies = list(replies)
        self.calls = 0

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        break_loops: bool = False,
    ) -> Completion:
        self.calls += 1
        reply, logprob = self.replies.pop(0)
        return Completion(json.dumps(reply), "stop", constrained=True, logprob=logprob)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m["content"]) // 4 for m in messages)


def test_the_surest_sound_candidate_is_kept() -> None:
    picked = choose([candidate("a", -0.1, "it ran just before"), candidate("b", -2.0),
                     candidate("c", -0.5), candidate("d", None)])  # fmt: skip
    assert picked.completion.text == "c"


def test_without_log_probabilities_the_first_sound_one_is_kept() -> None:
    picked = choose([candidate("a", None, "invalid"), candidate("b", None), candidate("c", None)])
    assert picked.completion.text == "b"


def test_when_every_candidate_is_doubted_the_surest_is_kept() -> None:
    picked = choose([candidate("a", -1.0, "x"), candidate("b", -0.2, "y")])
    assert picked.completion.text == "b"


def test_one_sample_is_one_call_and_no_candidates() -> None:
    model = SureModel([(compact("finish", reason="r"), -1.0)])
    completion, candidates = sample(
        model, [], schema={}, max_tokens=10, samples=1, check=lambda c: "never called"
    )
    assert model.calls == 1 and candidates == [] and "finish" in completion.text


class LoopingModel:
    """Runs to the token limit at temperature 0, and replies when decoding hotter."""

    name = "looping"
    context_length = 4096

    greedy = Completion('{"thought": "the the the the', "length", constrained=True)
    hot = Completion(json.dumps(compact("finish", reason="r")), "stop", constrained=True)

    def __init__(self) -> None:
        self.temperatures: list[float | None] = []

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float | None = None,
        break_loops: bool = False,
    ) -> Completion:
        self.temperatures.append(temperature)
        return self.greedy if temperature is None else self.hot

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return 1


def test_a_reply_cut_off_at_the_limit_is_decoded_again_hotter_with_retry_cut_off() -> None:
    model = LoopingModel()

    def cut_off(completion: Completion) -> str:
        return "cut off at the token limit" if completion.finish_reason == "length" else ""

    kept, candidates = sample(model, [], schema={}, max_tokens=8, samples=1,
                              check=lambda c: "", retry=cut_off)  # fmt: skip
    assert model.temperatures == [None, RETRY_TEMPERATURE] and RETRY_TEMPERATURE > 0
    assert kept.finish_reason == "stop" and "finish" in kept.text
    assert [c.doubt for c in candidates] == ["cut off at the token limit", ""]
    off = LoopingModel()
    kept, candidates = sample(off, [], schema={}, max_tokens=8, samples=1, check=lambda c: "")
    assert off.temperatures == [None] and kept.finish_reason == "length" and candidates == []


def test_python_that_does_not_compile_is_doubted() -> None:
    assert python_problem(CommandCall("write_file", {"filename": "a.py", "text": "Hello!"}))
    assert python_problem(CommandCall("execute_python_code", {"code": "print('x'"}))
    assert not python_problem(CommandCall("write_file", {"filename": "a.py", "text": "print(1)"}))
    assert not python_problem(CommandCall("write_file", {"filename": "a.txt", "text": "Hello!"}))
    assert not python_problem(CommandCall("execute_python_code", {"code": "'\\d'"}))


def test_steering_doubts_repeats_invalid_replies_and_bad_python(tmp_path: Path) -> None:
    tools = builtin_tools(memory=False)
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"))
    steering = Steering(tools, Rules(shown_looks=False), ("Write hello.py",))  # looks offered
    plan, _ = steering.plan(ctx)
    schema = reply_schema(plan.tools, "compact")

    def doubt(name: str, **args: Any) -> str:
        return steering.doubt(plan, schema, Completion(json.dumps(compact(name, **args)), "stop"))

    listing = CommandCall("list_files", {"directory": "."})
    assert doubt("list_files", directory=".") == ""
    assert doubt("read_file", filename="x.txt").startswith("invalid:")  # nothing exists
    assert "does not compile" in doubt("write_file", filename="hello.py", text="Hello, World!")
    steering.running(listing)
    assert doubt("list_files", directory=".") == "it is the command that ran just before"
    steering.running(CommandCall("write_file", {"filename": "a.txt", "text": "x"}))
    assert "in this same workspace" in doubt("list_files", directory=".")
    ctx.workspace.write_text("a.txt", "x")
    plan, _ = steering.plan(ctx)  # the workspace changed: listing again can show news
    schema = reply_schema(plan.tools, "compact")
    assert doubt("list_files", directory=".") == ""


def test_steering_retries_a_repeat_only_with_retry_repeats(tmp_path: Path) -> None:
    tools = builtin_tools(memory=False)
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"))
    ctx.workspace.write_text("a.txt", "x")
    on = Steering(tools, Rules(retry_repeats=True), ("Read a.txt",))
    off = Steering(tools, Rules(retry_repeats=False), ("Read a.txt",))
    read = Completion(json.dumps(compact("read_file", filename="a.txt")), "stop")
    cut = Completion('{"thought": "the the', "length")
    for steering in (on, off):
        plan, _ = steering.plan(ctx)
        schema = reply_schema(plan.tools, "compact")
        assert steering.retry(plan, schema, read) == ""  # nothing ran yet
        assert steering.retry(plan, schema, cut) == "cut off at the token limit"
        steering.running(CommandCall("read_file", {"filename": "a.txt"}))
        plan, _ = steering.plan(ctx)
    assert on.retry(plan, schema, read) == "it is the command that ran just before"
    assert off.retry(plan, schema, read) == ""
    assert on.retry(plan, schema, Completion("not json", "stop")) == ""  # invalid: not a repeat


class RepeatingModel(LoopingModel):
    """Lists the folder every time at temperature 0; finishes when decoding hotter."""

    greedy = Completion(json.dumps(compact("list_files", directory=".")), "stop", constrained=True)


def test_the_agent_decodes_a_repeated_command_again_with_retry_repeats(tmp_path: Path) -> None:
    agent, _, record = make_agent(
        tmp_path,
        [],
        config=AgentConfig(max_steps=3),
        rules=Rules(retry_repeats=True, shown_looks=False),
    )
    agent.model = model = RepeatingModel()
    result = agent.run()
    assert result.status == "finished" and model.temperatures == [None, None, RETRY_TEMPERATURE]
    steps = [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]
    assert steps[0]["candidates"] == []
    assert steps[1]["candidates"][0]["doubt"] == "it is the command that ran just before"


def test_the_agent_runs_the_chosen_candidate_and_records_all(tmp_path: Path) -> None:
    write = compact("write_file", filename="output.txt", text="Washington")
    model = SureModel([
        (compact("write_file", filename="output.txt", text="nonsense"), -2.0),
        (write, -0.4),
        (compact("list_files", directory="."), -0.9),
        (write, -0.1),  # the surest, but it is the command that ran just before
        (compact("finish", reason="done"), -0.3),
        (compact("list_files", directory="."), -1.5),
    ])  # fmt: skip
    agent, _, record = make_agent(
        tmp_path, [], config=AgentConfig(max_steps=2, samples=3), rules=Rules()
    )
    agent.model = model
    result = agent.run()
    assert result.status == "finished" and model.calls == 6
    assert agent.ctx.workspace.read_text("output.txt") == "Washington"
    steps = [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]
    assert [len(s["candidates"]) for s in steps] == [3, 3]
    assert [c["logprob"] for c in steps[0]["candidates"]] == [-2.0, -0.4, -0.9]
    assert steps[1]["candidates"][0]["doubt"] == "it is the command that ran just before"
    assert json.loads(steps[1]["completion"]["text"])["command"]["name"] == "finish"


@pytest.mark.parametrize("command", ["run", "bench"])
def test_samples_at_temperature_zero_is_refused_before_loading(command: str) -> None:
    args = [command, "--samples", "3", "--temperature", "0"]
    args += ["--goal", "x", "--no-memory"] if command == "run" else []
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "--samples above 1 needs --temperature above 0" in result.output
    assert "Traceback" not in result.output


def test_the_command_most_candidates_agree_on_wins_over_a_surer_outlier() -> None:
    right = json.dumps(compact("write_file", filename="answer.txt", text="42"))
    copied = json.dumps(compact("write_file", filename="answer.txt", text="I will write"))
    also_right = json.dumps({"thought": "other words", "command": json.loads(right)["command"]})
    picked = choose([candidate(right, -1.8), candidate(also_right, -0.9), candidate(copied, -0.6)])
    assert picked.completion.text == also_right  # two votes; the surer of the two
