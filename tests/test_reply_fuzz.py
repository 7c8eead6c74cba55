"""Random text thrown at the reply parser never raises anything but our own errors."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from offline_agent.errors import FormatError
from offline_agent.records import Completion
from offline_agent.reply import parse_reply, reply_schema
from offline_agent.tools import builtin_tools

TOOLS = builtin_tools()
SCHEMA = reply_schema(TOOLS)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
near_replies = st.fixed_dictionaries(
    {
        "thoughts": st.dictionaries(
            st.sampled_from(["text", "plan", "x"]), json_values, max_size=4
        ),
        "command": st.fixed_dictionaries(
            {"name": st.sampled_from([*TOOLS.names, "nope", ""]) | json_values, "args": json_values}
        ),
    }
)


def check(text: str, finish: str) -> None:
    try:
        reply = parse_reply(Completion(text, finish), TOOLS, SCHEMA)  # type: ignore[arg-type]
    except FormatError:
        return
    assert reply.command.name in TOOLS


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["stop", "length"]))
def test_random_text(text: str, finish: str) -> None:
    check(text, finish)


@settings(max_examples=150, deadline=None)
@given(near_replies, st.sampled_from(["stop", "length"]), st.integers(0, 400))
def test_almost_valid_replies_and_their_prefixes(
    data: dict[str, object], finish: str, cut: int
) -> None:
    text = json.dumps(data)
    check(text, finish)
    check(text[:cut], finish)
