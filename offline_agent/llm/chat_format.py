"""Turning chat messages into one prompt string, the model's own way.

We render chat templates ourselves instead of calling `create_chat_completion`, so the
prompt text (and so its token count and its cacheable prefix) is exactly known. Two traps
this avoids: a GGUF with no template silently gets the llama-2 format in llama-cpp-python,
and its built-in gemma format drops the system message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jinja2.sandbox import ImmutableSandboxedEnvironment

from offline_agent.errors import ModelError
from offline_agent.records import Message


@dataclass(frozen=True)
class ChatFormat:
    """How to render messages for one model, and the strings that end its turn."""

    name: str
    render: Callable[[Sequence[Message]], str]
    stop: tuple[str, ...]


def from_template(template: str, bos: str, eos: str) -> ChatFormat:
    """A format from the Jinja chat template stored in a GGUF file."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    compiled = env.from_string(template)

    def render(messages: Sequence[Message]) -> str:
        return compiled.render(
            messages=list(messages), add_generation_prompt=True, bos_token=bos, eos_token=eos
        )

    return ChatFormat("template", render, (eos,))


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
