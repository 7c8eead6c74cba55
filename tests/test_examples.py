"""The library of worked examples: every example is a valid run, and the closest is chosen."""

from __future__ import annotations

import json

import pytest

from offline_agent.memory import HashEmbedder
from offline_agent.prompt.examples import closest, library
from offline_agent.tools import builtin_tools

TOOLS = builtin_tools(memory=True, agents=True, delete=True)


def test_every_example_step_calls_a_real_command_with_valid_arguments() -> None:
    examples = library()
    assert len({e.kind for e in examples}) == len(examples) >= 5
    for example in examples:
        assert example.steps[-1]["command"] == "finish"
        for step in example.steps:
            TOOLS.get(step["command"]).check_args(step["args"])
            assert len(step["thought"]) <= 60  # what the compact format allows


@pytest.mark.parametrize("reply_format", ["compact", "autogpt", "command"])
def test_examples_render_as_replies_in_the_runs_format(reply_format: str) -> None:
    text = library()[0].render(reply_format)  # type: ignore[arg-type]
    lines = text.splitlines()
    assert lines[0] == "Goal: Write the word Maple to a file called tree.txt"
    reply = json.loads(lines[1].removeprefix("Reply: "))
    assert ("thought" in reply) == (reply_format == "compact")
    assert ("thoughts" in reply) == (reply_format == "autogpt")
    assert reply["command"] == {"name": "write_file",
                                "args": {"filename": "tree.txt", "text": "Maple"}}  # fmt: skip
    assert lines[2] == "Result: Wrote 5 characters to tree.txt."


def test_the_closest_example_is_the_one_most_like_the_goals() -> None:
    embed = HashEmbedder().embed
    for example in library():  # its own goal is nearest to itself
        assert closest([example.goal], embed) == [example]
    assert len(closest(["anything"], embed, k=2)) == 2
