"""`offline-agent tools`: the commands a run offers the model, with their schemas."""

from __future__ import annotations

import json
from pathlib import Path

import click

from offline_agent.cli.common import commands_options, library_errors
from offline_agent.session import run_tools
from offline_agent.state import Rules
from offline_agent.tools.mcp_servers import MCPServers
from offline_agent.tools.user import with_user_tools


@click.group()
def tools() -> None:
    """Show the commands a run offers the model, yours included."""


@tools.command("list")
@commands_options
@click.option("--rule", "rule_items", multiple=True, metavar="NAME=VALUE", help="As `run`.")
@click.option("--allow-shell", is_flag=True, help="As `run`.")
@click.option("--no-memory", is_flag=True, help="As `run`.")
def list_command(
    tools_files: tuple[Path, ...],
    mcp_commands: tuple[str, ...],
    rule_items: tuple[str, ...],
    allow_shell: bool,
    no_memory: bool,
) -> None:
    """Each command a run with these options can offer, as the model reads it, and the JSON
    schema of its arguments (which its branch of the reply grammar is built from)."""
    with library_errors(), MCPServers(mcp_commands) as servers:
        rules = Rules.parse(rule_items)
        builtins = run_tools(rules, memory=not no_memory, shell=allow_shell)
        registry = with_user_tools(builtins, tools_files, servers.start() if mcp_commands else ())
        for name, why in servers.left_out.items():
            click.echo(f"left out {name}: {why}", err=True)
    for command in registry:
        origin = "" if command.name in builtins else "  [added]"
        click.echo(command.signature_text(prose=rules.prose_signatures) + origin)
        click.echo(f"    schema: {json.dumps(command.args_schema())}")
