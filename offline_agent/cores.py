"""How many CPUs this process may use: the default thread count of llama.cpp, of the
embedder and of a benchmark's workers. Imports nothing of the package (the embedder's start
is timed)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_QUOTA = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2's CPU quota of this process's group (a container's `--cpus`): "max" or
"QUOTA PERIOD" in microseconds."""


def usable_cores() -> int:
    """The CPUs this process may run on (taskset, container CPU sets), capped by its cgroup's
    CPU quota."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    try:
        quota, period = CPU_QUOTA.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 here, or a line we do not know
        pass
    return cores
