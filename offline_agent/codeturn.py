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

A base model (Gemma-3-270M) is not tuned for chat: asked in a turn, it copies the question
into the block. What it was trained on is documents, and it continues one with code. With
rule `code_document`, the code is decoded as a document of its own, from the beginning of
sequence alone, and the block opens, forced, with a docstring naming the file and the goals;
the code after it starts with a statement:

    ```python
    <3 quotes>hello.py: Write a Python script called hello.py that prints Hello, World!<3 quotes>
    print("Hello, World!")

The block ends at its closing fence, at its bound, or where a line begins the docstring
again (`restart`: the model began the file anew). Nothing enters the chat's history but the
JSON reply, and at temperature 0 the same document asked for again is the one decoded
before (a rewrite leaves the file as it is, and the repeat guard sees it). A rewrite's
document sees no earlier text of the file: a fix is written from the goals alone. An append
to a file that holds text continues that text: the document opens with the docstring (unless
the file opens with it already) and the file's text, forced, and the file gets what follows
(a file longer than `CONTINUED_BYTES` is added to in the chat). With rule `code_signature`,
a write's document also opens with the first line of the function a goal names for the
file (`def add(a, b):` and the indent of its body), as HumanEval prompts a model.

Two repairs follow, each a rule (`offline_agent.pyrepair`): with `code_trim`, code that
reached its bound (a small model's code runs on, and stops mid-line) loses its last lines
until it compiles, and an append to a file that compiles is cut back until the file still
does (to nothing if need be); with `code_names`, a top-level statement that reads a name
nothing bound before it is left out (an append asked for in the chat is left as it is: the
file's names are not in view there).
"""

from __future__ import annotations

import keyword
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from offline_agent.errors import TruncatedReplyError, WorkspaceError
from offline_agent.llm.base import ChatModel, writes_documents
from offline_agent.pyrepair import MODULE_NAMES, kept_compiling, pruned, trimmed
from offline_agent.records import Message, Step
from offline_agent.reply import FENCE, code_arg, code_schema, file_arg, language_of
from offline_agent.state import Rules
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

HEADER_CHARS = 600
"""The most characters of the file's name and goals a document's docstring holds (each is
forced, and counted as a token in the code's room)."""

CONTINUED_BYTES = 3000
"""The most bytes of a file's text (with its header) an append's document opens with; past
that the append is asked for in the chat."""

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


def header(name: str, goals: Sequence[str]) -> str:
    """The docstring that opens a document of a file's code (rule `code_document`): the
    file's name and the goals, on one line."""
    said = " ".join(" ".join(text.split()) for text in (f"{name}:", *goals))
    if len(said) > HEADER_CHARS:
        said = said[: HEADER_CHARS - 3].rstrip() + "..."
    said = said.replace("\\", "\\\\").replace('"""', "'''")
    end = " " if said.endswith('"') else ""  # four quotes would close the docstring early
    return f'"""{said}{end}"""\n'


def restart(name: str) -> str:
    """How a document of `name`'s code begins (its header up to the name's colon), where a
    line that begins with it means the model began the file anew; "" for a name of other
    characters than letters, digits and `_./-` (the grammar's pattern then needs none)."""
    return f'"""{name}:' if re.fullmatch(r"[A-Za-z0-9_./-]+", name) else ""


def code_text(answer: str, language: str, again: str = "", forced: str = "") -> str:
    """The code in a code turn's answer: the block without its fences (a block that reached
    `CODE_TOKENS` has no closing one), cut where a line after its `forced` opening begins
    with `again` (`restart`)."""
    opening = f"{FENCE}{language}\n"
    body = answer[len(opening) :] if answer.startswith(opening) else answer
    body = body[: -len(FENCE)] if body.endswith(FENCE) else body
    cut = body.find(f"\n{again}", max(len(forced) - 1, 0)) if again else -1
    return body if cut < 0 else body[: cut + 1]


def continued(name: str, goals: Sequence[str], text: str) -> str:
    """What a document that adds to `name`, which holds `text`, opens with: its header
    (unless the text opens with it already, as a file written as a document does) and the
    text."""
    top = header(name, goals)
    return ("" if text.startswith(top) else top) + text


SIGNATURE = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(\s*([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)?\s*\)")
"""A function named with its parameters in a goal: `add(a, b)`, `is_even(n)`, `main()`;
not a method (`calc.add(a, b)`)."""


def signature(name: str, goals: Sequence[str]) -> str:
    """The first line and indent of the function that the first goal naming the file `name`
    names with its parameters (rule `code_signature`), or "" when it names none (a name
    Python has already, as `print(x)`, or a keyword, is not one)."""
    named = re.compile(rf"(?<![\w.-]){re.escape(posixpath.basename(name))}(?![\w-])")
    for goal in goals:
        if not named.search(goal):
            continue
        for match in SIGNATURE.finditer(goal):
            function, params = match.group(1), match.group(2) or ""
            if function not in MODULE_NAMES and not keyword.iskeyword(function):
                params = ", ".join(p.strip() for p in params.split(",") if p.strip())
                return f"def {function}({params}):\n    "
    return ""


def write_code(
    model: ChatModel,
    step: Step,
    tool: Tool,
    reply_text: str,
    *,
    max_tokens: int,
    rules: Rules | None = None,
    goals: Sequence[str] = (),
    files: Mapping[str, tuple[int, int]] | None = None,
    read: Callable[[str, int], str] | None = None,
) -> list[Message]:
    """Ask for the code of the step's command after its reply (`reply_text`, the answer to
    `step.messages`), and put it into the command's arguments: the turn's messages for the
    history ([] when the command writes no code, or writes it as a document of its own:
    `rules.code_document`, opening with `goals`; an append to a file that holds text
    continues the text `read` gives, and is asked for in the chat when that text is not
    known, or leaves no room: `files`, the workspace's sizes and times by path, tells a
    file that holds text from a missing one when `read` fails). The answer is kept as
    `step.code`; TruncatedReplyError when its block was cut off."""
    rules = rules or Rules(code_turn=True)
    call = step.reply.command if step.reply is not None else None
    language = language_of(tool, call.args) if call is not None else ""
    if call is None or not language or code_arg(tool) in call.args:
        return []
    name = str(call.args.get(file_arg(tool)))
    path = posixpath.normpath(name)
    text = _before(tool, path, files, read)
    opened = _document(name, goals, rules, text)
    writer = model if opened is not None and writes_documents(model) else None
    opening, before = opened if writer is not None and opened is not None else ("", "")
    document = writer is not None
    question = ask(tool, call.args)
    messages = [*step.messages, Message(role="assistant", content=reply_text), question]
    again = restart(name) if document else ""
    forced = FENCE_TOKENS + len(opening.encode())  # a token holds at least a byte
    # The prompt set aside room for one reply; the code may take what is left of the context.
    room = model.context_length - (0 if document else model.count_tokens(messages)) - forced
    bound = min(CODE_TOKENS, max_tokens - FENCE_TOKENS, room)
    if bound < MIN_CODE_TOKENS:
        raise TruncatedReplyError("No room is left in the context for the code. Keep it short.")
    schema = code_schema(language, bound, opening, again)
    if writer is not None:
        step.code = writer.complete_document(schema=schema, max_tokens=bound + forced)
    else:
        step.code = model.complete(messages, schema=schema, max_tokens=bound + forced)
    if step.code.finish_reason == "length":  # a backend that did not bound the block
        raise TruncatedReplyError("Your code was cut off by the token limit. Keep it short.")
    answer = step.code.answer.strip()
    code = code_text(answer, language, again, opening)
    if rules.code_trim and not answer.endswith(FENCE):  # cut off at the bound
        code = trimmed(code, name, opening)
    if rules.code_trim and before:  # an append does not break a file that compiles
        code = kept_compiling(code, name, opening)
    if rules.code_names and (document or text == ""):  # an append in the chat: names unknown
        code = pruned(code, opening)
    if before:  # an append: the file gets what follows its text (nothing, if nothing did)
        code = code[len(before) :] if code.startswith(before) else ""
    call.args[code_arg(tool)] = code
    return [] if document else [question, Message(role="assistant", content=answer)]


def _document(
    name: str, goals: Sequence[str], rules: Rules, text: str | None
) -> tuple[str, str] | None:
    """How a document of `name`'s code opens, and the part of that which is the file's text
    already (`text`, "" for a new file or a rewrite); None when the code is asked for in
    the chat: without `code_document`, or to add to a file whose text could not be read or
    is too long."""
    if not rules.code_document or text is None:
        return None
    if not text:
        return header(name, goals) + (signature(name, goals) if rules.code_signature else ""), ""
    before = continued(name, goals, text)
    opening = before if before.endswith("\n") else before + "\n"  # its code starts a line
    return None if len(opening.encode()) > CONTINUED_BYTES else (opening, before)


def _before(
    tool: Tool,
    path: str,
    files: Mapping[str, tuple[int, int]] | None,
    read: Callable[[str, int], str] | None,
) -> str | None:
    """The text the command's code comes after: the file's for an append ("" for a file
    that is missing or empty), "" for a write; None for an append to a file whose text is
    not known (no `read`, or it failed, while `files` shows the file holding text)."""
    if tool.names[file_arg(tool)].kind != "appended":
        return ""
    try:
        if read is not None:
            return read(path, CONTINUED_BYTES + 1)  # more could not open a document
    except (WorkspaceError, OSError):
        pass  # missing, or not a file it may read
    return "" if (files or {}).get(path, (0, 0))[0] == 0 else None
