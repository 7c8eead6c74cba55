"""A bundle's manifest: what it holds, for which Python and platform, every file's sha256."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from offline_agent.errors import BundleError
from offline_agent.modelstore import sha256_file

FORMAT = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
INSTALL = "install.sh"
WHEELS = "wheels"
MODELS = "models"
KV_STATES = "kv-cache"
REGISTRY = f"{MODELS}/registry.toml"
UNLISTED = frozenset({MANIFEST, SUMS})
"""Files of a bundle that the manifest does not list: itself and the sums made from it."""

# The instruction-set extensions llama.cpp's CPU kernels use, as /proc/cpuinfo names them
# (x86 `flags`, Arm `Features`). A wheel built here is compiled for this CPU (GGML_NATIVE).
SIMD_FLAGS = frozenset({
    "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f",
    "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni", "avx512_bf16", "avx512vbmi",
    "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "i8mm", "bf16", "sme",
})  # fmt: skip


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle, by its path relative to the bundle's folder."""

    sha256: str
    size: int


@dataclass
class Manifest:
    """What manifest.json holds."""

    offline_agent: str
    python: dict[str, str]
    """`version` (3.11.7) and `tag` (cp311): the interpreter the wheels are for."""
    platform: dict[str, Any]
    """`system`, `machine`, `libc`, `tag` (the interpreter's most specific wheel tag) and
    `cpu_flags` (SIMD extensions of the CPU that built llama-cpp-python)."""
    wheels: list[dict[str, Any]] = field(default_factory=list)
    """`file`, `name`, `version`, `built_here` (true for llama-cpp-python)."""
    models: list[dict[str, Any]] = field(default_factory=list)
    """`name`, `file`, `size`, `sha256`; the full entries are in models/registry.toml."""
    embedder: dict[str, str] = field(default_factory=dict)
    """`package`, `version`, `file`: the wheel that holds the embedding model."""
    kv_states: list[dict[str, str]] = field(default_factory=list)
    """`file`, `model`: saved KV states, by the model they were computed with."""
    files: dict[str, FileEntry] = field(default_factory=dict)
    created: str = ""
    format: int = FORMAT

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        """Parse manifest.json; BundleError when it is not one this version can read."""
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise BundleError(f"{where}: manifest format {raw.get('format')!r}, not {FORMAT}")
            raw["files"] = {k: FileEntry(**v) for k, v in raw["files"].items()}
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise BundleError(f"{where} is not a bundle manifest: {err}") from None

    @property
    def total_size(self) -> int:
        """Bytes of every listed file."""
        return sum(entry.size for entry in self.files.values())


def this_python() -> dict[str, str]:
    """The running interpreter, as a bundle records it."""
    return {
        "version": platform.python_version(),
        "tag": f"{tags.interpreter_name()}{tags.interpreter_version()}",
    }


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The SIMD extensions this CPU has (empty where /proc/cpuinfo is not there)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(SIMD_FLAGS & set(value.split()))
    return []


def this_platform() -> dict[str, Any]:
    """The running machine, as a bundle records it."""
    libc = " ".join(part for part in platform.libc_ver() if part)
    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "libc": libc,
        "tag": str(next(iter(tags.sys_tags()))),
        "cpu_flags": cpu_flags(),
    }


def wheel_info(path: Path) -> tuple[str, str]:
    """A wheel's distribution name and version, from its file name."""
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as err:
        raise BundleError(f"{path.name} is not a wheel file name: {err}") from None
    return str(name), str(version)


def wheel_fits(path: Path) -> bool:
    """Whether this interpreter can install the wheel (one of its tags is supported)."""
    try:
        wheel_tags = parse_wheel_filename(path.name)[3]
    except InvalidWheelFilename:
        return False
    return not wheel_tags.isdisjoint(tags.sys_tags())


def walk(folder: Path) -> Iterator[str]:
    """Every file under folder, as a relative POSIX path, manifest and sums left out."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in UNLISTED:
            yield rel


def write(folder: Path, manifest: Manifest) -> None:
    """Hash every file of folder into the manifest; write manifest.json and SHA256SUMS."""
    manifest.files = {
        rel: FileEntry(sha256_file(folder / rel), (folder / rel).stat().st_size)
        for rel in walk(folder)
    }
    (folder / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    sums = "".join(f"{entry.sha256}  {rel}\n" for rel, entry in manifest.files.items())
    (folder / SUMS).write_text(sums, encoding="utf-8")


def read(folder: Path) -> Manifest:
    """The manifest of the bundle in folder; BundleError when there is none."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a folder")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BundleError(
            f"{folder} is not a bundle: cannot read {MANIFEST} ({err.strerror})"
        ) from None
    return Manifest.from_json(text, path)


@dataclass(frozen=True)
class FileProblems:
    """How a bundle's files differ from its manifest."""

    missing: list[str]
    changed: list[str]
    extra: list[str]


def compare(folder: Path, manifest: Manifest) -> FileProblems:
    """Hash every listed file and compare it with the manifest."""
    missing, changed = [], []
    for rel, entry in manifest.files.items():
        path = folder / rel
        if not path.is_file():
            missing.append(rel)
        elif path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            changed.append(rel)
    extra = [rel for rel in walk(folder) if rel not in manifest.files]
    return FileProblems(missing, changed, extra)


def python_mismatch(manifest: Manifest) -> str | None:
    """Why this interpreter is not the one the bundle is for, or None."""
    here = this_python()
    if manifest.python.get("tag") == here["tag"]:
        return None
    wanted = f"{manifest.python.get('tag')} (Python {manifest.python.get('version')})"
    this = f"{here['tag']} (Python {here['version']}, {sys.executable})"
    return f"the bundle is for {wanted}; this is {this}"
