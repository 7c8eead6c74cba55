"""`offline-agent run`: turn the options into run settings, then run the agent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, get_args

import click

from offline_agent.agent import Agent, AgentConfig
from offline_agent.cli.common import (
    AT_LEAST_ONE,
    SECONDS,
    SEED,
    TEMPERATURE,
    check_samples,
    commands_options,
    machine_options,
    samples_option,
    sandbox_option,
    thinking_options,
)
from offline_agent.cli.console import ConsoleEvents, ask_after_interrupt, ask_user
from offline_agent.errors import ConfigError
from offline_agent.home import home_dir
from offline_agent.llm import HttpOptions, LlamaOptions
from offline_agent.llm.http import CONSTRAINTS, Constraint
from offline_agent.memory import default_memory_dir
from offline_agent.modelstore import default_models_dir, load_registry, user_registry_path
from offline_agent.records import RunResult, RunStatus
from offline_agent.reply import ReplyFormat
from offline_agent.session import Run, RunSettings
from offline_agent.settings import load_ai_settings, make_profile
from offline_agent.state import Rules
from offline_agent.tools.base import ShellPolicy
from offline_agent.tools.shell import DEFAULT_DENY

EXIT_CODES: dict[RunStatus, int] = {
    "finished": 0,
    "step_limit": 10,
    "time_limit": 14,
    "format_errors": 11,
    "loop": 12,
    "stopped_by_user": 13,
    "error": 1,
}
"""Exit status of a run by how it ended; errors before the run have their own codes."""


def _redacted(argv: list[str]) -> list[str]:
    """The command line with the value of --api-key hidden: it must not reach the record."""
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--api-key="):
            out.append("--api-key=***")
        elif i > 0 and argv[i - 1] == "--api-key":
            out.append("***")
        else:
            out.append(arg)
    return out


def _run_asking_on_interrupt(agent: Agent, events: ConsoleEvents, interactive: bool) -> RunResult:
    while True:
        try:
            return agent.run()
        except KeyboardInterrupt:
            events.spinner.stop()
            feedback = ask_after_interrupt() if interactive else None
            if feedback is None:
                return RunResult("stopped_by_user", agent.steps_taken, "interrupted")
            agent.add_note(f"Human feedback: {feedback}")


def drive(run: Run, events: ConsoleEvents, interactive: bool) -> None:
    """Run to its end (the record kept whole whatever happens) and exit with its status.

    Ctrl-C asks, as Auto-GPT did, whether to stop or to tell the agent something; in
    continuous mode it stops. Either way the record gets its end line.
    """
    agent, record = run.agent, run.record
    click.secho(f"{agent.profile.name} starts on {agent.model.name}; run {record.id}", bold=True)
    try:
        result = run.execute(lambda agent: _run_asking_on_interrupt(agent, events, interactive))
    finally:
        events.spinner.stop()
    colour = "green" if result.status == "finished" else "yellow"
    click.secho(
        f"\nRun {record.id} ended: {result.status} after {result.steps} steps. {result.reason}",
        fg=colour,
        bold=True,
    )
    sys.exit(EXIT_CODES[result.status])


@click.command()
@click.option("--name", default="Agent", show_default=True, help="The agent's name.")
@click.option(
    "--role",
    default="an autonomous assistant that pursues its goals",
    show_default=True,
    help="What the agent is.",
)
@click.option("--goal", "goals", multiple=True, help="A goal (repeat for several).")
@click.option(
    "--ai-settings",
    type=click.Path(path_type=Path),
    help="Auto-GPT's ai_settings.yaml (ai_name, ai_role, ai_goals) instead of the flags.",
)
@click.option(
    "--model",
    default=None,
    help="Registry name, GGUF path, or scripted:FILE; with --base-url, the server's model name.",
)
@click.option(
    "--base-url",
    default=None,
    help="Use an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1.",
)
@click.option(
    "--api-key", default=None, envvar="OFFLINE_AGENT_API_KEY", help="Bearer key for the server."
)
@click.option(
    "--constraint",
    type=click.Choice(CONSTRAINTS),
    default="json_object",
    show_default=True,
    help="How the reply schema is sent to the server (none: repair and validate only).",
)
@click.option("--chat-format", default=None, help="Override the chat format (gemma, chatml).")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None)
@machine_options
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--temperature", type=TEMPERATURE, default=0.0, show_default=True)
@click.option(
    "--grammar-engine",
    type=click.Choice(["llguidance", "llama"]),
    default="llguidance",
    show_default=True,
    help="Who constrains in-process replies: llguidance (fast) or llama.cpp's GBNF sampler.",
)
@thinking_options
@click.option("--workspace", type=click.Path(path_type=Path), default=None)
@click.option("--runs-dir", type=click.Path(path_type=Path), default=None)
@click.option("--memory-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--memory-scope",
    type=click.Choice(["goals", "agent"]),
    default="goals",
    show_default=True,
    help="Without --memory-dir: one memory per agent name and set of goals, or one per agent "
    "name shared by all its goals.",
)
@click.option("--no-memory", is_flag=True, help="Run without long-term memory.")
@click.option(
    "--rule",
    "rule_items",
    multiple=True,
    metavar="NAME=VALUE",
    help="Switch a step rule, e.g. show_state=off or agent_commands=on; 'none' turns all "
    "off (docs/benchmarks.md).",
)
@click.option(
    "--reply-format",
    type=click.Choice(get_args(ReplyFormat)),
    default=None,
    help="Four thoughts before each command (Auto-GPT's), one short one (the default), "
    "or the command alone.",
)
@click.option("--continuous", is_flag=True, help="Run every command without asking.")
@click.option("--limit", type=AT_LEAST_ONE, default=None, help="Steps allowed in continuous mode.")
@click.option("--max-steps", type=AT_LEAST_ONE, default=50, show_default=True)
@click.option(
    "--time-limit",
    type=SECONDS,
    default=None,
    help="Seconds; no new step starts after it.",
)
@click.option("--max-format-errors", type=AT_LEAST_ONE, default=3, show_default=True)
@click.option(
    "--reply-tokens",
    type=click.IntRange(16, 1 << 20),
    default=AgentConfig.reply_tokens,
    show_default=True,
    help="Token limit per reply.",
)
@samples_option
@click.option(
    "--python-timeout",
    type=SECONDS,
    default=30.0,
    show_default=True,
    help="Seconds per program.",
)
@sandbox_option
@commands_options
@click.option("--allow-shell", is_flag=True, help="Offer the execute_shell command.")
@click.option("--shell-allow", multiple=True, help="With --allow-shell: only these programs.")
@click.option("--shell-deny", multiple=True, help="With --allow-shell: also refuse these.")
def run(
    name: str,
    role: str,
    goals: tuple[str, ...],
    ai_settings: Path | None,
    model: str | None,
    base_url: str | None,
    api_key: str | None,
    constraint: Constraint,
    chat_format: str | None,
    models_dir: Path | None,
    n_ctx: int,
    threads: int | None,
    n_gpu_layers: int,
    seed: int,
    temperature: float,
    grammar_engine: Literal["llguidance", "llama"],
    think_tokens: int,
    thinking: Literal["off", "on"],
    workspace: Path | None,
    runs_dir: Path | None,
    memory_dir: Path | None,
    memory_scope: Literal["goals", "agent"],
    no_memory: bool,
    rule_items: tuple[str, ...],
    reply_format: str | None,
    continuous: bool,
    limit: int | None,
    max_steps: int,
    time_limit: float | None,
    max_format_errors: int,
    reply_tokens: int,
    samples: int,
    python_timeout: float,
    allow_shell: bool,
    shell_allow: tuple[str, ...],
    shell_deny: tuple[str, ...],
    sandbox: Literal["on", "off"],
    tools_files: tuple[Path, ...],
    mcp_commands: tuple[str, ...],
) -> None:
    """Run an agent on its goals until it finishes or a limit stops it."""
    profile, settings_items, tool_files, servers = (
        load_ai_settings(ai_settings) if ai_settings else (None, (), (), ())
    )
    profile = profile or make_profile(name, role, goals)
    models_dir = (models_dir or default_models_dir()).absolute()
    # A server's model is not the registry's file: the registry's rules are for ours.
    model_items = () if base_url else load_registry(user_registry_path(models_dir)).rules_of(model)
    rules = Rules.for_model(
        model or "the default model",
        model_items,
        [*settings_items, *rule_items, *([f"reply_format={reply_format}"] if reply_format else [])],
    )
    check_samples(samples, temperature)
    if base_url and chat_format:
        raise ConfigError("--chat-format applies to in-process models; the server picks its own")
    if (shell_allow or shell_deny) and not allow_shell:
        raise ConfigError("--shell-allow and --shell-deny need --allow-shell")
    home = home_dir()
    settings = RunSettings(
        profile=profile,
        model=model,
        models_dir=models_dir,
        # Absolute, so that `runs resume` from another folder finds the same ones.
        workspace=(workspace or home / "workspaces" / profile.name).absolute(),
        runs_dir=(runs_dir or home / "runs").absolute(),
        llama=LlamaOptions(
            n_ctx,
            threads,
            n_gpu_layers,
            seed,
            temperature,
            grammar_engine,
            think_tokens=think_tokens,
            thinking=thinking == "on",
        ),
        agent=AgentConfig(
            max_steps=min(max_steps, limit) if continuous and limit else max_steps,
            max_format_errors=max_format_errors,
            reply_tokens=reply_tokens,
            samples=samples,
            time_limit=time_limit,
        ),
        chat_format=chat_format,
        http=HttpOptions(base_url, api_key, constraint) if base_url else None,
        rules=rules,
        memory_dir=None
        if no_memory
        else (
            memory_dir
            or default_memory_dir(profile.name, profile.goals if memory_scope == "goals" else ())
        ).absolute(),
        continuous=continuous,
        python_timeout=python_timeout,
        sandbox=sandbox == "on",
        tools=(*tool_files, *(path.absolute() for path in tools_files)),
        mcp=(*servers, *mcp_commands),
        shell=ShellPolicy(
            frozenset(shell_allow) if shell_allow else None,
            DEFAULT_DENY.difference(shell_allow) | frozenset(shell_deny),
        )
        if allow_shell
        else None,
    )
    if continuous and settings.mcp:
        click.secho(
            "Note: the commands of MCP servers run without asking and act outside the "
            f"workspace and the sandbox, with your rights: {', '.join(settings.mcp)}",
            fg="yellow",
            err=True,
        )
    # The registry's items that the user's own rules leave standing.
    if in_effect := [
        item
        for item in model_items
        if item.strip().lower() == "none" or Rules.parse([item], rules) == rules
    ]:
        click.secho(
            f"The model's own rules from the registry: {', '.join(in_effect)} "
            "(--rule NAME=VALUE overrides one)",
            err=True,
        )
    events = ConsoleEvents(profile.name)
    run = Run.new(settings, events, ask_user, {"argv": _redacted(sys.argv[1:])})
    for command, why in run.servers.left_out.items():
        click.secho(f"Left out {command}: {why}", fg="yellow", err=True)
    drive(run, events, interactive=not continuous)
