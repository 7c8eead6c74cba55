"""The launcher of every program the agent starts: limits, and on Linux a kernel sandbox.

Run by path with `python -I -S confine.py CONFIG_JSON` (standard library only, so it starts
fast and never imports the package). CONFIG_JSON holds the command and its limits; with
`"sandbox"` set the command runs:

- in new user, network, mount, PID, IPC, UTS and cgroup namespaces: no network at all
  (not even loopback), no view of the machine's other processes or their System V shared
  memory and message queues;
- under Landlock: it reads and runs only the paths given as `read` (the Python runtime,
  the system's libraries) and writes only under `write` (the workspace, a private
  temporary folder); TCP is refused and, where the kernel has it, signals and abstract
  sockets do not leave the sandbox;
- with `/tmp`, `/var/tmp`, `/run` and `/dev/shm` covered by empty tmpfs mounts (the
  allowed paths there bound back), hiding the named sockets kept there;
- with at most `max_procs` processes (the namespace's pid_max, and RLIMIT_NPROC);
- as the child of a small init process: when the command's first process exits, or the
  launcher or the agent dies (even by `kill -9`), every process it started is killed.

Anything that cannot be set up ends the launcher with exit code 125 and one line on the
status pipe (`status_fd`), which the command never holds, so a program cannot pretend the
sandbox failed (fail closed: nothing runs unconfined by accident). The process tree is:
agent → launcher (outside the namespaces) → init (PID 1 inside) → command.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import select
import signal
import sys
from typing import Any

SETUP_FAILED = 125
"""The launcher's exit code when the sandbox cannot be set up."""

_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38

# Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on every
# architecture that has them.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1


@functools.cache
def _c() -> ctypes.CDLL:
    """The C library, loaded on first use (importing this module loads nothing)."""
    return ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A part of the sandbox could not be set up."""


def _check(result: int, what: str) -> int:
    """`result` of a libc call, or SetupError naming `what` and errno."""
    if result < 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)}")
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (or it is disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _c().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_CREATE_RULESET_VERSION))  # fmt: skip
    return max(int(version), 0)


def _fs_rights(abi: int) -> int:
    """Every filesystem right the kernel's ABI knows: what the ruleset handles (denies)."""
    rights = (1 << 13) - 1  # EXECUTE .. MAKE_SYM (ABI 1)
    if abi >= 2:
        rights |= 1 << 13  # REFER: links and renames across folders
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock(read: list[str], write: list[str]) -> None:
    """Restrict this process and its children to reading `read` and writing `write`."""
    abi = landlock_abi()
    if abi < 1:
        raise SetupError("Landlock is not available in this kernel")
    handled = _fs_rights(abi)
    attr = _RulesetAttr(fs=handled)
    size = 8
    if abi >= 4:
        attr.net, size = _NET_BIND_TCP | _NET_CONNECT_TCP, 16
    if abi >= 6:
        attr.scoped, size = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL, 24
    ruleset = _check(_c().syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")  # fmt: skip
    read_rights = _EXECUTE | _READ_FILE | _READ_DIR
    for paths, rights in ((read, read_rights), (write, handled)):
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this system does not have
            try:
                allowed = rights if os.path.isdir(path) else rights & _FILE_RIGHTS
                rule = _PathBeneath(allowed=allowed & handled, parent_fd=fd)
                _check(_c().syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH,
                                     ctypes.byref(rule), ctypes.c_uint32(0)),
                       f"landlock_add_rule {path}")  # fmt: skip
            finally:
                os.close(fd)
    _check(_c().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_c().syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    os.close(ruleset)


def _die_with_parent(parent_gone: int | None = None) -> None:
    """SIGKILL this process when its parent dies; exit now if the parent is already gone.

    `parent_gone` is a pipe end that reads as EOF once the parent has died (inside a new PID
    namespace the parent's pid cannot be checked).
    """
    _check(_c().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    if parent_gone is not None and select.select([parent_gone], [], [], 0)[0]:
        os._exit(SETUP_FAILED)


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _enter_namespaces() -> None:
    """New user, network, mount and PID namespaces (the next child is PID 1 of the last)."""
    uid, gid = os.getuid(), os.getgid()
    flags = _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWPID
    # IPC: no System V shared memory or message queues of the machine's other processes.
    flags |= _CLONE_NEWIPC | _CLONE_NEWUTS | _CLONE_NEWCGROUP
    _check(_c().unshare(flags), "unshare (user namespaces may be disabled)")
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as err:
        raise SetupError(f"user namespace id maps: {err.strerror}") from None


def _init_namespace(max_procs: int) -> list[str]:
    """As PID 1: a private /proc of the new namespace, and the cap on processes.

    Returns the paths that became readable (the new /proc), empty where it could not be made.
    """
    _check(_c().mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "private mounts")
    readable = []
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _c().mount(b"proc", b"/proc", b"proc", flags, None) == 0:
        readable.append("/proc")
    # pid_max is per PID namespace since Linux 6.14; elsewhere RLIMIT_NPROC is the cap.
    with contextlib.suppress(OSError):
        _write("/proc/sys/kernel/pid_max", str(max(max_procs, 301) + 1))
    return readable


MASKED = ("/tmp", "/var/tmp", "/run", "/dev/shm")
"""Folders where programs keep Unix sockets (D-Bus, Docker, X11, ssh-agent) and shared
files: each is covered by an empty private tmpfs, with the allowed paths inside bound back.
Landlock does not cover connecting to a named socket; not seeing it does."""


def _mask(paths: list[str]) -> None:
    """Cover each of `MASKED` with an empty tmpfs, and bind `paths` under them back."""
    inside = [p for p in paths if any(p == m or p.startswith(m + "/") for m in MASKED)]
    held = {}
    for path in inside:  # handles on the real folders, before they are covered
        with contextlib.suppress(OSError):
            held[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
    for folder in MASKED:
        if os.path.isdir(folder) and not os.path.islink(folder):
            _check(_c().mount(b"tmpfs", folder.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                              b"mode=1777"), f"covering {folder}")  # fmt: skip
    for path, fd in held.items():
        source = f"/proc/self/fd/{fd}"
        if os.path.isdir(source):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a"):
                pass
        _check(_c().mount(source.encode(), path.encode(), None, _MS_BIND | _MS_REC, None),
               f"binding {path} back")  # fmt: skip
        os.close(fd)


def _limits(config: dict[str, Any]) -> None:
    """The resource limits of the command (kept across exec and by its children)."""
    import resource  # noqa: PLC0415 (Unix only: the package imports this module elsewhere too)

    memory = int(config.get("memory", 0))
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    procs = int(config.get("sandbox", {}).get("max_procs", 0))
    if procs > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (procs, procs))


def _exit_like(status: int) -> None:
    """End this process the way a child with wait status `status` ended."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _run_init(config: dict[str, Any], parent_gone: int, report: int) -> None:
    """PID 1 of the sandbox: start the command, reap every orphan, end when the command ends.

    When this process exits the kernel kills every other process of the namespace, which is
    how nothing the command started outlives it.
    """
    _die_with_parent(parent_gone)
    box = config["sandbox"]
    readable = _init_namespace(int(box.get("max_procs", 0)))
    _mask([*box["write"], *box["read"]])
    command = os.fork()
    if command == 0:
        os.close(report)
        os.close(parent_gone)  # the command inherits no descriptor of ours
        try:
            _limits(config)
            _landlock(box["read"] + readable, box["write"])
        except (SetupError, OSError) as err:
            _fail(config, err)
        _exec(config)
    while True:
        pid, status = os.wait()
        if pid == command:
            os.write(report, str(status).encode())
            os._exit(0)


def _fail(config: dict[str, Any], err: BaseException) -> None:
    """Say on the status pipe why the sandbox could not be set up, and end this process."""
    with contextlib.suppress(OSError, KeyError, TypeError, ValueError):
        os.write(int(config["status_fd"]), str(err).encode("utf-8", "replace")[:500])
    os._exit(SETUP_FAILED)


def _exec(config: dict[str, Any]) -> None:
    """Become the command; the status pipe closes on the way (the command never holds it)."""
    argv = config["argv"]
    with contextlib.suppress(KeyError, OSError, TypeError, ValueError):
        os.set_inheritable(int(config["status_fd"]), False)
    try:
        os.execvp(argv[0], argv)
    except (OSError, ValueError) as err:
        print(f"cannot start {argv[0]}: {getattr(err, 'strerror', None) or err}", file=sys.stderr)
        os._exit(127)


def main(config: dict[str, Any]) -> None:
    """Start `config["argv"]`, sandboxed when `config["sandbox"]` is set."""
    parent = int(config.get("parent", 0))
    _die_with_parent()
    if parent and os.getppid() != parent:
        os._exit(SETUP_FAILED)  # the agent died while this launcher started
    if not config.get("sandbox"):
        _limits(config)
        _exec(config)
    _enter_namespaces()
    alive_r, alive_w = os.pipe()  # alive_w stays open in this process only
    report_r, report_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(alive_w)
        os.close(report_r)
        try:
            _run_init(config, alive_r, report_w)
        except (SetupError, OSError) as err:
            _fail(config, err)
    os.close(alive_r)
    os.close(report_w)
    _, init_status = os.waitpid(init, 0)
    reported = os.read(report_r, 32)
    _exit_like(int(reported) if reported else init_status)


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    try:
        main(settings)
    except (SetupError, OSError) as err:
        _fail(settings, err)
