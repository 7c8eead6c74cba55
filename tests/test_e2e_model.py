"""End to end on the real GGUF files: every reply validates and commands are dispatched."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from offline_agent import session
from offline_agent.agent import Agent, AgentConfig, SilentEvents
from offline_agent.codeturn import header, write_code
from offline_agent.cores import usable_cores
from offline_agent.errors import ModelError
from offline_agent.llm.llama import LlamaModel, LlamaOptions
from offline_agent.records import Profile
from offline_agent.reply import code_schema, parse_reply, reply_schema
from offline_agent.runs import RunRecord, read_entries
from offline_agent.session import RunSettings
from offline_agent.state import Rules
from offline_agent.tools import ToolContext, builtin_tools
from offline_agent.workspace import Workspace
from tests.conftest import replied_step

pytestmark = [pytest.mark.model, pytest.mark.slow]

GOAL = "Write the word Washington to a file named output.txt"
PROFILE = Profile("FileBot", "an assistant that manages files", (GOAL,))


@pytest.fixture(scope="module")
def smollm2(real_models: dict[str, Path]) -> LlamaModel:
    return LlamaModel(real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=2048))


def test_smollm2_run_every_reply_validates_and_is_dispatched(
    smollm2: LlamaModel, tmp_path: Path
) -> None:
    record = RunRecord.create(tmp_path / "runs", "e2e", {})
    agent = Agent(
        PROFILE,
        smollm2,
        builtin_tools(memory=False),
        ToolContext(workspace=Workspace.create(tmp_path / "ws")),
        AgentConfig(max_steps=3),
        record=record,
    )
    result = agent.run()
    steps = [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]
    assert len(steps) == result.steps >= 1
    for step in steps:
        assert step["status"] in ("ok", "finished"), step["error"]
        assert step["completion"]["constrained"] is True
        assert step["reply"]["command"]["name"] in agent.tools
        assert step["result"] is not None  # the command was dispatched
    # The KV cache serves the unchanged prefix from the second step on.
    if len(steps) > 1:
        usage = steps[1]["completion"]["usage"]
        assert usage["cached_tokens"] > usage["prompt_tokens"] // 2


def test_the_model_runs_on_every_usable_core_by_default(smollm2: LlamaModel) -> None:
    # llama-cpp-python's own default decodes on half the cores (~1.5x slower on 2 cores).
    params = smollm2._llm.context_params
    assert params.n_threads == params.n_threads_batch == usable_cores()


def test_smollm2_token_count_matches_llama_cpp(smollm2: LlamaModel) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    rendered = smollm2.format.render(messages)
    assert rendered.startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")
    assert smollm2.count_tokens(messages) == len(
        smollm2._llm.tokenize(rendered.encode(), add_bos=False, special=True)
    )


def test_gemma_keeps_the_system_message_and_replies_validly(
    real_models: dict[str, Path],
) -> None:
    gemma = LlamaModel(real_models["gemma3-270m"], "gemma", LlamaOptions(n_ctx=2048))
    tools = builtin_tools(memory=False)
    schema = reply_schema(tools)
    messages = [
        {"role": "system", "content": "You are FileBot. Commands: write_file, finish."},
        {"role": "user", "content": GOAL},
    ]
    rendered = gemma.format.render(messages)
    assert rendered.startswith("<bos><start_of_turn>user\nYou are FileBot.")
    assert rendered.endswith("<start_of_turn>model\n")
    completion = gemma.complete(messages, schema=schema, max_tokens=512)
    assert completion.constrained
    reply = parse_reply(completion, tools, schema)
    assert reply.command.name in tools


def test_gemma_writes_code_as_a_document_and_then_replies_in_the_chat(
    real_models: dict[str, Path],
) -> None:
    """Rule code_document on the real backend: decoded from the beginning of sequence alone,
    the block opens as forced and its code starts with a statement; a chat reply after it
    (its prompt evaluated again) is still valid. At temperature 0 the same document asked
    for again is the one decoded before."""
    gemma = LlamaModel(real_models["gemma3-270m"], "gemma", LlamaOptions(n_ctx=2048))
    top = header("hello.py", ("Write a Python script called hello.py that prints Hello",))
    code = gemma.complete_document(schema=code_schema("python", 48, top), max_tokens=48 + 64)
    assert code.constrained and code.usage.prompt_tokens == 1  # <bos> alone
    assert code.text.startswith(f"```python\n{top}") and code.text[len(top) + 10] not in " #\n"
    again = gemma.complete_document(schema=code_schema("python", 48, top), max_tokens=48 + 64)
    assert again.text == code.text and again.usage.completion_tokens == 0  # greedy: kept
    tools = builtin_tools(memory=False)
    schema = reply_schema(tools)
    messages = [{"role": "user", "content": GOAL}]
    reply = parse_reply(gemma.complete(messages, schema=schema, max_tokens=256), tools, schema)
    assert reply.command.name in tools


def test_gemma_adds_to_a_python_file_by_continuing_its_text(
    real_models: dict[str, Path], tmp_path: Path
) -> None:
    """An append to a Python file that holds text, with code_document: the real backend's
    document opens with the docstring and the file's text, forced, and the file gets only
    what the model wrote after it."""
    gemma = LlamaModel(real_models["gemma3-270m"], "gemma", LlamaOptions(n_ctx=2048))
    workspace = Workspace.create(tmp_path / "ws")
    old = "def add(a, b):\n    return a + b\n"
    workspace.write_text("calc.py", old)
    tools = builtin_tools(memory=False)
    goals = ("Add a function sub(a, b) to calc.py that returns a minus b",)
    step, call = replied_step("append_file", filename="calc.py")
    rules = Rules(code_turn=True, code_document=True, code_trim=True, code_names=True)
    turn = write_code(
        gemma, step, tools.get("append_file"), "{}", max_tokens=256, rules=rules,
        goals=goals, files={"calc.py": (len(old), 0)}, read=workspace.read_text,
    )  # fmt: skip
    assert turn == [] and step.code is not None and step.code.usage.prompt_tokens == 1
    assert step.code.text.startswith(f"```python\n{header('calc.py', goals)}{old}")
    added = call.args["text"]
    assert added.strip() and step.code.text.removeprefix("```python\n").startswith(
        f"{header('calc.py', goals)}{old}{added.rstrip()}"
    )


def test_a_context_larger_than_the_model_supports_is_refused(real_models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match=r"larger than .* supports \(8192\)"):
        LlamaModel(real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=100_000))


def test_same_seed_same_model_same_run(real_models: dict[str, Path], tmp_path: Path) -> None:
    """Two fresh loads of the model, seed 0, temperature 0: the same replies, step by step."""
    runs = []
    for attempt in ("one", "two"):
        model = LlamaModel(real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=2048))
        record = RunRecord.create(tmp_path / "runs", attempt, {})
        Agent(
            PROFILE,
            model,
            builtin_tools(memory=False),
            ToolContext(workspace=Workspace.create(tmp_path / attempt)),
            AgentConfig(max_steps=2),
            record=record,
        ).run()
        steps = [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]
        runs.append([s["completion"]["text"] for s in steps])
    assert runs[0] == runs[1]


def run_settings(tmp_path: Path, goal: str, name: str, memory: Path | None) -> RunSettings:
    """Default rules, continuous, at most 4 steps, in a workspace of its own."""
    return RunSettings(
        Profile("Agent", "an autonomous assistant that pursues its goals", (goal,)),
        None,
        tmp_path,
        tmp_path / name,
        tmp_path / "runs",
        agent=AgentConfig(max_steps=4),
        memory_dir=memory,
        continuous=True,
    )


def run_steps(settings: RunSettings, model: LlamaModel) -> list[dict[str, Any]]:
    """Run the agent `settings` describe on `model`; its recorded steps."""
    agent = session.build_agent(settings, SilentEvents(), None, model)
    agent.record = record = RunRecord.create(settings.runs_dir, "e2e", {})
    agent.run()
    record.close()
    if agent.memory is not None:
        agent.memory.close()  # type: ignore[attr-defined]
    return [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]


ROWS = "How many data rows does people.csv have? Write the number to rows.txt"


def test_finish_is_not_offered_before_a_command_succeeds(
    smollm2: LlamaModel, tmp_path: Path
) -> None:
    settings = run_settings(tmp_path, ROWS, "ws", None)
    settings.workspace.mkdir()
    (settings.workspace / "people.csv").write_text("name,age\nAnn,31\nBo,25\nCy,40\n")
    steps = run_steps(settings, smollm2)
    first_success = next(
        (i for i, s in enumerate(steps) if s["result"] and s["result"]["ok"]), len(steps)
    )
    assert steps[0]["left_out"]["finish"].startswith("finish_after_success")
    for step in steps[: first_success + 1]:
        assert "finish" in step["left_out"]
        assert step["reply"] is None or step["reply"]["command"]["name"] != "finish"
    for step in steps:  # the in-process grammar holds: every reply is valid
        assert step["status"] in ("ok", "finished"), step["error"]


@pytest.mark.embedder
def test_an_unrelated_earlier_run_leaves_no_memory_behind(
    smollm2: LlamaModel, tmp_path: Path
) -> None:
    # The case: a copy-file goal run after a write-a-word goal on one memory folder
    # read "write the word Tangerine" in its thoughts.
    shared = tmp_path / "memory"
    first = "Write the word Tangerine to a file called fruit.txt"
    second = "Copy the text of source.txt to a file called copy.txt"
    run_steps(run_settings(tmp_path, first, "first", shared), smollm2)
    # Both runs use the same workspace path (emptied between them): results that show a path
    # (a traceback) must not differ for that reason alone.
    with_memory = run_settings(tmp_path, second, "second", shared)
    without = run_settings(tmp_path, second, "second", None)
    runs, files = [], []
    for settings in (with_memory, without):
        shutil.rmtree(settings.workspace, ignore_errors=True)
        settings.workspace.mkdir()
        (settings.workspace / "source.txt").write_text("The quick brown fox.\n")
        runs.append(run_steps(settings, smollm2))
        files.append({p.name: p.read_bytes() for p in sorted(settings.workspace.iterdir())})
    shared_steps, alone_steps = runs
    requests = [m["content"] for s in shared_steps for m in s["messages"][1:]]
    assert not any("Tangerine" in text or "reminds you" in text for text in requests)
    # Nothing leaked in: the run ends as the memory-off run does.
    assert files[0] == files[1]
    assert shared_steps[0]["messages"] == alone_steps[0]["messages"]
