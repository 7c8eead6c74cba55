"""A FAISS inner-product index of memories, with their texts and metadata beside the vectors.

The index is derived data: the segments in the memory folder (see `disk`) are the truth, and
an approximate index is rebuilt from them, or read from its snapshot plus the newer entries.
Segments are merged like a binary counter (a new tail absorbs the segments before it that are
no larger), so a save rewrites O(log n) entries per memory on average, not the whole store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np

from offline_agent import atomic
from offline_agent.errors import ConfigError, MemoryStoreError
from offline_agent.memory.disk import (
    Manifest,
    Segment,
    Snapshot,
    StoreInfo,
    check_signature,
    commit,
    damaged,
    locked,
    read_info,
    read_manifest,
)
from offline_agent.memory.embedder import Vectors

IndexKind = Literal["flat", "hnsw"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
MetaValue = str | int | float | bool | None


def index_kind(value: str) -> IndexKind:
    """`value` as an IndexKind; ConfigError naming the choices otherwise."""
    if value not in INDEX_KINDS:
        raise ConfigError(f"unknown memory index {value!r}; choose one of {', '.join(INDEX_KINDS)}")
    return cast(IndexKind, value)


@dataclass(frozen=True)
class Entry:
    """One memory: its text, what kind it is, when it was stored, and free-form metadata."""

    text: str
    kind: str
    time: str
    meta: Mapping[str, MetaValue] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        record = {"text": self.text, "kind": self.kind, "time": self.time, "meta": dict(self.meta)}
        # ASCII escapes: a lone surrogate (valid in a Python str) cannot be UTF-8 encoded.
        return json.dumps(record)


@dataclass(frozen=True)
class Hit:
    """A search result: inner product with the query (cosine for normalised vectors)."""

    score: float
    entry: Entry


@dataclass(frozen=True)
class HNSWParams:
    """Graph degree and search breadths of the approximate index."""

    m: int = 32
    ef_construction: int = 40
    ef_search: int = 128


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _faiss() -> Any:
    # Imported on first use: it adds ~0.2 s to every CLI start otherwise.
    import faiss  # noqa: PLC0415

    return faiss


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run faiss with `n` OpenMP threads (None: leave as is)."""
    # One query gains nothing from threads on a few cores, and when another process (or
    # torch's spinning workers) holds a core, the OpenMP barrier makes it 10-50x slower.
    if n is None:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class MemoryStore:
    """Vectors in a FAISS inner-product index, entries beside them, saved in a memory folder."""

    def __init__(
        self,
        memory_dir: Path,
        model_id: str,
        dimension: int,
        *,
        index: IndexKind = "flat",
        hnsw: HNSWParams | None = None,
        snapshot_every: int = 5000,
    ) -> None:
        """An empty store bound to `memory_dir`; use `open` to load what is saved there."""
        self.memory_dir = memory_dir
        self.model_id = model_id
        self.dimension = dimension
        self.index_kind = index_kind(index)
        self.hnsw = hnsw or HNSWParams()
        self.snapshot_every = snapshot_every
        self._reset()

    @classmethod
    def open(
        cls,
        memory_dir: Path,
        model_id: str,
        dimension: int,
        *,
        index: IndexKind = "flat",
        hnsw: HNSWParams | None = None,
        snapshot_every: int = 5000,
    ) -> MemoryStore:
        """Load the store in `memory_dir` (or start an empty one); never writes to it."""
        store = cls(
            memory_dir, model_id, dimension, index=index, hnsw=hnsw, snapshot_every=snapshot_every
        )
        with locked(memory_dir, exclusive=False):
            manifest = read_manifest(memory_dir)
            if manifest is not None:
                check_signature(memory_dir, manifest, model_id, dimension)
                store._load(manifest)
        return store

    # --- state -------------------------------------------------------------------------

    def _reset(self) -> None:
        self._manifest = Manifest(self.model_id, self.dimension)
        self._entries: list[Entry] = []
        self._keys: set[bytes] = set()
        self._pending: list[tuple[list[Entry], Vectors]] = []  # batches as added
        self._index = self._new_index()

    def _new_index(self) -> Any:
        faiss = _faiss()
        if self.index_kind == "flat":
            return faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexHNSWFlat(self.dimension, self.hnsw.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.hnsw.ef_construction
        index.hnsw.efSearch = self.hnsw.ef_search
        return index

    def _load(self, manifest: Manifest) -> None:
        """Replace the in-memory state with the one `manifest` describes."""
        self._reset()
        snapshot = self._usable_snapshot(manifest)
        if snapshot is not None:
            self._index = self._read_snapshot(snapshot)
        skip = snapshot.count if snapshot else 0
        for segment in manifest.segments:
            entries, vectors = self._read_segment(segment)
            self._entries.extend(entries)
            self._keys.update(_key(e.text) for e in entries)
            if skip < segment.count:
                self._index.add(vectors[skip:])
            skip = max(0, skip - segment.count)
        self._manifest = Manifest(
            self.model_id, self.dimension, manifest.segments, manifest.snapshot
        )

    def _usable_snapshot(self, manifest: Manifest) -> Snapshot | None:
        snap = manifest.snapshot
        if snap is None or self.index_kind != "hnsw" or snap.kind != "hnsw":
            return None
        if (snap.m, snap.ef_construction) != (self.hnsw.m, self.hnsw.ef_construction):
            return None
        return snap if snap.count <= manifest.count else None

    def _read_snapshot(self, snap: Snapshot) -> Any:
        path = self.memory_dir / f"index-{snap.id}.faiss"
        try:
            data = np.fromfile(path, dtype=np.uint8)
            index = _faiss().deserialize_index(data)
        except (OSError, RuntimeError) as err:
            raise damaged(self.memory_dir, f"cannot read {path.name}: {err}") from None
        if index.ntotal != snap.count or index.d != self.dimension:
            raise damaged(self.memory_dir, f"{path.name} does not match the manifest")
        index.hnsw.efSearch = self.hnsw.ef_search
        return index

    def _read_segment(self, segment: Segment) -> tuple[list[Entry], Vectors]:
        base = self.memory_dir / f"seg-{segment.id}"
        try:
            vectors = np.load(base.with_suffix(".npy"), allow_pickle=False)
            lines = base.with_suffix(".jsonl").read_bytes().splitlines()
            entries = [_entry_from_json(line) for line in lines]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise damaged(self.memory_dir, f"segment {segment.id}: {err}") from None
        shape = (segment.count, self.dimension)
        if vectors.dtype != np.float32 or vectors.shape != shape or len(entries) != segment.count:
            raise damaged(
                self.memory_dir,
                f"segment {segment.id} holds {vectors.shape} {vectors.dtype} vectors and "
                f"{len(entries)} entries; the manifest says {shape}",
            )
        return entries, np.ascontiguousarray(vectors)

    # --- queries -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and _key(text) in self._keys

    @property
    def entries(self) -> Sequence[Entry]:
        """All entries in insertion order; an entry's position is its id in the index."""
        return self._entries

    @property
    def unsaved(self) -> int:
        """Entries added since the last save."""
        return sum(len(batch) for batch, _ in self._pending)

    def search(self, query: Vectors, k: int = 10) -> list[Hit]:
        """The `k` entries with the largest inner product with `query`, best first."""
        return self.search_many(query.reshape(1, -1), k)[0]

    def search_many(self, queries: Vectors, k: int = 10) -> list[list[Hit]]:
        """`search` for each row of `queries`."""
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"queries must have shape (n, {self.dimension}), not {queries.shape}")
        if k <= 0 or not self._entries:
            return [[] for _ in range(len(queries))]
        with _threads(1 if len(queries) == 1 else None):
            scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [
            [Hit(float(s), self._entries[i]) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    def set_ef_search(self, ef_search: int) -> None:
        """Trade HNSW search speed for recall (no effect on a flat index)."""
        self.hnsw = HNSWParams(self.hnsw.m, self.hnsw.ef_construction, ef_search)
        if self.index_kind == "hnsw":
            self._index.hnsw.efSearch = ef_search

    def info(self) -> StoreInfo:
        """Facts about this store as it is in memory."""
        on_disk = read_info(self.memory_dir)
        return StoreInfo(
            memory_dir=self.memory_dir,
            model_id=self.model_id,
            dimension=self.dimension,
            count=len(self),
            segments=len(self._manifest.segments),
            snapshot=self._manifest.snapshot.kind if self._manifest.snapshot else None,
            disk_bytes=on_disk.disk_bytes if on_disk else 0,
        )

    # --- changes -----------------------------------------------------------------------

    def add(self, entries: Sequence[Entry], vectors: Vectors) -> list[bool]:
        """Add entries with their vectors, skipping exact duplicates; True for each one added."""
        if (
            len(entries) != len(vectors)
            or vectors.ndim != 2
            or (vectors.shape[1] != self.dimension)
        ):
            raise ValueError(
                f"{len(entries)} entries need a ({len(entries)}, {self.dimension}) array, "
                f"got {vectors.shape}"
            )
        added: list[bool] = []
        keep: list[int] = []
        for i, entry in enumerate(entries):
            key = _key(entry.text)
            added.append(key not in self._keys)
            if added[-1]:
                self._keys.add(key)
                keep.append(i)
        if keep:
            new = np.ascontiguousarray(vectors[keep], dtype=np.float32)
            kept = [entries[i] for i in keep]
            self._index.add(new)
            self._entries.extend(kept)
            self._pending.append((kept, new))
        return added

    def save(self, *, snapshot: bool | None = None) -> None:
        """Persist what was added; `snapshot` forces (True) or skips (False) the index file."""
        if not self._pending and not (snapshot or (snapshot is None and self._snapshot_due())):
            return
        try:
            with locked(self.memory_dir, exclusive=True):
                self._savelocked(snapshot)
        except OSError as err:
            raise MemoryStoreError(f"cannot write memory to {self.memory_dir}: {err}") from err

    def _savelocked(self, snapshot: bool | None) -> None:
        on_disk = read_manifest(self.memory_dir)
        if on_disk != self._manifest and (on_disk is not None or self._manifest.segments):
            # Another process saved, cleared or deleted the folder since we loaded: take
            # its state, then add ours on top.
            current = on_disk or Manifest(self.model_id, self.dimension)
            check_signature(self.memory_dir, current, self.model_id, self.dimension)
            pending = self._pending
            self._load(current)
            for batch, vectors in pending:
                self.add(batch, vectors)
        segments = list(self._manifest.segments)
        if self._pending:
            segments = self._write_segments(segments)
        snap = self._manifest.snapshot
        want = snapshot if snapshot is not None else self._snapshot_due()
        if want and self.index_kind == "hnsw" and (snap is None or snap.count != len(self)):
            snap = self._write_snapshot()
        manifest = Manifest(self.model_id, self.dimension, tuple(segments), snap)
        if manifest != on_disk:
            commit(self.memory_dir, manifest)
        self._manifest = manifest
        self._pending = []

    def _snapshot_due(self) -> bool:
        if self.index_kind != "hnsw":
            return False
        covered = self._manifest.snapshot.count if self._manifest.snapshot else 0
        return len(self) - covered >= self.snapshot_every

    def _write_segments(self, segments: list[Segment]) -> list[Segment]:
        """Write the pending entries as one segment, merged with the tail it absorbs."""
        tail = self.unsaved
        first = len(segments)
        while first > 0 and segments[first - 1].count <= tail:
            first -= 1
            tail += segments[first].count
        vectors: list[Vectors] = []
        lines: list[bytes] = []
        for old in segments[first:]:
            base = self.memory_dir / f"seg-{old.id}"
            vectors.append(np.load(base.with_suffix(".npy"), allow_pickle=False))
            lines.extend(base.with_suffix(".jsonl").read_bytes().splitlines())
        for batch, batch_vectors in self._pending:
            vectors.append(batch_vectors)
            lines.extend(e.to_json().encode() for e in batch)
        stacked = _stack(vectors, self.dimension)
        if len(stacked) != tail or len(lines) != tail:
            raise damaged(self.memory_dir, "segment sizes changed while merging")
        new = Segment(secrets.token_hex(8), tail)
        base = self.memory_dir / f"seg-{new.id}"
        with atomic.replacing(base.with_suffix(".npy")) as file:
            np.save(file, stacked, allow_pickle=False)
        atomic.write_bytes(base.with_suffix(".jsonl"), b"".join(x + b"\n" for x in lines))
        return [*segments[:first], new]

    def _write_snapshot(self) -> Snapshot:
        snap = Snapshot(
            secrets.token_hex(8), "hnsw", len(self), self.hnsw.m, self.hnsw.ef_construction
        )
        data = _faiss().serialize_index(self._index)
        atomic.write_bytes(self.memory_dir / f"index-{snap.id}.faiss", data.tobytes())
        return snap

    def clear(self) -> int:
        """Delete every memory, on disk too; return how many there were."""
        count = len(self)
        try:
            with locked(self.memory_dir, exclusive=True):
                on_disk = read_manifest(self.memory_dir)
                if on_disk is not None:
                    count = max(count, on_disk.count)
                    commit(self.memory_dir, Manifest(self.model_id, self.dimension))
        except OSError as err:
            raise MemoryStoreError(f"cannot clear memory in {self.memory_dir}: {err}") from err
        self._reset()
        return count


def _stack(vectors: Sequence[Vectors], dimension: int) -> Vectors:
    if not vectors:
        return np.zeros((0, dimension), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(vectors), dtype=np.float32)


def _entry_from_json(line: bytes) -> Entry:
    data = json.loads(line)
    return Entry(str(data["text"]), str(data["kind"]), str(data["time"]), dict(data["meta"]))
