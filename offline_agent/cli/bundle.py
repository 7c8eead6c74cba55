"""`offline-agent bundle DIR`: everything an install on a machine with no network needs."""

from __future__ import annotations

import time
from pathlib import Path

import click

from offline_agent.bundle import build
from offline_agent.cli.common import library_errors
from offline_agent.llm.kvfile import default_state_dir
from offline_agent.modelstore import default_models_dir


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "names",
    multiple=True,
    help="A registered model to include (repeatable; default: the default model).",
)
@click.option(
    "--llama-wheel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The llama-cpp-python wheel to ship (default: the one pip built on this machine, "
    "from pip's cache).",
)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def bundle(
    folder: Path, names: tuple[str, ...], llama_wheel: Path | None, models_dir: Path | None
) -> None:
    """Write a folder that installs offline-agent and its models with no network."""
    start = time.monotonic()
    with library_errors():
        plan = build.plan(
            folder,
            names,
            models_dir or default_models_dir(),
            default_state_dir(),
            llama_wheel=llama_wheel,
        )
        manifest = build.build(plan, progress=_echo_err)
    models = ", ".join(m["name"] for m in manifest.models)
    click.echo(
        f"{folder}: {len(manifest.wheels)} wheels, {models}, {len(manifest.kv_states)} KV "
        f"state(s); {manifest.total_size / 1e6:.0f} MB in {time.monotonic() - start:.0f}s"
    )
    click.echo(f"on the machine with no network: bash {folder}/install.sh")
