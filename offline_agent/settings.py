"""Settings built once at the edge: the agent's profile and where a run keeps its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from offline_agent.errors import ConfigError
from offline_agent.records import Profile
from offline_agent.state import Rules

MAX_GOALS = 10
MAX_GOAL_CHARS = 1000
MAX_NAME_CHARS = 100
MAX_ROLE_CHARS = 1000


def make_profile(name: str, role: str, goals: list[str] | tuple[str, ...]) -> Profile:
    """A checked profile; ConfigError names the first problem."""
    name, role = name.strip(), role.strip()
    goals = [g.strip() for g in goals if g.strip()]
    if not name or len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"the agent's name must be 1 to {MAX_NAME_CHARS} characters")
    if not role or len(role) > MAX_ROLE_CHARS:
        raise ConfigError(f"the agent's role must be 1 to {MAX_ROLE_CHARS} characters")
    if not goals:
        raise ConfigError("give the agent at least one goal (--goal)")
    if len(goals) > MAX_GOALS:
        raise ConfigError(f"at most {MAX_GOALS} goals, got {len(goals)}")
    for goal in goals:
        if len(goal) > MAX_GOAL_CHARS:
            raise ConfigError(f"a goal is {len(goal)} characters; at most {MAX_GOAL_CHARS}")
    return Profile(name, role, tuple(goals))


def load_ai_settings(
    path: Path,
) -> tuple[Profile, tuple[str, ...], tuple[Path, ...], tuple[str, ...]]:
    """A profile from Auto-GPT's ai_settings.yaml (ai_name, ai_role, ai_goals), the step
    rules its optional `rules:` mapping switches, as `--rule` items (`agent_commands=on`;
    checked here, applied over the model's own by `Rules.for_model`), the Python files
    of commands its optional `tools:` list names (relative to the YAML file), and the MCP
    server command lines of its optional `mcp:` list."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping with ai_name, ai_role and ai_goals")
    missing = [key for key in ("ai_name", "ai_role", "ai_goals") if key not in data]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}")
    goals = data["ai_goals"]
    if not isinstance(goals, list) or not all(isinstance(g, str) for g in goals):
        raise ConfigError(f"{path}: ai_goals must be a list of strings")
    if not isinstance(data["ai_name"], str) or not isinstance(data["ai_role"], str):
        raise ConfigError(f"{path}: ai_name and ai_role must be strings")
    rules = data.get("rules") or {}
    if not isinstance(rules, dict):
        raise ConfigError(f"{path}: rules must be a mapping such as {{agent_commands: on}}")
    items = [f"{k}={_yaml_value(v)}" for k, v in rules.items()]
    tools = data.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise ConfigError(f"{path}: tools must be a list of Python files")
    files = tuple((path.parent / Path(tool).expanduser()).absolute() for tool in tools)
    servers = data.get("mcp") or []
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise ConfigError(f"{path}: mcp must be a list of server command lines")
    profile = make_profile(data["ai_name"], data["ai_role"], goals)
    try:
        Rules.parse(items)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return profile, tuple(items), files, tuple(servers)


def _yaml_value(value: Any) -> str:
    """A YAML scalar as `Rules.parse` reads it (YAML turns `on` into True)."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)
