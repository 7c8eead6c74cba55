"""How an in-process model is loaded and sampled: plain data, importable without llama.cpp."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LlamaOptions:
    """How to load and sample the model."""

    n_ctx: int = 4096
    n_threads: int | None = None
    """CPU threads for decoding and for prompts; None: every usable core (llama-cpp-python's
    own default, half the cores, decodes ~1.5x slower on 2 cores)."""
    n_gpu_layers: int = 0
    seed: int = 0
    temperature: float = 0.0
    grammar_engine: Literal["llguidance", "llama"] = "llguidance"
    """Who enforces the reply schema: llguidance in our own decoding loop (fast, see
    `guidance.py`) or llama.cpp's GBNF grammar sampler (a full mask every token)."""
    think_tokens: int = 512
    """The most tokens a reasoning model may think (a `<think>` block, bounded by the grammar)
    before its reply; 0: none. The context sets them aside (`LlamaModel.context_length`)."""
    thinking: bool = False
    """Leave thinking on where the chat template can turn it off (`enable_thinking`,
    `/no_think`); off by default: an agent's step needs the reply, not an essay."""
