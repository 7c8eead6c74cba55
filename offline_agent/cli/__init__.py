"""The command line: parse, build settings, call the library, print, set the exit code."""

from __future__ import annotations

import importlib
from typing import Any

import click

from offline_agent import __version__
from offline_agent.errors import AgentError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "offline_agent.cli.run",
        "Run an agent on its goals until it finishes or a limit stops it.",
    ),
    "models": ("offline_agent.cli.models", "Manage the GGUF model files the agent runs on."),
    "memory": ("offline_agent.cli.memory", "Inspect and fill the agent's long-term memory."),
    "serve": (
        "offline_agent.cli.serve",
        "Serve a registered model over the OpenAI API with llama-cpp-python's server.",
    ),
    "doctor": (
        "offline_agent.cli.doctor",
        "Check, with every socket blocked, that a run needs nothing from a network.",
    ),
    "bundle": (
        "offline_agent.cli.bundle",
        "Write a folder that installs offline-agent and its models with no network.",
    ),
    "runs": ("offline_agent.cli.runs", "List, show, verify, replay and resume recorded runs."),
    "tools": (
        "offline_agent.cli.tools",
        "Show the commands a run offers the model, yours included.",
    ),
    "bench": (
        "offline_agent.cli.bench",
        "Benchmark models on a challenge suite: each attempt in a fresh workspace, judged.",
    ),
}
"""Each command: the module defining it (a click command of the same name), and its line in
`--help`. A command's module is imported only when that command runs, so `--help` and
`--version` load no model backend, torch or jsonschema."""


class BadUsage(click.ClickException):
    """A bad option or argument, said in one line (click's own adds the usage and a hint)."""

    exit_code = 2


class AgentGroup(click.Group):
    """Turns our errors into one line on stderr and their own exit code, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands, in the order `--help` shows them."""
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command `cmd_name`, its module imported now."""
        if cmd_name not in COMMANDS:
            return None
        command: click.Command = getattr(importlib.import_module(COMMANDS[cmd_name][0]), cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands in `--help`, without importing them."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, line) for name, (_, line) in COMMANDS.items()])

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, reporting an AgentError or a bad option as `Error: ...`."""
        try:
            return super().invoke(ctx)
        except AgentError as err:
            click.secho(f"Error: {err}", fg="red", err=True)
            ctx.exit(err.exit_code)
        except click.UsageError as err:
            raise BadUsage(err.format_message()) from None


@click.group(cls=AgentGroup)
@click.version_option(__version__, prog_name="offline-agent")
def cli() -> None:
    """An autonomous agent that runs on local models with no network."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="offline-agent")
