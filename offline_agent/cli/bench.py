"""`offline-agent bench`: run a challenge suite over models and repeats; `bench report`."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Literal, get_args

import click

from offline_agent.bench.challenge import load_suite
from offline_agent.bench.cluster import RayRunner, check_address
from offline_agent.bench.parallel import ParallelRunner
from offline_agent.bench.report import write_report
from offline_agent.bench.runner import (
    Attempt,
    BenchSettings,
    Planned,
    Progress,
    Runner,
    read_results,
)
from offline_agent.bench.scoreboard import score
from offline_agent.cli.common import (
    AT_LEAST_ONE,
    SEED,
    TEMPERATURE,
    check_samples,
    commands_options,
    machine_options,
    samples_option,
    sandbox_option,
    thinking_options,
)
from offline_agent.errors import ConfigError
from offline_agent.llm.http import CONSTRAINTS, Constraint
from offline_agent.modelstore import default_models_dir, load_registry, user_registry_path
from offline_agent.reply import ReplyFormat
from offline_agent.state import Rules


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ConsoleProgress(Progress):
    """A line per attempt with a bar and the time left, estimated from this session's pace."""

    def __init__(self) -> None:
        self._began = time.monotonic()
        self._done_here = 0
        self._tty = sys.stdout.isatty()

    def _bar(self, done: int, total: int) -> str:
        width = 20
        filled = width * done // max(1, total)
        return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"

    def started(self, done: int, total: int, planned: Planned) -> None:
        """Show what runs now (on a terminal, overwritten by its result)."""
        if self._tty:
            click.echo(
                f"{self._bar(done, total)}  {planned.model} r{planned.repeat} "
                f"{planned.challenge.name} ...",
                nl=False,
            )
            click.echo("\r", nl=False)

    def finished(self, done: int, total: int, attempt: Attempt) -> None:
        """Print the attempt's outcome and the estimated time left."""
        self._done_here += 1
        pace = (time.monotonic() - self._began) / self._done_here
        eta = _duration(pace * (total - done))
        mark = click.style("pass", fg="green") if attempt.passed else click.style("fail", fg="red")
        line = (
            f"{self._bar(done, total)} ETA {eta}  {attempt.model} r{attempt.repeat} "
            f"{attempt.challenge}: {mark} ({attempt.status}, {attempt.steps} steps, "
            f"{attempt.wall_seconds:.1f} s)"
        )
        click.echo(line + ("\x1b[K" if self._tty else ""))  # clear the rest of a started line


def _print_report(out: Path) -> None:
    report = write_report(out)
    click.echo(f"Report of {report.attempts} attempts: {report.markdown}, {report.html}")


@click.group(invoke_without_command=True)
@click.option(
    "--suite",
    default="builtin",
    show_default=True,
    help="'builtin', or a folder of agbenchmark-style challenges (data.json each).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Registry name, GGUF path or scripted:FILE, or NAME=URL for a model served by its "
    "own OpenAI-compatible server; repeat to compare (default: the default).",
)
@click.option(
    "--repeats",
    type=AT_LEAST_ONE,
    default=None,
    help="Attempts per model and challenge (default: 1 at temperature 0, where every repeat "
    "decodes alike, else 3).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Results folder; run the same command again to continue an interrupted benchmark.",
)
@click.option("--challenge", "only", multiple=True, help="Run only these challenges (by name).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Repeat r uses seed SEED+r.")
@click.option(
    "--max-steps",
    type=AT_LEAST_ONE,
    default=10,
    show_default=True,
    help="Step limit per attempt.",
)
@click.option(
    "--temperature",
    type=TEMPERATURE,
    default=0.0,
    show_default=True,
    help="As `run` decodes (0: greedy); sample, with --repeats, to see the spread.",
)
@samples_option
@machine_options
@click.option(
    "--grammar-engine",
    type=click.Choice(["llguidance", "llama"]),
    default="llguidance",
    show_default=True,
)
@thinking_options
@click.option("--memory", is_flag=True, help="Give each attempt a fresh long-term memory.")
@click.option(
    "--rule",
    "rule_items",
    multiple=True,
    metavar="NAME=VALUE",
    help="Switch a step rule for every attempt, e.g. show_state=off; 'none' turns all off.",
)
@click.option("--reply-format", type=click.Choice(get_args(ReplyFormat)), default=None)
@click.option("--base-url", default=None, help="Benchmark models served at this URL instead.")
@click.option(
    "--constraint", type=click.Choice(CONSTRAINTS), default="json_object", show_default=True
)
@click.option("--judge-model", default=None, help="Local model that scores `llm` evals.")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None)
@click.option("--no-report", is_flag=True, help="Do not rebuild the report at the end.")
@sandbox_option
@click.option(
    "--jobs",
    type=AT_LEAST_ONE,
    default=1,
    show_default=True,
    help="Attempts at once, each in a worker process (in-process models split the cores).",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="Run attempts as Ray tasks: local (a Ray instance on this machine), auto (the "
    "cluster this machine is in) or ray://HOST:PORT; --jobs then caps attempts in flight.",
)
@commands_options
@click.pass_context
def bench(
    ctx: click.Context,
    suite: str,
    models: tuple[str, ...],
    repeats: int | None,
    out: Path,
    only: tuple[str, ...],
    seed: int,
    max_steps: int,
    temperature: float,
    samples: int,
    n_ctx: int,
    threads: int | None,
    n_gpu_layers: int,
    grammar_engine: Literal["llguidance", "llama"],
    think_tokens: int,
    thinking: Literal["off", "on"],
    memory: bool,
    rule_items: tuple[str, ...],
    reply_format: str | None,
    base_url: str | None,
    constraint: Constraint,
    judge_model: str | None,
    models_dir: Path | None,
    no_report: bool,
    sandbox: Literal["on", "off"],
    tools_files: tuple[Path, ...],
    mcp_commands: tuple[str, ...],
    jobs: int,
    ray_address: str | None,
) -> None:
    """Benchmark models on a challenge suite: each attempt in a fresh workspace, judged."""
    if ctx.invoked_subcommand is not None:
        return
    check_samples(samples, temperature)
    if repeats is None:
        repeats = 1 if temperature == 0 else 3
    if ray_address is not None:
        check_address(ray_address)
    challenges = load_suite(suite)
    if only:
        unknown = sorted(set(only) - {c.name for c in challenges})
        if unknown:
            raise ConfigError(f"no challenge named {', '.join(unknown)} in suite {suite}")
        challenges = [c for c in challenges if c.name in only]
    items = [*rule_items, *([f"reply_format={reply_format}"] if reply_format else [])]
    rules = Rules.parse(items)  # checked before anything loads
    models_dir = models_dir or default_models_dir()
    # Read for the default model and for the rules of models run in-process; a bench whose
    # models are all served does not need it (nor stop at a broken one).
    registry = None if models else load_registry(user_registry_path(models_dir))
    if registry is not None:
        models = (registry.default,)
    # NAME=URL: that model is served by its own OpenAI-compatible server.
    named = [
        m.split("=", 1) if "=" in m and "://" in m.split("=", 1)[1] else [m, ""] for m in models
    ]
    models = tuple(name for name, _ in named)
    servers = tuple((name, url) for name, url in named if url)
    served = {name for name, _ in servers}
    in_process = [] if base_url else [m for m in models if m not in served]
    if in_process and registry is None:
        registry = load_registry(user_registry_path(models_dir))
    own = {  # a model run in-process with rules of its own in the registry
        model: Rules.for_model(model, model_items, items)
        for model in in_process
        if registry and (model_items := registry.rules_of(model))
    }
    settings = BenchSettings(
        suite=suite if suite == "builtin" else str(Path(suite).resolve()),
        models=models,
        repeats=repeats,
        seed=seed,
        max_steps=max_steps,
        temperature=temperature,
        samples=samples,
        n_ctx=n_ctx,
        threads=threads,
        n_gpu_layers=n_gpu_layers,
        grammar_engine=grammar_engine,
        think_tokens=think_tokens,
        thinking=thinking == "on",
        memory=memory,
        rules=rules,
        model_rules=tuple((m, own[m]) for m in models if own.get(m, rules) != rules),
        base_url=base_url,
        servers=servers,
        constraint=constraint,
        judge_model=judge_model,
        models_dir=models_dir,
        sandbox=sandbox == "on",
        tools=tuple(str(path.absolute()) for path in tools_files),
        mcp=mcp_commands,
    )
    command = shlex.join(["offline-agent", *sys.argv[1:]])
    runner: Runner
    if ray_address is not None:
        given = ctx.get_parameter_source("jobs") != click.core.ParameterSource.DEFAULT
        runner = RayRunner(settings, challenges, out, ConsoleProgress(), command,
                           address=ray_address, jobs=jobs if given else 0)  # fmt: skip
    elif jobs > 1:
        runner = ParallelRunner(settings, challenges, out, ConsoleProgress(), command, jobs=jobs)
    else:
        runner = Runner(settings, challenges, out, ConsoleProgress(), command)
    runner.prepare()
    todo, total = runner.plan()
    click.echo(
        f"{len(challenges)} challenges × {len(models)} models × {repeats} repeats: "
        f"{total - len(todo)} of {total} attempts already in {out}"
    )
    try:
        runner.run()
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted; finished attempts are saved in {out}. Run again to continue.")
        sys.exit(130)
    for row in score([a for a in read_results(out) if a.model in models]):
        click.echo(f"{row.model}: {row.passed}/{row.attempts} passed ({row.rate:.0%})")
    if not no_report:
        _print_report(out)


@bench.command("report")
@click.argument("out", type=click.Path(path_type=Path))
def report(out: Path) -> None:
    """Rebuild report.md, report.html and charts/ from the results saved in OUT."""
    _print_report(out)
