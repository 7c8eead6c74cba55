"""Long-term memory: texts embedded into a persistent FAISS index, recalled by similarity."""

from offline_agent.memory.disk import StoreInfo, check_model, clear_store, read_info
from offline_agent.memory.embedder import (
    DEFAULT_MODEL_ID,
    Embedder,
    HashEmbedder,
    SentenceTransformerEmbedder,
    Vectors,
    normalise,
)
from offline_agent.memory.fast import FastEmbedder
from offline_agent.memory.ingest import IngestReport, chunk_text, collect_chunks, ingest
from offline_agent.memory.longterm import LongTermMemory, default_memory_dir, open_memory
from offline_agent.memory.store import (
    Entry,
    Hit,
    HNSWParams,
    IndexKind,
    MemoryStore,
)

__all__ = [
    "DEFAULT_MODEL_ID",
    "Embedder",
    "Entry",
    "FastEmbedder",
    "HNSWParams",
    "HashEmbedder",
    "Hit",
    "IndexKind",
    "IngestReport",
    "LongTermMemory",
    "MemoryStore",
    "SentenceTransformerEmbedder",
    "StoreInfo",
    "Vectors",
    "check_model",
    "chunk_text",
    "clear_store",
    "collect_chunks",
    "default_memory_dir",
    "ingest",
    "normalise",
    "open_memory",
    "read_info",
]
