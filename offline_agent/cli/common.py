"""What the CLI's command groups share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from offline_agent.errors import AgentError


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
