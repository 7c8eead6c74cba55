"""The shell command: off by default, a policy when on, no shell interpretation."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline_agent.errors import CommandFailed, ToolError
from offline_agent.tools import builtin_tools
from offline_agent.tools.base import ShellPolicy, ToolContext
from offline_agent.tools.shell import DEFAULT_DENY, execute_shell
from offline_agent.workspace import Workspace


def ctx(tmp_path: Path, policy: ShellPolicy | None) -> ToolContext:
    return ToolContext(workspace=Workspace.create(tmp_path / "ws"), shell=policy, python_timeout=2)


def test_the_model_does_not_see_the_shell_unless_enabled() -> None:
    assert "execute_shell" not in builtin_tools()
    assert "execute_shell" in builtin_tools(shell=True)


def test_disabled_shell_refuses(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="the shell is disabled"):
        execute_shell(ctx(tmp_path, None), {"command_line": "ls"})


def test_an_allowed_program_runs_in_the_workspace(tmp_path: Path) -> None:
    c = ctx(tmp_path, ShellPolicy(deny=DEFAULT_DENY))
    (c.workspace.root / "a.txt").write_text("x")
    out = execute_shell(c, {"command_line": "ls -1"})
    assert out.startswith("ls finished with exit code 0") and "a.txt" in out


@pytest.mark.parametrize("line", ["rm -rf .", "/bin/rm a", "bash -c 'ls'", "sudo ls", "curl x"])
def test_denied_programs_are_refused(tmp_path: Path, line: str) -> None:
    c = ctx(tmp_path, ShellPolicy(deny=DEFAULT_DENY))
    (c.workspace.root / "a").write_text("keep")
    with pytest.raises(ToolError, match="not allowed"):
        execute_shell(c, {"command_line": line})
    assert (c.workspace.root / "a").read_text() == "keep"


def test_an_allow_list_admits_only_its_programs(tmp_path: Path) -> None:
    c = ctx(tmp_path, ShellPolicy(allow=frozenset({"echo"})))
    assert "hello" in execute_shell(c, {"command_line": "echo hello"})
    with pytest.raises(ToolError, match="allowed programs: echo"):
        execute_shell(c, {"command_line": "ls"})


def test_no_shell_interpretation(tmp_path: Path) -> None:
    c = ctx(tmp_path, ShellPolicy(allow=frozenset({"echo"})))
    out = execute_shell(c, {"command_line": "echo hi > out.txt; rm -rf /"})
    assert "hi > out.txt; rm -rf /" in out
    assert not (c.workspace.root / "out.txt").exists()


def test_a_hanging_program_is_killed(tmp_path: Path) -> None:
    c = ctx(tmp_path, ShellPolicy(allow=frozenset({"sleep"})))
    with pytest.raises(CommandFailed, match="timed out after 2 s"):
        execute_shell(c, {"command_line": "sleep 30"})


def test_unparseable_and_empty_lines(tmp_path: Path) -> None:
    c = ctx(tmp_path, ShellPolicy())
    with pytest.raises(ToolError, match="cannot parse"):
        execute_shell(c, {"command_line": "echo 'unclosed"})
    with pytest.raises(ToolError, match="empty"):
        execute_shell(c, {"command_line": "   "})
