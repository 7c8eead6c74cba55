"""Turning chat messages into one prompt string, the model's own way.

We render chat templates ourselves instead of calling `create_chat_completion`, so the
prompt text (and so its token count and its cacheable prefix) is exactly known. Two traps
this avoids: a GGUF with no template silently gets the llama-2 format in llama-cpp-python,
and its built-in gemma format drops the system message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from offline_agent.errors import ModelError
from offline_agent.records import Message


@dataclass(frozen=True)
class ChatFormat:
    """How to render messages for one model, and the strings that end its turn."""

    name: str
    render: Callable[[Sequence[Message]], str]
    stop: tuple[str, ...]


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


def from_template(template: str, bos: str, eos: str) -> ChatFormat:
    """A format from the Jinja chat template stored in a GGUF file.

    The template gets what templates in the wild expect (as Hugging Face's tokenizers give
    it): `raise_exception`, `strftime_now`, loop controls, `add_generation_prompt`. A
    template that refuses a system message or leaves it out is detected once, here, with a
    probe conversation: the system message is then folded into the first user turn
    (named "template+folded-system"), never dropped. ModelError when it cannot render.
    """
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    try:
        compiled = env.from_string(template)
    except TemplateError as err:
        raise ModelError(f"the model's chat template does not parse: {err}") from None

    def plain(messages: Sequence[Message]) -> str:
        try:
            return compiled.render(
                messages=list(messages), add_generation_prompt=True, bos_token=bos, eos_token=eos
            )
        except (TemplateError, TemplateRaised, TypeError, ValueError) as err:
            raise ModelError(f"the model's chat template failed: {err}") from None

    def folded(messages: Sequence[Message]) -> str:
        return plain(_fold_system(messages))

    probe = [Message(role="system", content=_PROBE_SYSTEM),
             Message(role="user", content=_PROBE_USER)]  # fmt: skip
    try:
        keeps_system = _PROBE_SYSTEM in plain(probe)
    except ModelError:
        keeps_system = False
    if keeps_system:
        return ChatFormat("template", plain, (eos,))
    if _PROBE_SYSTEM not in folded(probe):  # raises if it cannot render even that
        raise ModelError("the model's chat template drops the conversation's first message")
    return ChatFormat("template+folded-system", folded, (eos,))


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


def chat_format_for(name: str, template: str | None, bos: str, eos: str) -> ChatFormat:
    """The format called `name`, or the file's own template when `name` is "template"."""
    if name == "template":
        if not template:
            known = ", ".join(BUILTIN_FORMATS)
            raise ModelError(
                f"this model file has no chat template; choose a chat format ({known})"
            )
        return from_template(template, bos, eos)
    try:
        return BUILTIN_FORMATS[name]
    except KeyError:
        known = ", ".join(["template", *BUILTIN_FORMATS])
        raise ModelError(f"unknown chat format {name!r}; known: {known}") from None
