"""Turning chat messages into one prompt string, the model's own way.

We render chat templates ourselves instead of calling `create_chat_completion`, so the
prompt text (and so its token count and its cacheable prefix) is exactly known. Two traps
this avoids: a GGUF with no template silently gets the llama-2 format in llama-cpp-python,
and its built-in gemma format drops the system message.

Templates in the wild differ in what they accept (see `from_template`): some refuse a
system message or leave it out, and several want user and assistant turns to alternate
strictly, where a step's request follows the previous command's result. The conversation is
reshaped for them here, once, never by dropping a message.

Reasoning models are known here too, from their template: where it can turn thinking off
(Qwen3's and SmolLM3's `enable_thinking`, Nemotron's `/no_think` system flag) it is off
unless asked for; otherwise `Thinking.start` says whether a reply opens with a think block,
which the grammar then bounds (`guidance.reply_grammar`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NoReturn

from jinja2 import TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from offline_agent.errors import ModelError
from offline_agent.records import THINK_CLOSE, THINK_OPEN, Message

ThinkStart = Literal["never", "may", "opened"]
"""Where a reply starts, as the rendered prompt leaves it: with no think block (not a
reasoning model, or the prompt holds an empty closed one), free to open one, or inside one
the prompt opened (the reply thinks, closes it, then answers)."""


@dataclass(frozen=True)
class Thinking:
    """What a chat format does about a reasoning model's think block."""

    start: ThinkStart = "never"
    switch: str = ""
    """How the template turns thinking on or off ("" when it cannot): a template variable
    (`enable_thinking`, `thinking`) or the `/no_think` flag in the system message."""


@dataclass(frozen=True)
class ChatFormat:
    """How to render messages for one model, and the strings that end its turn."""

    name: str
    render: Callable[[Sequence[Message]], str]
    stop: tuple[str, ...]
    thinking: Thinking = field(default_factory=Thinking)


_PROBE = (
    Message(role="system", content="PROBE-SYSTEM-7f3a"),
    Message(role="user", content="PROBE-REQUEST-7f3a"),
    Message(role="assistant", content="PROBE-REPLY-7f3a"),
    Message(role="user", content="PROBE-RESULT-7f3a"),
    Message(role="user", content="PROBE-USER-7f3a"),
)
"""A conversation shaped as the agent's: the system message, a past step (its request, the
reply, the command's result), then this step's request right after that result."""
_PROBE_USER = _PROBE[-1]["content"]


class TemplateRaised(Exception):
    """A chat template called raise_exception (e.g. "System role not supported")."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(Extension):
    """`{% generation %}…{% endgeneration %}`, with which training templates mark the
    assistant's text (Hugging Face's renderer knows the tag): rendered as its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's own declaration)

    def parse(self, parser: Parser) -> list[nodes.Node]:
        """The statements between the two tags."""
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _merge_turns(messages: Sequence[Message]) -> list[Message]:
    """Messages of one role in a row made one, their texts a blank line apart, for templates
    that want turns to alternate (a step's request follows a command's result)."""
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            content = f"{merged[-1]['content']}\n\n{message['content']}"
            merged[-1] = Message(role=message["role"], content=content)
        else:
            merged.append(message)
    return merged


def _fold_system(messages: Sequence[Message]) -> list[Message]:
    """The system message put at the head of the first user turn, for templates that have
    no system role (they refuse it, or leave it out)."""
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0], list(messages[1:])
    if rest and rest[0]["role"] == "user":
        first = Message(role="user", content=f"{system['content']}\n\n{rest[0]['content']}")
        return [first, *rest[1:]]
    return [Message(role="user", content=system["content"]), *rest]


NO_THINK_FLAG = "/no_think"
"""Put in the system message, turns thinking off in templates that look for it (Nemotron's,
SmolLM3's); the template removes it from the text it renders."""


def _thinking_switch(template: str, variables: set[str], on: bool) -> tuple[dict[str, Any], str]:
    """How to set thinking `on` or off in this template: the variables to render it with,
    and the name of the switch ("" for none). Qwen3, SmolLM3 and GLM-4.5 read
    `enable_thinking` (on unless false); DeepSeek-V3.1 and Granite read `thinking` (off
    unless true); Nemotron reads a `/no_think` flag in the messages."""
    for name in ("enable_thinking", "thinking"):
        if name in variables:
            return {name: on}, name
    if NO_THINK_FLAG in template:
        return {}, NO_THINK_FLAG
    return {}, ""


def _flagged(messages: Sequence[Message], flag: str) -> list[Message]:
    """`flag` added at the end of the system message (none: the messages unchanged)."""
    if not flag or not messages or messages[0]["role"] != "system":
        return list(messages)
    system = messages[0]
    return [Message(role="system", content=f"{system['content']}\n{flag}"), *messages[1:]]


def _think_start(prompt: str, template: str, switched_off: bool) -> ThinkStart:
    """Where a reply to the probe `prompt` starts: inside a think block its generation prompt
    opened, after an empty one it closed, or free to open one if the template knows them and
    thinking was not `switched_off` (Granite 3.3 names the tags only in a text it writes
    with thinking on)."""
    at = prompt.rfind(_PROBE_USER)
    tail = prompt[at + len(_PROBE_USER) :] if at >= 0 else ""
    opened, closed = tail.rfind(THINK_OPEN), tail.rfind(THINK_CLOSE)
    if opened > closed:
        return "opened"
    if closed >= 0 or switched_off:
        return "never"
    return "may" if THINK_OPEN in template or THINK_CLOSE in template else "never"


def _one_line(err: Exception) -> str:
    """An error's message on one line (Jinja's syntax errors add the template's line)."""
    text = f"{err.message} (line {err.lineno})" if isinstance(err, TemplateSyntaxError) else err
    return " ".join(str(text).split()).rstrip(".")


Reshape = Callable[[Sequence[Message]], list[Message]]

_RESHAPES: tuple[tuple[str, Reshape], ...] = (
    ("template", list),
    ("template+merged-turns", _merge_turns),
    ("template+folded-system", _fold_system),
    ("template+folded-system+merged-turns", lambda messages: _merge_turns(_fold_system(messages))),
)
"""The ways a conversation is given to a template, tried in this order: as it is; with
messages of one role in a row merged; with the system message folded into the first user
turn; both."""


def from_template(
    template: str, bos: str, eos: str, *, thinking: bool = False, model: str = "the model"
) -> ChatFormat:
    """A format from the Jinja chat template stored in a GGUF file.

    The template gets what templates in the wild expect (as Hugging Face's tokenizers give
    it): `raise_exception`, `strftime_now`, loop controls, `{% generation %}`,
    `add_generation_prompt`, `bos_token`. How it takes the agent's conversation is found
    once, here, with a probe conversation of the agent's shape: as it is, or reshaped
    (`_RESHAPES`) where the template refuses a system message or leaves it out (folded into
    the first user turn) or wants turns to alternate (messages in a row merged); the name
    says which ("template+folded-system"). A template that can switch thinking is rendered
    with it off, or on with `thinking`; the same probe tells where replies start
    (`Thinking`). ModelError, one line naming `model` and `--chat-format`, when it cannot
    render.
    """
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _GenerationTag],
    )
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)

    def failure(problem: str) -> ModelError:
        known = ", ".join(BUILTIN_FORMATS)
        return ModelError(
            f"{model}'s chat template {problem}; name another chat format with "
            f"--chat-format ({known})"
        )

    try:
        compiled = env.from_string(template)
        variables = meta.find_undeclared_variables(env.parse(template))
    except TemplateError as err:
        raise failure(f"does not parse: {_one_line(err)}") from None
    switch_variables, switch = _thinking_switch(template, variables, thinking)
    flag = NO_THINK_FLAG if switch == NO_THINK_FLAG and not thinking else ""

    def rendered(messages: Sequence[Message]) -> str:
        try:
            return compiled.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=bos,
                eos_token=eos,
                **switch_variables,
            )
        except (TemplateError, TemplateRaised, TypeError, ValueError) as err:
            raise failure(f"failed: {_one_line(err)}") from None

    def reshaped(reshape: Reshape) -> Callable[[Sequence[Message]], str]:
        return lambda messages: rendered(reshape(_flagged(messages, flag)))

    errors: list[ModelError] = []
    for name, reshape in _RESHAPES:
        render = reshaped(reshape)
        try:
            text = render(_PROBE)
        except ModelError as err:
            errors.append(err)
            continue
        if all(message["content"] in text for message in _PROBE):
            switched_off = bool(switch) and not thinking
            return ChatFormat(
                name, render, (eos,), Thinking(_think_start(text, template, switched_off), switch)
            )
    raise errors[0] if errors else failure("leaves out part of the conversation")


def _gemma(messages: Sequence[Message]) -> str:
    """Gemma's turns. Gemma has no system role: the system message becomes its own first
    user turn, always the same, so the prompt's opening (and llama.cpp's KV cache of it)
    does not change as the history grows behind it."""
    parts: list[str] = []
    for message in messages:
        role = "model" if message["role"] == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{message['content']}<end_of_turn>\n")
    return "<bos>" + "".join(parts) + "<start_of_turn>model\n"


def _chatml(messages: Sequence[Message]) -> str:
    """ChatML, for instruction models whose file lacks a template."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


BUILTIN_FORMATS: dict[str, ChatFormat] = {
    "gemma": ChatFormat("gemma", _gemma, ("<end_of_turn>", "<eos>")),
    "chatml": ChatFormat("chatml", _chatml, ("<|im_end|>",)),
}


def chat_format_for(
    name: str,
    template: str | None,
    bos: str,
    eos: str,
    *,
    thinking: bool = False,
    model: str = "the model",
) -> ChatFormat:
    """The format called `name`, or the file's own template when `name` is "template" (with
    thinking on only if `thinking`, where the template can turn it off); errors name
    `model`."""
    if name == "template":
        if not template:
            known = ", ".join(BUILTIN_FORMATS)
            raise ModelError(
                f"{model} has no chat template; choose a chat format with --chat-format ({known})"
            )
        return from_template(template, bos, eos, thinking=thinking, model=model)
    try:
        return BUILTIN_FORMATS[name]
    except KeyError:
        known = ", ".join(["template", *BUILTIN_FORMATS])
        raise ModelError(f"unknown chat format {name!r}; known: {known}") from None
