"""The reply format, defined once: its JSON schema, its text form for the prompt, its parser.

A reply is `{"thoughts": {text, reasoning, plan, criticism}, "command": {name, args}}`
(Auto-GPT's format, "autogpt"), `{"thought": "...", "command": {name, args}}` with one
short thought ("compact": small models reason better briefly, see `docs/benchmarks.md`), or
`{"command": {name, args}}` alone ("command": no thought to copy from step to step).
The schema has one `anyOf` branch per registered command, so a grammar built from it
constrains the command name and its argument names and types, not only JSON syntax.
Decoding is never trusted: every reply is parsed and validated here, whichever backend
produced it (llama-cpp-python silently falls back to generic JSON for schemas it cannot
convert, and servers may ignore `response_format` altogether).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

import json_repair
import jsonschema

from offline_agent.errors import FormatError, ToolError, TruncatedReplyError
from offline_agent.records import CommandCall, Completion, Reply, Thoughts
from offline_agent.tools.base import ToolRegistry

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


def reply_schema(tools: ToolRegistry, reply_format: ReplyFormat = "autogpt") -> dict[str, Any]:
    """JSON schema of a reply: thoughts first, then one branch per command."""
    thoughts = _thoughts_schema(reply_format)
    branches = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "args": t.args_schema()},
            "required": ["name", "args"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    first = dict([thoughts]) if thoughts else {}
    return {
        "type": "object",
        "properties": {**first, "command": {"anyOf": branches}},
        "required": [*first, "command"],
        "additionalProperties": False,
    }


def schema_digest(schema: dict[str, Any]) -> str:
    """sha256 of a schema in its canonical JSON form."""
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode("utf-8")).hexdigest()


def format_text(reply_format: ReplyFormat = "autogpt") -> str:
    """The reply format as the model reads it in the system prompt.

    Prose rather than a JSON example with placeholder values: small models copy an example
    word for word, and the grammar already enforces the syntax.
    """
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
    if completion.finish_reason == "length":
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
        tool.check_args(args)
    except ToolError as err:
        raise FormatError(str(err)) from None
    outer = {k: v for k, v in schema["properties"].items() if k != "command"}
    _validate(
        data,
        {k: v for k, v in schema.items() if k != "properties"}
        | {"properties": {**outer, "command": {}}},
    )
    _validate(args, tool.args_schema(), where=f"command/args of {name}")
    if "thoughts" in outer:
        thoughts = Thoughts(**data["thoughts"])
    else:
        thoughts = Thoughts(text=data.get("thought", ""))
    return Reply(thoughts, CommandCall(name, args))


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
