"""The command line: parse, build settings, call the library, print, set the exit code."""

from __future__ import annotations

from typing import Any

import click

from offline_agent import __version__
from offline_agent.cli.bench import bench
from offline_agent.cli.doctor import doctor
from offline_agent.cli.memory import memory
from offline_agent.cli.models import models
from offline_agent.cli.run import run
from offline_agent.cli.runs import runs
from offline_agent.cli.serve import serve
from offline_agent.errors import AgentError


class AgentGroup(click.Group):
    """Turns our errors into one line on stderr and their own exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, reporting an AgentError as `Error: ...`."""
        try:
            return super().invoke(ctx)
        except AgentError as err:
            click.secho(f"Error: {err}", fg="red", err=True)
            ctx.exit(err.exit_code)


@click.group(cls=AgentGroup)
@click.version_option(__version__, prog_name="offline-agent")
def cli() -> None:
    """An autonomous agent that runs on local models with no network."""


cli.add_command(run)
cli.add_command(models)
cli.add_command(memory)
cli.add_command(serve)
cli.add_command(doctor)
cli.add_command(runs)
cli.add_command(bench)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="offline-agent")
