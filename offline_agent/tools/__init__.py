"""Commands: the built-in ones, in the order the model sees them, and what a user needs to
write their own (`tool`, `ToolContext`, `Short`, `Long`; see `offline_agent.tools.user`)."""

from __future__ import annotations

from offline_agent.tools.agents import AGENT_TOOLS
from offline_agent.tools.base import Long, Short, Text, Tool, ToolContext, ToolRegistry, tool
from offline_agent.tools.code import CODE_TOOLS
from offline_agent.tools.control import CONTROL_TOOLS
from offline_agent.tools.files import FILE_TOOLS
from offline_agent.tools.memory import MEMORY_TOOLS
from offline_agent.tools.shell import SHELL_TOOLS

ORDER = (
    "write_file", "read_file", "append_file", "list_files", "delete_file",
    "execute_python_code", "execute_python_file", "execute_shell",
    "memory_add", "memory_search",
    "start_agent", "message_agent", "list_agents", "delete_agent",
    "finish",
)  # fmt: skip
"""Most-used first: small models favour what they read early."""


def builtin_tools(
    *, memory: bool = True, agents: bool = True, shell: bool = False, delete: bool = True
) -> ToolRegistry:
    """The built-in commands; memory, sub-agent, shell or delete commands only when enabled."""
    every = {
        t.name: t
        for t in (
            *FILE_TOOLS,
            *CODE_TOOLS,
            *SHELL_TOOLS,
            *MEMORY_TOOLS,
            *AGENT_TOOLS,
            *CONTROL_TOOLS,
        )
    }
    registry = ToolRegistry(every[name] for name in ORDER)
    if not memory:
        registry = registry.without(*(t.name for t in MEMORY_TOOLS))
    if not agents:
        registry = registry.without(*(t.name for t in AGENT_TOOLS))
    if not shell:
        registry = registry.without(*(t.name for t in SHELL_TOOLS))
    if not delete:
        registry = registry.without("delete_file")
    return registry


__all__ = ["Long", "Short", "Text", "Tool", "ToolContext", "ToolRegistry", "builtin_tools", "tool"]
