"""Code commands: run a Python file from the workspace, or a snippet of Python code."""

from __future__ import annotations

import sys

from offline_agent.errors import CommandFailed, ToolError
from offline_agent.sandbox import ProcessResult
from offline_agent.tools.base import PythonFile, Text, Tool, ToolContext, tool


def _observation(result: ProcessResult, timeout: float) -> str:
    """What the model is told about a run: how it ended, then its output."""
    if result.timed_out:
        status = f"The program timed out after {timeout:g} s and was stopped."
    elif result.exit_code < 0:
        status = f"The program was killed by signal {-result.exit_code}."
    else:
        status = f"The program exited with code {result.exit_code}."
    if result.output.strip():
        return f"{status}\nOutput:\n{result.output}"
    return f"{status}\nOutput: (none; use print() to show results)"


def _run(ctx: ToolContext, args: list[str]) -> str:
    """Run `python *args` in the workspace root under the context's limits; a program that
    does not exit with 0 is a failed command (CommandFailed), with the same text."""
    result = ctx.run_program([sys.executable, *args])
    observation = _observation(result, ctx.python_timeout)
    if not result.succeeded:
        raise CommandFailed(observation)
    return observation


@tool
def execute_python_file(ctx: ToolContext, filename: PythonFile) -> str:
    """Run a Python file from the workspace and show its output.

    Args:
        filename: path of the .py file, relative to the workspace
    """
    script = ctx.workspace.existing_file(filename)
    if script.suffix != ".py":
        raise ToolError(f"{filename} is not a .py file; only Python files can be run")
    # An absolute path also keeps a name such as "-c.py" from being read as an option.
    return _run(ctx, [str(script)])


@tool
def execute_python_code(ctx: ToolContext, code: Text) -> str:
    """Run Python code in the workspace folder and show its output; nothing is saved.

    Args:
        code: the Python code to run; print() what you want to see
    """
    return _run(ctx, ["-c", code])


CODE_TOOLS: tuple[Tool, ...] = (execute_python_file, execute_python_code)
"""The code commands, in the order shown to the model."""
