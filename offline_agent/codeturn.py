"""Code written in a turn of its own, as a fenced block (rule `code_turn`).

A small model asked for a JSON reply writes a `.py` file's text as prose: SmolLM2-135M gave
`hello.py` the text `Hello, World!`. Asked for the same file in a chat turn, as models are
trained to answer, it writes `print("Hello, World!")` in a ```python block. So, with the
rule on, a command that writes a Python file (`write_file` or `append_file` to a `.py`
file) leaves the code out of its JSON; the agent then asks for it in a turn of its own, and
the answer is constrained to one fenced block:

    assistant: {"thought": "...",
                "command": {"name": "write_file", "args": {"filename": "hello.py"}}}
    user:      Write the full text of hello.py, between ``` lines.
    assistant: ```python
               print("Hello, World!")
               ```

Both turns stay in the history, so the prompt still only grows at its end (the KV cache
holds the JSON's tokens when the question is evaluated). The JSON schema splits such a
command by its file: a branch for Python files without the text, one for other files with
it (`split_code`). Only a grammar engine that can constrain a block (llguidance) writes it;
elsewhere the session turns the rule off. A reasoning model may think again before its
code, within the same bound as before a reply.

Measured, and so left out: `execute_python_code`'s code (SmolLM2 wrote long runs of code
that passed nothing and cost time), and the loop rule `break_loops` inside the block. A
loop broken in code leaves a slightly different file at every rewrite, which the repeat
guard never sees as the same; unbroken, a degenerate rewrite is the same file again, and
the guard ends it (SmolLM2: 1.97 s a step against 2.24).
"""

from __future__ import annotations

from typing import Any

from offline_agent.errors import TruncatedReplyError
from offline_agent.llm.base import ChatModel
from offline_agent.records import Message, Step
from offline_agent.reply import FENCE, code_arg, code_schema, file_arg, language_of
from offline_agent.tools.base import Tool

CODE_TOKENS = 512
"""The most tokens of code a code turn's answer may hold (about the 2,000 characters a
command's text may hold in the JSON); the grammar ends the block there, as a JSON string
ends at its `maxLength`. A small model's code can run on with variations no loop rule
catches: SmolLM2 wrote 1,024 tokens of `()()()...` and of `zzz...`."""

MIN_CODE_TOKENS = 32
"""Fewer tokens of room than this for the code, and the reply counts as cut off."""

FENCE_TOKENS = 8
"""Tokens set aside for the block's fences, beyond its code."""

ASK_PREFIX = "Write the "
"""How every question of the code turn begins (`is_ask`)."""


def ask(tool: Tool, args: dict[str, Any]) -> Message:
    """The question that asks for the code of a call."""
    name = args.get(file_arg(tool))
    what = (
        f"the text to add to {name}" if tool.name == "append_file" else f"the full text of {name}"
    )
    return Message(role="user", content=f"{ASK_PREFIX}{what}, between {FENCE} lines.")


def is_ask(message: Message) -> bool:
    """Whether `message` is a code turn's question (the history holds them between a reply
    and its command's result)."""
    return (
        message["role"] == "user"
        and message["content"].startswith(ASK_PREFIX)
        and (message["content"].endswith(f"between {FENCE} lines."))
    )


def code_text(answer: str, language: str) -> str:
    """The code in a code turn's answer: the block without its fences (a block that reached
    `CODE_TOKENS` has no closing one)."""
    opening = f"{FENCE}{language}\n"
    body = answer[len(opening) :] if answer.startswith(opening) else answer
    return body[: -len(FENCE)] if body.endswith(FENCE) else body


def write_code(
    model: ChatModel,
    step: Step,
    tool: Tool,
    reply_text: str,
    *,
    max_tokens: int,
) -> list[Message]:
    """Ask for the code of the step's command after its reply (`reply_text`, the answer to
    `step.messages`), and put it into the command's arguments: the turn's messages for the
    history ([] when the command writes no code). The answer is kept as `step.code`;
    TruncatedReplyError when its block was cut off."""
    call = step.reply.command if step.reply is not None else None
    language = language_of(tool, call.args) if call is not None else ""
    if call is None or not language or code_arg(tool) in call.args:
        return []
    question = ask(tool, call.args)
    messages = [*step.messages, Message(role="assistant", content=reply_text), question]
    # The prompt set aside room for one reply; the code may take what is left of the context.
    room = model.context_length - model.count_tokens(messages) - FENCE_TOKENS
    bound = min(CODE_TOKENS, max_tokens - FENCE_TOKENS, room)
    if bound < MIN_CODE_TOKENS:
        raise TruncatedReplyError("No room is left in the context for the code. Keep it short.")
    step.code = model.complete(
        messages,
        schema=code_schema(language, bound),
        max_tokens=bound + FENCE_TOKENS,
    )
    if step.code.finish_reason == "length":  # a backend that did not bound the block
        raise TruncatedReplyError("Your code was cut off by the token limit. Keep it short.")
    answer = step.code.answer.strip()
    call.args[code_arg(tool)] = code_text(answer, language)
    return [question, Message(role="assistant", content=answer)]
