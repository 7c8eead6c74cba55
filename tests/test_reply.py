"""The reply schema and grammar are built from the command registry; parsing validates."""

from __future__ import annotations

import json
from typing import Any

import llama_cpp
import pytest

from offline_agent.errors import FormatError, TruncatedReplyError
from offline_agent.records import Completion
from offline_agent.reply import THOUGHT_FIELDS, parse_reply, reply_schema
from offline_agent.tools import builtin_tools

TOOLS = builtin_tools()
SCHEMA = reply_schema(TOOLS)


def completion(data: Any, finish: str = "stop") -> Completion:
    text = data if isinstance(data, str) else json.dumps(data)
    return Completion(text=text, finish_reason=finish)  # type: ignore[arg-type]


def good(**command: Any) -> dict[str, Any]:
    thoughts = dict.fromkeys(THOUGHT_FIELDS, "x")
    return {"thoughts": thoughts, "command": command}


def test_one_branch_per_command_with_its_own_arguments() -> None:
    branches = SCHEMA["properties"]["command"]["anyOf"]
    assert [b["properties"]["name"]["const"] for b in branches] == TOOLS.names
    write = next(b for b in branches if b["properties"]["name"]["const"] == "write_file")
    args = write["properties"]["args"]
    assert set(args["properties"]) == {"filename", "text"}
    assert args["required"] == ["filename", "text"] and args["additionalProperties"] is False
    assert all("maxLength" in p for p in args["properties"].values())


def test_thoughts_come_before_command() -> None:
    assert list(SCHEMA["properties"]) == ["thoughts", "command"]
    assert list(SCHEMA["properties"]["thoughts"]["properties"]) == list(THOUGHT_FIELDS)


def test_the_grammar_compiles_and_constrains_names_and_order() -> None:
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(SCHEMA), verbose=False)
    gbnf = grammar._grammar
    for name in TOOLS.names:
        assert f'"\\"{name}\\""' in gbnf  # each command name is a literal of the grammar
    root = next(line for line in gbnf.splitlines() if line.startswith("root ::="))
    assert root.index("thoughts") < root.index("command")


def test_a_valid_reply_parses() -> None:
    parsed = parse_reply(
        completion(good(name="write_file", args={"filename": "a", "text": "b"})), TOOLS, SCHEMA
    )
    assert parsed.command.name == "write_file"
    assert parsed.command.args == {"filename": "a", "text": "b"}
    assert parsed.thoughts.plan == "x"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ({"thoughts": {}}, 'no "command"'),
        (good(name="fly", args={}), "unknown command 'fly'"),
        (good(name="finish", args="now"), '"args" of finish must be an object'),
        (good(name="finish", args={"reason": 5}), "reason must be a string"),
        ({**good(name="finish", args={"reason": "r"}), "extra": 1}, "Additional properties"),
        ({"command": {"name": "finish", "args": {"reason": "r"}}}, "'thoughts' is a required"),
    ],
)
def test_invalid_replies_say_what_is_wrong(data: Any, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_reply(completion(data), TOOLS, SCHEMA)


def test_cut_off_json_is_a_truncated_reply() -> None:
    text = json.dumps(good(name="finish", args={"reason": "r"}))[:-5]
    with pytest.raises(TruncatedReplyError):
        parse_reply(completion(text, "length"), TOOLS, SCHEMA)


def test_complete_json_at_the_token_limit_is_accepted() -> None:
    data = good(name="finish", args={"reason": "r"})
    assert parse_reply(completion(data, "length"), TOOLS, SCHEMA).command.name == "finish"


def test_the_command_format_is_the_command_alone() -> None:
    schema = reply_schema(TOOLS, "command")
    assert list(schema["properties"]) == schema["required"] == ["command"]
    call = {"name": "read_file", "args": {"filename": "a.txt"}}
    parsed = parse_reply(completion({"command": call}), TOOLS, schema)
    assert (parsed.command.name, parsed.command.args) == ("read_file", {"filename": "a.txt"})
    assert parsed.thoughts.text == ""
    with pytest.raises(FormatError, match="Additional properties"):  # no thought slips in
        parse_reply(completion({"thought": "t", "command": call}), TOOLS, schema)
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    assert "thought" not in grammar._grammar
