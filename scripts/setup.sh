#!/usr/bin/env bash
# Set up everything a run or the tests need, offline except for the package registry:
# a virtual environment in .venv, this package with its dev tools, the model files, and the
# saved KV state of the default model's prompt opening.
# Idempotent: a second run only checks what is already there.
#   bash scripts/setup.sh               # the default model only
#   bash scripts/setup.sh --all-models  # every registered model (the tests use both)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.offline-agent-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # llama-cpp-python builds from source the first time (minutes); pip caches the wheel.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
if [ "${1:-}" = "--all-models" ]; then
    .venv/bin/offline-agent models fetch --all
else
    .venv/bin/offline-agent models fetch
fi
# The KV state of the prompt opening every run shares, so the first run starts as fast as
# later ones (seconds the first time, then a check).
.venv/bin/offline-agent models warm
# The fast embedder: an ONNX export of the packaged embedding model, so that memory starts
# without torch (about 20 s the first time, then a check).
.venv/bin/offline-agent memory prepare
