"""The KV state of a prompt's opening saved on disk, so that a new process starts warm.

The first prompt of a run is ~900 tokens, most of them the system message's constraints,
commands and reply format, the same for every run. Evaluating it costs seconds on a small
CPU; restoring its saved state costs milliseconds. What is saved is always a whole number
of llama.cpp batches (`n_batch` tokens) evaluated from position 0, which is exactly how a
cold evaluation splits the prompt too: a restored state holds the same floats a cold start
computes, so temperature-0 replies do not depend on whether the cache was hit. Not so for a
model with a sliding attention window (Gemma 3), whose restored states hold other floats:
`LlamaModel` saves none for such a model (docs/performance.md).

A file is named by the hash of what it depends on (the model file's path, size and mtime,
the context and batch sizes, the llama-cpp-python version) and of its tokens. It holds a
checksum of its contents; a file that is unreadable, stale or corrupt is a miss (and
removed), never an error. Files are written atomically, and only the most recently used few
are kept. The file format is `kvfile.py`'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Sequence
from pathlib import Path

import llama_cpp

from offline_agent.llm import kvfile
from offline_agent.llm.kvfile import SUFFIX

STALE_TMP_SECONDS = 3600


def identity(llm: llama_cpp.Llama, model_path: Path) -> str:
    """What a saved state depends on besides its tokens."""
    params = llm.context_params
    return kvfile.identity(
        model_path,
        n_ctx=llm.n_ctx(),
        n_batch=params.n_batch,
        n_ubatch=params.n_ubatch,
        n_gpu_layers=llm.model_params.n_gpu_layers,
        llama_cpp=llama_cpp.__version__,
    )


class PrefixCache:
    """Saved KV states of prompt openings for one loaded model, in one folder."""

    def __init__(
        self,
        llm: llama_cpp.Llama,
        model_path: Path,
        folder: Path,
        *,
        max_files: int = 8,
        max_bytes: int = 512 * 2**20,
    ) -> None:
        self._llm = llm
        self.folder = folder
        self.identity = identity(llm, model_path)
        self.max_files = max_files
        self.max_bytes = max_bytes

    def path(self, tokens: Sequence[int]) -> Path:
        """Where the state after evaluating exactly `tokens` is kept."""
        return self.folder / kvfile.file_name(self.identity, tokens)

    def load(self, tokens: Sequence[int]) -> bool:
        """Restore the state saved for `tokens`; False on any miss."""
        path = self.path(tokens)
        try:
            payload = self._read(path, tokens)
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError):  # unreadable, stale or corrupt
            _discard(path)
            return False
        llm = self._llm
        buffer = (ctypes.c_uint8 * len(payload)).from_buffer_copy(payload)
        if llama_cpp.llama_state_set_data(llm._ctx.ctx, buffer, len(payload)) != len(payload):
            llm.n_tokens = 0  # the next eval clears whatever was half restored
            _discard(path)
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        # Newer llama-cpp-python (0.3.36) samples at once when the whole prompt is cached, unless
        # told the logits are not a live decode's (as its own `load_state` does).
        llm._requires_eval = True
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept longest
        return True

    def _read(self, path: Path, tokens: Sequence[int]) -> bytes:
        header, payload = kvfile.read(path)
        if header.identity != self.identity or header.tokens != list(tokens):
            raise ValueError("stale state file")
        return payload

    def save(self, tokens: Sequence[int]) -> None:
        """Save the model's state, which must hold exactly `tokens`; failures are ignored."""
        llm = self._llm
        size = llama_cpp.llama_state_get_size(llm._ctx.ctx)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_get_data(llm._ctx.ctx, buffer, size)
        payload = memoryview(buffer)[:written]
        with contextlib.suppress(OSError):
            kvfile.write(self.folder, self.identity, tokens, payload)
            self._prune()

    def _prune(self) -> None:
        """Drop the least recently used files beyond `max_files` or `max_bytes`."""
        for tmp in self.folder.glob("*.tmp"):  # left by a process killed while saving
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    _discard(tmp)
        files = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                files.append((stat.st_mtime_ns, stat.st_size, path))
        files.sort(reverse=True)
        total = 0
        for kept, (_, size, path) in enumerate(files):
            total += size
            if kept >= self.max_files or total > self.max_bytes:
                _discard(path)


def _discard(path: Path) -> None:
    """Remove a file if possible; a cache that cannot clean up still works."""
    with contextlib.suppress(OSError):
        path.unlink()
