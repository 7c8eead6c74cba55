"""Commands that delegate simple tasks to sub-agents sharing the loaded model."""

from __future__ import annotations

from offline_agent.errors import ToolError
from offline_agent.tools.base import AgentKey, Long, Short, SubAgentsLike, ToolContext, tool


def _agents(ctx: ToolContext) -> SubAgentsLike:
    if ctx.agents is None:
        raise ToolError("sub-agents are disabled in this run")
    return ctx.agents


@tool
def start_agent(ctx: ToolContext, name: Short, task: Short, prompt: Long) -> str:
    """Start a sub-agent for a simple task and send it a first message.

    Args:
        name: a short name for the sub-agent
        task: a one-line description of its task
        prompt: the first message to send it
    """
    key, answer = _agents(ctx).start(name, task, prompt)
    return f"Sub-agent {name} started with key {key}. It answered: {answer}"


@tool
def message_agent(ctx: ToolContext, key: AgentKey, message: Long) -> str:
    """Send a message to a sub-agent and get its answer.

    Args:
        key: the sub-agent's key, from start_agent
        message: the message to send
    """
    return f"Sub-agent {key} answered: {_agents(ctx).message(key, message)}"


@tool
def list_agents(ctx: ToolContext) -> str:
    """List the sub-agents you started."""
    rows = _agents(ctx).list()
    if not rows:
        return "There are no sub-agents."
    return "\n".join(f"{key}: {name} ({task})" for key, name, task in rows)


@tool
def delete_agent(ctx: ToolContext, key: AgentKey) -> str:
    """Delete a sub-agent you no longer need.

    Args:
        key: the sub-agent's key
    """
    _agents(ctx).delete(key)
    return f"Sub-agent {key} deleted."


AGENT_TOOLS = (start_agent, message_agent, list_agents, delete_agent)
