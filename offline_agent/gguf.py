"""Read a GGUF file's header (metadata and tensor infos) without loading the model."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_agent.errors import ModelError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Arrays longer than this (token lists, merges, scores) are kept as their length only.
MAX_ARRAY_ITEMS = 512

# Metadata value types: id -> (name, struct format for scalars or None).
_VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "<B"),
    1: ("int8", "<b"),
    2: ("uint16", "<H"),
    3: ("int16", "<h"),
    4: ("uint32", "<I"),
    5: ("int32", "<i"),
    6: ("float32", "<f"),
    7: ("bool", "<?"),
    8: ("string", None),
    9: ("array", None),
    10: ("uint64", "<Q"),
    11: ("int64", "<q"),
    12: ("float64", "<d"),
}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (elements per block, bytes per block), from ggml.h / ggml.c.
_GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}

# general.file_type -> llama.cpp's name for the quantisation (enum llama_ftype).
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array, kept as its item type and length only."""

    item_type: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header: name, shape, ggml type and data offset."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        """Number of elements in the tensor."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class GGUFHeader:
    """A parsed GGUF header: version, metadata key/values and tensor infos."""

    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF header says about its model, for display and registration."""

    path: Path
    file_size: int
    gguf_version: int
    architecture: str
    name: str | None
    parameters: int | None
    size_label: str | None
    quantisation: str | None
    context_length: int | None
    vocab_size: int | None
    tensor_count: int
    chat_template: str | None

    @property
    def has_chat_template(self) -> bool:
        """Whether the file carries its own chat template."""
        return bool(self.chat_template)


class _Truncated(Exception):
    """The header runs past the end of the file."""


class _Cursor:
    """Little-endian reads from a buffer, with bounds checks."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> int:
        """Advance by n bytes and return the old position."""
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise _Truncated
        self.pos = start + n
        return start

    def scalar(self, fmt: str) -> Any:
        """Read one struct-packed scalar."""
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, start)[0]

    def u32(self) -> int:
        """Read a uint32."""
        return int(self.scalar("<I"))

    def u64(self) -> int:
        """Read a uint64."""
        return int(self.scalar("<Q"))

    def string(self) -> str:
        """Read a length-prefixed UTF-8 string."""
        n = self.u64()
        start = self.take(n)
        return bytes(self.buf[start : start + n]).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        """Skip a length-prefixed string."""
        self.take(self.u64())

    def value(self, type_id: int) -> Any:
        """Read one metadata value of the given type."""
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY:
            return self.array()
        kind = _VALUE_TYPES.get(type_id)
        if kind is None or kind[1] is None:
            raise ValueError(f"unknown metadata value type {type_id}")
        return self.scalar(kind[1])

    def array(self) -> list[Any] | ArraySummary:
        """Read an array, or skip it and return its summary if it is long."""
        item_type = self.u32()
        count = self.u64()
        kind = _VALUE_TYPES.get(item_type)
        if kind is None:
            raise ValueError(f"unknown array item type {item_type}")
        if count <= MAX_ARRAY_ITEMS:
            return [self.value(item_type) for _ in range(count)]
        if kind[1] is not None:
            self.take(count * struct.calcsize(kind[1]))
        elif item_type == _STRING:
            # Each string is at least its 8-byte length; reject absurd counts before looping.
            if count * 8 > len(self.buf) - self.pos:
                raise _Truncated
            for _ in range(count):
                self.skip_string()
        else:
            for _ in range(count):
                self.array()
        return ArraySummary(kind[0], count)


def _parse(cur: _Cursor) -> GGUFHeader:
    version = cur.u32()
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unsupported GGUF version {version} (supported: 2, 3)")
    tensor_count = cur.u64()
    kv_count = cur.u64()
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.string()
        metadata[key] = cur.value(cur.u32())
    tensors = []
    for _ in range(tensor_count):
        name = cur.string()
        n_dims = cur.u32()
        shape = tuple(cur.u64() for _ in range(n_dims))
        tensors.append(TensorInfo(name, shape, cur.u32(), cur.u64()))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise ValueError(f"bad general.alignment {alignment!r}")
    data_offset = -(-cur.pos // alignment) * alignment
    return GGUFHeader(version, metadata, tuple(tensors), data_offset)


def _data_end(header: GGUFHeader) -> int:
    """Byte offset where the last tensor's data ends (types we know the size of)."""
    end = header.data_offset
    for t in header.tensors:
        block = _GGML_BLOCKS.get(t.ggml_type)
        nbytes = 0 if block is None else t.n_elements // block[0] * block[1]
        end = max(end, header.data_offset + t.offset + nbytes)
    return end


def read_header(path: Path) -> GGUFHeader:
    """Parse a GGUF file's header; raise ModelError if it is missing, not GGUF or truncated."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (it starts with {magic!r})")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            cur.take(4)
            try:
                header = _parse(cur)
            except _Truncated:
                raise ModelError(
                    f"{path} is truncated: its GGUF header runs past the end ({size} bytes)"
                ) from None
            except (ValueError, struct.error) as exc:
                raise ModelError(f"{path} has a corrupt GGUF header: {exc}") from None
    end = _data_end(header)
    if end > size:
        raise ModelError(f"{path} is truncated: {size} bytes, its tensors need {end}")
    return header


def read_metadata(path: Path) -> dict[str, Any]:
    """Return the header's key/values plus GGUF.version, GGUF.tensor_count, GGUF.kv_count."""
    header = read_header(path)
    return {
        "GGUF.version": header.version,
        "GGUF.tensor_count": len(header.tensors),
        "GGUF.kv_count": len(header.metadata),
        **header.metadata,
    }


def _length(value: Any) -> int | None:
    if isinstance(value, ArraySummary):
        return value.length
    if isinstance(value, list):
        return len(value)
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def describe(path: Path) -> ModelInfo:
    """Summarise a GGUF file: architecture, size, quantisation, context, chat template."""
    header = read_header(path)
    meta = header.metadata
    arch = _str_or_none(meta.get("general.architecture")) or "unknown"
    file_type = _int_or_none(meta.get("general.file_type"))
    vocab = _int_or_none(meta.get(f"{arch}.vocab_size"))
    if vocab is None:
        vocab = _length(meta.get("tokenizer.ggml.tokens"))
    return ModelInfo(
        path=path,
        file_size=path.stat().st_size,
        gguf_version=header.version,
        architecture=arch,
        name=_str_or_none(meta.get("general.name")),
        parameters=sum(t.n_elements for t in header.tensors) if header.tensors else None,
        size_label=_str_or_none(meta.get("general.size_label")),
        quantisation=None if file_type is None else FILE_TYPES.get(file_type, f"type {file_type}"),
        context_length=_int_or_none(meta.get(f"{arch}.context_length")),
        vocab_size=vocab,
        tensor_count=len(header.tensors),
        chat_template=_str_or_none(meta.get("tokenizer.chat_template")),
    )
