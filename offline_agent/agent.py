"""The Auto-GPT cycle: prompt → model → validated reply → command → history and memory.

`run()` repeats `step()` until the model finishes or a limit stops it. The loop does no I/O
of its own: printing goes through `Events`, the person at the keyboard through an `approve`
callback, and every step is handed to the run record in a `finally:`, so a crash still
leaves a record of what happened.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol

from offline_agent.codeturn import write_code
from offline_agent.errors import Finished, FormatError, TruncatedReplyError
from offline_agent.llm.base import ChatModel
from offline_agent.prompt import PromptBuilder, render, replies_and_results
from offline_agent.records import (
    Message,
    Profile,
    Reply,
    RunResult,
    RunStatus,
    Step,
    ToolResult,
)
from offline_agent.reply import parse_reply, reply_schema, schema_digest
from offline_agent.sampling import sample
from offline_agent.state import Rules, Steering
from offline_agent.tools.base import MemoryLike, ToolContext, ToolRegistry, execute_command


@dataclass(frozen=True)
class AgentConfig:
    """Limits and budgets of one run."""

    max_steps: int = 50
    max_format_errors: int = 3
    reply_tokens: int = 1024
    """Room for a reply writing a file of the 2,000 characters the grammar allows (512 cut
    such replies off: each a wasted step and an invalid reply)."""
    result_tokens: int = 1000
    memory_k: int = 10
    recall_threshold: float = 0.8
    """Memories less similar than this (cosine) to the latest exchange are not recalled: on
    real steps, 55% of other attempts at the same goal score above it and 2.7% of steps of
    other goals (scripts/bench_recall.py, docs/memory.md)."""
    samples: int = 1
    """Candidate replies decoded per step, the likeliest sound one kept (`sampling.py`);
    more than one needs a temperature above zero."""
    max_repeats: int = 3
    """Stale steps in a row that end a run: a command that ran just before, or that returned
    the same result before."""
    time_limit: float | None = None
    """Seconds of wall time; checked before each step, so a step under way is finished."""


@dataclass(frozen=True)
class Approval:
    """The user's answer before a command runs."""

    decision: Literal["yes", "stop", "feedback"]
    count: int = 1
    feedback: str = ""


class Events(Protocol):
    """What the loop reports while it runs; the CLI prints, tests collect."""

    def thinking(self, index: int) -> None:
        """The model is about to be called for step `index`."""

    def replied(self, step: Step) -> None:
        """The model answered (valid or not)."""

    def executed(self, step: Step) -> None:
        """A command ran; `step.result` holds what it returned."""

    def notice(self, line: str) -> None:
        """Something the user should know that is not a step (the embedder fell back)."""


class SilentEvents:
    """Events that report nothing."""

    def thinking(self, index: int) -> None:
        """Report nothing."""

    def replied(self, step: Step) -> None:
        """Report nothing."""

    def executed(self, step: Step) -> None:
        """Report nothing."""

    def notice(self, line: str) -> None:
        """Report nothing."""


class StepSink(Protocol):
    """Where steps go (the run record)."""

    def write_command(self, step: Step) -> None:
        """Persist, before it runs, the command a step is about to execute."""

    def write_step(self, step: Step) -> None:
        """Persist one finished step."""


class RunEnded(Exception):
    """Leaves the loop with a status other than finished."""

    def __init__(self, status: RunStatus, reason: str) -> None:
        super().__init__(reason)
        self.status: RunStatus = status
        self.reason = reason


class Agent:
    """One autonomous agent: its model, commands, history and limits."""

    def __init__(
        self,
        profile: Profile,
        model: ChatModel,
        tools: ToolRegistry,
        ctx: ToolContext,
        config: AgentConfig = AgentConfig(),
        *,
        rules: Rules | None = None,
        examples: Sequence[str] = (),
        memory: MemoryLike | None = None,
        record: StepSink | None = None,
        events: Events | None = None,
        approve: Callable[[Step], Approval] | None = None,
    ) -> None:
        self.profile = profile
        self.model = model
        self.tools = tools
        self.ctx = ctx
        self.config = config
        self.rules = rules = rules or Rules()
        self.memory = memory
        self.record = record
        self.events: Events = events or SilentEvents()
        self.approve = approve
        self.prompt = PromptBuilder(
            profile,
            tools,
            model,
            config.reply_tokens,
            rules.reply_format,
            examples=examples,
            prose_signatures=rules.prose_signatures,
            blocks=rules.text_blocks,
        )
        self.steering = Steering(tools, rules, profile.goals)
        self.history: list[Message] = []
        self.steps_taken = 0
        self._format_errors = 0
        self._preapproved = 0
        self._notes: list[str] = []  # said once, in the next step's request
        self._agents_version = ctx.agents.version if ctx.agents is not None else 0

    def run(self) -> RunResult:
        """Step until the model finishes or a limit, the user or an error ends the run."""
        limit = self.config.time_limit
        deadline = None if limit is None else time.monotonic() + limit
        while self.steps_taken < self.config.max_steps:
            if deadline is not None and time.monotonic() >= deadline:
                return RunResult("time_limit", self.steps_taken, f"{limit:g} s time limit reached")
            try:
                self.step()
            except Finished as done:
                return RunResult("finished", self.steps_taken, done.reason)
            except RunEnded as ended:
                return RunResult(ended.status, self.steps_taken, ended.reason)
        return RunResult("step_limit", self.steps_taken, f"{self.steps_taken} steps taken")

    def step(self) -> Step:
        """One cycle: prompt, reply, approval, command, history; always recorded."""
        step = Step(index=self.steps_taken + 1)
        start, seen = time.perf_counter(), len(self.history)
        try:
            self._step(step)
        except KeyboardInterrupt:
            step.status = "interrupted"
            raise
        except Exception as err:  # a backend or context error: no command ran
            if step.status == "ok" and step.result is None:
                step.status, step.error = "error", step.error or str(err)
            raise
        finally:
            step.history = self.history[seen:]
            agents = self.ctx.agents
            if agents is not None and agents.version != self._agents_version:
                step.subagents, self._agents_version = agents.snapshot(), agents.version
            step.seconds = time.perf_counter() - start
            self.steps_taken += 1
            if self.record is not None:
                self.record.write_step(step)
        return step

    def add_note(self, text: str) -> None:
        """Say `text` to the model in the next step's request (e.g. feedback after Ctrl-C);
        like any request it stays in the history while in view."""
        self._notes.append(text)

    def restore(self, steps: Sequence[dict[str, Any]]) -> None:
        """Continue a recorded run from its steps as if they had just run in this process:
        history, step count, invalid replies in a row, the rules' progress, pending notes."""
        self.history = [message for step in steps for message in step["history"]]
        self.steps_taken = len(steps)
        invalid = itertools.takewhile(lambda s: s["status"] in ("format_error", "truncated"),
                                      reversed(steps))  # fmt: skip
        self._format_errors = len(list(invalid))
        self._notes = self.steering.restore(steps, self.ctx)
        if self.ctx.agents is not None:  # sub-agents reloaded by the caller are not news
            self._agents_version = self.ctx.agents.version

    def _step(self, step: Step) -> None:
        notes, self._notes = self._notes, []
        plan, state = self.steering.plan(self.ctx)
        step.snapshot = self.steering.snapshot.to_json()
        step.left_out = plan.left_out
        step.messages = self.prompt.build(
            self.history,
            self._recall(),
            notes,
            state=state,
            finish="finish" in plan.tools and bool(self.history),
        )
        request = step.messages[-1]
        self.events.thinking(step.index)
        schema = reply_schema(
            plan.tools, self.rules.reply_format, self.rules.text_blocks, self.rules.code_turn
        )
        step.grammar_sha256 = schema_digest(schema)
        step.completion, candidates = sample(
            self.model, step.messages, schema=schema, max_tokens=self.config.reply_tokens,
            samples=self.config.samples, check=partial(self.steering.doubt, plan, schema),
            retry=partial(self.steering.retry, plan, schema), break_loops=self.rules.break_loops,
        )  # fmt: skip
        step.candidates = [candidate.to_json() for candidate in candidates]
        if self.memory is not None:
            # The embedder's load would take CPU and the GIL from a model in this process; a
            # first prompt recalls nothing, so it loads once that reply is in (then a no-op).
            self.memory.preload()
        raw = step.completion.answer.strip()  # a think block stays in the record only
        try:
            step.reply = parse_reply(step.completion, plan.tools, schema, plan.left_out)
            code = (
                write_code(self.model, step, plan.tools.get(step.reply.command.name), raw,
                           max_tokens=self.config.reply_tokens, rules=self.rules,
                           goals=self.profile.goals, files=self.steering.snapshot.files,
                           read=self.ctx.workspace.read_text)
                if self.rules.code_turn
                else []
            )  # fmt: skip
        except FormatError as err:
            step.reply = None  # also a reply whose code turn was cut off
            step.status = "truncated" if isinstance(err, TruncatedReplyError) else "format_error"
            step.error = str(err)
            self.events.replied(step)
            self._add_exchange(request, raw, render("result.j2", feedback=None, error=step.error))
            self._format_errors += 1
            if self._format_errors >= self.config.max_format_errors:
                raise RunEnded(
                    "format_errors", f"{self._format_errors} invalid replies in a row: {err}"
                ) from None
            return
        self._format_errors = 0
        self.events.replied(step)
        approval = self._ask(step)
        if approval.decision == "stop":
            step.status, step.error = "rejected", "the user stopped the run"
            raise RunEnded("stopped_by_user", "the user stopped the run")
        if approval.decision == "feedback":
            step.status, step.human_feedback = "rejected", approval.feedback
            feedback = render("result.j2", feedback=approval.feedback, error=None)
            self._add_exchange(request, raw, feedback, code)
            return
        try:
            if self.record is not None:  # so a crash mid-command is known on resume
                self.record.write_command(step)
            self.steering.running(step.reply.command)
            step.result = execute_command(self.tools, self.ctx, step.reply.command)
        except Finished as done:
            step.status, step.result = "finished", ToolResult(done.reason)
            self.events.executed(step)
            raise
        self.events.executed(step)
        output = self.prompt.cut_to_tokens(step.result.output, self.config.result_tokens)
        message = render(
            "result.j2", feedback=None, error=None, command=step.reply.command.name, output=output
        )
        self._add_exchange(request, raw, message, code)
        self._check_loop(step.reply, step.result.ok, message)

    def _ask(self, step: Step) -> Approval:
        """The user's approval, unless running continuously or pre-approved with `y -N`."""
        if self.approve is None:
            return Approval("yes")
        if self._preapproved > 0:
            self._preapproved -= 1
            return Approval("yes")
        approval = self.approve(step)
        if approval.decision == "yes":
            self._preapproved = approval.count - 1
        return approval

    def _check_loop(self, reply: Reply, ok: bool, result: str) -> None:
        """Tell the model when a command only repeats what it already saw (the steering
        leaves it out of the next grammar); end the run if it keeps on."""
        stale = self.steering.ran(reply.command, ok, result)
        if stale >= self.config.max_repeats:
            raise RunEnded(
                "loop", f"{stale} commands in a row ran just before or returned the same as before"
            )
        self._notes += self.steering.repeat_notes(reply.command.name, stale)

    def _add_exchange(
        self, request: Message, reply_text: str, result_text: str, code: Sequence[Message] = ()
    ) -> None:
        """Append the step's request, reply, code turn and outcome to history; remember the
        exchange."""
        self.history.append(request)
        self.history.append(Message(role="assistant", content=reply_text))
        self.history += code
        self.history.append(Message(role="user", content=result_text))
        if self.memory is not None:
            self.memory.remember(
                f"Assistant reply: {reply_text}\nResult: {result_text}", kind="step"
            )

    def _recall(self) -> list[str]:
        """Memories relevant to the latest exchange, best first, minus what is in view: an
        exchange still in the history, or a text that a message still in it shows (a
        request's memory, a result). "In view" is as of the last prompt: a block dropped by
        this step's prompt counts as in view once more."""
        if self.memory is None or not self.history:
            return []
        shown = self.history[self.prompt.first_kept :]
        exchanges = {
            f"Assistant reply: {a['content']}\nResult: {r['content']}"
            for a, r in replies_and_results(shown)
        }
        shown_text = "\n".join(m["content"] for m in shown if m["role"] == "user")
        query = "\n".join(m["content"] for m in self.history[-2:])
        hits = self.memory.recall(query, self.config.memory_k + len(shown))
        fresh = [
            text
            for score, text in hits
            if score >= self.config.recall_threshold
            and text not in exchanges
            and text not in shown_text
        ]
        return fresh[: self.config.memory_k]
