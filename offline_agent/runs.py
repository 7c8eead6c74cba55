"""The run record: a folder per run with its settings and one JSONL line per step.

Each line is flushed and fsynced as soon as its step ends, so a crash loses at most the
step in flight. Lines are chained: each carries the sha256 of the previous line and its own,
so an edited, dropped or reordered line is detected by `verify`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from offline_agent.errors import StorageError
from offline_agent.records import RunResult, Step

STEPS_FILE = "steps.jsonl"
META_FILE = "run.json"
GENESIS = "0" * 64


def _line_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` so that a crash leaves the old file or the new one, never half."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from None


class RunRecord:
    """Appends steps of one run to `<folder>/steps.jsonl`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file: IO[str] | None = None
        self._last_hash = GENESIS

    @classmethod
    def create(cls, runs_dir: Path, name: str, meta: dict[str, Any]) -> RunRecord:
        """A new run folder under `runs_dir`, with `meta` saved as run.json."""
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "agent"
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"
        folder = runs_dir / run_id
        try:
            folder.mkdir(parents=True)
        except OSError as err:
            raise StorageError(f"cannot create run folder {folder}: {err.strerror}") from None
        write_json_atomic(folder / META_FILE, {"id": run_id, **meta})
        return cls(folder)

    @classmethod
    def reopen(cls, folder: Path) -> RunRecord:
        """An existing record, to append to after checking its hash chain."""
        verify(folder)
        record = cls(folder)
        entries = read_entries(folder)
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

    def write_step(self, step: Step) -> None:
        """Append one step, with the digest of what its command returned."""
        output = step.result.output if step.result else ""
        digest = hashlib.sha256(output.encode("utf-8", errors="surrogatepass")).hexdigest()
        self._append({"type": "step", "step": step.to_dict(), "result_sha256": digest})

    def write_command(self, step: Step) -> None:
        """Append the command a step is about to run, with the reply that chose it."""
        raw = step.completion.text if step.completion else ""
        reply = asdict(step.reply) if step.reply else None
        self._append({"type": "command", "index": step.index, "raw": raw, "reply": reply})

    def write_end(self, result: RunResult) -> None:
        """Append how the run ended."""
        self._append({"type": "end", "result": asdict(result)})

    def _append(self, entry: dict[str, Any]) -> None:
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

    def close(self) -> None:
        """Close the steps file."""
        if self._file is not None:
            self._file.close()
            self._file = None


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


def verify(folder: Path) -> int:
    """Check the hash chain; the number of lines checked, or StorageError at the first break."""
    previous = GENESIS
    entries = read_entries(folder)
    for number, entry in enumerate(entries, 1):
        if entry.get("prev") != previous:
            raise StorageError(f"line {number}: chain broken (a line was dropped or reordered)")
        if entry.get("hash") != _line_hash(entry):
            raise StorageError(f"line {number}: content does not match its hash (edited)")
        previous = entry["hash"]
    return len(entries)
