"""Shared fixtures: the real model files, found where `offline-agent models fetch` put them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from offline_agent import modelstore

REAL_MODELS = ("smollm2-135m", "gemma3-270m")


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """The real registered files in the default models dir; skip (or fail in CI) if absent."""
    registry = modelstore.load_registry(None)
    models_dir = modelstore.default_models_dir()
    found, missing = {}, []
    for name in REAL_MODELS:
        spec = registry.get(name)
        path = spec.location(models_dir)
        if path.is_file() and path.stat().st_size == spec.size:
            found[name] = path
        else:
            missing.append(name)
    if missing:
        message = f"not fetched into {models_dir}: {', '.join(missing)}"
        if os.environ.get("OFFLINE_AGENT_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message + " (run: offline-agent models fetch --all)")
    return found
