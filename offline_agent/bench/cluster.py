"""A benchmark's attempts as Ray tasks (`bench --ray ADDRESS`), for a cluster or a big box.

Ray is an optional extra (`pip install 'offline-agent[ray]'`), imported only here and only
with `--ray`. Each attempt is one task asking for the resources it needs: `--threads` CPUs
(one by default) for an in-process model, plus a GPU when layers are offloaded
(`--n-gpu-layers`). Ray reuses its worker processes, and each keeps its runner and loaded
model between the tasks it gets (`parallel.run_attempt`), so a model loads once per worker,
not once per attempt. This process alone writes `results.jsonl`, as each task ends, so
resume, the report and the judge work as without Ray. A worker that dies mid-attempt (killed,
out of memory, its node gone) has its task re-run by Ray from a fresh workspace; the result
is saved once, when a run of it ends.

Addresses: `local` starts a Ray instance on this machine with its cores (it ends with the
benchmark); `auto` joins the cluster this machine belongs to; `ray://HOST:PORT` connects a
client to a remote head. On a cluster of several hosts every node needs this package and the
models, and each attempt's workspace and run record are written on the node that ran it
under the same path as `--out` (a shared folder keeps them in one place); the results file is
always written here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from offline_agent.bench.parallel import run_attempt, run_window
from offline_agent.bench.runner import Attempt, Planned, Runner
from offline_agent.errors import BackendError, ConfigError

LOCAL_STORE = 256 * 2**20
"""Bytes of Ray's object store for `--ray local`."""

RETRIES = 3
"""Times Ray runs an attempt again whose worker died (a killed process, a lost node)."""


def _ray() -> Any:
    try:
        import ray  # noqa: PLC0415 - an optional extra, imported only with --ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'offline-agent[ray]'") from None
    return ray


def check_address(address: str) -> None:
    """ConfigError for an address `--ray` cannot take (before anything loads)."""
    if address not in ("local", "auto") and not address.startswith("ray://"):
        raise ConfigError(f"--ray takes local, auto or ray://HOST:PORT, not {address!r}")
    _ray()


class RayRunner(Runner):
    """A `Runner` whose attempts are Ray tasks; at most `jobs` in flight (0: as many as the
    cluster's CPUs hold)."""

    def __init__(self, *args: Any, address: str = "local", jobs: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address = address
        self.jobs = jobs

    def execute(self, todo: list[Planned], save: Callable[[Attempt], None], total: int) -> None:
        """Run `todo` as Ray tasks, passing each attempt to `save` as it ends."""
        ray = _ray()
        cpus = self.settings.threads or 1
        settings = self.settings.threads_each(cpus)  # what the task asks for, it uses
        started = not ray.is_initialized()
        if started:
            local = self.address == "local"
            ray.init(
                address=None if local else self.address,
                num_cpus=os.cpu_count() if local else None,
                # Attempts pass small objects: a small store spares /dev/shm on a laptop.
                object_store_memory=LOCAL_STORE if local else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        try:
            task = ray.remote(run_attempt).options(
                num_cpus=cpus,
                num_gpus=1 if settings.n_gpu_layers else 0,
                max_retries=RETRIES,
                retry_exceptions=False,  # an attempt that fails is a result, not a crash
            )
            jobs = self.jobs or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))

            def submit(planned: Planned) -> Future[dict[str, Any]]:
                ref = task.remote(settings, self.challenges, self.out, planned.key)
                return ref.future()  # type: ignore[no-any-return]

            run_window(
                todo, save=save, total=total, progress=self.progress, jobs=jobs, submit=submit
            )
        except ray.exceptions.RayError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackendError(
                f"a Ray task failed ({first}); the attempts saved are kept: run the same "
                "command again to run the rest"
            ) from None
        finally:
            if started:
                ray.shutdown()
