"""Commands that let the model save facts to long-term memory and look them up."""

from __future__ import annotations

from offline_agent.errors import ToolError
from offline_agent.tools.base import Long, MemoryLike, Short, ToolContext, tool

SEARCH_K = 5


def _memory(ctx: ToolContext) -> MemoryLike:
    if ctx.memory is None:
        raise ToolError("memory is disabled")
    return ctx.memory


@tool
def memory_add(ctx: ToolContext, text: Long) -> str:
    """Save a fact to long-term memory, to find it again in later steps and runs.

    Args:
        text: the fact, written so that it makes sense on its own
    """
    memory = _memory(ctx)
    if not text.strip():
        raise ToolError("memory_add needs a non-empty text")
    return "Saved to memory." if memory.remember(text) else "This is already in memory."


@tool
def memory_search(ctx: ToolContext, query: Short) -> str:
    """Search long-term memory for what is most similar to a query.

    Args:
        query: what to look for, in a few words
    """
    memory = _memory(ctx)
    if not query.strip():
        raise ToolError("memory_search needs a non-empty query")
    hits = memory.recall(query, SEARCH_K)
    if not hits:
        return "Nothing in memory yet."
    # Share the output limit fairly, so one long memory cannot hide the others.
    room = max(80, ctx.output_limit // len(hits) - 12)
    lines = []
    for i, (score, text) in enumerate(hits, 1):
        flat = " ".join(text.split())
        lines.append(f"{i}. ({score:.2f}) {flat if len(flat) <= room else flat[: room - 1] + '…'}")
    return "\n".join(lines)


MEMORY_TOOLS = (memory_add, memory_search)
