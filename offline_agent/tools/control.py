"""The command that ends a run."""

from __future__ import annotations

from offline_agent.errors import Finished
from offline_agent.tools.base import Short, ToolContext, tool


@tool
def finish(ctx: ToolContext, reason: Short) -> str:
    """Finish: use this once every goal is done.

    Args:
        reason: a one-line summary of what was achieved
    """
    raise Finished(reason)


CONTROL_TOOLS = (finish,)
