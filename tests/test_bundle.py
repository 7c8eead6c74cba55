"""The air-gap bundle without a network or a model: bad input refused before any work, the
manifest checked by `doctor --bundle`, models and KV states placed by `models fetch --from`,
and install.sh's own checks. `test_bundle_install.py` builds and installs a real one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import offline_agent
from offline_agent import modelstore
from offline_agent.bundle import build
from offline_agent.bundle import manifest as mf
from offline_agent.cli import cli
from offline_agent.llm import kvfile
from tests.conftest import craft_gguf

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"n_ctx": 4096, "n_batch": 512, "n_ubatch": 512, "n_gpu_layers": 0, "llama_cpp": "9.9"}
TOKENS = [1, 2, 3, 70000]


def invoke(args: list[str], home: Path, **env: str) -> Result:
    return CliRunner().invoke(cli, args, env={"OFFLINE_AGENT_HOME": str(home), **env})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def tiny_models(tmp_path: Path) -> Path:
    """A models folder where the crafted GGUF `tiny` is registered by path."""
    models = tmp_path / "src-models"
    models.mkdir()
    (models / "Tiny-Test.gguf").write_bytes(craft_gguf())
    modelstore.add(models / "Tiny-Test.gguf", models, name="tiny")
    return models


def make_bundle(folder: Path, models_dir: Path, *, wheels: tuple[str, ...] = ()) -> Path:
    """A bundle of the registered model `tiny`, one saved KV state of it and `wheels` (fake
    files named as wheels), written with the code `offline-agent bundle` uses."""
    spec = modelstore.load_registry(modelstore.user_registry_path(models_dir)).get("tiny")
    source = spec.location(models_dir)
    modelstore.copy_checked(spec, source, folder / mf.MODELS / spec.filename)
    (folder / mf.REGISTRY).write_text(modelstore.dump_registry([spec]))
    state = kvfile.write(
        models_dir / "states", kvfile.identity(source, **PARAMS), TOKENS, b"kv bytes"
    )
    (folder / mf.KV_STATES).mkdir()
    (folder / mf.KV_STATES / state.name).write_bytes(state.read_bytes())
    (folder / mf.WHEELS).mkdir()
    for name in ("demo-1.0-py3-none-any.whl", *wheels):
        (folder / mf.WHEELS / name).write_bytes(name.encode())
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (folder / mf.INSTALL).write_text(build.install_script(python, []))
    manifest = mf.Manifest(
        offline_agent=offline_agent.__version__,
        python=mf.this_python(),
        platform=mf.this_platform(),
        wheels=[
            {"file": f"{mf.WHEELS}/{w.name}", "name": w.name.split("-")[0], "version": "1.0"}
            for w in sorted((folder / mf.WHEELS).iterdir())
        ],
        models=[
            {
                "name": "tiny",
                "file": f"{mf.MODELS}/{spec.filename}",
                "size": spec.size,
                "sha256": spec.sha256,
            }
        ],
        kv_states=[{"file": f"{mf.KV_STATES}/{state.name}", "model": "tiny"}],
    )
    mf.write(folder, manifest)
    return folder


@pytest.fixture
def bundle(tmp_path: Path, tiny_models: Path) -> Path:
    return make_bundle(tmp_path / "bundle", tiny_models)


def doctor_bundle(folder: Path, home: Path) -> tuple[int, dict[str, str]]:
    """Exit code and the checks' lines by label (mark and detail)."""
    result = invoke(["doctor", "--bundle", str(folder)], home)
    lines = {}
    for line in result.output.splitlines():
        if line[:2] in ("✓ ", "✗ ", "! "):
            label, _, detail = line[2:].partition(": ")
            lines[label] = f"{line[0]} {detail}"
    return result.exit_code, lines


# --- What the package ships -------------------------------------------------------------


def test_the_registry_and_install_template_are_package_data() -> None:
    # An install from the wheel (the bundle's) has only what package-data lists.
    package = Path(offline_agent.__file__).parent
    assert modelstore.BUILTIN_REGISTRY.parent == package
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["offline_agent"]
    for needed in (modelstore.BUILTIN_REGISTRY, package / "bundle" / "install.sh.j2"):
        rel = needed.relative_to(package)
        assert needed.is_file() and any(rel.match(g) for g in globs), rel


# --- Bad input: one line, an exit code, before any work -----------------------------------


def test_unknown_model_is_refused_at_once(tmp_path: Path, home: Path) -> None:
    start = time.monotonic()
    result = invoke(["bundle", str(tmp_path / "b"), "--model", "nope"], home)
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [
        "Error: unknown model 'nope'; known models: gemma3-270m, smollm2-135m"
    ]
    assert time.monotonic() - start < 5
    assert not (tmp_path / "b").exists()


def test_a_file_or_a_full_folder_is_refused(tmp_path: Path, home: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = invoke(["bundle", str(tmp_path / "file")], home)
    assert result.exit_code == 2
    assert "is a file" in result.output and len(result.output.strip().splitlines()) == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = invoke(["bundle", str(tmp_path / "full")], home)
    assert result.exit_code == 2 and "is not empty" in result.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_a_model_not_fetched_is_refused(tmp_path: Path, home: Path) -> None:
    empty = tmp_path / "no-models"
    result = invoke(["bundle", str(tmp_path / "b"), "--models-dir", str(empty)], home)
    assert result.exit_code == 3
    assert "run: offline-agent models fetch smollm2-135m" in result.output


def test_no_llama_cpp_wheel_is_refused_before_any_work(
    tmp_path: Path, home: Path, tiny_models: Path
) -> None:
    # An empty pip cache: no wheel built here.
    args = ["bundle", str(tmp_path / "b"), "--model", "tiny", "--models-dir", str(tiny_models)]
    start = time.monotonic()
    result = invoke(args, home, PIP_CACHE_DIR=str(tmp_path / "empty-cache"))
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: no llama-cpp-python ") and "--llama-wheel" in line
    assert time.monotonic() - start < 30
    assert not (tmp_path / "b").exists()
    assert list(tmp_path.glob(".b.partial-*")) == []

    other = tmp_path / "click-8.5.1-py3-none-any.whl"
    other.write_bytes(b"not llama")
    result = invoke([*args, "--llama-wheel", str(other)], home)
    assert result.exit_code == 2
    assert "is not a llama-cpp-python wheel" in result.output


def test_the_llama_wheel_is_found_by_version_and_tags(tmp_path: Path) -> None:
    version = build.importlib.metadata.version(build.LLAMA)
    tag = str(next(iter(mf.tags.sys_tags())))
    names = [
        f"llama_cpp_python-0.0.1-{tag}.whl",
        f"llama_cpp_python-{version}-cp27-cp27m-win32.whl",
        f"llama_cpp_python-{version}-{tag}.whl",
        "junk.txt",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    found = build.find_llama_wheel([tmp_path / n for n in names])
    assert found.name == names[2]
    with pytest.raises(build.ConfigError, match="no llama-cpp-python"):
        build.find_llama_wheel([tmp_path / n for n in names[:2]])


# --- doctor --bundle ------------------------------------------------------------------------


def test_doctor_passes_an_intact_bundle(bundle: Path, home: Path) -> None:
    code, lines = doctor_bundle(bundle, home)
    assert code == 0, lines
    assert lines["bundle files"] == f"✓ {len(mf.read(bundle).files)} match their sha256"
    assert lines["bundle's Python"].startswith("✓ cp3")
    assert lines["bundle's platform"].startswith("✓ every wheel fits")


def test_doctor_names_missing_changed_and_unlisted_files(bundle: Path, home: Path) -> None:
    model = next((bundle / mf.MODELS).glob("*.gguf"))
    data = bytearray(model.read_bytes())
    data[100] ^= 1  # same size, other bytes
    model.write_bytes(bytes(data))
    state = next((bundle / mf.KV_STATES).iterdir())
    state.unlink()
    (bundle / "notes.txt").write_text("mine")
    code, lines = doctor_bundle(bundle, home)
    assert code == 1
    assert lines["bundle files present"] == f"✗ missing: {mf.KV_STATES}/{state.name}"
    assert lines["bundle files unchanged"] == f"✗ changed: {mf.MODELS}/{model.name}"
    assert lines["bundle files listed"] == "! not in the manifest: notes.txt"


def test_doctor_refuses_another_python_or_platform(
    tmp_path: Path, tiny_models: Path, home: Path
) -> None:
    folder = make_bundle(tmp_path / "b", tiny_models, wheels=("x-1.0-cp311-cp311-win_amd64.whl",))
    manifest = json.loads((folder / mf.MANIFEST).read_text())
    manifest["python"] = {"version": "2.7.18", "tag": "cp27"}
    (folder / mf.MANIFEST).write_text(json.dumps(manifest))
    code, lines = doctor_bundle(folder, home)
    assert code == 1
    assert lines["bundle's Python"].startswith("✗ the bundle is for cp27 (Python 2.7.18); this is")
    assert lines["bundle's platform"] == (
        "✗ wheels this Python cannot install: x-1.0-cp311-cp311-win_amd64.whl"
    )


def test_doctor_warns_of_cpu_extensions_missing_here(bundle: Path, home: Path) -> None:
    lacking = sorted(mf.SIMD_FLAGS - set(mf.cpu_flags()))
    if not lacking:
        pytest.skip("this CPU has every extension the check knows")
    manifest = json.loads((bundle / mf.MANIFEST).read_text())
    manifest["platform"]["cpu_flags"] = [*mf.cpu_flags(), lacking[0]]
    (bundle / mf.MANIFEST).write_text(json.dumps(manifest))
    code, lines = doctor_bundle(bundle, home)
    assert code == 0
    assert lines["bundle's CPU"].startswith(f"! this CPU lacks {lacking[0]}, which the machine")


def test_doctor_on_a_folder_that_is_no_bundle(tmp_path: Path, home: Path) -> None:
    code, lines = doctor_bundle(tmp_path, home)
    assert code == 1
    assert lines["bundle manifest"].startswith(f"✗ {tmp_path} is not a bundle: cannot read")


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma ht\n\nflags\t: avx\n")
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve i8mm cpuid\n")
    assert mf.cpu_flags(x86) == ["avx", "avx2", "fma", "sse4_2"]
    assert mf.cpu_flags(arm) == ["asimd", "i8mm", "sve"]
    assert mf.cpu_flags(tmp_path / "none") == []


# --- models fetch --from: placing models and KV states ---------------------------------------


def test_fetch_from_places_the_model_registers_it_and_rekeys_its_kv_state(
    bundle: Path, home: Path
) -> None:
    result = invoke(["models", "fetch", "--from", str(bundle)], home)
    assert result.exit_code == 0, result.output
    models_dir = home / "models"
    placed = models_dir / "Tiny-Test.gguf"
    assert result.stdout.strip() == f"tiny: {placed}"
    assert placed.read_bytes() == (bundle / mf.MODELS / "Tiny-Test.gguf").read_bytes()
    spec = modelstore.load_registry(modelstore.user_registry_path(models_dir)).get("tiny")
    assert spec.path == placed
    assert modelstore.verify_once(spec, models_dir) == placed  # stamped: no re-hash needed
    # The state now belongs to the placed file: found under the name a run looks for.
    new_identity = kvfile.identity(placed, **PARAMS)
    state = home / "kv-cache" / kvfile.file_name(new_identity, TOKENS)
    header, payload = kvfile.read(state)
    assert (header.identity, header.tokens, payload) == (new_identity, TOKENS, b"kv bytes")
    assert header.matches(placed) and header.params == PARAMS
    # Again: nothing to do, the same result.
    again = invoke(["models", "fetch", "--from", str(bundle)], home)
    assert again.exit_code == 0 and "already at" in again.output


def test_fetch_from_refuses_a_changed_model(bundle: Path, home: Path) -> None:
    model = bundle / mf.MODELS / "Tiny-Test.gguf"
    model.write_bytes(model.read_bytes()[:-1] + b"\x01")
    result = invoke(["models", "fetch", "--from", str(bundle)], home)
    assert result.exit_code == 4
    assert "model tiny:" in result.output and "expected" in result.output
    assert not (home / "models" / "Tiny-Test.gguf").exists()


def test_fetch_from_refuses_a_builtin_name_with_another_file(
    tmp_path: Path, tiny_models: Path, home: Path
) -> None:
    folder = make_bundle(tmp_path / "b", tiny_models)
    spec = modelstore.read_registry_file(folder / mf.REGISTRY)["tiny"]
    source = modelstore.ChunkSource("p", "1", "m")
    fake = dataclasses.replace(spec, name="smollm2-135m", path=None, sources=(source,))
    (folder / mf.REGISTRY).write_text(modelstore.dump_registry([fake]))
    manifest = mf.read(folder)
    manifest.models[0]["name"] = "smollm2-135m"
    mf.write(folder, manifest)
    result = invoke(["models", "fetch", "--from", str(folder)], home)
    assert result.exit_code == 3
    assert "is not the one this install's registry knows" in result.output
    result = invoke(["models", "fetch", "--from", str(folder), "nope"], home)
    assert result.exit_code == 3 and "the bundle has no model 'nope'" in result.output


def test_a_dumped_registry_reads_back(tmp_path: Path) -> None:
    specs = list(modelstore.load_registry(None).models.values())
    path = tmp_path / "registry.toml"
    path.write_text(modelstore.dump_registry(specs, default="gemma3-270m"))
    assert list(modelstore.read_registry_file(path).values()) == specs
    assert tomllib.loads(path.read_text())["default"] == "gemma3-270m"


# --- KV state files ----------------------------------------------------------------------------


def test_state_file_names_are_the_ones_saved_before_the_format_moved(tmp_path: Path) -> None:
    # Names were sha256(identity, tokens as numpy int32): states already on disk stay found.
    model = tmp_path / "m.gguf"
    model.write_bytes(b"gguf")
    identity = kvfile.identity(model, **PARAMS)
    digest = hashlib.sha256(identity.encode())
    digest.update(np.asarray(TOKENS, dtype=np.int32).tobytes())
    assert kvfile.file_name(identity, TOKENS) == f"{digest.hexdigest()[:40]}.kv"
    assert json.loads(identity) == {"model": str(model.resolve()), "size": 4,
                                    "mtime_ns": model.stat().st_mtime_ns, **PARAMS}  # fmt: skip


def test_a_state_file_that_was_tampered_with_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"gguf")
    path = kvfile.write(tmp_path, kvfile.identity(model, **PARAMS), TOKENS, b"payload")
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(ValueError, match="checksum"):
        kvfile.read(path)
    with pytest.raises(ValueError, match="not a KV state file"):
        kvfile.rehome(model, model, tmp_path)
    header = kvfile.Header(kvfile.identity(model, **PARAMS), TOKENS, "")
    assert header.matches(model)
    os.utime(model, ns=(1, 1))  # touched: maybe changed, so the state is not for it
    assert not header.matches(model)
    assert not header.matches(tmp_path / "gone")


# --- install.sh's own checks -------------------------------------------------------------------


def run_install(bundle: Path, tmp_path: Path, python: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "h"), "PYTHON": python}
    return subprocess.run(["bash", str(bundle / mf.INSTALL), str(tmp_path / "venv")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_install_script_is_valid_bash_naming_its_models() -> None:
    script = build.install_script("3.11", ["smollm2-135m", "gemma3-270m"])
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "--no-index" in script and "PIP_CONFIG_FILE=/dev/null" in script
    assert "doctor --offline --model smollm2-135m --model gemma3-270m\n" in script


def test_install_refuses_another_python(bundle: Path, tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 2.7\n")
    fake.chmod(0o755)
    done = run_install(bundle, tmp_path, str(fake))
    assert done.returncode == 2
    assert "wheels are for Python 3." in done.stderr and "is 2.7" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_install_refuses_changed_files_before_making_a_venv(bundle: Path, tmp_path: Path) -> None:
    wheel = bundle / mf.WHEELS / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"changed")
    done = run_install(bundle, tmp_path, sys.executable)
    assert done.returncode == 4, done.stderr
    assert "demo-1.0-py3-none-any.whl: FAILED" in done.stderr
    assert not (tmp_path / "venv").exists()
