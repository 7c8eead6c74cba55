"""Worked examples chosen for the goal: the one or two short runs closest to a run's goals.

Small models copy what they are shown; an example of the same kind of work (create, copy,
transform, compute, write or fix a program) shows the pattern a step takes, with names and
values no real task uses. `examples.yaml` is the library; the closest examples by embedding
similarity go into the system prompt after its goal-independent opening, so the saved KV
state of that opening still applies (the `examples` rule; see docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml

from offline_agent.reply import ReplyFormat

Embed = Callable[[Sequence[str]], Any]
"""Texts in, one L2-normalised vector per text out (`Embedder.embed`)."""


@dataclass(frozen=True)
class Example:
    """One worked run: its goal and its steps (thought, command, args, result)."""

    kind: str
    goal: str
    steps: tuple[dict[str, Any], ...]

    def render(self, reply_format: ReplyFormat) -> str:
        """The example as the model reads it: the goal, then each reply and its result."""
        lines = [f"Goal: {self.goal}"]
        for step in self.steps:
            command = {"name": step["command"], "args": step["args"]}
            if reply_format == "command":
                reply = {"command": command}
            elif reply_format == "compact":
                reply = {"thought": step["thought"], "command": command}
            else:
                thoughts = {"text": step["thought"], "reasoning": "", "plan": "", "criticism": ""}
                reply = {"thoughts": thoughts, "command": command}
            lines.append(f"Reply: {json.dumps(reply, ensure_ascii=False)}")
            if "result" in step:
                lines.append(f"Result: {step['result']}")
        return "\n".join(lines)


def library() -> list[Example]:
    """Every example in `examples.yaml`."""
    text = resources.files(__package__).joinpath("examples.yaml").read_text("utf-8")
    return [
        Example(item["kind"], item["goal"], tuple(item["steps"])) for item in yaml.safe_load(text)
    ]


def closest(goals: Sequence[str], embed: Embed, k: int = 1) -> list[Example]:
    """The `k` examples whose goals are most similar to the run's goals, best first."""
    examples = library()
    vectors = np.asarray(embed([" ".join(goals), *(e.goal for e in examples)]))
    scores = vectors[1:] @ vectors[0]
    return [examples[i] for i in np.argsort(-scores)[:k]]
