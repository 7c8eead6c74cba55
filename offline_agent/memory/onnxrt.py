"""A sentence-transformers model run by onnxruntime and `tokenizers` alone: no torch.

The ONNX file is the model's transformer, exported by `offline_agent.memory.export`; this
module does what sentence-transformers does around it (tokenize, truncate, mean-pool over
the attention mask, L2-normalise), so that the vectors are those of the original model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from offline_agent.cores import usable_cores
from offline_agent.errors import MemoryStoreError
from offline_agent.memory.embedder import Vectors, normalise

BATCH_TOKENS = 256
"""Padded tokens a forward pass holds at most: one 800-character chunk, or a dozen short texts.
Small batches keep the activations in cache and, sorted by length, pad nothing: on 2 cores
one chunk a pass, two passes at a time on one thread each, ran 32 chunks/s against 27 for four
a pass on two threads and 22 for 32 a pass (`docs/memory.md`)."""


class OnnxEmbedder:
    """Embeds with an exported transformer (`model.onnx`) and the model's `tokenizer.json`."""

    def __init__(
        self,
        onnx_model: bytes | Path,
        tokenizer_file: Path,
        *,
        model_id: str,
        dimension: int,
        max_tokens: int,
        workers: int | None = None,
        batch_tokens: int = BATCH_TOKENS,
    ) -> None:
        """Load the session and the tokenizer now (a few hundred milliseconds).

        `workers` forward passes run at once, each on one thread (default: one per core).
        """
        # Imported here: onnxruntime takes ~0.2 s to import, and only memory needs it.
        import onnxruntime  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        self._model_id = model_id
        self._dimension = dimension
        self.batch_tokens = batch_tokens
        self.workers = workers or usable_cores()
        options = onnxruntime.SessionOptions()
        # One thread a pass and passes side by side: no barrier after every operator (which
        # makes both cores wait for the slower one whenever anything else runs), and
        # `InferenceSession.run` may be called from several threads at once.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        try:
            self._session: Any = onnxruntime.InferenceSession(
                source, options, providers=["CPUExecutionProvider"]
            )
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as err:  # onnxruntime raises its own kinds, not OSError
            raise MemoryStoreError(f"cannot load the ONNX embedder: {err}") from err
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer = tokenizer
        self._inputs = {i.name for i in self._session.get_inputs()}
        # A fast tokenizer refuses use from two threads at once ("Already borrowed").
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The original model's name: the vectors are the same."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        return self._dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Mean-pooled, L2-normalised vectors, computed in batches of similar length."""
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        groups = _batches([len(e.ids) for e in encodings], self.batch_tokens)
        passes = [[encodings[i] for i in group] for group in groups]
        if self.workers == 1 or len(groups) == 1:
            results = [self._forward(batch) for batch in passes]
        else:
            with ThreadPoolExecutor(min(self.workers, len(groups))) as pool:
                results = list(pool.map(self._forward, passes))
        for group, vectors in zip(groups, results, strict=True):
            out[group] = vectors
        return normalise(out)

    def _forward(self, encodings: list[Any]) -> Vectors:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
        weights = mask[..., None].astype(np.float32)
        summed = (hidden * weights).sum(axis=1)
        return np.asarray(summed / np.clip(weights.sum(axis=1), 1e-9, None), dtype=np.float32)


def _batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped shortest first, each group's count x longest within `budget` tokens."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the newest member is the group's longest.
        if current and (len(current) + 1) * lengths[i] > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups
