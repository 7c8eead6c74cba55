"""The reply format, defined once: its JSON schema, its text form for the prompt, its parser.

A reply is `{"thoughts": {text, reasoning, plan, criticism}, "command": {name, args}}`
(Auto-GPT's format, "autogpt"), `{"thought": "...", "command": {name, args}}` with one
short thought ("compact": small models reason better briefly, see `docs/benchmarks.md`), or
`{"command": {name, args}}` alone ("command": no thought to copy from step to step).
The schema has one `anyOf` branch per registered command, so a grammar built from it
constrains the command name and its argument names and types, not only JSON syntax.

With `blocks`, a command's text argument (a file's content, code: `tools.base.Block`) is
left out of its JSON and written after it, between ``` lines, as plain text:

    {"thought": "...", "command": {"name": "write_file", "args": {"filename": "hello.py"}}}
    ```python
    print("Hello, World!")
    ```

Code and text then need no JSON escapes (a quote, a newline), which small models get wrong,
and they look like what models read most: a fenced block. The schema lists these arguments
under `BLOCKS_KEY`; a grammar engine that knows the key (`llm.guidance`) constrains the
block too, and `parse_reply` puts the text back into `args` before validating them.
Decoding is never trusted: every reply is parsed and validated here, whichever backend
produced it (llama-cpp-python silently falls back to generic JSON for schemas it cannot
convert, and servers may ignore `response_format` altogether).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import json_repair
import jsonschema

from offline_agent.errors import FormatError, ToolError, TruncatedReplyError
from offline_agent.records import CommandCall, Completion, Reply, Thoughts
from offline_agent.tools.base import Tool, ToolRegistry

ReplyFormat = Literal["autogpt", "compact", "command"]

THOUGHT_FIELDS: dict[str, tuple[str, int]] = {
    "text": ("the goal you work on now", 60),
    "reasoning": ("what that goal asks for", 60),
    "plan": ("the commands you will run, in order", 60),
    "criticism": ("what could go wrong", 60),
}
"""Field name → (what it is for, the longest string allowed). Bounds stop small models rambling."""

THOUGHT_CHARS = 60
"""The compact format's one thought: about 16 tokens."""


def _thoughts_schema(reply_format: ReplyFormat) -> tuple[str, dict[str, Any]] | None:
    """The key and schema of the thoughts that come before the command (None: no thoughts)."""
    if reply_format == "command":
        return None
    if reply_format == "compact":
        return "thought", {"type": "string", "maxLength": THOUGHT_CHARS}
    return "thoughts", {
        "type": "object",
        "properties": {
            name: {"type": "string", "maxLength": limit}
            for name, (_, limit) in THOUGHT_FIELDS.items()
        },
        "required": list(THOUGHT_FIELDS),
        "additionalProperties": False,
    }


BLOCKS_KEY = "x-blocks"
"""Key of a reply schema: command → the argument its reply writes as a block after the JSON."""

FENCE = "```"


CODE_KEY = "x-code"
"""Key of a schema for the code turn's answer (`code_schema`)."""

CODE_SUFFIX = ".py"
LANGUAGE = "python"
"""The code a reply leaves to a turn of its own (`offline_agent.codeturn`): a Python file's,
the language the agent's commands run."""


def code_arg(tool: Tool) -> str:
    """The argument of `tool` that may hold a Python file's text ("" if none): the text block
    of a command that writes a file."""
    return tool.block if tool.block and file_arg(tool) else ""


def file_arg(tool: Tool) -> str:
    """The argument naming the file a command writes its text to ("" if none)."""
    return next((a for a, n in tool.names.items() if n.kind in ("target", "appended")), "")


def language_of(tool: Tool, args: dict[str, Any]) -> str:
    """The language of the code a call of `tool` with `args` writes to a file, from the
    file's suffix ("" when it writes no code)."""
    if not code_arg(tool):
        return ""
    name = args.get(file_arg(tool))
    return LANGUAGE if isinstance(name, str) and name.endswith(CODE_SUFFIX) else ""


def split_code(tool: Tool, args_schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The `args` schemas of `tool` in a reply: without its code argument where it writes
    code, with it where it does not (a file of another kind). One schema if nothing splits."""
    arg = code_arg(tool)
    if not arg:
        return [args_schema]
    without = {
        **args_schema,
        "properties": {k: v for k, v in args_schema["properties"].items() if k != arg},
        "required": [k for k in args_schema["required"] if k != arg],
    }
    named = file_arg(tool)
    spec = args_schema["properties"][named]
    code_file, other_file = _split_names(spec)
    branches = []
    if code_file is not None:
        branches.append(_with_file(without, named, code_file))
    if other_file is not None:
        branches.append(_with_file(args_schema, named, other_file))
    return branches


def _with_file(schema: dict[str, Any], arg: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "properties": {**schema["properties"], arg: spec}}


def _split_names(spec: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A file argument's schema split into (Python files, other files); None where no name
    is left. An enum is split by its values, a free string by a pattern on its end."""
    if "enum" in spec:
        code = [v for v in spec["enum"] if v.endswith(CODE_SUFFIX)]
        other = [v for v in spec["enum"] if not v.endswith(CODE_SUFFIX)]
        return (
            {**spec, "enum": code} if code else None,
            {**spec, "enum": other} if other else None,
        )
    longest = spec.get("maxLength")
    free = {k: v for k, v in spec.items() if k != "maxLength"}  # the pattern holds the bound
    stem = f".{{1,{longest - len(CODE_SUFFIX)}}}" if longest else ".+"
    return (
        free | {"pattern": f"^{stem}{re.escape(CODE_SUFFIX)}$"},
        free | {"pattern": _not_ending(CODE_SUFFIX, longest)},
    )


def _not_ending(suffix: str, longest: int | None) -> str:
    """A regex of the strings (up to `longest` characters) that do not end with `suffix`:
    shorter than it, or differing from it in one of its last characters."""
    n = len(suffix)
    differ = "|".join(
        "." * i + f"[^{re.escape(c)}]" + "." * (n - 1 - i) for i, c in enumerate(suffix)
    )
    head = f".{{0,{longest - n}}}" if longest else ".*"
    return f"^(.{{1,{n - 1}}}|{head}({differ}))$"


def code_schema(
    language: str, max_tokens: int, header: str = "", restart: str = ""
) -> dict[str, Any]:
    """The schema of the code turn's answer: one fenced block of `language`, its opening
    fence and tag forced, its code at most `max_tokens` tokens (then it ends, unclosed, as a
    JSON string ends at its `maxLength`); `llm.guidance.reply_grammar` builds its grammar.
    With a `header`, the code begins with it, forced, and then with a statement; it also ends
    where a line begins with `restart`."""
    extra = {"header": header, "restart": restart} if header else {}
    return {CODE_KEY: {"language": language, "max_tokens": max_tokens} | extra}


def reply_schema(
    tools: ToolRegistry,
    reply_format: ReplyFormat = "autogpt",
    blocks: bool = False,
    code_turn: bool = False,
) -> dict[str, Any]:
    """JSON schema of a reply: thoughts first, then one branch per command; with `blocks`,
    the text arguments are left out of the JSON and listed under `BLOCKS_KEY`; with
    `code_turn` (and not `blocks`), a Python file's text is left out, for a turn of its own
    (`offline_agent.codeturn`): a command that writes files has a branch per kind of file."""
    thoughts = _thoughts_schema(reply_format)
    in_blocks = {t.name: t.block for t in tools if blocks and t.block}
    branches = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "args": args},
            "required": ["name", "args"],
            "additionalProperties": False,
        }
        for t in tools
        for args in (
            split_code(t, t.args_schema())
            if code_turn and not blocks
            else [_args(t, in_blocks.get(t.name))]
        )
    ]
    first = dict([thoughts]) if thoughts else {}
    schema = {
        "type": "object",
        "properties": {**first, "command": {"anyOf": branches}},
        "required": [*first, "command"],
        "additionalProperties": False,
    }
    return schema | ({BLOCKS_KEY: in_blocks} if in_blocks else {})


def _args(tool: Tool, block: str | None) -> dict[str, Any]:
    """The schema of a command's `args` in the JSON: without the argument written as a block."""
    schema = tool.args_schema()
    if block is None:
        return schema
    return schema | {
        "properties": {k: v for k, v in schema["properties"].items() if k != block},
        "required": [k for k in schema["required"] if k != block],
    }


def split_blocks(schema: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """A reply schema as JSON schemas without `BLOCKS_KEY`: one for the commands written as
    JSON alone (None if every command has a block), and one per command with a block."""
    blocks = schema.get(BLOCKS_KEY, {})
    plain = {k: v for k, v in schema.items() if k != BLOCKS_KEY}
    if not blocks:
        return plain, {}
    branches = plain["properties"]["command"]["anyOf"]

    def only(kept: list[dict[str, Any]]) -> dict[str, Any]:
        command = {"anyOf": kept}
        return plain | {"properties": plain["properties"] | {"command": command}}

    alone = [b for b in branches if b["properties"]["name"]["const"] not in blocks]
    with_block = {
        b["properties"]["name"]["const"]: only([b])
        for b in branches
        if b["properties"]["name"]["const"] in blocks
    }
    return (only(alone) if alone else None), with_block


def schema_digest(schema: dict[str, Any]) -> str:
    """sha256 of a schema in its canonical JSON form."""
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode("utf-8")).hexdigest()


def format_text(reply_format: ReplyFormat = "autogpt", blocks: dict[str, str] | None = None) -> str:
    """The reply format as the model reads it in the system prompt; `blocks`: command → the
    argument written after the JSON.

    Prose rather than a JSON example with placeholder values: small models copy an example
    word for word, and the grammar already enforces the syntax.
    """
    return _json_text(reply_format) + (_blocks_text(blocks) if blocks else "")


def _blocks_text(blocks: dict[str, str]) -> str:
    named = ", ".join(f'the "{arg}" of {command}' for command, arg in blocks.items())
    return (
        f' Leave {named} out of "args": write it after the JSON object, from a line '
        f"{FENCE} to a line {FENCE}, as plain text."
    )


def _json_text(reply_format: ReplyFormat) -> str:
    if reply_format == "command":
        return (
            'one JSON object with one key, "command": an object with "name" (one of the '
            'commands above) and "args" (that command\'s arguments).'
        )
    if reply_format == "compact":
        thoughts = '"thought", a few words on what the next step does'
    else:
        fields = ", ".join(f'"{name}" ({what})' for name, (what, _) in THOUGHT_FIELDS.items())
        thoughts = f'"thoughts", an object with {fields}'
    return (
        "one JSON object with two keys: "
        f"{thoughts}; then "
        '"command", an object with "name" (one of the commands above) and "args" '
        "(that command's arguments)."
    )


def _load_json(text: str) -> Any:
    """Strict JSON first; `json_repair` only for output that was not constrained."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        pass
    repaired = json_repair.loads(text)
    if not isinstance(repaired, dict) or not repaired:
        raise FormatError("Your reply was not a JSON object. Reply with JSON only.")
    return repaired


def parse_reply(
    completion: Completion,
    tools: ToolRegistry,
    schema: dict[str, Any],
    unavailable: Mapping[str, str] | None = None,
) -> Reply:
    """Validate a completion against the reply schema; FormatError says what is wrong.
    A think block before the JSON (a reasoning model's) is not part of the reply.
    `unavailable` maps the commands left out of this step to why, for that message."""
    text = completion.answer.strip()
    blocks: dict[str, str] = schema.get(BLOCKS_KEY, {})
    text, block = _cut_block(text) if blocks else (text, None)
    cut = completion.finish_reason == "length"
    if cut and block is None and blocks:  # an unclosed block: the JSON parses, the reply is cut
        raise TruncatedReplyError("Your reply was cut off by the token limit. Keep it short.")
    if cut:
        try:
            json.loads(text, strict=False)
        except json.JSONDecodeError:
            raise TruncatedReplyError(
                "Your reply was cut off by the token limit. Keep every field short."
            ) from None
    data = _load_json(text)
    if not isinstance(data, dict):
        raise FormatError("Your reply was not a JSON object. Reply with JSON only.")
    command = data.get("command")
    if not isinstance(command, dict) or not isinstance(command.get("name"), str):
        raise FormatError('Your reply has no "command" object with a "name".')
    name = command["name"]
    if unavailable and name in unavailable:
        raise FormatError(
            f"{name} cannot be used now ({unavailable[name]}); use one of: {', '.join(tools.names)}"
        )
    try:
        tool = tools.get(name)
        args = command.get("args", {})
        if not isinstance(args, dict):
            raise ToolError(f'"args" of {name} must be an object')
        args = _with_block(name, args, blocks.get(name), block)
        code = _code_to_come(schema, tool, args)
        checked = {**args, code: ""} if code else args
        tool.check_args(checked)
    except ToolError as err:
        raise FormatError(str(err)) from None
    outer = {k: v for k, v in schema["properties"].items() if k != "command"}
    _validate(
        data,
        {k: v for k, v in schema.items() if k not in ("properties", BLOCKS_KEY)}
        | {"properties": {**outer, "command": {}}},
    )
    _validate(checked, tool.args_schema(), where=f"command/args of {name}")
    if "thoughts" in outer:
        thoughts = Thoughts(**data["thoughts"])
    else:
        thoughts = Thoughts(text=data.get("thought", ""))
    return Reply(thoughts, CommandCall(name, args))


def _code_to_come(schema: dict[str, Any], tool: Tool, args: dict[str, Any]) -> str:
    """The argument of a reply's command that a code turn writes after it ("" if none): the
    reply writes code and its schema has a branch without that argument."""
    arg = code_arg(tool)
    if not arg or arg in args or not language_of(tool, args):
        return ""
    branches = schema["properties"]["command"].get("anyOf", [])
    without = any(
        b["properties"]["name"].get("const") == tool.name
        and arg not in b["properties"]["args"].get("properties", {})
        for b in branches
    )
    return arg if without else ""


_BLOCK = re.compile(r"\n?" + FENCE + r"[\w+.-]*\n(.*?)\n?" + FENCE + r"\Z", re.DOTALL)


def _cut_block(text: str) -> tuple[str, str | None]:
    """(the JSON, the text of the block after it, None if there is none)."""
    start = text.find("\n" + FENCE)
    if start < 0 or not text[:start].rstrip().endswith("}"):
        return text, None
    match = _BLOCK.match(text, start)
    if match is None:
        return text[:start], None
    return text[:start], match.group(1) + "\n" if match.group(1) else ""


def _with_block(
    name: str, args: dict[str, Any], arg: str | None, block: str | None
) -> dict[str, Any]:
    """`args` with the block's text as `arg`; ToolError when the reply and the schema
    disagree on whether there is one."""
    if arg is None:
        if block is not None:
            raise ToolError(f'{name} takes no text after the JSON; put its arguments in "args"')
        return args
    if block is None and arg in args:  # JSON alone, as a backend without blocks writes it
        return args
    if block is None:
        raise ToolError(
            f'write the "{arg}" of {name} after the JSON object, from a line {FENCE} to a '
            f"line {FENCE}"
        )
    if arg in args:
        raise ToolError(f'the "{arg}" of {name} goes after the JSON, not in "args"')
    return {**args, arg: block}


def _validate(data: Any, schema: dict[str, Any], where: str = "") -> None:
    """jsonschema validation with a one-line error that names the failing field."""
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as err:
        path = "/".join(str(p) for p in err.absolute_path)
        place = "/".join(part for part in (where, path) if part) or "reply"
        if err.validator == "maxLength":
            detail = (
                f"too long ({len(str(err.instance))} characters; at most {err.validator_value})"
            )
        else:
            detail = err.message[:200]
        raise FormatError(f"Invalid reply at {place}: {detail}") from None
