"""`offline-agent doctor`: is this install ready for an air-gapped run?"""

from __future__ import annotations

from pathlib import Path

import click

from offline_agent import doctor as checks
from offline_agent.modelstore import default_models_dir

MARKS = {"ok": ("✓", "green"), "fail": ("✗", "red"), "warn": ("!", "yellow")}


def _print(check: checks.Check) -> None:
    mark, colour = MARKS[check.status]
    detail = f": {check.detail}" if check.detail else ""
    click.echo(click.style(mark, fg=colour) + f" {check.label}{detail}")


@click.command()
@click.option(
    "--offline",
    is_flag=True,
    help="Strict: any attempt to use the network is a failure, not a warning.",
)
@click.option("--model", "names", multiple=True, help="Check only these models (repeatable).")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--bundle",
    "bundle_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Instead, check an air-gap bundle (`offline-agent bundle`) against its manifest: "
    "missing or changed files, another Python or platform.",
)
def doctor(
    offline: bool, names: tuple[str, ...], models_dir: Path | None, bundle_dir: Path | None
) -> None:
    """Check, with every socket blocked, that a run needs nothing from a network."""
    if bundle_dir is not None:
        results = checks.check_bundle(bundle_dir)
        for check in results:
            _print(check)
        verdict = ("the bundle is not fit to install here", "the bundle can be installed here")
    else:
        results = checks.run_checks(
            models_dir or default_models_dir(), names, strict=offline, progress=_print
        )
        verdict = ("not ready for an offline run", "ready for an offline run")
    failed = sum(c.status == "fail" for c in results)
    if failed:
        click.secho(f"{failed} check(s) failed: {verdict[0]}", fg="red", err=True)
        raise click.exceptions.Exit(1)
    click.secho(verdict[1], fg="green")
