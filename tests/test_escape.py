"""The escape suite: agent code tries to reach past its workspace, through the real agent.

Each case is a command the scripted model gives a real `offline-agent run`; the code prints
`ESCAPED <case>` when the escape worked. With the sandbox on no case may escape and each is
an observation the run goes on from; the same suite with `--sandbox off` shows which escapes
the sandbox is what stops, so these tests can fail.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent.cli import cli
from offline_agent.replay import recorded_steps
from offline_agent.sandbox import sandbox_problem
from tests.conftest import FINISH, reply, script

pytestmark = pytest.mark.skipif(sandbox_problem() is not None, reason=str(sandbox_problem()))

SWAPS = 8
"""read_file steps while a daemon keeps swapping the file for a symlink to a secret."""

DAEMON_WAIT = 1.5
"""Seconds a started daemon waits before it writes its marker (the run is over by then)."""


def code(text: str) -> dict[str, object]:
    return reply("execute_python_code", code=text)


def cases(outside: Path, port: int, udp_port: int, shm: int, sock: str) -> dict[str, str]:
    """Escape attempts by name: Python code that prints ESCAPED <name> when it gets through."""
    home = pwd.getpwuid(os.getuid()).pw_dir
    secret = outside / "secret.txt"
    return {
        "read_home": f"import os\nos.listdir({home!r}); print('ESCAPED read_home')",
        "read_outside": f"print(open({str(secret)!r}).read(), 'ESCAPED read_outside')",
        "read_system_secret": (
            "for p in ['/etc/shadow', '/etc/hostname', '/etc/machine-id']:\n"
            "    try:\n        open(p).read(); print('ESCAPED read_system_secret', p)\n"
            "    except OSError as e:\n        print(p, e)"
        ),
        "write_outside": (
            f"open({str(outside / 'w.txt')!r}, 'w').write('x')\nprint('ESCAPED write_outside')"
        ),
        "write_proc_self": (
            f"open('/proc/self/root' + {str(outside / 'p.txt')!r}, 'w').write('x')\n"
            "print('ESCAPED write_proc_self')"
        ),
        "connect_loopback": (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "print('ESCAPED connect_loopback')"
        ),
        "resolve_name": (  # a name server on 127.0.0.1 that answers every query
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(2)\n"
            f"s.sendto(b'example.org?', ('127.0.0.1', {udp_port}))\ns.recvfrom(512)\n"
            "print('ESCAPED resolve_name')"
        ),
        "daemon": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        time.sleep({DAEMON_WAIT})\n        open('daemon.txt', 'w').write('alive')\n"
            "    os._exit(0)\nprint('started a daemon')"
        ),
        "processes": (
            "import os, time\nn = 0\nfor _ in range(1000):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n"
            "        os._exit(0)\n    n += 1\nprint('started', n)\nif n >= 1000:\n"
            "    print('ESCAPED processes')"
        ),
        "memory_8gb": "b = bytearray(8 * 1024**3)\nprint('ESCAPED memory_8gb')",
        "unix_socket": (  # a named socket outside the workspace, as D-Bus or Docker have
            "import socket\ns = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({sock!r})\nprint('ESCAPED unix_socket')"
        ),
        "shared_memory": (  # a System V segment the test made, found by its id
            "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.shmat.restype = ctypes.c_void_p\n"
            f"at = libc.shmat({shm}, None, 0)\n"
            "if at not in (None, ctypes.c_void_p(-1).value):\n"
            "    print('ESCAPED shared_memory', ctypes.string_at(at, 10))"
        ),
        "hard_link": f"import os\nos.link({str(secret)!r}, 'hl.txt'); print('linked')",
    }


@pytest.fixture
def unix_listener() -> Iterator[str]:
    """A Unix socket listening in a folder of /tmp (where ssh-agent and X11 keep theirs)."""
    folder = tempfile.mkdtemp(dir="/tmp", prefix="escape-")
    path = f"{folder}/agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(4)
    yield path
    server.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def segment() -> Iterator[int]:
    """A System V shared-memory segment holding a secret; its id."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(0, 4096, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
    assert shmid >= 0
    at = libc.shmat(shmid, None, 0)
    ctypes.memmove(at, b"shm secret", 10)
    yield shmid
    libc.shmdt(ctypes.c_void_p(at))
    libc.shmctl(shmid, 0, None)  # IPC_RMID


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    """A TCP listener and a UDP responder on 127.0.0.1, for the network cases."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                data, peer = udp.recvfrom(512)
            except OSError:
                continue
            udp.sendto(b"93.184.216.34 " + data, peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield tcp.getsockname()[1], udp.getsockname()[1]
    stop.set()
    thread.join()
    tcp.close()
    udp.close()


def run_suite(
    tmp_path: Path, ports: tuple[int, int], sandbox: str, shm: int, sock: str
) -> dict[str, str]:
    """Every case, then a file command on the hard link, in one run; observation by case."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the secret")
    attempts = cases(outside, *ports, shm, sock)
    replies = [code(text) for text in attempts.values()]
    swapper = (  # between the jail's check of swap.txt and its open, a symlink may appear
        "import os, time\nopen('swap.txt', 'w').write('plain')\nif os.fork() == 0:\n"
        "    os.setsid()\n    end = time.time() + 5\n    while time.time() < end:\n"
        f"        os.symlink({str(outside / 'secret.txt')!r}, 'tmp.lnk')\n"
        "        os.replace('tmp.lnk', 'swap.txt')\n"
        "        open('tmp.txt', 'w').write('plain')\n        os.replace('tmp.txt', 'swap.txt')\n"
        "    os._exit(0)\nprint('swapping')"
    )
    replies += [
        reply("read_file", filename="hl.txt"),
        reply("append_file", filename="hl.txt", text="ESCAPED append_hard_link"),
        code(swapper),
        # Spelled apart, so that the repeat guard does not end the run.
        *[reply("read_file", filename="./" * i + "swap.txt") for i in range(SWAPS)],
        FINISH,
    ]
    result = CliRunner().invoke(cli, [
        "run", "--goal", "escape", "--model", script(tmp_path, replies), "--continuous",
        "--no-memory", "--rule", "none", "--python-timeout", "5", "--max-steps", "40",
        "--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "runs"),
        "--sandbox", sandbox,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    steps = recorded_steps(run)
    names = [*attempts, "read_hard_link", "append_hard_link", "swapper",
             *[f"swap{i}" for i in range(SWAPS)], "finish"]  # fmt: skip
    assert len(steps) == len(names)
    observations = {
        name: str(step["result"]["output"]) for name, step in zip(names, steps, strict=True)
    }
    reads = [observations.pop(f"swap{i}") for i in range(SWAPS)]
    observations["symlink_swap"] = "\n".join(reads)
    if any("the secret" in read for read in reads):
        observations["symlink_swap"] += "\nESCAPED symlink_swap"
    # With the sandbox, nothing runs between commands: every read sees the same file.
    seen = {
        "plain" if "plain" in read else "outside" if "outside" in read else read for read in reads
    }
    observations["swapping_daemon"] = "ESCAPED swapping_daemon" if len(seen) > 1 else ""
    time.sleep(DAEMON_WAIT + 1)
    observations["daemon"] += (
        "\nESCAPED daemon" if (tmp_path / "ws" / "daemon.txt").exists() else ""
    )
    if "the secret" in observations["read_hard_link"]:
        observations["read_hard_link"] += "\nESCAPED read_hard_link"
    if (outside / "secret.txt").read_text() != "the secret":
        observations["append_hard_link"] += "\nESCAPED append_hard_link"
    return observations


def escaped(observations: dict[str, str]) -> set[str]:
    return {name for name, text in observations.items() if f"ESCAPED {name}" in text}


@pytest.mark.slow
def test_no_escape_with_the_sandbox_on(
    tmp_path: Path, listeners: tuple[int, int], segment: int, unix_listener: str
) -> None:
    observations = run_suite(tmp_path, listeners, "on", segment, unix_listener)
    assert escaped(observations) == set(), observations
    # Each attempt was an observation the model could read, not an error of the run.
    # Refused, or not even there (/tmp is a private tmpfs with only the workspace bound in).
    assert any(why in observations["read_outside"] for why in ("Permission denied", "No such"))
    assert "MemoryError" in observations["memory_8gb"]
    started = int(observations["processes"].split("started ")[1].split()[0])
    assert started < 400


@pytest.mark.slow
def test_the_same_escapes_succeed_with_the_sandbox_off(
    tmp_path: Path, listeners: tuple[int, int], segment: int, unix_listener: str
) -> None:
    observations = run_suite(tmp_path, listeners, "off", segment, unix_listener)
    expected = {"read_home", "read_outside", "read_system_secret", "write_outside",
                "write_proc_self", "connect_loopback", "resolve_name", "daemon",
                "processes", "shared_memory", "unix_socket"}  # fmt: skip
    # Whether reads land inside the swap's window is chance: not asserted either way.
    assert escaped(observations) - {"symlink_swap", "swapping_daemon"} == expected, observations
    # What holds without the sandbox: the memory limit, and the file jail refuses a file
    # with other names (the hard link agent code made to a file outside).
    assert "has other names" in observations["read_hard_link"]


def start_agent(tmp_path: Path, sandbox: str) -> subprocess.Popen[bytes]:
    """A real agent process whose one command leaves a daemon; both write a file after ~1 s."""
    program = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1.0)\n"
        "    open('daemon.txt', 'w').write('alive')\n    os._exit(0)\n"
        "open('started.txt', 'w').write('yes')\ntime.sleep(1.5)\n"
        "open('main.txt', 'w').write('alive')"
    )
    return subprocess.Popen([
        sys.executable, "-m", "offline_agent", "run", "--goal", "g", "--continuous",
        "--model", script(tmp_path, [code(program), FINISH]), "--no-memory", "--rule", "none",
        "--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "runs"),
        "--sandbox", sandbox,
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("sandbox", "daemon_lives"), [("on", False), ("off", True)])
def test_kill_9_of_the_agent_ends_what_its_code_started(
    tmp_path: Path, sandbox: str, daemon_lives: bool
) -> None:
    proc = start_agent(tmp_path, sandbox)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ws" / "started.txt").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2.5)
    assert (tmp_path / "ws" / "daemon.txt").exists() == daemon_lives
    # The command's own process dies with the agent either way (it is told to, by the kernel).
    assert not (tmp_path / "ws" / "main.txt").exists()


def test_the_sandbox_is_recorded_and_resumed(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "run", "--goal", "g", "--model", script(tmp_path, [FINISH]), "--continuous",
        "--no-memory", "--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "r"),
        "--sandbox", "off", "--rule", "none",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "r").iterdir()
    assert json.loads((run / "run.json").read_text())["settings"]["sandbox"] is False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_where_the_sandbox_cannot_be_set_up_code_refuses_and_doctor_fails(tmp_path: Path) -> None:
    """Fail closed: in a user namespace that may create no others (as on a machine with user
    namespaces disabled) a code command is an observation naming --sandbox off, and runs nothing."""
    model = script(tmp_path, [code("open('ran.txt', 'w').write('x')"), FINISH])
    agent = shlex.join([
        sys.executable, "-m", "offline_agent", "run", "--goal", "g", "--model", model,
        "--continuous", "--no-memory", "--rule", "none", "--workspace", str(tmp_path / "ws"),
        "--runs-dir", str(tmp_path / "runs"),
    ])  # fmt: skip
    doctor = shlex.join([sys.executable, "-c", "from offline_agent.doctor import check_sandbox;"
                         "print(check_sandbox()[0].status)"])  # fmt: skip
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         f"echo 0 > /proc/sys/user/max_user_namespaces && {agent} && {doctor}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("fail")
    (run,) = (tmp_path / "runs").iterdir()
    observation = recorded_steps(run)[0]["result"]["output"]
    assert "could not be set up" in observation and "--sandbox off" in observation
    assert not (tmp_path / "ws" / "ran.txt").exists()


def test_a_record_cannot_switch_the_sandbox_off_for_replay(tmp_path: Path) -> None:
    """A run made with --sandbox off replays in the sandbox unless the replay says otherwise:
    the record is data, and anyone who can edit it could write "sandbox": false."""
    (tmp_path / "outside.txt").write_text("outside")
    code_ = f"print(open({str(tmp_path / 'outside.txt')!r}).read())"
    result = CliRunner().invoke(cli, [
        "run", "--goal", "g", "--model", script(tmp_path, [code(code_), FINISH]), "--continuous",
        "--no-memory", "--rule", "none", "--sandbox", "off", "--workspace", str(tmp_path / "ws"),
        "--runs-dir", str(tmp_path / "r"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "r").iterdir()
    confined = CliRunner().invoke(cli, ["runs", "replay", str(run)])
    assert confined.exit_code == 9 and "diverged" in confined.stderr
    unconfined = CliRunner().invoke(cli, ["runs", "replay", str(run), "--sandbox", "off"])
    assert unconfined.exit_code == 0, unconfined.output
