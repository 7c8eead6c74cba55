"""Several attempts of a benchmark at once (`bench --jobs N`): one worker process each.

Each worker builds its own `Runner` from the benchmark's settings, splits the machine's
cores with the others (unless `--threads` says otherwise), loads a model once and keeps it
while the attempts it gets share the model and repeat, and returns each attempt it ran. The
process that started them writes every result, so the results file, resume, the report and
the judge work as with one attempt at a time. An attempt's numbers do not depend on the
worker: each is seeded from its repeat, its sampler reseeded, its workspace fresh. With a
server-backed model the workers are N concurrent clients of that server.

A worker that dies (killed, out of memory) loses the attempts in flight in it, not the
results saved; running the same command again runs what is missing.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from offline_agent.bench.challenge import Challenge
from offline_agent.bench.runner import Attempt, BenchSettings, Planned, Runner
from offline_agent.errors import BackendError
from offline_agent.settings import usable_cores

_WORKER: dict[str, Runner] = {}
"""In a worker process, its runner (set by `_start`), for every attempt it runs."""


def _start(settings: BenchSettings, challenges: list[Challenge], out: Path) -> None:
    _WORKER["runner"] = Runner(settings, challenges, out)


def _attempt(model: str, challenge: str, repeat: int) -> dict[str, Any]:
    runner = _WORKER["runner"]
    found = next(c for c in runner.challenges if c.name == challenge)
    planned = Planned(model, found, repeat)
    return asdict(runner.attempt(planned, runner.model_for(planned)))


class ParallelRunner(Runner):
    """A `Runner` whose attempts run `jobs` at a time in worker processes."""

    def __init__(self, *args: Any, jobs: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.jobs = jobs

    def execute(self, todo: list[Planned], save: Callable[[Attempt], None], total: int) -> None:
        """Run `todo` in the worker processes, passing each attempt to `save` as it ends."""
        settings, jobs = self.settings, self.jobs
        if settings.threads is None and settings.base_url is None and not settings.servers:
            settings = replace(settings, threads=max(1, usable_cores() // jobs))
        context = multiprocessing.get_context("spawn")  # no fork of a process holding a model
        pool = ProcessPoolExecutor(
            jobs,
            mp_context=context,
            initializer=_start,
            initargs=(settings, self.challenges, self.out),
        )
        waiting = list(todo)
        running: dict[Future[dict[str, Any]], Planned] = {}
        saved = total - len(todo)
        try:
            while waiting or running:
                while waiting and len(running) < jobs:  # submit as workers free up, in order
                    planned = waiting.pop(0)
                    self.progress.started(saved, total, planned)
                    future = pool.submit(
                        _attempt, planned.model, planned.challenge.name, planned.repeat
                    )
                    running[future] = planned
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    del running[future]
                    try:
                        save(Attempt(**future.result()))
                    except BrokenProcessPool:
                        raise BackendError(
                            "a benchmark worker died; the attempts saved are kept: run the same "
                            "command again to run the ones it lost"
                        ) from None
                    saved += 1
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
