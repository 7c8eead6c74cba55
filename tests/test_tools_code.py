"""Code commands as the model calls them: observations for success, failure and timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline_agent.errors import CommandFailed, ToolError, WorkspaceError
from offline_agent.records import CommandCall
from offline_agent.tools.base import ToolContext, ToolRegistry, execute_command
from offline_agent.tools.code import CODE_TOOLS, execute_python_code, execute_python_file
from offline_agent.workspace import Workspace


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(
        workspace=Workspace.create(tmp_path / "ws"), python_timeout=10.0, output_limit=300
    )


def test_code_tools_are_exported_in_order() -> None:
    assert [t.name for t in CODE_TOOLS] == ["execute_python_file", "execute_python_code"]
    assert execute_python_code.parameters["code"]["maxLength"] == 2000


def test_execute_python_file_runs_in_the_workspace(ctx: ToolContext) -> None:
    (ctx.workspace.root / "util.py").write_text("def double(x):\n    return 2 * x\n")
    (ctx.workspace.root / "main.py").write_text(
        "import util\nprint(util.double(21))\nopen('result.txt', 'w').write('ok')\n"
    )
    assert execute_python_file(ctx, {"filename": "main.py"}) == (
        "The program exited with code 0.\nOutput:\n42\n"
    )
    assert (ctx.workspace.root / "result.txt").read_text() == "ok"


def test_execute_python_file_with_a_dash_name(ctx: ToolContext) -> None:
    (ctx.workspace.root / "-c.py").write_text("print('dash')\n")
    assert execute_python_file(ctx, {"filename": "-c.py"}).endswith("Output:\ndash\n")


def test_execute_python_file_reports_a_failure(ctx: ToolContext) -> None:
    (ctx.workspace.root / "bad.py").write_text("print('before')\nraise ValueError('boom')\n")
    with pytest.raises(CommandFailed) as failed:
        execute_python_file(ctx, {"filename": "bad.py"})
    observation = str(failed.value)
    assert observation.startswith("The program exited with code 1.\nOutput:\nbefore\n")
    assert f'File "{ctx.workspace.root / "bad.py"}", line 2' in observation
    assert observation.endswith("ValueError: boom\n")


def test_execute_python_file_refuses_what_it_cannot_run(ctx: ToolContext, tmp_path: Path) -> None:
    (ctx.workspace.root / "notes.txt").write_text("hello")
    with pytest.raises(ToolError, match=r"notes\.txt is not a \.py file"):
        execute_python_file(ctx, {"filename": "notes.txt"})
    with pytest.raises(
        WorkspaceError, match=r"missing\.py does not exist; the files are: notes\.txt"
    ):
        execute_python_file(ctx, {"filename": "missing.py"})
    (tmp_path / "evil.py").write_text("print('escaped')\n")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        execute_python_file(ctx, {"filename": "../evil.py"})


def test_execute_python_code_leaves_no_files(ctx: ToolContext) -> None:
    assert execute_python_code(ctx, {"code": "print(sum(range(10)))"}) == (
        "The program exited with code 0.\nOutput:\n45\n"
    )
    assert list(ctx.workspace.root.iterdir()) == []


def test_execute_python_code_without_output_hints_at_print(ctx: ToolContext) -> None:
    assert execute_python_code(ctx, {"code": "2 + 2"}) == (
        "The program exited with code 0.\nOutput: (none; use print() to show results)"
    )


def test_execute_python_code_timeout(ctx: ToolContext) -> None:
    ctx.python_timeout = 1.0
    code = "import time\nprint('waiting', flush=True)\ntime.sleep(30)"
    with pytest.raises(CommandFailed) as failed:
        execute_python_code(ctx, {"code": code})
    assert str(failed.value) == (
        "The program timed out after 1 s and was stopped.\nOutput:\nwaiting\n"
    )


def test_execute_python_code_output_is_capped(ctx: ToolContext) -> None:
    observation = execute_python_code(ctx, {"code": "print('z' * 1000, end='')"})
    assert observation == (
        "The program exited with code 0.\nOutput:\n"
        + "z" * 300
        + "\n[output truncated: 700 more characters]"
    )


def test_execute_python_code_killed_by_a_signal(ctx: ToolContext) -> None:
    with pytest.raises(CommandFailed, match=r"^The program was killed by signal 9\."):
        execute_python_code(ctx, {"code": "import os, signal\nos.kill(os.getpid(), 9)"})


def test_a_program_that_fails_is_a_failed_command_with_its_output(ctx: ToolContext) -> None:
    """What `finish_after_success` and the bench's failed-command count read: a crash or a
    timeout is not a success; the model still sees the program's own output, no "Error:"."""
    tools = ToolRegistry(CODE_TOOLS)
    crashed = execute_command(tools, ctx, CommandCall("execute_python_code", {"code": "1/0"}))
    assert crashed.ok is False
    assert crashed.output.startswith("The program exited with code 1.\nOutput:\n")
    assert "ZeroDivisionError" in crashed.output
    ran = execute_command(tools, ctx, CommandCall("execute_python_code", {"code": "print(1)"}))
    assert (ran.ok, ran.output) == (True, "The program exited with code 0.\nOutput:\n1\n")
    slow = ToolContext(workspace=ctx.workspace, python_timeout=0.5)
    hung = execute_command(
        tools, slow, CommandCall("execute_python_code", {"code": "while 1: pass"})
    )
    assert hung.ok is False and hung.output.startswith("The program timed out after 0.5 s")
