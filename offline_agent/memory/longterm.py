"""Long-term memory as the agent sees it: remember texts, recall the most similar ones."""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from offline_agent.home import home_dir
from offline_agent.memory.disk import StoreInfo, check_model, clear_store, read_info
from offline_agent.memory.embedder import Embedder
from offline_agent.memory.export import Notify
from offline_agent.memory.fast import FastEmbedder
from offline_agent.memory.store import (
    Entry,
    Hit,
    IndexKind,
    MemoryStore,
    MetaValue,
    index_kind,
)


def default_memory_dir(agent_name: str = "Agent", goals: Sequence[str] = ()) -> Path:
    """$OFFLINE_AGENT_HOME/memory/<agent>, else ~/.offline-agent/memory/<agent>; with `goals`,
    a folder of that agent's own for that set of goals (`<agent>-<digest>`), so that runs
    with other goals do not pool their memories unless asked to."""
    home = home_dir()
    # An agent's name is free text; keep it to one safe path component.
    folder = re.sub(r"[^\w.-]+", "-", agent_name).strip(".-") or "default"
    if goals:
        digest = hashlib.sha256("\n".join(goals).encode("utf-8")).hexdigest()[:12]
        folder = f"{folder}-{digest}"
    return home / "memory" / folder


def _embeddable(text: str) -> str:
    # Tokenizers reject lone surrogates, which JSON escapes in a model's reply can produce.
    return text.encode("utf-8", "replace").decode("utf-8")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LongTermMemory:
    """Texts embedded into a persistent `MemoryStore`; the model loads on first use."""

    def __init__(self, memory_dir: Path, embedder: Embedder, index: IndexKind = "flat") -> None:
        """Bind to `memory_dir` without reading vectors or loading the embedder."""
        self.memory_dir = memory_dir
        self.embedder = embedder
        self.index: IndexKind = index
        self._store: MemoryStore | None = None
        self._lock = threading.Lock()
        self._preload: threading.Thread | None = None

    def preload(self) -> None:
        """Start loading the embedder and the store in a background thread."""
        if self._preload is None and self._store is None:
            self._preload = threading.Thread(
                target=self._preload_quietly, name="memory-preload", daemon=True
            )
            self._preload.start()

    def _preload_quietly(self) -> None:
        # A failure here is not lost: the first real call retries and raises it there.
        with contextlib.suppress(Exception):
            self.store()
            # The first forward pass is several times slower than later ones; pay it here.
            self.embedder.embed(["warm-up"])

    def store(self) -> MemoryStore:
        """The loaded store, loading the embedder and the saved memories on first call."""
        with self._lock:
            if self._store is None:
                # Compare names before `dimension` loads the model: a mismatch fails fast.
                check_model(self.memory_dir, self.embedder.model_id)
                self._store = MemoryStore.open(
                    self.memory_dir,
                    self.embedder.model_id,
                    self.embedder.dimension,
                    index=self.index,
                )
            return self._store

    def remember(self, text: str, kind: str = "fact", **metadata: MetaValue) -> bool:
        """Store `text`; False when an identical memory already exists."""
        return self.remember_many([text], kind, [metadata]) == 1

    def remember_many(
        self,
        texts: Sequence[str],
        kind: str = "fact",
        metadata: Sequence[Mapping[str, MetaValue]] | None = None,
        *,
        embed: Sequence[str] | None = None,
    ) -> int:
        """Store several texts in one save; returns how many were new.

        `embed` gives, per text, what to embed instead of the text itself (e.g. a chunk
        without the header naming its file), so stored text and vector may differ.
        """
        for extra in (metadata, embed):
            if extra is not None and len(extra) != len(texts):
                raise ValueError("metadata and embed need one item per text")
        if any(not text.strip() for text in texts):
            raise ValueError("a memory cannot be blank")
        store = self.store()
        fresh: dict[str, int] = {}
        for i, text in enumerate(texts):
            if text not in store and text not in fresh:
                fresh[text] = i
        if not fresh:
            return 0
        vectors = self.embedder.embed(
            [_embeddable(texts[i] if embed is None else embed[i]) for i in fresh.values()]
        )
        now = _now()
        entries = []
        for text, i in fresh.items():
            meta = dict(metadata[i]) if metadata is not None else {}
            entries.append(Entry(text, kind, str(meta.pop("time", now)), meta))
        added = sum(store.add(entries, vectors))
        store.save()
        return added

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The `k` memories most similar to `query`, with their metadata, best first."""
        if not query.strip() or k <= 0:
            return []
        store = self.store()
        if len(store) == 0:
            return []
        return store.search(self.embedder.embed([_embeddable(query)]), k)

    def recall(self, query: str, k: int = 10) -> list[tuple[float, str]]:
        """The `k` memories most similar to `query`, as (inner product, text), best first."""
        return [(hit.score, hit.entry.text) for hit in self.search(query, k)]

    def stats(self) -> StoreInfo | None:
        """Facts about the store; read from disk without loading anything when not in use."""
        if self._store is not None:
            return self._store.info()
        return read_info(self.memory_dir)

    def clear(self) -> int:
        """Delete every memory, on disk too; return how many there were."""
        with self._lock:
            if self._store is not None:
                return self._store.clear()
        return clear_store(self.memory_dir)

    def close(self) -> None:
        """Wait for a preload to end and write the index snapshot if one is due."""
        if self._preload is not None:
            self._preload.join()
        if self._store is not None and self.index != "flat":
            self._store.save(snapshot=True)


def open_memory(
    memory_dir: Path,
    embedder: Embedder | None = None,
    index: str = "flat",
    notify: Notify | None = None,
) -> LongTermMemory:
    """Long-term memory in `memory_dir`; checks its model now, loads the embedder on first
    use (a `FastEmbedder` unless given, which tells `notify` when it falls back)."""
    kind = index_kind(index)
    embedder = embedder or FastEmbedder(notify=notify)
    check_model(memory_dir, embedder.model_id)
    return LongTermMemory(memory_dir, embedder, kind)
