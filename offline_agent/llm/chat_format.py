"""Turning chat messages into one prompt string, the model's own way.

We render chat templates ourselves instead of calling `create_chat_completion`, so the
prompt text (and so its token count and its cacheable prefix) is exactly known. Two traps
this avoids: a GGUF with no template silently gets the llama-2 format in llama-cpp-python,
and its built-in gemma format drops the system message.

Reasoning models are known here too, from their template: where it can turn thinking off
(Qwen3's and SmolLM3's `enable_thinking`, Nemotron's `/no_think` system flag) it is off
unless asked for; otherwise `Thinking.start` says whether a reply opens with a think block,
which the grammar then bounds (`guidance.think_grammar`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NoReturn

from jinja2 import TemplateError, meta
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


_PROBE_SYSTEM = "PROBE-SYSTEM-7f3a"
_PROBE_USER = "PROBE-USER-7f3a"


class TemplateRaised(Exception):
    """A chat template called raise_exception (e.g. "System role not supported")."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


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


def _think_start(prompt: str, template: str) -> ThinkStart:
    """Where a reply to the probe `prompt` starts: inside a think block its generation prompt
    opened, after an empty one it closed, or free to open one if the template knows them."""
    at = prompt.rfind(_PROBE_USER)
    tail = prompt[at + len(_PROBE_USER) :] if at >= 0 else ""
    opened, closed = tail.rfind(THINK_OPEN), tail.rfind(THINK_CLOSE)
    if opened > closed:
        return "opened"
    if closed >= 0:
        return "never"
    return "may" if THINK_OPEN in template or THINK_CLOSE in template else "never"


def from_template(template: str, bos: str, eos: str, *, thinking: bool = False) -> ChatFormat:
    """A format from the Jinja chat template stored in a GGUF file.

    The template gets what templates in the wild expect (as Hugging Face's tokenizers give
    it): `raise_exception`, `strftime_now`, loop controls, `add_generation_prompt`. A
    template that refuses a system message or leaves it out is detected once, here, with a
    probe conversation: the system message is then folded into the first user turn
    (named "template+folded-system"), never dropped. A template that can switch thinking
    is rendered with it off, or on with `thinking`; the same probe tells where replies
    start (`Thinking`). ModelError when it cannot render.
    """
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    try:
        compiled = env.from_string(template)
        variables = meta.find_undeclared_variables(env.parse(template))
    except TemplateError as err:
        raise ModelError(f"the model's chat template does not parse: {err}") from None
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
            raise ModelError(f"the model's chat template failed: {err}") from None

    def plain(messages: Sequence[Message]) -> str:
        return rendered(_flagged(messages, flag))

    def folded(messages: Sequence[Message]) -> str:
        return rendered(_fold_system(_flagged(messages, flag)))

    probe = [Message(role="system", content=_PROBE_SYSTEM),
             Message(role="user", content=_PROBE_USER)]  # fmt: skip
    try:
        keeps_system = _PROBE_SYSTEM in plain(probe)
    except ModelError:
        keeps_system = False
    if keeps_system:
        name, render = "template", plain
    elif _PROBE_SYSTEM in folded(probe):  # raises if it cannot render even that
        name, render = "template+folded-system", folded
    else:
        raise ModelError("the model's chat template drops the conversation's first message")
    start = _think_start(render(probe), template)
    return ChatFormat(name, render, (eos,), Thinking(start, switch))


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
    name: str, template: str | None, bos: str, eos: str, *, thinking: bool = False
) -> ChatFormat:
    """The format called `name`, or the file's own template when `name` is "template" (with
    thinking on only if `thinking`, where the template can turn it off)."""
    if name == "template":
        if not template:
            known = ", ".join(BUILTIN_FORMATS)
            raise ModelError(
                f"this model file has no chat template; choose a chat format ({known})"
            )
        return from_template(template, bos, eos, thinking=thinking)
    try:
        return BUILTIN_FORMATS[name]
    except KeyError:
        known = ", ".join(["template", *BUILTIN_FORMATS])
        raise ModelError(f"unknown chat format {name!r}; known: {known}") from None
