"""The loop and long-term memory together: each step is remembered, recalls reach the prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from offline_agent import session
from offline_agent.agent import Agent, AgentConfig, SilentEvents
from offline_agent.llm import HttpModel, HttpOptions
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.memory import HashEmbedder, LongTermMemory, open_memory
from offline_agent.records import Completion, Profile, Step
from offline_agent.session import RunSettings
from offline_agent.tools import ToolContext, builtin_tools
from offline_agent.workspace import Workspace
from tests.conftest import COMPACT_FINISH, FINISH, NONE, compact, reply

PROFILE = Profile("Archivist", "an assistant that remembers", ("Find the vault code",))


def run_agent(
    tmp_path: Path, replies: list[object], memory_dir: Path, threshold: float = 0.0
) -> ScriptedModel:
    """A scripted run with memory; the fake embedder's scores are not calibrated, so recall
    has no threshold unless one is given."""
    memory = open_memory(memory_dir, embedder=HashEmbedder())
    model = ScriptedModel(replies)
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"), memory=memory)
    config = AgentConfig(max_steps=10, recall_threshold=threshold)
    agent = Agent(PROFILE, model, builtin_tools(), ctx, config, rules=NONE, memory=memory)
    assert agent.run().status == "finished"
    memory.close()
    return model


def test_memories_from_an_earlier_run_reach_the_prompt(tmp_path: Path) -> None:
    memory_dir = tmp_path / "mem"
    run_agent(
        tmp_path,
        [reply("memory_add", text="The vault code is 4711."), FINISH],
        memory_dir,
    )
    model = run_agent(
        tmp_path,
        [reply("list_files", directory="."), reply("list_files", directory="sub"), FINISH],
        memory_dir,
    )
    # Step 2's request recalls the fact; step 3's does not repeat it: it is still in view.
    second, third = model.calls[1][-1]["content"], model.calls[2][-1]["content"]
    assert second.startswith("This reminds you of these events from your past:")
    assert "- The vault code is 4711." in second
    assert "- The vault code is 4711.\n" not in third and model.calls[2][-4]["content"] == second


def test_a_memory_below_the_threshold_is_not_recalled(tmp_path: Path) -> None:
    memory_dir = tmp_path / "mem"
    run_agent(tmp_path, [reply("memory_add", text="The vault code is 4711."), FINISH], memory_dir)
    steps = [reply("list_files", directory="."), reply("list_files", directory="sub"), FINISH]
    score = open_memory(memory_dir, embedder=HashEmbedder()).recall("vault", 1)[0][0]
    recalled = run_agent(tmp_path, steps, memory_dir, threshold=-1.0).calls[1][-1]["content"]
    assert "- The vault code is 4711." in recalled
    above = run_agent(tmp_path / "b", steps, memory_dir, threshold=0.99).calls[1][-1]["content"]
    assert "reminds you" not in above and score < 0.99


def test_a_memory_in_view_is_not_recalled(tmp_path: Path) -> None:
    memory_dir = tmp_path / "mem"
    run_agent(tmp_path, [reply("memory_add", text="The vault code is 4711."), FINISH], memory_dir)
    model = run_agent(
        tmp_path,
        [reply("memory_search", query="vault code"), reply("list_files", directory="."), FINISH],
        memory_dir,
    )
    # The search's result shows the fact, so no later request repeats it.
    assert "The vault code is 4711." in model.calls[1][-2]["content"]
    assert all("- The vault code is 4711.\n" not in call[-1]["content"] for call in model.calls)


def test_each_step_is_remembered_once(tmp_path: Path) -> None:
    memory_dir = tmp_path / "mem"
    run_agent(tmp_path, [reply("list_files", directory="."), FINISH], memory_dir)
    memory = open_memory(memory_dir, embedder=HashEmbedder())
    hits = memory.recall("list_files", k=10)
    steps = [text for _, text in hits if text.startswith("Assistant reply:")]
    assert len(steps) == 1 and "list_files" in steps[0]


def loading(memory: LongTermMemory) -> bool:
    """Whether the embedder has begun to load (in the background or not)."""
    return memory._preload is not None or memory._store is not None


class LoadWatcher(ScriptedModel, SilentEvents):
    """A scripted model and its agent's events, noting whether memory had begun to load when
    the model was called and when it had replied."""

    def __init__(self, replies: list[Any], memories: list[LongTermMemory]) -> None:
        super().__init__(replies)
        self.memories = memories  # the one the agent opens
        self.seen: list[tuple[str, bool]] = []

    def complete(self, *args: Any, **kwargs: Any) -> Completion:
        self.seen.append(("called", loading(self.memories[0])))
        return super().complete(*args, **kwargs)

    def replied(self, step: Step) -> None:
        self.seen.append(("replied", loading(self.memories[0])))


def hashed_memories(monkeypatch: pytest.MonkeyPatch) -> list[LongTermMemory]:
    """The memories `build_agent` opens from now on, with the fast hashing embedder."""
    memories: list[LongTermMemory] = []

    def hashed_memory(memory_dir: Path, **options: Any) -> LongTermMemory:
        memories.append(open_memory(memory_dir, embedder=HashEmbedder(), **options))
        return memories[-1]

    monkeypatch.setattr(session, "open_memory", hashed_memory)
    return memories


def memory_settings(tmp_path: Path) -> RunSettings:
    """A run's settings with long-term memory on, everything under `tmp_path`."""
    return RunSettings(
        PROFILE, None, tmp_path, tmp_path / "ws", tmp_path / "runs", memory_dir=tmp_path / "mem"
    )


def test_memory_loads_once_the_first_reply_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading the embedder takes seconds of CPU and of the GIL that the in-process model's
    # first prompt would lose; that prompt recalls nothing, so the load waits for its reply.
    memories = hashed_memories(monkeypatch)
    watcher = LoadWatcher([compact("list_files", directory="."), COMPACT_FINISH], memories)
    agent = session.build_agent(memory_settings(tmp_path), watcher, None, watcher)
    assert agent.run().status == "finished"
    memories[0].close()
    assert watcher.seen[:2] == [("called", False), ("replied", True)]


def test_memory_loads_at_once_when_the_model_is_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memories = hashed_memories(monkeypatch)
    server = HttpModel(HttpOptions("http://127.0.0.1:9/v1"), "m")  # not called: no step runs
    session.build_agent(memory_settings(tmp_path), SilentEvents(), None, server)
    assert loading(memories[0])
    memories[0].close()
