"""The workspace jail: every file effect of a command goes through a `Workspace`.

Paths come from the model, so each one is checked on every use: symlinks are resolved at
that moment (agent code may have made new ones since the last call) and the result must lie
inside the root. Every failure is a `WorkspaceError` whose one-line message tells the model
what to do instead.

The check and the later open are two steps, so a process swapping a symlink in between
could win a race; with the sandbox on, every process agent code started is gone when its
command ends, so none runs while a file command touches files. A file with other names
(hard links) is neither read nor appended to: another name may lie outside the workspace.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from offline_agent import atomic
from offline_agent.errors import ConfigError, StorageError, WorkspaceError

MAX_LISTED = 500
"""Default cap on the number of paths `Workspace.list_files` returns."""

_NAMES_IN_HINT = 20
_SHOWN_PATH_CHARS = 80
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RELATIVE_HINT = "give a path relative to the workspace, such as notes/todo.txt"


def _show(path: str) -> str:
    """`path` made safe to put in a message: valid UTF-8, one line, not too long."""
    shown = path.strip().encode("utf-8", "backslashreplace").decode("utf-8")
    shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", shown)
    if len(shown) > _SHOWN_PATH_CHARS:
        shown = shown[: _SHOWN_PATH_CHARS - 3] + "..."
    return shown


@contextmanager
def _os_errors(action: str, shown: str) -> Iterator[None]:
    """Turn an OSError in the block into a WorkspaceError saying what could not be done."""
    try:
        yield
    except OSError as exc:
        raise WorkspaceError(f"cannot {action} {shown}: {exc.strerror or exc}") from None


class Workspace:
    """A folder that the file commands cannot leave."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.keep: Callable[[str, Path], None] | None = None
        """Called with a file's relative path and its real path before the first change this
        process makes to it (written over, appended to, deleted), so that its first version
        is kept (`RunRecord.keep_original`); it raises StorageError when it cannot keep it,
        and then the file is left as it was."""
        self._changed: set[str] = set()
        """The files changed, created or deleted so far: their first version is kept."""
        self.started_with: frozenset[str] | None = None
        """The files the workspace held when the run started, when known: a file that was not
        among them is the run's own (made by its code, say), and nothing of it is kept."""

    @classmethod
    def create(cls, root: Path) -> Workspace:
        """A workspace at `root`, made if missing; ConfigError when it is not a writable folder."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=root):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"cannot use {root} as the workspace: {reason}") from None
        return cls(root)

    # --- paths -------------------------------------------------------------------------

    def _relative(self, path: str) -> PurePosixPath:
        """`path` checked as text: a relative path, without the forms that mean escape."""
        if not isinstance(path, str):
            raise WorkspaceError(f"a path must be text, not {type(path).__name__}")
        shown = _show(path)
        path = path.strip()
        if not path:
            raise WorkspaceError("the path is empty; give a file name such as notes.txt")
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise WorkspaceError(f"the path {shown} is not valid text") from None
        if _CONTROL.search(path):
            raise WorkspaceError(f"the path {shown} contains a control character")
        if _URL.match(path):
            raise WorkspaceError(f"{shown} is a URL; {_RELATIVE_HINT}")
        if path.startswith("~"):
            raise WorkspaceError(f"{shown}: '~' is not allowed; {_RELATIVE_HINT}")
        relative = PurePosixPath(path)
        if relative.is_absolute():
            raise WorkspaceError(f"{shown} is an absolute path; {_RELATIVE_HINT}")
        return relative

    def _inside(self, candidate: Path, shown: str) -> Path:
        """`candidate` with every symlink resolved now; WorkspaceError when that is outside."""
        # realpath raises when a symlink changes under it (EINVAL from readlink), stops at a
        # symlink loop and returns the rest unresolved, or (Python 3.11) normalised without
        # resolving it: "loop/../out/x" comes back as "out/x" even where out links outside.
        # A path resolved for good resolves to itself.
        try:
            real = Path(os.path.realpath(candidate))
            looped = (
                ".." in real.parts or os.path.islink(real) or os.path.realpath(real) != str(real)
            )
        except (OSError, ValueError):
            raise WorkspaceError(f"the path {shown} cannot be resolved") from None
        if looped:
            raise WorkspaceError(f"the path {shown} cannot be resolved (a symlink loop)")
        if not real.is_relative_to(self.root):
            raise WorkspaceError(f"{shown} is outside the workspace; use a path inside it")
        return real

    def resolve(self, path: str) -> Path:
        """The absolute path `path` names inside the workspace; WorkspaceError if it escapes."""
        relative = self._relative(path)
        return self._inside(self.root / relative, _show(path))

    def relative(self, real: Path) -> str:
        """`real` (a path inside the workspace) as a posix path relative to the root."""
        return real.relative_to(self.root).as_posix()

    # --- queries -----------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        """Whether `path` names an existing file or folder in the workspace."""
        real = self.resolve(path)
        with _os_errors("look at", _show(path)):
            return real.exists()

    def existing_file(self, path: str) -> Path:
        """The absolute path of an existing regular file; WorkspaceError naming the files if not."""
        real = self.resolve(path)
        shown = _show(path)
        with _os_errors("read", shown):
            self._check_file(real, shown, may_be_missing=False)
        return real

    def list_files(self, path: str = ".", limit: int = MAX_LISTED) -> list[str]:
        """The first `limit` files under `path`, recursively, sorted, relative to the root.

        Symlinked folders are not entered, and symlinks to outside the workspace are left out.
        """
        folder = self.resolve(path)
        shown = _show(path)
        found: list[str] = []
        with _os_errors("list", shown):
            if not folder.exists():
                raise WorkspaceError(f"the folder {shown} does not exist")
            if not folder.is_dir():
                raise WorkspaceError(f"{shown} is a file, not a folder")
            for dirpath, _dirnames, filenames in os.walk(folder, followlinks=False):
                for name in filenames:
                    entry = Path(dirpath) / name
                    real = resolved(entry)
                    if real is not None and real.is_relative_to(self.root) and real.is_file():
                        found.append(self.relative(entry))
        return sorted(found)[:limit]

    def _missing(self, shown: str) -> WorkspaceError:
        """The error for a file that does not exist, naming the files that do."""
        names = self.list_files(limit=_NAMES_IN_HINT + 1)
        if not names:
            return WorkspaceError(f"{shown} does not exist; the workspace is empty")
        listed = ", ".join(names[:_NAMES_IN_HINT])
        more = ", ..." if len(names) > _NAMES_IN_HINT else ""
        return WorkspaceError(f"{shown} does not exist; the files are: {listed}{more}")

    def _check_file(self, real: Path, shown: str, *, may_be_missing: bool) -> None:
        """WorkspaceError unless `real` is a regular file (or, if allowed, not there at all)."""
        if real.is_dir():
            raise WorkspaceError(f"{shown} is a folder, not a file; use list_files to see inside")
        if not real.exists():
            if may_be_missing:
                return
            raise self._missing(shown)
        if not real.is_file():
            raise WorkspaceError(f"{shown} is not a regular file")

    # --- effects -----------------------------------------------------------------------

    def read_text(self, path: str, max_chars: int | None = None) -> str:
        """The file's text (bytes that are not UTF-8 become U+FFFD), at most `max_chars` of it."""
        real = self.existing_file(path)
        with (
            _os_errors("read", _show(path)),
            real.open(encoding="utf-8", errors="replace", newline="") as file,
        ):
            _one_name(file.fileno(), _show(path))
            return file.read(-1 if max_chars is None else max_chars)

    def _before_change(self, real: Path, shown: str) -> None:
        """Hand a regular file's first version to `keep` before its first change (an empty
        one has nothing to lose)."""
        if self.keep is None:
            return
        name = self.relative(real)
        if name not in self._changed:
            theirs = self.started_with is None or name in self.started_with
            if theirs and real.is_file() and not real.is_symlink() and real.stat().st_size:
                try:
                    self.keep(name, real)
                except StorageError as err:
                    raise WorkspaceError(
                        f"{shown} was left as it was: its first version could not be kept ({err})"
                    ) from None
            self._changed.add(name)

    def _writable(self, path: str) -> Path:
        """The resolved path of a file that may be written, its parent folders created."""
        real = self.resolve(path)
        shown = _show(path)
        with _os_errors("write", shown):
            self._check_file(real, shown, may_be_missing=True)
            real.parent.mkdir(parents=True, exist_ok=True)
        # mkdir may have walked through a symlink made since resolve(); check again.
        return self._inside(real, shown)

    def write_text(self, path: str, text: str) -> int:
        """Replace the file's content with `text` atomically; returns the characters written.

        Characters that cannot be encoded as UTF-8 (lone surrogates) are written as '?'.
        """
        real = self._writable(path)
        data = text.encode("utf-8", "replace")
        with _os_errors("write", _show(path)):
            self._before_change(real, _show(path))
            mode = real.stat().st_mode & 0o7777 if real.exists() else None
            atomic.write_bytes(real, data, mode=mode)
        atomic.fsync_folder(real.parent)
        return len(text)

    def append_text(self, path: str, text: str) -> int:
        """Add `text` to the end of the file, creating it if missing; returns characters added."""
        real = self._writable(path)
        with _os_errors("append to", _show(path)), real.open("ab") as file:
            _one_name(file.fileno(), _show(path))
            self._before_change(real, _show(path))  # nothing is written yet
            file.write(text.encode("utf-8", "replace"))
        return len(text)

    def delete(self, path: str) -> None:
        """Delete a file; a symlink is removed itself, and only when it points inside."""
        relative = self._relative(path)
        shown = _show(path)
        if relative.name in ("", ".."):
            raise WorkspaceError(f"{shown} is a folder; only files can be deleted")
        # The parent is resolved but not the last part, so a symlink is deleted, not followed.
        link = self._inside(self.root / relative.parent, shown) / relative.name
        with _os_errors("delete", shown):
            if link.is_symlink():
                self._inside(link, shown)
            elif link.is_dir():
                raise WorkspaceError(f"{shown} is a folder; only files can be deleted")
            elif not link.exists():
                raise self._missing(shown)
            self._before_change(link, shown)
            link.unlink()


def resolved(path: Path) -> Path | None:
    """`path` with every symlink resolved; None when that fails, as it does when a symlink
    is swapped for a file under `os.path.realpath` (EINVAL from readlink): a listing leaves
    such a name out."""
    try:
        return Path(os.path.realpath(path))
    except OSError:
        return None


def _one_name(fd: int, shown: str) -> None:
    """WorkspaceError when the open file has other names: one may be outside the workspace.

    (`write_text` needs no such check: it replaces the name, never the file behind it.)
    """
    if os.fstat(fd).st_nlink > 1:
        raise WorkspaceError(
            f"{shown} has other names (hard links), which may lie outside the workspace; "
            "it cannot be read or appended to. write_file replaces it with a file of its own"
        )
