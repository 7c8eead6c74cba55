"""`offline-agent models`: list, fetch, verify, add and inspect GGUF model files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from offline_agent import gguf, modelstore, stores
from offline_agent.bundle.place import place
from offline_agent.cli.common import library_errors
from offline_agent.errors import ConfigError
from offline_agent.llm.kvfile import default_state_dir
from offline_agent.state import Rules

F = TypeVar("F", bound=Callable[..., Any])


def _models_dir_option(func: F) -> F:
    return click.option(
        "--models-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=modelstore.default_models_dir,
        show_default="$OFFLINE_AGENT_MODELS or ~/.offline-agent/models",
        help="Where model files and the user registry live.",
    )(func)


def _registry(models_dir: Path) -> modelstore.Registry:
    return modelstore.load_registry(modelstore.user_registry_path(models_dir))


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


@click.group()
def models() -> None:
    """Manage the GGUF model files the agent runs on."""


@models.command("list")
@_models_dir_option
@click.option(
    "--discover",
    is_flag=True,
    help="Also list the GGUF files of Ollama, the Hugging Face cache and LM Studio on this "
    "disk, with the --model name that runs each.",
)
def list_command(models_dir: Path, discover: bool) -> None:
    """List registered models and whether each is fetched."""
    with library_errors():
        rows = modelstore.list_models(_registry(models_dir), models_dir)
        found = stores.discover() if discover else []
    for row in rows:
        mark = "*" if row.default else " "
        state = "fetched" if row.fetched else "missing"
        click.echo(f"{mark} {row.name:<24} {state:<8} {_mb(row.size):>8}  {row.path}")
        if row.description:
            click.echo(f"  {'':<24} {row.description}")
        if row.rules:
            click.echo(f"  {'':<24} runs with: {', '.join(row.rules)}")
    if discover:
        click.echo(f"\n{len(found)} GGUF file(s) in other tools' stores:")
        for item in found:
            click.echo(f"  {item.name:<60} {_mb(item.size):>8}  {item.store}: {item.path}")


@models.command(short_help="Download models and check their sha256.")
@click.argument("names", nargs=-1)
@click.option("--all", "fetch_all", is_flag=True, help="Fetch every fetchable model.")
@click.option("--force", is_flag=True, help="Download again even if the file is present.")
@click.option(
    "--from",
    "bundle_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Take them from an air-gap bundle (`offline-agent bundle`) instead, with its saved "
    "KV states (default: every model it holds). No network.",
)
@_models_dir_option
def fetch(
    names: tuple[str, ...], fetch_all: bool, force: bool, bundle_dir: Path | None, models_dir: Path
) -> None:
    """Download models and check their sha256 (default: the default model)."""
    if bundle_dir is not None:
        if fetch_all or force:
            raise click.UsageError("--from takes model names, not --all or --force")
        with library_errors():
            placed = place(bundle_dir, models_dir, default_state_dir(), names, progress=_echo_err)
        for name, path in placed.models.items():
            click.echo(f"{name}: {path}")
        return
    with library_errors():
        registry = _registry(models_dir)
        if fetch_all:
            specs = [s for s in registry.models.values() if s.fetchable]
        else:
            specs = [registry.get(n) for n in names or (registry.default,)]
        for spec in specs:
            start = time.monotonic()
            path = modelstore.fetch(spec, models_dir, force=force, progress=_echo_err)
            click.echo(f"{spec.name}: {path} ({time.monotonic() - start:.1f}s)")


@models.command(short_help="Save the prompt opening's KV state, for a fast first run.")
@click.argument("names", nargs=-1)
@_models_dir_option
def warm(names: tuple[str, ...], models_dir: Path) -> None:
    """Evaluate the opening that the first prompt of every run with default options shares,
    and save its KV state (default: the default model), with and without long-term memory's
    commands. A run saves it too, so this only spares the first such run on a machine the
    seconds of evaluating it; runs with --allow-shell, another --n-ctx or a GPU save their
    own on their first run."""
    # Imported here: llama.cpp's library is not needed for the other model commands.
    from offline_agent.llm import LlamaOptions, open_model  # noqa: PLC0415
    from offline_agent.llm.llama import LlamaModel  # noqa: PLC0415
    from offline_agent.session import warm_up  # noqa: PLC0415

    with library_errors():
        registry = _registry(models_dir)
        for name in names or (registry.default,):
            start = time.monotonic()
            model = open_model(name, LlamaOptions(), models_dir)
            if not isinstance(model, LlamaModel):
                raise ConfigError(f"{name} is not a GGUF model; nothing to warm")
            evaluated = warm_up(model, memory=True) + warm_up(model, memory=False)
            done = f"{evaluated} tokens evaluated" if evaluated else "saved already"
            click.echo(f"{model.name}: prompt openings {done} ({time.monotonic() - start:.1f}s)")


@models.command(short_help="Check models' size and sha256.")
@click.argument("names", nargs=-1)
@_models_dir_option
def verify(names: tuple[str, ...], models_dir: Path) -> None:
    """Check models' size and sha256 (default: every fetched one)."""
    with library_errors():
        registry = _registry(models_dir)
        if names:
            specs = [registry.get(n) for n in names]
        else:
            specs = [s for s in registry.models.values() if s.location(models_dir).is_file()]
            if not specs:
                click.echo(f"no model files in {models_dir}")
        for spec in specs:
            click.echo(f"{spec.name}: ok ({modelstore.verify(spec, models_dir)})")


@models.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Registry name (default: the file name without .gguf).")
@click.option("--chat-format", help="Chat format for a file with no chat template (e.g. chatml).")
@click.option(
    "--rule",
    "rule_items",
    multiple=True,
    metavar="NAME=VALUE",
    help="A step rule this model runs with unless a run sets it (as `run --rule`); repeatable.",
)
@_models_dir_option
def add(
    path: Path,
    name: str | None,
    chat_format: str | None,
    rule_items: tuple[str, ...],
    models_dir: Path,
) -> None:
    """Register a local GGUF file by its path; it is not copied."""
    with library_errors():
        Rules.parse(rule_items)  # a bad rule is an error before the file is hashed
        spec = modelstore.add(
            path, models_dir, name=name, chat_format=chat_format, rules=rule_items
        )
    rules = f"; rules: {', '.join(spec.rules)}" if spec.rules else ""
    click.echo(f"added {spec.name}: {spec.path} (chat format: {spec.chat_format}{rules})")


@models.command()
@click.argument("name_or_path")
@_models_dir_option
def info(name_or_path: str, models_dir: Path) -> None:
    """Show what a model file's GGUF header says."""
    with library_errors():
        resolved = modelstore.resolve(name_or_path, _registry(models_dir), models_dir)
        details = gguf.describe(resolved.path)
    params = f"{details.parameters:,}" if details.parameters is not None else "?"
    if details.size_label:
        params += f" ({details.size_label})"
    fields = [
        ("name", resolved.spec.name if resolved.spec else "(not registered)"),
        ("path", str(resolved.path)),
        ("model", details.name or "?"),
        ("architecture", details.architecture),
        ("parameters", params),
        ("quantisation", details.quantisation or "?"),
        ("context", str(details.context_length or "?")),
        ("vocabulary", str(details.vocab_size or "?")),
        ("chat template", "yes" if details.has_chat_template else "no"),
        ("chat format", resolved.chat_format or "(none; pass one)"),
        ("file size", f"{details.file_size:,} bytes"),
    ]
    if resolved.spec is not None:
        fields.append(("sha256", resolved.spec.sha256))
        fields.append(("rules", ", ".join(resolved.spec.rules) or "(the defaults)"))
    for label, value in fields:
        click.echo(f"{label + ':':<15}{value}")
