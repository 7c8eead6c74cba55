"""The loop and long-term memory together: each step is remembered, recalls reach the prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from offline_agent import session
from offline_agent.agent import Agent, AgentConfig, SilentEvents
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.memory import HashEmbedder, LongTermMemory, open_memory
from offline_agent.prompt import Profile
from offline_agent.records import Completion
from offline_agent.session import RunSettings
from offline_agent.tools import ToolContext, builtin_tools
from offline_agent.workspace import Workspace
from tests.test_agent import FINISH, reply

PROFILE = Profile("Archivist", "an assistant that remembers", ("Find the vault code",))


def run_agent(tmp_path: Path, replies: list[object], memory_dir: Path) -> ScriptedModel:
    memory = open_memory(memory_dir, embedder=HashEmbedder())
    model = ScriptedModel(replies)
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"), memory=memory)
    agent = Agent(PROFILE, model, builtin_tools(), ctx, AgentConfig(max_steps=10), memory=memory)
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


class LoadWatcher(ScriptedModel):
    """A scripted model that notes, at each call, whether memory had begun to load."""

    def __init__(self, replies: list[object], memories: list[LongTermMemory]) -> None:
        super().__init__(replies)
        self.memories = memories  # the one the agent opens
        self.loading: list[bool] = []

    def complete(self, *args: Any, **kwargs: Any) -> Completion:
        (memory,) = self.memories
        self.loading.append(memory._preload is not None or memory._store is not None)
        return super().complete(*args, **kwargs)


def test_memory_loads_after_the_first_reply_not_during_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading the embedder takes seconds of CPU (and Python's lock) that the first prompt's
    # evaluation would lose: step 1 has nothing to recall, so loading waits for its reply.
    memories: list[LongTermMemory] = []

    def hashed_memory(memory_dir: Path) -> LongTermMemory:
        memories.append(open_memory(memory_dir, embedder=HashEmbedder()))
        return memories[-1]

    monkeypatch.setattr(session, "open_memory", hashed_memory)
    settings = RunSettings(
        PROFILE, None, tmp_path, tmp_path / "ws", tmp_path / "runs", memory_dir=tmp_path / "mem"
    )
    model = LoadWatcher([reply("list_files", directory="."), FINISH], memories)
    agent = session.build_agent(settings, SilentEvents(), None, model)
    assert agent.run().status == "finished"
    memories[0].close()
    assert model.loading == [False, True]
