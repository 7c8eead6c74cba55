"""Several attempts of a benchmark at once (`bench --jobs N`): one worker process each.

Each worker builds its own `Runner` from the benchmark's settings, splits the machine's
cores with the others (unless `--threads` says otherwise), loads a model once and keeps it
while the attempts it gets share the model and repeat, and returns each attempt it ran. The
process that started them writes every result, so the results file, resume, the report and
the judge work as with one attempt at a time. An attempt's numbers do not depend on the
worker: each is seeded from its repeat, its sampler reseeded, its workspace fresh. With a
server-backed model the workers are N concurrent clients of that server.

A worker that dies (killed, out of memory) loses the attempts in flight in it, not the
results saved; running the same command again runs what is missing. (`cluster.py` runs the
same attempts as Ray tasks, which Ray re-runs when their worker dies.)
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

from offline_agent.bench.challenge import Challenge
from offline_agent.bench.runner import Attempt, BenchSettings, Planned, Progress, Runner
from offline_agent.cores import usable_cores
from offline_agent.errors import BackendError

_WORKERS: dict[str, Runner] = {}
"""In a worker process, a runner per benchmark (by its settings), kept between attempts so
that a loaded model is too."""


def run_attempt(
    settings: BenchSettings, challenges: list[Challenge], out: Path, planned: tuple[str, str, int]
) -> dict[str, Any]:
    """Run one attempt (model, challenge, repeat) with this process's runner for the
    benchmark; the attempt as plain data. What a worker process or a Ray task executes."""
    key = f"{out}\n{settings.to_json()}"
    if key not in _WORKERS:
        _WORKERS.clear()  # another benchmark's runner (and model) is not needed any more
        _WORKERS[key] = Runner(settings, challenges, out)
    runner = _WORKERS[key]
    model, challenge, repeat = planned
    found = next(c for c in runner.challenges if c.name == challenge)
    attempt = Planned(model, found, repeat)
    return asdict(runner.attempt(attempt, runner.model_for(attempt)))


def run_window(
    todo: list[Planned],
    *,
    save: Callable[[Attempt], None],
    total: int,
    progress: Progress,
    jobs: int,
    submit: Callable[[Planned], Future[dict[str, Any]]],
) -> None:
    """Keep `jobs` attempts in flight, submitted in order as others end; save each as it
    ends. A future's exception propagates (after which nothing more is submitted)."""
    waiting = list(todo)
    running: dict[Future[dict[str, Any]], Planned] = {}
    saved = total - len(todo)
    while waiting or running:
        while waiting and len(running) < jobs:
            planned = waiting.pop(0)
            progress.started(saved, total, planned)
            running[submit(planned)] = planned
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            del running[future]
            save(Attempt(**future.result()))
            saved += 1


class ParallelRunner(Runner):
    """A `Runner` whose attempts run `jobs` at a time in worker processes."""

    def __init__(self, *args: Any, jobs: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.jobs = jobs

    def execute(self, todo: list[Planned], save: Callable[[Attempt], None], total: int) -> None:
        """Run `todo` in the worker processes, passing each attempt to `save` as it ends."""
        jobs = self.jobs
        settings = self.settings.threads_each(max(1, usable_cores() // jobs))
        context = multiprocessing.get_context("spawn")  # no fork of a process holding a model
        pool = ProcessPoolExecutor(jobs, mp_context=context)

        def submit(planned: Planned) -> Future[dict[str, Any]]:
            return pool.submit(run_attempt, settings, self.challenges, self.out, planned.key)

        try:
            run_window(
                todo, save=save, total=total, progress=self.progress, jobs=jobs, submit=submit
            )
        except BrokenProcessPool:
            raise BackendError(
                "a benchmark worker died; the attempts saved are kept: run the same "
                "command again to run the ones it lost"
            ) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
