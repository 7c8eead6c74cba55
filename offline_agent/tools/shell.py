"""The shell command: off unless the user enables it, and then limited by a policy.

Commands run without a shell (no pipes, redirection, globbing or variables), so the policy
sees exactly the one program that will start.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from offline_agent.errors import CommandFailed, ToolError
from offline_agent.tools.base import Long, ShellPolicy, ToolContext, tool

DEFAULT_DENY = frozenset(
    {"sudo", "su", "doas", "ssh", "scp", "curl", "wget", "nc", "ncat", "rm", "dd", "mkfs",
     "shutdown", "reboot", "kill", "pkill", "killall", "chmod", "chown", "mount", "bash", "sh",
     "zsh", "dash", "env", "xargs", "nohup", "setsid"}
)  # fmt: skip
"""Programs refused even with the shell on, unless the user allows them by name."""


def check_policy(policy: ShellPolicy | None, argv: list[str]) -> None:
    """Raise ToolError unless `policy` lets `argv[0]` run."""
    if policy is None:
        raise ToolError("the shell is disabled; the user can enable it with --allow-shell")
    program = Path(argv[0]).name
    if policy.allow is not None and program not in policy.allow:
        allowed = ", ".join(sorted(policy.allow)) or "none"
        raise ToolError(f"{program} is not allowed; allowed programs: {allowed}")
    if program in policy.deny:
        raise ToolError(f"{program} is not allowed in this workspace")


@tool
def execute_shell(ctx: ToolContext, command_line: Long) -> str:
    """Run one program with arguments in the workspace (no pipes or redirection).

    Args:
        command_line: the program and its arguments, e.g. ls -l
    """
    try:
        argv = shlex.split(command_line)
    except ValueError as err:
        raise ToolError(f"cannot parse the command line: {err}") from None
    if not argv:
        raise ToolError("the command line is empty")
    check_policy(ctx.shell, argv)
    result = ctx.run_program(argv)
    status = (
        f"timed out after {ctx.python_timeout:g} s"
        if result.timed_out
        else (f"exit code {result.exit_code}")
    )
    observation = f"{argv[0]} finished with {status}. Output:\n{result.output or '(no output)'}"
    if not result.succeeded:
        raise CommandFailed(observation)  # the same text, counted as a failed command
    return observation


SHELL_TOOLS = (execute_shell,)
