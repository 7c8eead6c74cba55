"""The files of a memory folder: the manifest, the lock and clean-up.

    manifest.json       the commit point: model, dimension, the live segments, the snapshot
    seg-<id>.npy        float32 vectors of one segment, never changed once written
    seg-<id>.jsonl      one JSON object per vector: text, kind, time, meta
    index-<id>.faiss    optional snapshot of an approximate index over the first entries
    .lock               serialises writers, and readers against a writer's clean-up

A save writes new files under fresh names and fsyncs them, then replaces manifest.json in one
`os.replace`; files the new manifest no longer names are deleted only after that. A crash at
any moment therefore leaves either the old or the new manifest, each naming complete files,
and loading only ever reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from offline_agent import atomic
from offline_agent.errors import MemoryStoreError

if sys.platform != "win32":
    import fcntl

FORMAT = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
_OWN_FILE = re.compile(r"^(seg-[0-9a-f]+\.(npy|jsonl)|index-[0-9a-f]+\.faiss|.*\.tmp)$")


@dataclass(frozen=True)
class StoreInfo:
    """What the manifest of a memory folder says, read without loading any vectors."""

    memory_dir: Path
    model_id: str
    dimension: int
    count: int
    segments: int
    snapshot: str | None
    disk_bytes: int


@dataclass(frozen=True)
class Segment:
    """A pair of immutable files, seg-<id>.npy and seg-<id>.jsonl, holding `count` entries."""

    id: str
    count: int


@dataclass(frozen=True)
class Snapshot:
    """index-<id>.faiss: a serialised index over the first `count` entries."""

    id: str
    kind: str
    count: int
    m: int
    ef_construction: int


@dataclass(frozen=True)
class Manifest:
    """The state of a memory folder: which model made it and which files hold it."""

    model_id: str
    dimension: int
    segments: tuple[Segment, ...] = ()
    snapshot: Snapshot | None = None

    @property
    def count(self) -> int:
        """Entries in all segments."""
        return sum(s.count for s in self.segments)

    def to_json(self) -> str:
        """The manifest.json text."""
        return json.dumps(
            {
                "format": FORMAT,
                "model_id": self.model_id,
                "dimension": self.dimension,
                "segments": [{"id": s.id, "count": s.count} for s in self.segments],
                "snapshot": None if self.snapshot is None else asdict(self.snapshot),
            },
            indent=1,
        )

    def files(self) -> set[str]:
        """Names of the files this manifest needs, besides itself."""
        names = {f"seg-{s.id}.{ext}" for s in self.segments for ext in ("npy", "jsonl")}
        if self.snapshot is not None:
            names.add(f"index-{self.snapshot.id}.faiss")
        return names


def damaged(memory_dir: Path, detail: str) -> MemoryStoreError:
    """The error for a memory folder whose files disagree or cannot be parsed."""
    return MemoryStoreError(f"memory in {memory_dir} is damaged ({detail}); it was left as it is")


def parse_manifest(memory_dir: Path, text: str) -> Manifest:
    """The manifest in `text`; MemoryStoreError if it is not one this version reads."""
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise MemoryStoreError(
                f"memory in {memory_dir} has format {data.get('format')!r}; "
                f"this version reads format {FORMAT}"
            )
        snap = data["snapshot"]
        return Manifest(
            model_id=str(data["model_id"]),
            dimension=int(data["dimension"]),
            segments=tuple(Segment(str(s["id"]), int(s["count"])) for s in data["segments"]),
            snapshot=None if snap is None else Snapshot(**snap),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise damaged(memory_dir, f"unreadable {MANIFEST}: {err}") from None


def read_manifest(memory_dir: Path) -> Manifest | None:
    """The folder's manifest; None when it has none (a new store)."""
    try:
        text = (memory_dir / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise MemoryStoreError(f"cannot read memory in {memory_dir}: {err}") from None
    return parse_manifest(memory_dir, text)


@contextlib.contextmanager
def locked(memory_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the folder's advisory lock; a reader of a folder never written to takes none."""
    if sys.platform == "win32":  # no flock: a single writer is assumed
        yield
        return
    if exclusive:
        memory_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(memory_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    else:
        try:
            fd = os.open(memory_dir / LOCK, os.O_RDONLY)
        except OSError:
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def read_info(memory_dir: Path) -> StoreInfo | None:
    """Facts about the memory in `memory_dir` from its manifest alone; None if there is none."""
    manifest = read_manifest(memory_dir)
    if manifest is None:
        return None
    disk = sum(
        (memory_dir / name).stat().st_size
        for name in manifest.files() | {MANIFEST}
        if (memory_dir / name).exists()
    )
    return StoreInfo(
        memory_dir=memory_dir,
        model_id=manifest.model_id,
        dimension=manifest.dimension,
        count=manifest.count,
        segments=len(manifest.segments),
        snapshot=manifest.snapshot.kind if manifest.snapshot else None,
        disk_bytes=disk,
    )


def check_model(memory_dir: Path, model_id: str, dimension: int | None = None) -> None:
    """Raise MemoryStoreError if `memory_dir` holds memories embedded by another model."""
    manifest = read_manifest(memory_dir)
    if manifest is not None:
        check_signature(memory_dir, manifest, model_id, dimension)


def check_signature(
    memory_dir: Path, manifest: Manifest, model_id: str, dimension: int | None
) -> None:
    """Raise MemoryStoreError naming both models if `manifest` is of another vector space."""
    # An empty store holds no vectors to mix up, so any model may take it over.
    if manifest.count == 0:
        return
    if manifest.model_id != model_id or dimension not in (None, manifest.dimension):
        theirs = f"{manifest.model_id} ({manifest.dimension} dimensions)"
        ours = model_id if dimension is None else f"{model_id} ({dimension} dimensions)"
        raise MemoryStoreError(
            f"memory in {memory_dir} was made with embedding model {theirs}, not {ours}; "
            "use that model, another memory folder, or `offline-agent memory clear`"
        )


def clear_store(memory_dir: Path) -> int:
    """Delete every memory in `memory_dir` (any model) and return how many there were."""
    try:
        with locked(memory_dir, exclusive=True):
            manifest = read_manifest(memory_dir)
            if manifest is None:
                return 0
            commit(memory_dir, Manifest(manifest.model_id, manifest.dimension))
            return manifest.count
    except OSError as err:
        raise MemoryStoreError(f"cannot clear memory in {memory_dir}: {err}") from err


def commit(memory_dir: Path, manifest: Manifest) -> None:
    """Make `manifest` the current state, then delete files it does not name (lock held)."""
    atomic.fsync_folder(memory_dir)
    atomic.write_bytes(memory_dir / MANIFEST, manifest.to_json().encode())
    atomic.fsync_folder(memory_dir)
    live = manifest.files()
    for path in memory_dir.iterdir():
        if path.name not in live and _OWN_FILE.match(path.name):
            path.unlink(missing_ok=True)
