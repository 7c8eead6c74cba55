"""The file format of a saved KV state, apart from llama.cpp: what it depends on, its name,
reading it, and moving it to another copy of its model file.

A file is `MAGIC`, a 4-byte little-endian header length, a JSON header (`identity`, `tokens`,
the payload's `sha256`) and llama.cpp's state bytes. Its name is the hash of the identity and
the tokens, so a state is found by what it holds. The identity names the model file by path,
size and modification time (not by its sha256, which would cost a read of the whole file on
every start); a state copied with its model to another machine is re-keyed to the copy's
path and time by `rehome`, after the copy's sha256 was checked.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_agent import atomic
from offline_agent.home import home_dir

MAGIC = b"OAKV0001"
SUFFIX = ".kv"
_MODEL_KEYS = ("model", "size", "mtime_ns")


def default_state_dir() -> Path:
    """$OFFLINE_AGENT_HOME/kv-cache, else ~/.offline-agent/kv-cache."""
    return home_dir() / "kv-cache"


@dataclass(frozen=True)
class Header:
    """What a state file says about itself."""

    identity: str
    tokens: list[int]
    sha256: str

    @property
    def model(self) -> Path:
        """The model file the state was computed with (its resolved path)."""
        return Path(json.loads(self.identity)["model"])

    @property
    def params(self) -> dict[str, Any]:
        """What the state depends on besides the model file (context and batch sizes, the
        llama-cpp-python version)."""
        fields: dict[str, Any] = json.loads(self.identity)
        return {k: v for k, v in fields.items() if k not in _MODEL_KEYS}

    def matches(self, model: Path) -> bool:
        """Whether `model` is the file the state was computed with, unchanged since."""
        fields = json.loads(self.identity)
        try:
            stat = model.stat()
        except OSError:
            return False
        return (fields["model"], fields["size"], fields["mtime_ns"]) == (
            str(model.resolve()),
            stat.st_size,
            stat.st_mtime_ns,
        )


def identity(model: Path, **params: Any) -> str:
    """What a saved state depends on: the model file as it is now, and `params`."""
    stat = model.stat()
    fields = {"model": str(model.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return json.dumps(fields | params, sort_keys=True)


def file_name(state_identity: str, tokens: Sequence[int]) -> str:
    """The name of the file holding the state after evaluating `tokens`."""
    digest = hashlib.sha256(state_identity.encode())
    digest.update(struct.pack(f"={len(tokens)}i", *tokens))  # int32s in the machine's order
    return f"{digest.hexdigest()[:40]}{SUFFIX}"


def encode_header(state_identity: str, tokens: Sequence[int], payload: bytes | memoryview) -> bytes:
    """The bytes that go before `payload` in a state file."""
    header = json.dumps(
        {
            "identity": state_identity,
            "tokens": list(tokens),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    ).encode()
    return MAGIC + len(header).to_bytes(4, "little") + header


def read(path: Path) -> tuple[Header, bytes]:
    """A state file's header and payload; ValueError when it is not one or is corrupt."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path.name} is not a KV state file")
    size = int.from_bytes(data[8:12], "little")
    try:
        raw = json.loads(data[12 : 12 + size])
        header = Header(str(raw["identity"]), [int(t) for t in raw["tokens"]], str(raw["sha256"]))
        json.loads(header.identity)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path.name} has a bad header: {err}") from None
    payload = data[12 + size :]
    if hashlib.sha256(payload).hexdigest() != header.sha256:
        raise ValueError(f"{path.name} does not match its checksum")
    return header, payload


def write(
    folder: Path, state_identity: str, tokens: Sequence[int], payload: bytes | memoryview
) -> Path:
    """Write a state file atomically into `folder`; its path. OSError on failure."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name(state_identity, tokens)
    with atomic.replacing(target, durable=False) as out:  # a cache: losing it costs time only
        out.write(encode_header(state_identity, tokens, payload))
        out.write(payload)
    return target


def rehome(source: Path, model: Path, folder: Path) -> Path:
    """Copy the state file `source` into `folder`, re-keyed to the model file `model`.

    The caller vouches that `model` holds the same bytes as the file the state was computed
    with (its sha256 was checked); every other part of the identity stays, so the state is
    used only by a model loaded with the same settings and llama-cpp-python version.
    """
    header, payload = read(source)
    return write(folder, identity(model, **header.params), header.tokens, payload)
