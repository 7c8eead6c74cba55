"""A deterministic backend that replays canned replies: for tests and recorded runs."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from offline_agent.errors import BackendError, ConfigError
from offline_agent.records import Completion, FinishReason, Message, Usage

CHARS_PER_TOKEN = 4


class ScriptedModel:
    """Returns the queued replies in order; a reply may be a dict (dumped as JSON) or raw text.

    A raw-text reply ending in the marker `<<LENGTH>>` is returned as cut off by the token
    limit, so tests can exercise the truncated-reply path. Every call is kept in `calls`, and
    its schema in `schemas`.
    """

    name = "scripted"
    LENGTH_MARKER = "<<LENGTH>>"

    def __init__(self, replies: Iterable[dict[str, Any] | str], context_length: int = 4096):
        self._replies: deque[dict[str, Any] | str] = deque(replies)
        self.context_length = context_length
        self.text_blocks = True
        """Its replies are scripted text: a text block is whatever the script holds."""
        self.calls: list[list[Message]] = []
        self.schemas: list[dict[str, Any] | None] = []

    @classmethod
    def from_file(cls, path: Path, context_length: int = 4096) -> ScriptedModel:
        """Load replies from a JSON list or a JSONL file (one reply per line)."""
        try:
            text = path.read_text(encoding="utf-8")
            if text.lstrip().startswith("["):
                replies = json.loads(text)
            else:
                replies = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read scripted replies from {path}: {err}") from None
        return cls(replies, context_length)

    def skip(self, count: int) -> None:
        """Drop the next `count` replies (they were used before a resumed run stopped)."""
        for _ in range(min(count, len(self._replies))):
            self._replies.popleft()

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float | None = None,
        break_loops: bool = False,
    ) -> Completion:
        """Pop the next canned reply (at any temperature; a loop in it stays)."""
        self.calls.append(list(messages))
        self.schemas.append(schema)
        if not self._replies:
            raise BackendError("the scripted model has no replies left")
        reply = self._replies.popleft()
        text = reply if isinstance(reply, str) else json.dumps(reply)
        finish: FinishReason = "stop"
        if text.endswith(self.LENGTH_MARKER):
            text, finish = text.removesuffix(self.LENGTH_MARKER), "length"
        usage = Usage(self.count_tokens(messages), len(text) // CHARS_PER_TOKEN + 1)
        return Completion(text, finish, usage, constrained=False)

    def complete_document(self, *, schema: dict[str, Any], max_tokens: int) -> Completion:
        """Pop the next canned reply for a document (kept in `calls` as an empty prompt)."""
        return self.complete([], schema=schema, max_tokens=max_tokens)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """A rough count: four characters a token plus a few per message."""
        return sum(len(m["content"]) // CHARS_PER_TOKEN + 4 for m in messages)
