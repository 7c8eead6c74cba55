"""The user's own commands: Python functions in a file given with `--tools`.

A module offers commands in two ways:

    from offline_agent.tools import Long, Short, ToolContext, tool

    @tool
    def count_rows(ctx: ToolContext, filename: Short) -> str:
        '''Count the data rows of a CSV file in the workspace.

        Args:
            filename: the CSV file, relative to the workspace
        '''
        return str(len(ctx.workspace.read_text(filename).splitlines()) - 1)

    def add(a: int, b: int) -> int:
        '''Add two whole numbers.

        Args:
            a: the first number
            b: the second number
        '''
        return a + b

A `@tool` function gets the run's `ToolContext` (the workspace jail, the limits); a plain
public function with type hints and a docstring documenting every argument becomes a
command too, called with the arguments alone (its result, if not text, is shown as JSON).
Functions whose names start with `_`, and public ones without a docstring or without a
type hint on every argument, are helpers.
Every command gets a branch of the reply grammar from its signature, like the built-in
ones. User commands run in the agent's process, with the user's rights: they are the
user's own code, not the model's.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from offline_agent.errors import ConfigError
from offline_agent.tools.base import Tool, ToolContext, ToolRegistry, tool


def load_tools(path: Path, taken: Sequence[str] = ()) -> list[Tool]:
    """The commands the Python file at `path` defines; ConfigError (one line) when the file
    cannot be imported, defines none, or defines one that cannot be a command or whose name
    is in `taken` (the built-in commands and those loaded before)."""
    module = _import(path)
    found: list[Tool] = []
    for value in list(vars(module).values()):
        if isinstance(value, Tool) and value.func.__module__ == module.__name__:
            command = value
        elif _is_command_function(value, module.__name__):
            command = _from_function(value, path)
        else:
            continue
        if command.name in taken or any(c.name == command.name for c in found):
            raise ConfigError(
                f"{path}: command {command.name} has the name of another command; rename it"
            )
        found.append(command)
    if not found:
        raise ConfigError(
            f"{path} defines no command: decorate functions with offline_agent.tools.tool, "
            "or give public functions type hints and a docstring"
        )
    return found


def with_user_tools(
    builtins: ToolRegistry, files: Sequence[Path], more: Sequence[Tool] = ()
) -> ToolRegistry:
    """The built-in commands with the files' commands, then `more` (an MCP server's),
    added before `finish`; ConfigError when a name is taken twice."""
    taken = list(builtins.names)
    added: list[Tool] = []
    for path in files:
        for command in load_tools(path, taken):
            taken.append(command.name)
            added.append(command)
    for command in more:
        if command.name in taken:
            raise ConfigError(f"command {command.name} of an MCP server has a name already taken")
        taken.append(command.name)
        added.append(command)
    if not added:
        return builtins
    rest = [t for t in builtins if t.name != "finish"]
    finish = [t for t in builtins if t.name == "finish"]
    return ToolRegistry([*rest, *added, *finish])


def _import(path: Path) -> Any:
    """The module at `path`, imported under a name of its own."""
    if not path.is_file():
        raise ConfigError(f"no tools file {path}")
    name = f"offline_agent_user_tools_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that dataclasses and typing can find it
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: any failure is theirs to fix
        sys.modules.pop(name, None)
        raise ConfigError(f"cannot load tools from {path}: {type(err).__name__}: {err}") from None
    return module


def _is_command_function(value: object, module: str) -> bool:
    """A public function of the module with a docstring and a type hint on every argument
    (others are the module's helpers)."""
    if not inspect.isfunction(value) or value.__module__ != module:
        return False
    if value.__name__.startswith("_") or not value.__doc__:
        return False
    parameters = inspect.signature(value).parameters.values()
    return all(p.annotation is not inspect.Parameter.empty for p in parameters)


def _from_function(func: Callable[..., Any], path: Path) -> Tool:
    """A command from a plain function: the arguments alone, the result shown as text."""

    @functools.wraps(func)
    def call(_context: ToolContext, /, *args: Any, **kwargs: Any) -> str:
        result = func(*args, **kwargs)
        return result if isinstance(result, str) else json.dumps(result, default=str)

    # The signature `tool` reads: a context first (named so as to clash with no argument of
    # the function's), then the function's own parameters.
    context = inspect.Parameter("_offline_agent_context", inspect.Parameter.POSITIONAL_ONLY)
    own = inspect.signature(func)
    call.__signature__ = own.replace(parameters=[context, *own.parameters.values()])  # type: ignore[attr-defined]
    try:
        return tool(call)
    except (TypeError, NameError, KeyError, ValueError) as err:
        raise ConfigError(f"{path}: command {func.__name__}: {err}") from None
