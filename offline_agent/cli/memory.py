"""`offline-agent memory`: ingest files, search, inspect and clear long-term memory."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from offline_agent.cli.common import AT_LEAST_ONE, library_errors
from offline_agent.memory import (
    FastEmbedder,
    Hit,
    clear_store,
    default_memory_dir,
    open_memory,
    read_info,
)
from offline_agent.memory.embedder import bundled_model_path
from offline_agent.memory.export import ensure_export, require_export
from offline_agent.memory.fast import bulk_embedder
from offline_agent.memory.ingest import (
    BATCH,
    CHUNK_CHARS,
    OVERLAP_CHARS,
    collect_chunks,
    store_chunks,
)

F = TypeVar("F", bound=Callable[..., Any])


def _memory_dir_option(func: F) -> F:
    """--memory-dir, or the folder `run` uses for the agent --name and its --goal(s)."""
    func = click.option(
        "--goal",
        "goals",
        multiple=True,
        help="With --name: the folder of a run with these goals (run's default scope); "
        "without, the agent's shared folder (run --memory-scope agent).",
    )(func)
    func = click.option(
        "--name", default="Agent", show_default=True, help="The agent whose memory this is."
    )(func)
    return click.option(
        "--memory-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The memory folder.  [default: the one `run` uses for --name and --goal]",
    )(func)


def _index_option(func: F) -> F:
    return click.option(
        "--index",
        type=click.Choice(["flat", "hnsw"]),
        default="flat",
        show_default=True,
        help="Exact search, or the approximate HNSW graph for stores past ~100k entries.",
    )(func)


def _folder(memory_dir: Path | None, name: str, goals: tuple[str, ...]) -> Path:
    return memory_dir if memory_dir is not None else default_memory_dir(name, goals)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _describe(hit: Hit) -> str:
    meta = " ".join(f"{k}={v}" for k, v in hit.entry.meta.items())
    return f"{hit.entry.kind} {hit.entry.time}" + (f" {meta}" if meta else "")


@click.group()
def memory() -> None:
    """Inspect and fill the agent's long-term memory."""


@memory.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_memory_dir_option
@_index_option
@click.option("--chunk-size", default=CHUNK_CHARS, show_default=True, help="Characters a chunk.")
@click.option("--overlap", default=OVERLAP_CHARS, show_default=True, help="Characters shared.")
def ingest_command(
    paths: tuple[Path, ...],
    memory_dir: Path | None,
    name: str,
    goals: tuple[str, ...],
    index: str,
    chunk_size: int,
    overlap: int,
) -> None:
    """Store files and folders in memory as overlapping chunks."""
    if chunk_size <= 0 or not 0 <= overlap < chunk_size:
        raise click.BadParameter("need --chunk-size > 0 and 0 <= --overlap < --chunk-size")
    folder = _folder(memory_dir, name, goals)
    done = [0, 0]  # chunks stored or found stored, of all
    with library_errors(), contextlib.ExitStack() as stack:
        chunks, collected = collect_chunks(paths, chunk_size, overlap)  # read once, here
        mem = open_memory(folder, bulk_embedder(len(chunks), _warn), index=index, notify=_warn)
        bar: Any = None
        started = time.perf_counter()

        def progress(finished: int, total: int) -> None:
            nonlocal bar
            done[:] = [finished, total]
            if bar is None and total > BATCH:
                bar = stack.enter_context(
                    click.progressbar(
                        length=total,
                        label="Embedding chunks",
                        item_show_func=lambda rate: rate,
                    )
                )
            if bar is not None:
                rate = finished / max(time.perf_counter() - started, 1e-9)
                bar.update(finished - bar.pos, f"{rate:.1f} chunks/s" if finished else None)

        try:
            report = store_chunks(mem, paths, chunks, collected, progress=progress)
        except KeyboardInterrupt:
            stack.close()
            click.echo(
                f"\nInterrupted: {done[0]} of {done[1]} chunks are stored in {folder}; "
                "the same command again embeds only the rest.",
                err=True,
            )
            sys.exit(130)
        mem.close()
    for skipped in report.skipped:
        click.echo(f"Skipped {skipped} (not UTF-8 text)", err=True)
    click.echo(
        f"Added {report.added} of {report.chunks} chunks from {report.files} files to {folder}"
        + (
            f" ({report.chunks - report.added} were already there)"
            if report.added < report.chunks
            else ""
        )
    )


@memory.command("prepare")
@click.option("--check", is_flag=True, help="Only check that the export is there and whole.")
def prepare_command(check: bool) -> None:
    """Build the fast embedder now: an ONNX export of the packaged model (once, ~20 s)."""
    embedder = FastEmbedder()
    folder = embedder.export_folder
    started = time.perf_counter()
    with library_errors():
        source = bundled_model_path()
        if check:
            require_export(folder, source)
        else:
            ensure_export(source, folder, embedder.variant, _warn, embedder.model_id)
    click.echo(
        f"The ONNX export of {embedder.model_id} is ready in {folder} "
        f"({time.perf_counter() - started:.1f} s)"
    )


def _warn(line: str) -> None:
    click.echo(line, err=True)


@memory.command("search")
@click.argument("query")
@click.option(
    "-k", type=AT_LEAST_ONE, default=10, show_default=True, help="How many memories to show."
)
@click.option("--full", is_flag=True, help="Show whole texts, not one line each.")
@_memory_dir_option
@_index_option
def search_command(
    query: str,
    k: int,
    full: bool,
    memory_dir: Path | None,
    name: str,
    goals: tuple[str, ...],
    index: str,
) -> None:
    """Show the memories the agent would recall for QUERY, with their scores."""
    with library_errors():
        folder = _folder(memory_dir, name, goals)
        hits = open_memory(folder, index=index, notify=_warn).search(query, k)
    if not hits:
        click.echo("No memories found.")
    for hit in hits:
        if full:
            click.echo(f"{hit.score:.3f}  [{_describe(hit)}]\n{hit.entry.text}\n")
        else:
            click.echo(f"{hit.score:.3f}  {_one_line(hit.entry.text, 100)}")


@memory.command("stats")
@_memory_dir_option
def stats_command(memory_dir: Path | None, name: str, goals: tuple[str, ...]) -> None:
    """Show how many memories there are, which model made them, and their size on disk."""
    folder = _folder(memory_dir, name, goals)
    with library_errors():
        info = read_info(folder)
    click.echo(f"folder:     {folder}")
    if info is None:
        click.echo("memories:   0 (nothing saved yet)")
        return
    click.echo(f"memories:   {info.count}")
    click.echo(f"model:      {info.model_id} ({info.dimension} dimensions)")
    click.echo(f"segments:   {info.segments}")
    click.echo(f"snapshot:   {info.snapshot or 'none'}")
    click.echo(f"disk:       {info.disk_bytes / 1e6:.1f} MB")


@memory.command("clear")
@_memory_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clear_command(memory_dir: Path | None, name: str, goals: tuple[str, ...], yes: bool) -> None:
    """Delete every memory in the folder."""
    folder = _folder(memory_dir, name, goals)
    with library_errors():
        info = read_info(folder)
        if info is None or info.count == 0:
            click.echo(f"No memories in {folder}.")
            return
        if not yes:
            click.confirm(f"Delete all {info.count} memories in {folder}?", abort=True)
        removed = clear_store(folder)
    click.echo(f"Deleted {removed} memories from {folder}.")
