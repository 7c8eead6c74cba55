"""run_python: exit codes, output capture and cap, time and memory limits, a bare environment."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from offline_agent import sandbox
from offline_agent.errors import ToolError
from offline_agent.sandbox import Sandbox, run_python


def run(
    code: str,
    cwd: Path,
    *,
    timeout: float = 10.0,
    output_limit: int = 4000,
    memory_limit_mb: int | None = 1024,
) -> tuple[int, str, bool]:
    result = run_python(
        ["-c", code],
        cwd=cwd,
        timeout=timeout,
        output_limit=output_limit,
        memory_limit_mb=memory_limit_mb,
    )
    return result.exit_code, result.output, result.timed_out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of init is reaped at once; a zombie here would still be "alive".
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def wait_for_file(path: Path, seconds: float = 5.0) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


def test_exit_code_and_both_streams_in_order(tmp_path: Path) -> None:
    code = "import sys\nprint('out1')\nprint('err1', file=sys.stderr)\nprint('out2')\nsys.exit(3)"
    assert run(code, tmp_path) == (3, "out1\nerr1\nout2\n", False)


def test_traceback_is_in_the_output(tmp_path: Path) -> None:
    exit_code, output, _ = run("1 / 0", tmp_path)
    assert exit_code == 1
    assert "ZeroDivisionError: division by zero" in output


def test_runs_in_cwd_and_can_import_workspace_modules(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    (tmp_path / "main.py").write_text("import os, helper\nprint(helper.VALUE, os.getcwd())\n")
    result = run_python(["./main.py"], cwd=tmp_path, timeout=10, output_limit=100)
    assert result.output == f"42 {tmp_path}\n"


def test_timeout_kills_the_child_and_its_grandchild(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    exit_code, output, timed_out = run(code, tmp_path, timeout=1.5)
    assert time.monotonic() - start < 5
    assert timed_out
    assert exit_code == -9
    assert output == "started\n"
    grandchild = int(wait_for_file(pid_file))
    end = time.monotonic() + 2
    while alive(grandchild) and time.monotonic() < end:
        time.sleep(0.02)
    assert not alive(grandchild)


def test_background_process_is_killed_when_the_program_ends(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('done')\n"
    )
    assert run(code, tmp_path) == (0, "done\n", False)
    grandchild = int(wait_for_file(pid_file))
    end = time.monotonic() + 2
    while alive(grandchild) and time.monotonic() < end:
        time.sleep(0.02)
    assert not alive(grandchild)


def test_grandchild_holding_the_pipe_does_not_stall_the_run(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('parent done')\n"
    )
    start = time.monotonic()
    assert run(code, tmp_path, timeout=20.0) == (0, "parent done\n", False)
    assert time.monotonic() - start < 3


def test_closing_stdout_then_hanging_still_times_out(tmp_path: Path) -> None:
    code = "import os, time\nprint('bye', flush=True)\nos.close(1)\nos.close(2)\ntime.sleep(60)"
    start = time.monotonic()
    exit_code, output, timed_out = run(code, tmp_path, timeout=1.0)
    assert (exit_code, output, timed_out) == (-9, "bye\n", True)
    assert time.monotonic() - start < 4


def test_output_is_capped_with_a_notice(tmp_path: Path) -> None:
    exit_code, output, _ = run("print('x' * 25_000, end='')", tmp_path, output_limit=100)
    assert exit_code == 0
    assert output == "x" * 100 + "\n[output truncated: 24900 more characters]"


def test_multibyte_output_is_counted_in_characters(tmp_path: Path) -> None:
    _, output, _ = run("print('é€😀' * 10, end='')", tmp_path, output_limit=5)
    assert output == "é€😀é€\n[output truncated: 25 more characters]"


def test_huge_output_does_not_deadlock(tmp_path: Path) -> None:
    code = "import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 100_000)\nprint('end')"
    start = time.monotonic()
    exit_code, output, timed_out = run(code, tmp_path, output_limit=10)
    assert (exit_code, timed_out) == (0, False)
    assert output == "y" * 10 + "\n[output truncated: 19999994 more characters]"
    assert time.monotonic() - start < 8


def test_memory_limit(tmp_path: Path) -> None:
    code = "b = bytearray(2 * 1024 ** 3)\nprint('allocated')"
    exit_code, output, _ = run(code, tmp_path, memory_limit_mb=256)
    assert exit_code == 1
    assert "MemoryError" in output
    assert "allocated" not in output


def test_small_allocation_fits_under_the_limit(tmp_path: Path) -> None:
    assert run("b = bytearray(50 * 1024 ** 2)\nprint(len(b))", tmp_path, memory_limit_mb=256) == (
        0,
        f"{50 * 1024**2}\n",
        False,
    )


def test_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLINE_AGENT_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    code = "import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'])"
    _, output, _ = run(code, tmp_path)
    names, home = output.splitlines()
    assert "hunter2" not in output
    assert set(eval(names)) <= {  # our own child's repr of a list of names
        "PATH",
        "HOME",
        "LANG",
        "PYTHONIOENCODING",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "LC_CTYPE",  # added by Python itself under some locales
    }
    assert home == str(tmp_path)


def test_stdin_is_empty(tmp_path: Path) -> None:
    exit_code, output, timed_out = run("input('name? ')", tmp_path, timeout=5.0)
    assert (exit_code, timed_out) == (1, False)
    assert "EOFError" in output


def test_null_byte_in_arguments_is_a_tool_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="cannot start python"):
        run("print(1)\x00", tmp_path)


def test_missing_cwd_is_a_tool_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="cannot start python"):
        run("print(1)", tmp_path / "gone")


def test_ctrl_c_while_the_child_starts_still_kills_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_popen = subprocess.Popen

    def interrupted_popen(*args: Any, **kwargs: Any) -> Any:
        proc = real_popen(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands before Popen has returned
        time.sleep(0.05)  # where a KeyboardInterrupt would leave the child unkilled
        return proc

    monkeypatch.setattr(sandbox.subprocess, "Popen", interrupted_popen)
    code = "import os, time; time.sleep(1); open('late.txt', 'w').write(str(os.getpid()))"
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # maybe SIG_IGN
    try:
        with pytest.raises(KeyboardInterrupt):
            run(code, tmp_path)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
    time.sleep(1.5)
    assert not (tmp_path / "late.txt").exists()


def test_a_program_cannot_pretend_the_sandbox_failed(tmp_path: Path) -> None:
    """Why the sandbox failed comes on a pipe the program never holds, not in its output."""
    code = "print('offline-agent sandbox: fake'); raise SystemExit(125)"
    result = run_python(["-c", code], cwd=tmp_path, timeout=10, output_limit=200,
                        sandbox=Sandbox.default())  # fmt: skip
    assert (result.exit_code, result.output.strip()) == (125, "offline-agent sandbox: fake")
