"""`offline-agent serve`: llama-cpp-python's own OpenAI-compatible server for a registered model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from offline_agent import modelstore
from offline_agent.cli.common import PORT, machine_options
from offline_agent.cores import usable_cores
from offline_agent.errors import ConfigError


def server_argv(
    resolved: modelstore.ResolvedModel,
    *,
    host: str,
    port: int,
    n_ctx: int,
    n_gpu_layers: int,
    threads: int | None,
    chat_format: str | None,
) -> list[str]:
    """The command line that serves `resolved` with llama-cpp-python's server
    (`python -m llama_cpp.server`, through `offline_agent.llm.llama_server`)."""
    name = resolved.name
    fmt = chat_format or resolved.chat_format
    if fmt is None:
        raise ConfigError(f"{resolved.path} has no chat template; pass --chat-format")
    argv = [
        sys.executable, "-m", "offline_agent.llm.llama_server",
        "--model", str(resolved.path),
        "--model_alias", name,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_gpu_layers", str(n_gpu_layers),
    ]  # fmt: skip
    # The server's own default is half the cores; ours (and the in-process model's) is all.
    threads = threads or usable_cores()
    argv += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    if fmt != modelstore.TEMPLATE_FORMAT:  # "template": the server reads the GGUF's own
        argv += ["--chat_format", fmt]
    return argv


@click.command(
    epilog=(
        "Limitation: with a model whose chat format is gemma (gemma3-270m), llama-cpp-python's "
        "built-in gemma format drops the system message, so the agent's instructions never "
        "reach the model. The in-process backend folds the system message into the first user "
        "turn instead; prefer it for such models."
    )
)
@click.option("--model", default=None, help="Registry name or GGUF path (default: the default).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=PORT, default=8000, show_default=True, help="Port to listen on.")
@machine_options
@click.option(
    "--chat-format", default=None, help="Override the chat format (default: the model's)."
)
@click.option("--models-dir", type=click.Path(path_type=Path), default=None)
def serve(
    model: str | None,
    host: str,
    port: int,
    n_ctx: int,
    n_gpu_layers: int,
    threads: int | None,
    chat_format: str | None,
    models_dir: Path | None,
) -> None:
    """Serve a registered model over the OpenAI API with llama-cpp-python's server."""
    models_dir = models_dir or modelstore.default_models_dir()
    registry = modelstore.load_registry(modelstore.user_registry_path(models_dir))
    resolved = modelstore.resolve(model or registry.default, registry, models_dir)
    argv = server_argv(
        resolved,
        host=host,
        port=port,
        n_ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        threads=threads,
        chat_format=chat_format,
    )
    click.echo(f"serving {resolved.path} at http://{host}:{port}/v1", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process: signals reach the server directly and no parent lingers.
    os.execv(argv[0], argv)
