"""What the CLI's command groups share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from offline_agent.errors import AgentError, ConfigError
from offline_agent.llm.options import LlamaOptions

F = TypeVar("F", bound=Callable[..., Any])

# Bounds of the numeric options, checked by click before anything loads (a negative
# context once ran for 51 s and took 17 GB before failing).
CONTEXT = click.IntRange(512, 1 << 20)
THREADS = click.IntRange(1, 1024)
GPU_LAYERS = click.IntRange(-1, None)
SEED = click.IntRange(0, 2**32 - 1)
TEMPERATURE = click.FloatRange(0, 10)
PORT = click.IntRange(1, 65535)
AT_LEAST_ONE = click.IntRange(1, None)
SECONDS = click.FloatRange(0, 24 * 3600, min_open=True)


def samples_option(func: F) -> F:
    """--samples: candidate replies decoded per step (`offline_agent.sampling`)."""
    return click.option(
        "--samples", type=click.IntRange(1, 16), default=1, show_default=True,
        help="Candidate replies decoded per step; the likeliest one that passes the checks "
        "(valid, not a repeat, Python that compiles) is kept. Above 1 needs a temperature.",
    )(func)  # fmt: skip


def check_samples(samples: int, temperature: float) -> None:
    """ConfigError when several samples are asked for at temperature 0 (all would be equal)."""
    if samples > 1 and temperature <= 0:
        raise ConfigError(
            "--samples above 1 needs --temperature above 0 (at 0 every sample is the same)"
        )


def machine_options(func: F) -> F:
    """--n-ctx, --threads and --n-gpu-layers: how an in-process model is loaded."""
    for option in reversed([
        click.option("--n-ctx", type=CONTEXT, default=4096, show_default=True,
                     help="Context window in tokens."),
        click.option("--threads", type=THREADS, default=None,
                     help="CPU threads (default: all)."),
        click.option("--n-gpu-layers", type=GPU_LAYERS, default=0, show_default=True,
                     help="Layers to offload to GPU (-1: all)."),
    ]):  # fmt: skip
        func = option(func)
    return func


THINK_TOKENS = click.IntRange(0, 1 << 20)


def thinking_options(func: F) -> F:
    """--think-tokens N and --thinking on|off: what a reasoning model may think before its
    reply (docs/models.md, "Reasoning models")."""
    func = click.option(
        "--thinking",
        type=click.Choice(["off", "on"]),
        default="off",
        show_default=True,
        help="Leave thinking on where the model's chat template can turn it off (Qwen3's "
        "enable_thinking, /no_think).",
    )(func)
    return click.option(
        "--think-tokens",
        type=THINK_TOKENS,
        default=LlamaOptions.think_tokens,
        show_default=True,
        help="Most tokens a reasoning model may think in a <think> block before each reply "
        "(0: none).",
    )(func)


def commands_options(func: F) -> F:
    """--tools FILE and --mcp COMMAND (repeatable): the user's own commands, as
    `tools_files` and `mcp_commands`."""
    func = click.option(
        "--mcp",
        "mcp_commands",
        multiple=True,
        metavar="COMMAND",
        help='An MCP server to start over stdio, e.g. "python -m my_server"; its tools become '
        "commands (repeatable). They act outside the workspace and the sandbox.",
    )(func)
    return click.option(
        "--tools",
        "tools_files",
        multiple=True,
        type=click.Path(path_type=Path),
        help="A Python file whose functions become commands (repeatable; see `tools list`).",
    )(func)


def sandbox_option(func: F) -> F:
    """--sandbox on|off: whether programs the agent starts run in the kernel sandbox."""
    return click.option(
        "--sandbox",
        type=click.Choice(["on", "off"]),
        default="on",
        show_default=True,
        help="Run the programs the agent starts in the kernel sandbox (no network, no files "
        "outside the workspace); 'off' runs them with all of your rights.",
    )(func)


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Report an AgentError as one `Error: ...` line on stderr and exit with its exit code.

    The top-level group does the same; this lets a group work when invoked on its own
    (in tests, or embedded in another click application).
    """
    try:
        yield
    except AgentError as exc:
        click.secho(f"Error: {exc}", fg="red", err=True)
        raise click.exceptions.Exit(exc.exit_code) from exc
