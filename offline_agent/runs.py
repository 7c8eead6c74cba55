"""The run record: a folder per run with its metadata (run.json) and one JSONL line per step.

Each line is flushed and fsynced as soon as its step ends, so a crash loses at most the
step in flight. Lines are chained: each carries the sha256 of the previous line and its own,
and the first one the sha256 of run.json; `steps.head` holds the number of lines and the
last hash, rewritten after each line. So `verify` finds an edited run.json, and an edited,
dropped (the last one too) or reordered line. What it cannot find: the chain has no key, so
whoever can write these files can recompute every hash; it proves the record was not damaged
or changed by someone who did not also rewrite the chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from offline_agent import atomic
from offline_agent.errors import StorageError
from offline_agent.interrupts import interrupts_held
from offline_agent.modelstore import sha256_file
from offline_agent.records import RunResult, Step

STEPS_FILE = "steps.jsonl"
META_FILE = "run.json"
HEAD_FILE = "steps.head"
LOCK_FILE = ".lock"
TEMP_FILE = atomic.TEMP_FILE
"""The name of a file an atomic write has not yet renamed into place."""
ORIGINALS = "originals"
"""The run folder's copy of each workspace file as it was before the run first changed it."""
GENESIS = "0" * 64
"""What the first line of a record made before run.json was chained points back to."""


def _line_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` so that a crash leaves the old file or the new one, never half."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old file or the new one."""
    _replace_atomic(path, lambda f: f.write(text.encode("utf-8")))


def copy_atomic(source: Path, path: Path) -> None:
    """Replace `path` with a copy of `source` (its permission bits too), so that a crash
    leaves no half copy."""
    with source.open("rb") as data:
        _replace_atomic(path, lambda f: shutil.copyfileobj(data, f), mode_of=source)


def _replace_atomic(
    path: Path, fill: Callable[[IO[bytes]], object], mode_of: Path | None = None
) -> None:
    try:
        mode = mode_of.stat().st_mode & 0o7777 if mode_of is not None else None
        with atomic.replacing(path, mode=mode) as file:
            fill(file)
    except OSError as err:
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from None


@dataclass(frozen=True)
class RunMeta:
    """What run.json holds: written once as a run starts, read by everything that looks at it."""

    id: str
    settings: dict[str, Any]
    """The run's settings as `session.RunSettings.to_json` saved them."""
    model: str | None = None
    """The name of the model as loaded."""
    model_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """What the starter added: the command line of `run`, the attempt of `bench`."""

    @property
    def goals(self) -> list[str]:
        """The run's goals."""
        return list(self.settings.get("profile", {}).get("goals") or [])

    @property
    def name(self) -> str:
        """The agent's name."""
        return str(self.settings.get("profile", {}).get("name") or "Agent")

    @property
    def workspace(self) -> Path | None:
        """The workspace the run used (absolute in records made since it is stored so)."""
        path = self.settings.get("workspace")
        return Path(path) if path else None

    def to_json(self) -> dict[str, Any]:
        """run.json's content."""
        fixed = {"id": self.id, "settings": self.settings, "model": self.model,
                 "model_sha256": self.model_sha256}  # fmt: skip
        return {**self.extra, **fixed}

    @classmethod
    def load(cls, folder: Path) -> RunMeta:
        """The run.json of the run in `folder`; StorageError if it is not a run folder."""
        try:
            data = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            known = ("id", "settings", "model", "model_sha256")
            return cls(
                id=str(data["id"]),
                settings=dict(data.get("settings") or {}),
                model=data.get("model"),
                model_sha256=data.get("model_sha256"),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise StorageError(f"{folder} is not a run folder: {err}") from None


def _meta_hash(folder: Path) -> str:
    try:
        return hashlib.sha256((folder / META_FILE).read_bytes()).hexdigest()
    except OSError as err:
        raise StorageError(f"{folder} is not a run folder: {err.strerror}") from None


class RunRecord:
    """Appends steps of one run to `<folder>/steps.jsonl`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file: IO[str] | None = None
        self._last_hash = _meta_hash(folder)
        self._lines = 0
        self._commanded = 0
        """The step whose command line was written last (it holds the step's snapshot)."""
        self._lock = _lock(folder)

    @classmethod
    def create(
        cls,
        runs_dir: Path,
        name: str,
        settings: dict[str, Any],
        *,
        model: str | None = None,
        model_sha256: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> RunRecord:
        """A new run folder under `runs_dir` named after `name`, its run.json written."""
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "agent"
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"
        folder = runs_dir / run_id
        try:
            folder.mkdir(parents=True)
        except OSError as err:
            raise StorageError(f"cannot create run folder {folder}: {err.strerror}") from None
        meta = RunMeta(run_id, settings, model, model_sha256, dict(extra or {}))
        write_json_atomic(folder / META_FILE, meta.to_json())
        return cls(folder)

    @classmethod
    def reopen(cls, folder: Path) -> RunRecord:
        """An existing record, to append to after checking its hash chain."""
        verify(folder)
        record = cls(folder)
        entries = read_entries(folder)
        record._lines = len(entries)
        if entries:
            record._last_hash = entries[-1]["hash"]
        path = folder / STEPS_FILE
        if path.exists():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # a line torn by a crash: drop it
                kept = "".join(line + "\n" for line in text.splitlines()[: len(entries)])
                write_text_atomic(path, kept)
        return record

    @property
    def id(self) -> str:
        """The run's id: its folder name."""
        return self.folder.name

    def keep_original(self, name: str, source: Path) -> None:
        """Keep `source`, the workspace file `name` as it was before the run first changed
        it, as `originals/<name>` in the run folder, and its sha256 in the hash chain (an
        `original` line, which `verify` checks the copy against); a copy already there (a
        resumed run's) is kept as it is."""
        target = self.folder / ORIGINALS / name
        if target.exists():
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_atomic(source, target)
            digest = sha256_file(target)
        except OSError as err:
            raise StorageError(f"cannot keep {name}: {err.strerror or err}") from None
        self._append({"type": "original", "name": name, "sha256": digest})

    def write_step(self, step: Step) -> None:
        """Append one step, with the digest of what its command returned. Its snapshot is
        not written again when its command line holds it (`snapshot_of` finds it there)."""
        output = step.result.output if step.result else ""
        digest = hashlib.sha256(output.encode("utf-8", errors="surrogatepass")).hexdigest()
        data = step.to_dict()
        if step.index == self._commanded:
            data["snapshot"] = None
        self._append({"type": "step", "step": data, "result_sha256": digest})

    def write_command(self, step: Step) -> None:
        """Append the command a step is about to run, with the request and reply that chose
        it and the workspace as it saw it (what resume rebuilds an interrupted step from)."""
        raw = step.completion.text if step.completion else ""
        reply = asdict(step.reply) if step.reply else None
        request = step.messages[-1] if step.messages else None
        code = step.code.text if step.code else None  # the reply's code turn, if it had one
        self._append({"type": "command", "index": step.index, "raw": raw, "reply": reply,
                      "request": request, "snapshot": step.snapshot, "code": code})  # fmt: skip
        self._commanded = step.index

    def write_end(self, result: RunResult) -> None:
        """Append how the run ended."""
        self._append({"type": "end", "result": asdict(result)})

    def _append(self, entry: dict[str, Any]) -> None:
        # Whole or not at all: a Ctrl-C between the line reaching the disk and the hash it
        # carries becoming the one the next line chains to would break the chain.
        with interrupts_held():
            self._append_line(entry)

    def _append_line(self, entry: dict[str, Any]) -> None:
        entry = {**entry, "time": time.time(), "prev": self._last_hash}
        entry["hash"] = _line_hash(entry)
        try:
            if self._file is None:
                self._file = (self.folder / STEPS_FILE).open("a", encoding="utf-8")
            self._file.write(json.dumps(entry, sort_keys=True) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise StorageError(f"cannot append to the run record: {err.strerror}") from None
        self._last_hash = entry["hash"]
        self._lines += 1
        # After the line: a crash in between leaves the head one line behind, which verify
        # accepts; a line missing from the end leaves it ahead, which verify reports.
        write_json_atomic(self.folder / HEAD_FILE, {"lines": self._lines, "hash": self._last_hash})

    def close(self) -> None:
        """Close the steps file, and let another process have the record."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._lock.closed:
            self._lock.close()


def _lock(folder: Path) -> IO[str]:
    """Hold the run folder for this process, so that two processes (a run and a resume of
    it, or two resumes) never append to one record; StorageError when another holds it.
    The kernel lets go when the process ends, even by `kill -9`."""
    try:
        handle = (folder / LOCK_FILE).open("a", encoding="utf-8")
    except OSError as err:
        raise StorageError(f"cannot lock {folder}: {err.strerror}") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StorageError(
            f"run {folder.name} is in use by another process (a run or a resume of it)"
        ) from None
    return handle


def recorded_steps_with_snapshots(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step entries' steps, each with its snapshot (from its command line if there)."""
    announced = {e["index"]: e.get("snapshot") for e in entries if e.get("type") == "command"}
    steps = []
    for entry in entries:
        if entry.get("type") == "step":
            step = entry["step"]
            if step.get("snapshot") is None and step["index"] in announced:
                step = {**step, "snapshot": announced[step["index"]]}
            steps.append(step)
    return steps


def read_entries(folder: Path) -> list[dict[str, Any]]:
    """All complete lines of a run record; a torn last line (a crash mid-write) is skipped."""
    path = folder / STEPS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise StorageError(f"{path}: line {number} is not JSON") from None
    return entries


@dataclass(frozen=True)
class Verified:
    """What `verify` checked."""

    lines: int
    covers_meta: bool
    """run.json is in the chain (False for records made before it was)."""
    has_head: bool
    """The count of lines was kept (False for records made before it was): without it a
    dropped last line cannot be told from one never written."""
    ended: bool
    """The record has its end line."""


def verify(folder: Path) -> Verified:
    """Check run.json, the hash chain, the count of lines and the kept originals the chain
    names; StorageError at the first break."""
    meta = _meta_hash(folder)
    entries = read_entries(folder)
    previous = meta
    covers_meta = True
    for number, entry in enumerate(entries, 1):
        if number == 1 and entry.get("prev") == GENESIS:
            previous, covers_meta = GENESIS, False  # recorded before run.json was chained
        if entry.get("prev") != previous:
            if number == 1:
                raise StorageError(
                    "line 1: chain broken (run.json was edited, or a line dropped or reordered)"
                )
            raise StorageError(f"line {number}: chain broken (a line was dropped or reordered)")
        if entry.get("hash") != _line_hash(entry):
            raise StorageError(f"line {number}: content does not match its hash (edited)")
        if entry.get("type") == "original":
            _check_original(folder, number, entry)
        previous = entry["hash"]
    head = _read_head(folder)
    if head is not None:
        lines, last = head
        # One line more than the head counts: the process died between the two writes.
        if len(entries) < lines or len(entries) > lines + 1:
            missing = lines - len(entries)
            what = f"{missing} line(s) missing at the end" if missing > 0 else "lines added"
            raise StorageError(f"the record holds {len(entries)} lines, its head {lines}: {what}")
        if lines and entries[lines - 1]["hash"] != last:
            raise StorageError(f"line {lines}: does not match the head (edited)")
    ended = bool(entries) and entries[-1].get("type") == "end"
    return Verified(len(entries), covers_meta, head is not None, ended)


def _check_original(folder: Path, number: int, entry: dict[str, Any]) -> None:
    """The kept copy a line of the chain names is there, with the sha256 it records."""
    shown = f"{ORIGINALS}/{entry['name']}"
    try:
        digest = sha256_file(folder / ORIGINALS / entry["name"])
    except OSError as err:
        raise StorageError(f"line {number}: {shown} cannot be read: {err.strerror}") from None
    if digest != entry["sha256"]:
        raise StorageError(f"line {number}: {shown} does not match its sha256 (edited)")


def last_event(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record's last line that says what the run did (a command, a step, the end): not
    an `original` line, which a command writes while it runs."""
    return next((e for e in reversed(entries) if e.get("type") != "original"), None)


def _read_head(folder: Path) -> tuple[int, str] | None:
    """The line count and last hash `steps.head` holds; None for records made before it."""
    path = folder / HEAD_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return int(data["lines"]), str(data["hash"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise StorageError(f"{path} is damaged: {err}") from None
