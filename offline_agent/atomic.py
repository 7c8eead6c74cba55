"""Atomic file replacement: the one way this package replaces a file it owns.

`replacing(path)` yields a new file beside `path`; when the block ends without an error the
file is flushed, fsynced and renamed over `path` in one `os.replace`, so a crash leaves the
old file or the new one, never half of either. On any error the new file is deleted and
`path` is left as it was. The temporary name is `.<name>.<8 hex digits>.tmp` in the same
folder (`TEMP_FILE`), so that whoever owns the folder can recognise one a killed process
left behind.

Run records, the memory store, the model store, saved KV states and the workspace's
`write_file` all write through here.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
"""The name of a file `replacing` has not yet renamed into place."""


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside `path` (its name cut to stay within NAME_MAX)."""
    return path.with_name(f".{path.name[:100]}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def replacing(path: Path, *, mode: int | None = None, durable: bool = True) -> Iterator[IO[bytes]]:
    """A binary file to fill; renamed over `path` when the block ends without an error.

    `mode`: permission bits for the new file (default: 0o666 less the umask, as `open`).
    `durable`: fsync the file before the rename (off for caches that may be lost).
    The temporary file is created with O_EXCL, so it is never a file someone else placed.
    """
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            if durable:
                os.fsync(file.fileno())
        if mode is not None:
            tmp.chmod(mode)
        # rename() replaces a symlink at `path` itself, never the file it points to.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically and durably."""
    with replacing(path, mode=mode) as file:
        file.write(data)


def fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable; best effort, as some platforms and filesystems
    cannot open or fsync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
