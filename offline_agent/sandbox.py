"""Running agent-written Python: a time limit, a memory limit, an output cap, a bare environment.

The child leads its own process group, and the whole group is killed when the run ends,
whether it timed out or not, so nothing the agent started keeps running afterwards. This is
a guard against runaway code, not a security boundary: the code runs as the user and can
read what the user can, and a process that calls setsid() leaves the group.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_agent.errors import ToolError

_MIB = 1024 * 1024
_CHUNK = 64 * 1024
_POLL_SECONDS = 0.1
_DRAIN_SECONDS = 0.5
"""How long to keep reading after the process is gone, for output still in the pipe."""

# Limits are set by a tiny launcher that then exec()s the real command, rather than by
# `preexec_fn`, which is unsafe in a process with threads (llama.cpp runs them) and forces
# a full fork() of a process that may map a multi-gigabyte model.
_LAUNCHER = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "if limit > 0:\n"
    "    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
    "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


@dataclass(frozen=True)
class ProcessResult:
    """How a run ended: its exit code (negative: killed by that signal) and its capped output."""

    exit_code: int
    output: str
    timed_out: bool


class _Output:
    """The first `limit` characters of a byte stream, and a count of the characters after."""

    def __init__(self, limit: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._kept: list[str] = []
        self._room = max(limit, 0)
        self._dropped = 0

    def feed(self, data: bytes, *, final: bool = False) -> None:
        """Decode `data` and keep what still fits."""
        text = self._decoder.decode(data, final)
        kept = text[: self._room]
        self._kept.append(kept)
        self._room -= len(kept)
        self._dropped += len(text) - len(kept)

    def text(self) -> str:
        """What was kept, with a notice when something was dropped."""
        kept = "".join(self._kept)
        if self._dropped:
            return f"{kept}\n[output truncated: {self._dropped} more characters]"
        return kept


def _environment(cwd: Path) -> dict[str, str]:
    """The whole environment of the child; nothing else (no keys, no tokens) is passed on."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        # Unbuffered, so prints and a traceback arrive in the order they happened.
        "PYTHONUNBUFFERED": "1",
    }


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether `proc` has exited; where possible it is left unreaped, keeping its group id ours."""
    if hasattr(os, "waitid"):  # not on macOS
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return proc.poll() is not None


def _kill_group(pid: int) -> None:
    """SIGKILL every process in the group `pid` leads."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _supervise(proc: subprocess.Popen[bytes], timeout: float, output: _Output) -> bool:
    """Read the output until the process ends or times out, then kill its group; timed out?"""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    timed_out = False
    gone_at: float | None = None
    eof = False
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if gone_at is None:
                exited = _has_exited(proc)
                if exited or now >= deadline:
                    timed_out = not exited
                    _kill_group(proc.pid)
                    gone_at = now
            if gone_at is not None and (eof or now - gone_at >= _DRAIN_SECONDS):
                break
            end = deadline if gone_at is None else gone_at + _DRAIN_SECONDS
            wait = min(_POLL_SECONDS, max(end - now, 0.0))
            if eof:
                time.sleep(wait)
            elif selector.select(wait):
                data = os.read(fd, _CHUNK)
                eof = not data
                output.feed(data, final=eof)
    proc.wait()
    return timed_out


class _HeldInterrupt:
    """Ctrl-C held back while a child starts, and delivered by `release()`.

    A KeyboardInterrupt inside `Popen` would leave the child running with nothing to kill it
    (it leads a session of its own, so the terminal's Ctrl-C does not reach it either).
    Python runs signal handlers in the main thread only, so only there is anything held.
    """

    def __init__(self) -> None:
        self.held = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._hold)

    def _hold(self, signum: int, frame: object) -> None:
        self.held = True

    def release(self) -> None:
        """Put the previous handler back and give it the Ctrl-C held, if one came."""
        previous, self._previous = self._previous, None
        if previous is None:
            return
        signal.signal(signal.SIGINT, previous)
        if self.held and callable(previous):
            previous(signal.SIGINT, None)


def run_python(
    args: list[str],
    *,
    cwd: Path,
    timeout: float,
    output_limit: int,
    memory_limit_mb: int | None = 1024,
) -> ProcessResult:
    """Run `python *args` in `cwd`, stdout and stderr together, killed after `timeout` seconds."""
    return run_process(
        [sys.executable, *args],
        cwd=cwd,
        timeout=timeout,
        output_limit=output_limit,
        memory_limit_mb=memory_limit_mb,
    )


def run_process(
    argv: list[str],
    *,
    cwd: Path,
    timeout: float,
    output_limit: int,
    memory_limit_mb: int | None = 1024,
) -> ProcessResult:
    """Run `argv` (no shell) in `cwd` under the same limits as `run_python`."""
    limit = (memory_limit_mb or 0) * _MIB
    command = [sys.executable, "-c", _LAUNCHER, str(limit), *argv]
    ctrl_c = _HeldInterrupt()
    try:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=_environment(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        ctrl_c.release()
        raise ToolError(f"cannot start {Path(argv[0]).name}: {exc}") from None
    except BaseException:
        ctrl_c.release()
        raise
    output = _Output(output_limit)
    with proc:
        try:
            ctrl_c.release()  # a Ctrl-C during the start arrives here, where it kills the child
            timed_out = _supervise(proc, timeout, output)
        except BaseException:  # Ctrl-C or an error while waiting: nothing started lives on
            _kill_group(proc.pid)
            raise
    return ProcessResult(proc.returncode, output.text(), timed_out)
