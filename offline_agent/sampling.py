"""Sampling with checks: decode several candidate replies and keep the likeliest sound one.

At a temperature above zero a small model's single sample is often not its best answer: the
reply it gives most of the time loses to a rarer, worse one. With `--samples N` each step
decodes N candidates (the prompt is evaluated once; each costs only its own decoding), drops
those that checks needing no model find wrong (an invalid reply, a command that already ran
in this same workspace, Python that does not compile), and keeps the command most of the
rest agree on (self-consistency); a tie goes to the one the model was surest of, the highest
mean log-probability of its chosen tokens (backends that report none: the earliest). When
every candidate fails a check, the same choice is made among them all: a check is evidence,
not a veto. The mean log-probability alone measured worse: a small model is surest of text it
copies, so a reply repeating its own thought outranked the right answer the other samples
agreed on (docs/benchmarks.md).

Greedy decoding (temperature 0, `run`'s default) is deterministic, so where it goes wrong
it stays wrong: it can repeat one phrase until the token limit (rule `retry_cut_off`), or
give again a command that already ran on this same workspace, which can only return what it
returned (rule `retry_repeats`). Such a reply is decoded once more at `RETRY_TEMPERATURE`
(Whisper's temperature fallback), and the retry is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from offline_agent.llm.base import ChatModel
from offline_agent.records import Completion, Message

RETRY_TEMPERATURE = 0.5
"""The temperature a greedy reply is decoded again at when a retry rule finds it stuck."""


@dataclass(frozen=True)
class Candidate:
    """One decoded reply and what the checks found wrong with it ("" when nothing)."""

    completion: Completion
    doubt: str = ""

    def to_json(self) -> dict[str, Any]:
        """What a step's record keeps of a candidate."""
        c = self.completion
        return {"text": c.text, "logprob": c.logprob, "doubt": self.doubt}


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The command most sound candidates agree on, the surest candidate giving it; among all
    candidates if none is sound. Ties go to the surest, then the earliest."""
    pool = [c for c in candidates if not c.doubt] or list(candidates)
    commands = [_command(c.completion) for c in pool]
    votes = Counter(commands)

    def rank(index: int) -> tuple[int, float, int]:
        logprob = pool[index].completion.logprob
        surety = logprob if logprob is not None else float("-inf")
        return votes[commands[index]], surety, -index

    return pool[max(range(len(pool)), key=rank)]


def _command(completion: Completion) -> str:
    """A reply's command in canonical form (what votes are counted on; any think block
    aside); the text itself when it is not a JSON object with a command."""
    try:
        command = json.loads(completion.answer, strict=False)["command"]
    except (json.JSONDecodeError, TypeError, KeyError):
        return completion.text
    return json.dumps(command, sort_keys=True)


def sample(
    model: ChatModel,
    messages: Sequence[Message],
    *,
    schema: dict[str, Any],
    max_tokens: int,
    samples: int,
    check: Callable[[Completion], str],
    retry: Callable[[Completion], str] | None = None,
    break_loops: bool = False,
) -> tuple[Completion, list[Candidate]]:
    """`samples` completions of `messages`, checked; the chosen one and all candidates (an
    empty list when only one was asked for and kept: nothing was chosen). A single reply
    that `retry` gives a reason for is decoded again, hotter, and the candidates are the
    two. `break_loops` goes to every decode (`ChatModel.complete`)."""
    decode = partial(
        model.complete, messages, schema=schema, max_tokens=max_tokens, break_loops=break_loops
    )
    if samples <= 1:
        first = decode()
        reason = retry(first) if retry is not None else ""
        if not reason:
            return first, []
        again = decode(temperature=RETRY_TEMPERATURE)
        return again, [Candidate(first, reason), Candidate(again)]
    candidates = []
    for _ in range(samples):
        completion = decode()
        candidates.append(Candidate(completion, check(completion)))
    return choose(candidates).completion, candidates
