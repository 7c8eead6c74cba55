"""The KV state of a prompt's opening saved on disk: a hit restores it, a bad file is a miss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from offline_agent.agent import SilentEvents
from offline_agent.errors import StorageError
from offline_agent.llm.guidance import common_prefix
from offline_agent.llm.kvcache import PrefixCache
from offline_agent.llm.llama import LlamaModel, LlamaOptions
from offline_agent.prompt import PromptBuilder
from offline_agent.records import Completion, Message, Profile
from offline_agent.reply import reply_schema
from offline_agent.session import RunSettings, build_agent, opening_prompt
from offline_agent.tools import builtin_tools

pytestmark = [pytest.mark.model, pytest.mark.slow]

TOOLS = builtin_tools(memory=False)
SCHEMA = reply_schema(TOOLS)
WASHINGTON = "Write the word Washington to a file named output.txt"
PARIS = "Find the capital of France and write it to capital.txt"


def load(path: Path, state_dir: Path | None, **options: Any) -> LlamaModel:
    return LlamaModel(path, "template", LlamaOptions(n_ctx=2048, **options), state_dir=state_dir)


def first_prompt(model: LlamaModel, goal: str) -> list[Message]:
    profile = Profile("FileBot", "an assistant that manages files", (goal,))
    return PromptBuilder(profile, TOOLS, model, 512).build([])


def ask(model: LlamaModel, goal: str = WASHINGTON) -> Completion:
    return model.complete(first_prompt(model, goal), schema=SCHEMA, max_tokens=24)


@pytest.fixture
def smollm2(real_models: dict[str, Path]) -> Path:
    return real_models["smollm2-135m"]


def test_a_saved_opening_is_restored_by_a_new_process_with_the_same_reply(
    smollm2: Path, tmp_path: Path
) -> None:
    uncached = ask(load(smollm2, None))
    cold = ask(load(smollm2, tmp_path))
    assert cold.usage.cached_tokens == 0  # evaluated, then saved
    assert len(list(tmp_path.glob("*.kv"))) == 1
    warm = ask(load(smollm2, tmp_path))
    assert warm.usage.cached_tokens == 512  # one batch restored from disk, not evaluated
    assert warm.usage.prompt_tokens == cold.usage.prompt_tokens > 512
    # Restored or evaluated, the opening holds the same floats: the same reply.
    assert uncached.text == cold.text == warm.text


def test_a_model_with_a_sliding_window_saves_no_state(
    real_models: dict[str, Path], tmp_path: Path
) -> None:
    """Gemma-3-270M attends within a 512-token window: llama.cpp restores its saved states
    with other floats than the process that saved them held (a greedy reply then differed),
    so none is saved, and `models warm` says so in one line."""
    gemma = real_models["gemma3-270m"]

    def gemma_ask(state_dir: Path | None) -> Completion:
        model = LlamaModel(gemma, "gemma", LlamaOptions(n_ctx=2048), state_dir=state_dir)
        messages = first_prompt(model, WASHINGTON + " Keep every line short." * 60)
        assert model.count_tokens(messages) > 1100  # past two batches of 512
        return model.complete(messages, schema=SCHEMA, max_tokens=24)

    uncached = gemma_ask(None)
    cold = gemma_ask(tmp_path)
    assert list(tmp_path.iterdir()) == []
    again = gemma_ask(tmp_path)
    assert again.usage.cached_tokens == 0
    assert uncached.text == cold.text == again.text
    model = LlamaModel(gemma, "gemma", LlamaOptions(n_ctx=2048), state_dir=tmp_path)
    with pytest.raises(StorageError, match="sliding window of 512 tokens"):
        model.save_opening(first_prompt(model, WASHINGTON))


def test_the_opening_is_shared_by_runs_with_other_goals(smollm2: Path, tmp_path: Path) -> None:
    ask(load(smollm2, tmp_path), WASHINGTON)
    model = load(smollm2, tmp_path)
    assert ask(model, PARIS).usage.cached_tokens == 512
    assert ask(load(smollm2, None), PARIS).text == ask(load(smollm2, tmp_path), PARIS).text
    assert len(list(tmp_path.glob("*.kv"))) == 1


def test_the_llama_engine_counts_restored_tokens_as_cached(smollm2: Path, tmp_path: Path) -> None:
    assert ask(load(smollm2, tmp_path, grammar_engine="llama")).usage.cached_tokens == 0
    warm = ask(load(smollm2, tmp_path, grammar_engine="llama"))
    assert warm.usage.cached_tokens == 512


def test_a_bad_state_file_is_ignored_and_replaced(smollm2: Path, tmp_path: Path) -> None:
    expected = ask(load(smollm2, tmp_path)).text
    (saved,) = tmp_path.glob("*.kv")
    good = saved.read_bytes()
    damaged = {
        "garbage": b"not a state file",
        "flipped byte": good[:-100] + bytes([good[-100] ^ 1]) + good[-99:],
        "truncated": good[: len(good) // 2],
        "another model's": good.replace(b"size", b"sizf", 1),  # stale: its header differs
    }
    for damage, data in damaged.items():
        saved.write_bytes(data)
        completion = ask(load(smollm2, tmp_path))
        assert completion.usage.cached_tokens == 0, damage  # a miss: all evaluated
        assert completion.text == expected, damage
        assert saved.read_bytes() == good, damage  # rewritten whole
    assert ask(load(smollm2, tmp_path)).usage.cached_tokens == 512


def test_an_unwritable_folder_only_costs_the_saving(smollm2: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    completion = ask(load(smollm2, blocker / "kv-cache"))
    assert completion.usage.cached_tokens == 0
    assert completion.text


def test_only_the_most_recently_used_files_are_kept(smollm2: Path, tmp_path: Path) -> None:
    model = load(smollm2, None)
    cache = PrefixCache(model._llm, smollm2, tmp_path, max_files=2)
    stale, fresh = tmp_path / "killed.tmp", tmp_path / "saving.tmp"
    stale.write_bytes(b"half a state")
    fresh.write_bytes(b"half a state")
    os.utime(stale, ns=(0, 0))
    for i in range(3):
        cache.save([i])
        os.utime(cache.path([i]), ns=(i * 10**9, i * 10**9))
    assert not cache.path([0]).exists()
    assert not stale.exists() and fresh.exists()  # another process may be writing it
    assert cache.path([1]).exists() and cache.path([2]).exists()
    assert cache.load([1])  # a hit marks the file as used just now
    cache.save([3])
    assert sorted(p.name for p in tmp_path.glob("*.kv")) == sorted(
        [cache.path([1]).name, cache.path([3]).name]
    )


def test_models_warm_saves_what_a_first_run_then_restores(smollm2: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OFFLINE_AGENT_HOME": str(tmp_path / "home"),
        "OFFLINE_AGENT_MODELS": str(smollm2.parent),
    }

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "offline_agent", *args],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert done.returncode in (0, 10), done.stderr  # 10: a run's step limit
        return done.stdout

    # Memory commands are offered only on request (`--rule memory_commands=on`), so the
    # openings of runs with and without memory are the same: one is saved.
    assert "prompt openings 512 tokens evaluated" in cli("models", "warm")
    assert len(list((tmp_path / "home" / "kv-cache").glob("*.kv"))) == 1
    assert "saved already" in cli("models", "warm", "smollm2-135m")
    cli("run", "--goal", WASHINGTON, "--continuous", "--max-steps", "1", "--no-memory",
        "--workspace", str(tmp_path / "ws"))  # fmt: skip
    (steps,) = (tmp_path / "home" / "runs").glob("*/steps.jsonl")
    first = next(e for e in map(json.loads, steps.read_text().splitlines()) if e["type"] == "step")
    assert first["step"]["completion"]["usage"]["cached_tokens"] == 512  # restored, not evaluated


@pytest.mark.parametrize("memory", [True, False])
def test_what_models_warm_saves_opens_a_real_runs_first_prompt(
    smollm2: Path, tmp_path: Path, memory: bool
) -> None:
    model = load(smollm2, None)
    settings = RunSettings(
        Profile("Agent", "an assistant that manages files", (WASHINGTON,)), None,
        smollm2.parent, tmp_path / "ws", tmp_path / "runs",
        memory_dir=tmp_path / "mem" if memory else None,
    )  # fmt: skip
    agent = build_agent(settings, SilentEvents(), None, model)
    first = model._tokens(agent.prompt.build([], [], []))[1]
    warmed = model._tokens(opening_prompt(model, memory=memory))[1]
    assert common_prefix(first, warmed) >= model._llm.n_batch  # the saved batch is a hit
