"""The reply schema and grammar are built from the command registry; parsing validates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from llguidance import LLMatcher

from offline_agent.errors import FormatError, TruncatedReplyError
from offline_agent.llm.guidance import reply_grammar
from offline_agent.records import Completion
from offline_agent.reply import BLOCKS_KEY, THOUGHT_FIELDS, parse_reply, reply_schema
from offline_agent.state import Rules
from offline_agent.tools import builtin_tools
from tests.conftest import BYTE_TOKENIZER, COMPACT_FINISH, accepts, byte_tokens, compact, make_agent

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


# --- Text blocks: a command's text after the JSON, between ``` lines ----------------------

BLOCKS = reply_schema(TOOLS, "compact", blocks=True)


def _write(text_after: str, **args: Any) -> Completion:
    data = {"thought": "x", "command": {"name": "write_file", "args": {"filename": "a.py", **args}}}
    return completion(json.dumps(data) + text_after)


def test_text_arguments_leave_the_json_for_a_block() -> None:
    assert BLOCKS[BLOCKS_KEY] == {
        "write_file": "text", "append_file": "text", "execute_python_code": "code"
    }  # fmt: skip
    branches = {
        b["properties"]["name"]["const"]: b for b in BLOCKS["properties"]["command"]["anyOf"]
    }
    write_args = branches["write_file"]["properties"]["args"]
    assert set(write_args["properties"]) == {"filename"} and write_args["required"] == ["filename"]
    assert BLOCKS_KEY not in reply_schema(TOOLS, "compact")  # off unless asked


def test_a_block_becomes_the_argument_with_its_last_newline() -> None:
    code = 'print("Hello, World!")\nprint(\'a "quoted" word\')'
    parsed = parse_reply(_write(f"\n```python\n{code}\n```"), TOOLS, BLOCKS)
    assert parsed.command.args == {"filename": "a.py", "text": code + "\n"}
    assert parse_reply(_write("\n```\n```"), TOOLS, BLOCKS).command.args["text"] == ""


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (_write(""), 'write the "text" of write_file after the JSON object'),
        (_write("\n```\nx\n```", text="y"), 'the "text" of write_file goes after the JSON'),
        (
            completion(
                '{"thought": "x", "command": {"name": "read_file", "args": '
                '{"filename": "a"}}}\n```\nx\n```'
            ),
            "read_file takes no text after the JSON",
        ),
    ],
)
def test_a_block_where_none_belongs_or_none_where_one_does(reply: Completion, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_reply(reply, TOOLS, BLOCKS)


def test_the_text_in_the_json_is_still_read_from_a_backend_without_blocks() -> None:
    assert parse_reply(_write("", text="x"), TOOLS, BLOCKS).command.args["text"] == "x"


def test_a_block_cut_off_at_the_token_limit_is_a_truncated_reply() -> None:
    data = json.dumps(
        {"thought": "x", "command": {"name": "write_file", "args": {"filename": "a"}}}
    )
    cut = Completion(text=data + "\n```\nprint(1)\npri", finish_reason="length")
    with pytest.raises(TruncatedReplyError):
        parse_reply(cut, TOOLS, BLOCKS)


def test_a_block_longer_than_the_argument_allows_is_refused() -> None:
    with pytest.raises(FormatError, match="too long"):
        parse_reply(_write("\n```\n" + "x" * 2001 + "\n```"), TOOLS, BLOCKS)


def _block_matcher(schema: dict[str, Any]) -> LLMatcher:
    matcher = LLMatcher(BYTE_TOKENIZER, LLMatcher.grammar_from_lark(reply_grammar(schema)))
    assert not matcher.is_error(), matcher.get_error()
    return matcher


def _json(name: str, **args: Any) -> str:
    return json.dumps({"thought": "x", "command": {"name": name, "args": args}})


def test_the_grammar_asks_for_a_block_exactly_where_the_schema_has_one() -> None:
    write = _json("write_file", filename="a.py")
    for good_reply in (
        write + "\n```python\nprint(`x` + 'y')\n```",  # backticks inside are text
        write + "\n```\n```",
        _json("read_file", filename="a.py"),
    ):
        assert accepts(_block_matcher(BLOCKS), byte_tokens(good_reply)), good_reply
    for bad in (
        write,  # no block
        _json("write_file", filename="a.py", text="x") + "\n```\nx\n```",  # text in the JSON
        _json("read_file", filename="a.py") + "\n```\nx\n```",  # a block where none belongs
        write + "\n```\nx\n```\nmore",  # the block ends at its first fence
        write + "\n```\nx```",  # the closing fence has a line of its own
    ):
        assert not accepts(_block_matcher(BLOCKS), byte_tokens(bad)), bad


def test_every_builtin_reply_schema_with_blocks_compiles() -> None:
    for tools in (builtin_tools(), builtin_tools(memory=False, agents=False, shell=True)):
        for reply_format in ("autogpt", "compact", "command"):
            grammar = LLMatcher.grammar_from_lark(
                reply_grammar(reply_schema(tools, reply_format, blocks=True))  # type: ignore[arg-type]
            )
            is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
            assert not is_error and messages == [], messages


def test_a_run_with_text_blocks_writes_the_block_and_tells_the_model_how(tmp_path: Path) -> None:
    write = json.dumps(compact("write_file", filename="output.txt")) + "\n```\nWashington\n```"
    rules = Rules(text_blocks=True)
    agent, model, _ = make_agent(tmp_path, [write, COMPACT_FINISH], rules=rules)
    agent.run()
    assert (tmp_path / "ws" / "output.txt").read_text() == "Washington\n"
    system = model.calls[0][0]["content"]
    assert 'Leave the "text" of write_file' in system and "```" in system
    replies = [m["content"] for m in model.calls[1] if m["role"] == "assistant"]
    assert replies == [write]  # the history keeps the reply as it was written
    plain = compact("write_file", filename="output.txt", text="Washington")
    agent, model, _ = make_agent(tmp_path / "off", [plain, COMPACT_FINISH], rules=Rules())
    agent.run()
    assert "```" not in model.calls[0][0]["content"]
