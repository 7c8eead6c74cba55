"""The one narrow protocol every model backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeGuard

from offline_agent.records import Completion, Message


class ChatModel(Protocol):
    """OpenAI-shaped chat messages in, a `Completion` out."""

    name: str
    context_length: int

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float | None = None,
        break_loops: bool = False,
    ) -> Completion:
        """Answer `messages`; with `schema`, constrain the answer to it where possible; at
        `temperature` instead of the model's own when given; with `break_loops`, never
        choosing a token that would go on repeating a loop (a backend that can says so with
        `breaks_loops`)."""
        ...

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """How many tokens `messages` take in a prompt, counted the model's own way."""
        ...


def breaks_loops(model: ChatModel) -> bool:
    """Whether `model` honours `complete(..., break_loops=True)`: a backend says so with a
    true `breaks_loops` attribute."""
    return bool(getattr(model, "breaks_loops", False))


def writes_blocks(model: ChatModel) -> bool:
    """Whether `model` constrains a reply's text block after its JSON (`reply.BLOCKS_KEY`):
    a backend says so with a true `text_blocks` attribute."""
    return bool(getattr(model, "text_blocks", False))


class DocumentModel(ChatModel, Protocol):
    """A backend that can also decode a document of its own, outside the chat."""

    def complete_document(self, *, schema: dict[str, Any], max_tokens: int) -> Completion:
        """Decode from the beginning of sequence alone, constrained to `schema` (rule
        `code_document`: the schema forces the document's opening)."""
        ...


def writes_documents(model: ChatModel) -> TypeGuard[DocumentModel]:
    """Whether `model` decodes documents (`DocumentModel`): a backend says so with a
    `complete_document` method."""
    return callable(getattr(model, "complete_document", None))
