"""The default embedder: the packaged model run by onnxruntime, else by sentence-transformers.

Same model, same vectors (cosine ≥ 0.9999 with sentence-transformers', checked when the export
is built), started in well under a second because neither torch nor transformers is imported.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

from offline_agent.bundle.manifest import cpu_flags
from offline_agent.errors import MemoryStoreError
from offline_agent.memory.embedder import (
    DEFAULT_MODEL_ID,
    Embedder,
    SentenceTransformerEmbedder,
    Vectors,
    bundled_model_path,
)
from offline_agent.memory.export import Notify, Variant, ensure_export, export_dir, require_export
from offline_agent.memory.onnxrt import OnnxEmbedder


class FastEmbedder:
    """A sentence-transformers model run from its local ONNX export, built on first use.

    When the export cannot be had (onnxruntime missing, a model it cannot run, an export
    that fails its check) it says so in one line through `notify` and uses
    `SentenceTransformerEmbedder`, as before.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        model_id: str | None = None,
        *,
        variant: Variant = "fp32",
        export_root: Path | None = None,
        build: bool = True,
        notify: Notify | None = None,
    ) -> None:
        """Bind to the model; nothing is read or imported until the first embedding."""
        self._path = model_path
        self._model_id = model_id or (model_path.name if model_path else DEFAULT_MODEL_ID)
        self.variant: Variant = variant
        self._export_root = export_root
        self._build = build
        self.notify = notify
        self._inner: Embedder | None = None
        self._lock = threading.Lock()
        self.fallback_reason: str | None = None
        """Why sentence-transformers runs the model instead of onnxruntime, if it does."""

    @property
    def model_id(self) -> str:
        """The model's name; known without loading it."""
        return self._model_id

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory already."""
        return self._inner is not None

    @property
    def backend(self) -> str:
        """`onnxruntime` or `sentence-transformers` (loads the model)."""
        return "onnxruntime" if isinstance(self.load(), OnnxEmbedder) else "sentence-transformers"

    @property
    def dimension(self) -> int:
        """The model's output size (loads the model)."""
        return self.load().dimension

    @property
    def export_folder(self) -> Path:
        """Where this model's ONNX export is kept."""
        return export_dir(self._model_id, self.variant, self._export_root)

    def load(self) -> Embedder:
        """The embedder that runs the model, loading it once; safe from several threads."""
        with self._lock:
            if self._inner is None:
                self._inner = self._load()
            return self._inner

    def _load(self) -> Embedder:
        path = self._path or bundled_model_path()
        try:
            return self._load_onnx(path)
        except (MemoryStoreError, ImportError) as err:
            self.fallback_reason = " ".join(str(err).split())
        if self.notify is not None:
            self.notify(
                f"Embedding with sentence-transformers (slower start): no ONNX embedder "
                f"({self.fallback_reason})"
            )
        fallback = SentenceTransformerEmbedder(path, self._model_id)
        fallback.load()
        return fallback

    def _load_onnx(self, path: Path) -> OnnxEmbedder:
        try:
            # Imported by OnnxEmbedder anyway; first, so that nothing is built without it.
            import onnxruntime  # noqa: F401, PLC0415
        except ImportError as err:
            raise MemoryStoreError(f"onnxruntime cannot be imported: {err}") from err
        folder = self.export_folder
        if self._build:
            export = ensure_export(path, folder, self.variant, self.notify, self._model_id)
        else:
            export = require_export(folder, path)
        return OnnxEmbedder(
            export.model,
            export.tokenizer_file,
            model_id=self._model_id,
            dimension=export.info.dimension,
            max_tokens=export.info.max_tokens,
        )

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised float32 row per text."""
        return self.load().embed(texts)


BULK_CHUNKS = 1_000
"""An ingest of at least this many chunks embeds with `bulk_embedder`'s bf16 model: there
torch's import (3 to 5 s) is paid back by its speed."""


def bf16_embedder() -> SentenceTransformerEmbedder:
    """sentence-transformers under torch's bfloat16 autocast, in batches of 64: what a large
    ingest embeds with on a CPU with AMX."""
    return SentenceTransformerEmbedder(bf16=True, batch_size=64)


def bulk_embedder(chunks: int, notify: Notify | None = None) -> Embedder:
    """The embedder for an ingest of `chunks` texts: on a CPU with AMX (bfloat16 matrix
    units), sentence-transformers under bf16 autocast, which measured 2.4 times float32's rate
    with vectors that agree to a cosine of 0.9999 (docs/memory.md, "Embedders side by side");
    else, and for small ingests, the default `FastEmbedder`."""
    if (
        chunks >= BULK_CHUNKS
        and "amx_bf16" in cpu_flags()
        and importlib.util.find_spec("torch") is not None
    ):
        if notify is not None:
            notify(f"{chunks} chunks: embedding with sentence-transformers in bfloat16 (AMX)")
        return bf16_embedder()
    return FastEmbedder(notify=notify)
