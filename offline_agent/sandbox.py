"""Running agent-written programs: a time limit, a memory limit, an output cap, a bare
environment, and on Linux a kernel sandbox (`offline_agent.confine`).

With `sandbox` given, the program reads only the Python runtime, the system's libraries and
the workspace, writes only the workspace and a private temporary folder, has no network and
at most a few hundred processes, and everything it started is killed when it ends, when it
times out, and when the agent dies. Without it (`--sandbox off`) it runs as the user: it
can read what the user can, and a process that calls setsid() outlives the command.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_agent import confine
from offline_agent.errors import ToolError
from offline_agent.interrupts import HeldInterrupt

_MIB = 1024 * 1024
_CHUNK = 64 * 1024
_POLL_SECONDS = 0.1
_DRAIN_SECONDS = 0.5
"""How long to keep reading after the process is gone, for output still in the pipe."""

# Limits and the sandbox are set by a small launcher that then exec()s the real command,
# rather than by `preexec_fn`, which is unsafe in a process with threads (llama.cpp runs
# them) and forces a full fork() of a process that may map a multi-gigabyte model.
_LAUNCHER = str(Path(confine.__file__).resolve())

SYSTEM_READ = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/mime.types",
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
)  # fmt: skip
"""What a sandboxed program may read besides the Python runtime and the workspace: the
system's programs and libraries and the few files in /etc that they read, not /etc itself
(it holds the machine's secrets), the home folder or /tmp."""

WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full")

MAX_PROCESSES = 256
"""Processes a sandboxed program may have at once (a fork bomb stops there)."""


class SandboxUnavailable(ToolError):
    """The sandbox could not be set up around a program, so it did not run."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the sandbox could not be set up ({reason}), so nothing ran; "
                         "the user can run code without it with --sandbox off")  # fmt: skip
        self.reason = reason


@dataclass(frozen=True)
class Sandbox:
    """What a sandboxed program may read; it writes only its workspace and a temporary folder."""

    read: tuple[str, ...]
    max_procs: int = MAX_PROCESSES

    @classmethod
    def default(cls) -> Sandbox:
        """The Python runtime this agent runs on and the system's libraries, read-only."""
        runtime = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        runtime.add(str(Path(sys.executable).resolve().parent.parent))
        return cls(read=tuple(sorted(runtime)) + SYSTEM_READ)


def sandbox_problem() -> str | None:
    """Why the sandbox cannot run on this machine, or None when it can (a success is
    remembered; a failure is tried again next time, as it may have been passing)."""
    if not _PROBED:
        problem = _probe()
        if problem is not None:
            return problem
        _PROBED.append(True)
    return None


_PROBED: list[bool] = []


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (this is {sys.platform})"
    if confine.landlock_abi() < 1:
        return "the sandbox needs Landlock, which this kernel does not offer"
    with tempfile.TemporaryDirectory(prefix="offline-agent-probe-") as folder:
        try:
            result = run_process(
                [sys.executable, "-I", "-S", "-c", "pass"],
                cwd=Path(folder),
                timeout=30,
                output_limit=500,
                sandbox=Sandbox.default(),
            )
        except SandboxUnavailable as err:
            return err.reason
        except ToolError as err:
            return str(err)
    if result.exit_code != 0:
        return f"a program in the sandbox failed: {result.output.strip()[:200]}"
    return None


_PROBE = """
import os, resource, socket
try:
    os.listdir("/etc")
    print("NO-files")
except OSError:
    print("files")
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
except OSError as err:
    print("network" if err.errno != 111 else "NO-network")
print("processes" if os.getpid() < 10 else "NO-processes")
try:
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
except OSError:
    pid_max = 1 << 22
nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
cap = min(pid_max - 2, nproc if os.getuid() != 0 and nproc > 0 else 1 << 22)
print(f"cap {cap}")
"""


def protections() -> list[str]:
    """What the sandbox holds on this machine, in words, tried with a real program (`doctor`).

    ToolError when it cannot be set up at all.
    """
    problem = sandbox_problem()
    if problem is not None:
        raise ToolError(problem)
    with tempfile.TemporaryDirectory(prefix="offline-agent-probe-") as folder:
        result = run_python(["-I", "-S", "-c", _PROBE], cwd=Path(folder), timeout=30,
                            output_limit=2000, sandbox=Sandbox.default())  # fmt: skip
    lines = result.output.split()
    abi = confine.landlock_abi()
    held = [f"files: the workspace, and the runtime read-only (Landlock ABI {abi})"
            if "files" in lines else "files NOT confined"]  # fmt: skip
    if abi < 3:  # Landlock before ABI 3 (Linux 6.2) cannot refuse truncate(2)
        held.append("truncating files the user owns NOT confined (Landlock ABI < 3)")
    held.append("no network" if "network" in lines else "network NOT cut off")
    held.append("nothing outlives a command" if "processes" in lines
                else "processes NOT contained")  # fmt: skip
    cap = int(lines[lines.index("cap") + 1]) if "cap" in lines else 1 << 22
    held.append(f"at most {cap} processes" if cap < 100_000 else "processes NOT capped")
    return held


@dataclass(frozen=True)
class ProcessResult:
    """How a run ended: its exit code (negative: killed by that signal) and its capped output."""

    exit_code: int
    output: str
    timed_out: bool

    @property
    def succeeded(self) -> bool:
        """It exited by itself with 0: not killed, not stopped at its timeout."""
        return self.exit_code == 0 and not self.timed_out


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


def _environment(cwd: Path, temp: Path | None) -> dict[str, str]:
    """The whole environment of the child; nothing else (no keys, no tokens) is passed on."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(cwd),
        **({"TMPDIR": str(temp)} if temp is not None else {}),
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


def run_python(
    args: list[str],
    *,
    cwd: Path,
    timeout: float,
    output_limit: int,
    memory_limit_mb: int | None = 1024,
    sandbox: Sandbox | None = None,
) -> ProcessResult:
    """Run `python *args` in `cwd`, stdout and stderr together, killed after `timeout` seconds."""
    return run_process(
        [sys.executable, *args],
        cwd=cwd,
        timeout=timeout,
        output_limit=output_limit,
        memory_limit_mb=memory_limit_mb,
        sandbox=sandbox,
    )


def run_process(
    argv: list[str],
    *,
    cwd: Path,
    timeout: float,
    output_limit: int,
    memory_limit_mb: int | None = 1024,
    sandbox: Sandbox | None = None,
) -> ProcessResult:
    """Run `argv` (no shell) in `cwd` under the same limits as `run_python`.

    ToolError when the program cannot start, or the sandbox cannot be set up around it.
    """
    if any("\0" in arg for arg in argv):
        raise ToolError(f"cannot start {Path(argv[0]).name}: an argument holds a null byte")
    if sandbox is None:
        return _launch(argv, cwd, timeout, output_limit, memory_limit_mb)
    temp = Path(tempfile.mkdtemp(prefix="offline-agent-tmp-"))
    try:
        return _launch(argv, cwd, timeout, output_limit, memory_limit_mb, confined=(sandbox, temp))
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _launch(
    argv: list[str],
    cwd: Path,
    timeout: float,
    output_limit: int,
    memory_limit_mb: int | None,
    *,
    confined: tuple[Sandbox, Path] | None = None,
) -> ProcessResult:
    """Start `argv` through the launcher and supervise it, `confined` in the sandbox with
    that temporary folder; see `run_process`."""
    sandbox, temp = confined if confined is not None else (None, None)
    config: dict[str, Any] = {
        "argv": argv,
        "memory": (memory_limit_mb or 0) * _MIB,
        "parent": os.getpid(),
    }
    if sandbox is not None and temp is not None:
        config["sandbox"] = {
            "read": list(sandbox.read),
            "write": [str(cwd.resolve()), str(temp), *WRITABLE_DEVICES],
            "max_procs": sandbox.max_procs,
        }
    # The launcher says why the sandbox failed on a pipe of its own, not in the output,
    # which the program controls.
    status_r, status_w = os.pipe()
    config["status_fd"] = status_w
    command = [sys.executable, "-I", "-S", _LAUNCHER, json.dumps(config)]
    # A KeyboardInterrupt inside `Popen` would leave the child running with nothing to kill
    # it (it leads a session of its own, so the terminal's Ctrl-C does not reach it either).
    ctrl_c = HeldInterrupt()
    try:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=_environment(cwd, temp),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(status_w,),
        )
    except (OSError, ValueError) as exc:
        ctrl_c.release()
        os.close(status_r)
        raise ToolError(f"cannot start {Path(argv[0]).name}: {exc}") from None
    except BaseException:
        ctrl_c.release()
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    output = _Output(output_limit)
    with proc:
        try:
            ctrl_c.release()  # a Ctrl-C during the start arrives here, where it kills the child
            timed_out = _supervise(proc, timeout, output)
        except BaseException:  # Ctrl-C or an error while waiting: nothing started lives on
            _kill_group(proc.pid)
            raise
    with os.fdopen(status_r, "rb") as status:
        failed = status.read(1000).decode("utf-8", "replace").strip()
    if failed:
        raise SandboxUnavailable(failed)
    return ProcessResult(proc.returncode, output.text(), timed_out)
