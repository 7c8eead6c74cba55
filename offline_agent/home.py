"""The home folder, where models, runs, memory and saved KV states live unless told otherwise."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def home_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$OFFLINE_AGENT_HOME, else ~/.offline-agent."""
    env = os.environ if environ is None else environ
    return Path(env.get("OFFLINE_AGENT_HOME") or "~/.offline-agent").expanduser()
