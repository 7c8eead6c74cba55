"""Models other tools keep on this disk: Ollama's store, the Hugging Face cache, LM Studio.

Read offline, from their files alone (no Ollama process, no hub access):

- `ollama:NAME[:TAG]` (`qwen2.5:7b`, `user/model`, `hf.co/org/repo:Q4_K_M`): the model layer
  of the manifest `manifests/<host>/<namespace>/<name>/<tag>` under `$OLLAMA_MODELS`, else
  `~/.ollama/models`, else the Linux service's `/usr/share/ollama/.ollama/models` (and
  `/var/lib/ollama/.ollama/models`), is the blob `blobs/sha256-<digest>`: a GGUF file;
- `hf:ORG/REPO[/FILE]`: the snapshot `refs/main` points at in `models--ORG--REPO` under
  `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; without FILE, the
  one GGUF file in it;
- `lmstudio:PUBLISHER/REPO[/FILE]`: under `$LMSTUDIO_MODELS`, else `~/.lmstudio/models`,
  else `~/.cache/lm-studio/models`.

`discover` lists every GGUF file they hold, with the name that loads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from offline_agent.errors import ModelError

PREFIXES = ("ollama:", "hf:", "lmstudio:")
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_HOST = "registry.ollama.ai"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Found:
    """A GGUF file in another tool's store, and the name that loads it."""

    name: str
    """What `--model` takes: `ollama:qwen2.5:7b`, `hf:org/repo/file.gguf`, ..."""
    path: Path
    store: str
    size: int
    sha256: str | None = None
    """Known from the store's own file names (Ollama's and the HF cache's blobs are named by
    their sha256), so nothing has to read the file to know it."""


def is_store_name(name: str) -> bool:
    """Whether `name` names a model in another tool's store."""
    return name.startswith(PREFIXES)


def find(name: str, environ: Mapping[str, str] | None = None) -> Found:
    """The GGUF file `name` (`ollama:...`, `hf:...`, `lmstudio:...`) names; ModelError if not."""
    env = os.environ if environ is None else environ
    kind, _, rest = name.partition(":")
    if not rest:
        raise ModelError(f"{name!r} names no model; e.g. ollama:qwen2.5:7b or hf:org/repo")
    if kind == "ollama":
        return _ollama(rest, env)
    if kind == "hf":
        return _huggingface(rest, env)
    return _lmstudio(rest, env)


def discover(environ: Mapping[str, str] | None = None) -> list[Found]:
    """Every GGUF file in the stores on this disk, by store and name."""
    env = os.environ if environ is None else environ
    return [*_ollama_all(env), *_huggingface_all(env), *_lmstudio_all(env)]


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == GGUF_MAGIC
    except OSError:
        return False


# --- Ollama -----------------------------------------------------------------------------


def ollama_roots(env: Mapping[str, str]) -> list[Path]:
    """Where Ollama keeps models: $OLLAMA_MODELS alone when set, else the usual places."""
    if env.get("OLLAMA_MODELS"):
        root = Path(env["OLLAMA_MODELS"]).expanduser()
        return [root] if (root / "manifests").is_dir() else []
    candidates = [_home(env) / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models"),
                  Path("/var/lib/ollama/.ollama/models")]  # fmt: skip
    return [root for root in candidates if (root / "manifests").is_dir()]


def _ollama_manifest(name: str) -> Path:
    """`qwen2.5:7b` → registry.ollama.ai/library/qwen2.5/7b (relative to manifests/)."""
    model, _, tag = (
        name.rpartition(":") if ":" in name.rsplit("/", maxsplit=1)[-1] else (name, "", "latest")
    )
    parts = model.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_HOST, "library", *parts]
    elif len(parts) == 2:
        parts = [OLLAMA_HOST, *parts]
    return Path(*parts, tag or "latest")


def _ollama_name(relative: Path) -> str:
    """The inverse of `_ollama_manifest`: the short name Ollama itself would print."""
    *model, tag = relative.parts
    if model[:2] == [OLLAMA_HOST, "library"]:
        model = model[2:]
    elif model[:1] == [OLLAMA_HOST]:
        model = model[1:]
    return f"ollama:{'/'.join(model)}:{tag}"


def _ollama_blob(root: Path, manifest: Path) -> tuple[Path, str] | None:
    """The model layer's blob of a manifest file, and its sha256; None if it has none."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        layers = data["layers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER:
            digest = str(layer.get("digest", ""))
            algorithm, _, hexdigest = digest.partition(":")
            return root / "blobs" / f"{algorithm}-{hexdigest}", hexdigest
    return None


def _ollama(name: str, env: Mapping[str, str]) -> Found:
    roots = ollama_roots(env)
    if not roots:
        raise ModelError(
            "no Ollama store found (looked in $OLLAMA_MODELS, ~/.ollama/models and "
            "/usr/share/ollama/.ollama/models); set OLLAMA_MODELS to its models folder"
        )
    relative = _ollama_manifest(name)
    for root in roots:
        manifest = root / "manifests" / relative
        if not manifest.is_file():
            continue
        blob = _ollama_blob(root, manifest)
        if blob is None:
            raise ModelError(f"ollama:{name}: its manifest {manifest} has no model layer")
        path, digest = blob
        if not path.is_file():
            raise ModelError(f"ollama:{name}: the model's blob {path} is missing")
        if not _is_gguf(path):
            raise ModelError(
                f"ollama:{name}: {path} is not a GGUF file (a format only Ollama reads)"
            )
        return Found(_ollama_name(relative), path, "Ollama", path.stat().st_size, digest)
    known = sorted(f.name for f in _ollama_all(env))
    hint = f"; Ollama has: {', '.join(known[:12])}" if known else ""
    raise ModelError(f"ollama:{name} is not in the Ollama store at {roots[0]}{hint}")


def _ollama_all(env: Mapping[str, str]) -> Iterator[Found]:
    for root in ollama_roots(env):
        manifests = root / "manifests"
        for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
            blob = _ollama_blob(root, manifest)
            if blob is not None and blob[0].is_file() and _is_gguf(blob[0]):
                name = _ollama_name(manifest.relative_to(manifests))
                yield Found(name, blob[0], "Ollama", blob[0].stat().st_size, blob[1])


# --- The Hugging Face cache -------------------------------------------------------------


def huggingface_root(env: Mapping[str, str]) -> Path:
    """The hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return _home(env) / ".cache" / "huggingface" / "hub"


def _snapshot(repo_folder: Path) -> Path | None:
    """The snapshot `refs/main` points at (else the only one there is)."""
    try:
        commit = (repo_folder / "refs" / "main").read_text(encoding="utf-8").strip()
        return repo_folder / "snapshots" / commit
    except OSError:
        snapshots = sorted((repo_folder / "snapshots").glob("*"))
        return snapshots[0] if len(snapshots) == 1 else None


def _blob_sha256(path: Path) -> str | None:
    """A cache file is a link to `blobs/<sha256>` when it was stored through git LFS."""
    name = path.resolve().name
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


def _ggufs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.gguf") if p.is_file() and _is_gguf(p))


def _huggingface(name: str, env: Mapping[str, str]) -> Found:
    org, _, rest = name.partition("/")
    repo, _, file = rest.partition("/")
    if not org or not repo:
        raise ModelError(f"hf:{name}: give hf:ORG/REPO or hf:ORG/REPO/FILE")
    root = huggingface_root(env)
    folder = root / f"models--{org}--{repo}"
    snapshot = _snapshot(folder) if folder.is_dir() else None
    if snapshot is None or not snapshot.is_dir():
        raise ModelError(f"hf:{org}/{repo} is not in the Hugging Face cache at {root}")
    return _one_file(f"hf:{org}/{repo}", snapshot, file, "Hugging Face cache")


def _one_file(prefix: str, folder: Path, file: str, store: str) -> Found:
    """The GGUF `file` in `folder`, or the only one there when `file` is empty."""
    if file:
        path = folder / file
        if not path.is_file():
            have = ", ".join(p.relative_to(folder).as_posix() for p in _ggufs(folder)[:12])
            raise ModelError(f"{prefix}/{file} does not exist; GGUF files there: {have or 'none'}")
        if not _is_gguf(path):
            raise ModelError(f"{prefix}/{file} is not a GGUF file")
    else:
        files = _ggufs(folder)
        if len(files) != 1:
            have = ", ".join(p.relative_to(folder).as_posix() for p in files[:12])
            raise ModelError(f"{prefix} holds {len(files)} GGUF files; name one: {have}"
                             if files else f"{prefix} holds no GGUF file")  # fmt: skip
        path = files[0]
    relative = path.relative_to(folder).as_posix()
    return Found(f"{prefix}/{relative}", path, store, path.stat().st_size, _blob_sha256(path))


def _huggingface_all(env: Mapping[str, str]) -> Iterator[Found]:
    root = huggingface_root(env)
    if not root.is_dir():
        return
    for folder in sorted(root.glob("models--*--*")):
        snapshot = _snapshot(folder)
        if snapshot is None or not snapshot.is_dir():
            continue
        prefix = "hf:" + folder.name.removeprefix("models--").replace("--", "/", 1)
        for path in _ggufs(snapshot):
            relative = path.relative_to(snapshot).as_posix()
            yield Found(f"{prefix}/{relative}", path, "Hugging Face cache",
                        path.stat().st_size, _blob_sha256(path))  # fmt: skip


# --- LM Studio --------------------------------------------------------------------------


def lmstudio_roots(env: Mapping[str, str]) -> list[Path]:
    """LM Studio's models folder: $LMSTUDIO_MODELS, else its default and its older one."""
    if env.get("LMSTUDIO_MODELS"):
        return [Path(env["LMSTUDIO_MODELS"]).expanduser()]
    home = _home(env)
    candidates = [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    return [root for root in candidates if root.is_dir()]


def _lmstudio(name: str, env: Mapping[str, str]) -> Found:
    publisher, _, rest = name.partition("/")
    repo, _, file = rest.partition("/")
    if not publisher or not repo:
        raise ModelError(f"lmstudio:{name}: give lmstudio:PUBLISHER/REPO[/FILE]")
    for root in lmstudio_roots(env):
        folder = root / publisher / repo
        if folder.is_dir():
            return _one_file(f"lmstudio:{publisher}/{repo}", folder, file, "LM Studio")
    where = ", ".join(str(r) for r in lmstudio_roots(env)) or "no LM Studio models folder"
    raise ModelError(f"lmstudio:{publisher}/{repo} is not in LM Studio's models ({where})")


def _lmstudio_all(env: Mapping[str, str]) -> Iterator[Found]:
    for root in lmstudio_roots(env):
        for path in _ggufs(root):
            relative = path.relative_to(root)
            if len(relative.parts) >= 3:
                yield Found(f"lmstudio:{relative.as_posix()}", path, "LM Studio",
                            path.stat().st_size)  # fmt: skip
