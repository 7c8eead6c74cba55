"""Building each step's prompt so that it fits the context window and keeps the KV cache warm.

Layout, oldest to newest:
1. the system message: constraints, commands, reply format, then identity and goals (fixed
   for the run; its goal-independent opening is the same for every run, so its KV state can be
   restored from disk by a new process, see `llm/kvcache.py`);
2. the history: for each past step, the request it was asked with, the reply and the
   command's result, chronological, appended to;
3. this step's request: new relevant memories, notes, the state of the workspace (see
   `offline_agent.state`), the goals repeated, the question.

The request stays in the history once answered, so a prompt plus its reply is the start of
the next prompt: between two steps the prompt only grows at its end, and llama.cpp evaluates
just the command's result and the new request (the reply's tokens are already in its KV
cache, see `LlamaModel._splice`). A memory is shown once, while it is in view. When the
history no longer fits, the oldest steps are dropped in one large block (down to a third of
the room), not one per step, so the cache is rebuilt rarely.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from jinja2 import Environment, StrictUndefined, Template

from offline_agent.codeturn import is_ask
from offline_agent.errors import ContextOverflowError
from offline_agent.llm.base import ChatModel
from offline_agent.records import Message, Profile
from offline_agent.reply import ReplyFormat, format_text
from offline_agent.tools.base import ToolRegistry


def load_template(name: str) -> Template:
    """A template from `prompt/templates`; undefined variables are errors."""
    env = Environment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    source = resources.files(__package__).joinpath("templates", name).read_text("utf-8")
    return env.from_string(source)


def render(template: str, **variables: Any) -> str:
    """Render `template` and strip surrounding blank lines."""
    return load_template(template).render(**variables).strip()


def step_starts(history: Sequence[Message]) -> list[int]:
    """Where each step's messages begin: after a command's result, which follows a reply.

    A step adds (request, reply, result), with a code turn (request, reply, question, code,
    result); runs recorded before requests were kept added (reply, result), and the rule
    finds all of them.
    """
    return [
        i
        for i in range(len(history))
        if i == 0
        or (
            i >= 2
            and history[i - 1]["role"] == "user"
            and history[i - 2]["role"] == "assistant"
            and not is_ask(history[i - 1])
        )
    ]


def replies_and_results(history: Sequence[Message]) -> list[tuple[Message, Message]]:
    """Each reply in a history with its command's result: the message after it, or after a
    code turn (the question and the code's answer) the one after that."""
    pairs = []
    for i, message in enumerate(history):
        if message["role"] != "assistant" or (i > 0 and is_ask(history[i - 1])):
            continue  # a code turn's answer is not a reply
        result = i + 3 if i + 1 < len(history) and is_ask(history[i + 1]) else i + 1
        if result < len(history):
            pairs.append((message, history[result]))
    return pairs


class PromptBuilder:
    """Assembles the messages for each model call within `model.context_length`."""

    def __init__(
        self,
        profile: Profile,
        tools: ToolRegistry,
        model: ChatModel,
        reply_reserve: int,
        reply_format: ReplyFormat = "autogpt",
        *,
        examples: Sequence[str] = (),
        prose_signatures: bool = False,
        blocks: bool = False,
        memory_share: float = 0.1,
        keep_share: float = 1 / 3,
    ) -> None:
        self.profile = profile
        self.model = model
        self.reply_reserve = reply_reserve
        self.memory_share = memory_share
        self.keep_share = keep_share
        self.system = Message(
            role="system",
            content=render(
                "system.j2",
                name=profile.name,
                role=profile.role,
                goals=profile.goals,
                commands=[t.signature_text(prose_signatures) for t in tools],
                memory="memory_search" in tools,
                reply_format=format_text(
                    reply_format, {t.name: t.block for t in tools if t.block} if blocks else None
                ),
                examples=list(examples),
            ),
        )
        self.first_kept = 0
        """Index of the oldest history message still sent; only ever moves forward."""

    @property
    def budget(self) -> int:
        """Tokens available for the prompt once the reply's reserve is set aside."""
        return self.model.context_length - self.reply_reserve

    def next_step_message(
        self,
        memories: Sequence[str] = (),
        notes: Sequence[str] = (),
        *,
        state: Sequence[str] = (),
        finish: bool = False,
    ) -> Message:
        """A step's request: memories, notes, the state, the goals, the question.

        `finish` says whether finishing is offered: small models take "use finish" at face
        value before they have done anything.
        """
        content = render(
            "next_step.j2",
            memories=list(memories),
            notes=list(notes),
            state=list(state),
            goals=self.profile.goals,
            finish=finish,
        )
        return Message(role="user", content=content)

    def _count(self, history: Sequence[Message], last: Message) -> int:
        return self.model.count_tokens([self.system, *history, last])

    def _fit_memories(
        self, memories: Sequence[str], notes: Sequence[str], state: Sequence[str], finish: bool
    ) -> Message:
        """The request with as many memories as fit in their share of the room."""
        base = self._count([], self.next_step_message((), notes, state=state, finish=finish))
        if base > self.budget:
            raise ContextOverflowError(
                f"the system prompt and goals take {base} tokens; the context of "
                f"{self.model.context_length} leaves {self.budget} after the reply's reserve"
            )
        limit = base + int((self.budget - base) * self.memory_share)
        kept = list(memories)
        while kept and (
            self._count([], self.next_step_message(kept, notes, state=state, finish=finish)) > limit
        ):
            kept.pop()
        return self.next_step_message(kept, notes, state=state, finish=finish)

    def build(
        self,
        history: Sequence[Message],
        memories: Sequence[str] = (),
        notes: Sequence[str] = (),
        *,
        state: Sequence[str] = (),
        finish: bool | None = None,
    ) -> list[Message]:
        """The messages for the next call, never more than the budget allows; the last one is
        this step's request, which the caller keeps in the history with the reply.
        `finish` (whether finishing is offered) defaults to whether commands have run."""
        finish = bool(history) if finish is None else finish
        last = self._fit_memories(memories, notes, state, finish)
        if self._count(history[self.first_kept :], last) > self.budget:
            self.first_kept = self._drop_block(history, last)
        return [self.system, *history[self.first_kept :], last]

    def _drop_block(self, history: Sequence[Message], last: Message) -> int:
        """The first index to keep so that history uses at most `keep_share` of the room."""
        fixed = self._count([], last)
        target = fixed + int((self.budget - fixed) * self.keep_share)
        starts = [i for i in step_starts(history) if i > self.first_kept] + [len(history)]
        low, high = 0, len(starts) - 1  # cut only where a step begins
        while low < high:
            mid = (low + high) // 2
            if self._count(history[starts[mid] :], last) <= target:
                high = mid
            else:
                low = mid + 1
        return starts[high]

    def cut_to_tokens(self, text: str, max_tokens: int) -> str:
        """`text` shortened to about `max_tokens`, with a notice saying it was cut."""
        count = self.model.count_tokens([Message(role="user", content=text)])
        if count <= max_tokens:
            return text
        keep = max(0, int(len(text) * max_tokens / count) - 100)
        return (
            text[:keep] + f"\n[cut: the result had {len(text)} characters; only the first "
            f"{keep} are shown]"
        )
