"""Shared fixtures and helpers: the real model files, found where `offline-agent models fetch`
put them; scripted replies and an agent built around a scripted model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from offline_agent import modelstore
from offline_agent.agent import Agent, AgentConfig
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.records import Profile
from offline_agent.runs import RunRecord
from offline_agent.state import Rules
from offline_agent.tools import ToolContext, ToolRegistry, builtin_tools, tool
from offline_agent.tools.base import Short
from offline_agent.workspace import Workspace

REAL_MODELS = ("smollm2-135m", "gemma3-270m")

NONE = Rules.none()
"""Every step rule off: the loop's own behaviour, which most scripted tests exercise."""


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """The real registered files in the default models dir; skip (or fail in CI) if absent."""
    registry = modelstore.load_registry(None)
    models_dir = modelstore.default_models_dir()
    found, missing = {}, []
    for name in REAL_MODELS:
        spec = registry.get(name)
        path = spec.location(models_dir)
        if path.is_file() and path.stat().st_size == spec.size:
            found[name] = path
        else:
            missing.append(name)
    if missing:
        message = f"not fetched into {models_dir}: {', '.join(missing)}"
        if os.environ.get("OFFLINE_AGENT_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message + " (run: offline-agent models fetch --all)")
    return found


PROFILE = Profile("FileBot", "an assistant that manages files", ("Write Washington to output.txt",))


def reply(name: str, **args: Any) -> dict[str, Any]:
    """A well-formed reply calling `name`, in Auto-GPT's format (`Rules.none()`)."""
    thoughts = {"text": "t", "reasoning": "r", "plan": "p", "criticism": "c"}
    return {"thoughts": thoughts, "command": {"name": name, "args": args}}


def compact(name: str, **args: Any) -> dict[str, Any]:
    """A well-formed reply calling `name`, in the compact format (the default rules)."""
    return {"thought": "t", "command": {"name": name, "args": args}}


FINISH = reply("finish", reason="done")


@tool
def explode(ctx: ToolContext, what: Short) -> str:
    """Fail on purpose.

    Args:
        what: what to say
    """
    raise RuntimeError(f"boom: {what}")


COMPACT_FINISH = compact("finish", reason="done")


def make_agent(
    tmp_path: Path,
    replies: list[Any],
    *,
    tools: ToolRegistry | None = None,
    config: AgentConfig | None = None,
    approve: Any = None,
    context_length: int = 4096,
    rules: Rules | None = None,
) -> tuple[Agent, ScriptedModel, RunRecord]:
    """An agent on a scripted model with a fresh workspace and record; without `rules`, the
    loop as it is with every rule off."""
    model = ScriptedModel(replies, context_length=context_length)
    record = RunRecord.create(tmp_path / "runs", "test", {})
    workspace = Workspace.create(tmp_path / "ws")
    agent = Agent(
        PROFILE,
        model,
        tools or builtin_tools(memory=False),
        ToolContext(workspace=workspace),
        config or AgentConfig(max_steps=10),
        rules=rules or NONE,
        record=record,
        approve=approve,
    )
    return agent, model, record


def script(tmp_path: Path, replies: list[object]) -> str:
    """A scripted model (`--model` value) that gives `replies` in order."""
    path = tmp_path / "replies.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in replies))
    return f"scripted:{path}"
