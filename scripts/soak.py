"""Soak test: many scripted-model runs with random faults; no record may be lost.

Each run is a real `offline-agent run` process on a random transcript of file and Python
commands, some of which raise, hang past the time limit, or write files. A random share of
runs is SIGKILLed at a random moment (possibly several times) and resumed with
`offline-agent runs resume` until it finishes. Afterwards every record must verify, keep
every step it had before each kill, and end `finished`; the workspace must hold what the
transcript wrote. Some commands leave a daemon behind (a process in a session of its own);
with the sandbox on (the default) none may still be running once the soak ends, which the
script checks by looking for any process whose working folder is in the soak's folders.

    .venv/bin/python scripts/soak.py --runs 200 --seed 1 [--sandbox off]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offline_agent.errors import StorageError  # noqa: E402
from offline_agent.replay import recorded_steps  # noqa: E402
from offline_agent.runs import read_entries, verify  # noqa: E402

THOUGHTS = {"text": "t", "reasoning": "r", "plan": "p", "criticism": "c"}


def command(name: str, **args: Any) -> dict[str, Any]:
    """A reply calling `name`."""
    return {"thoughts": THOUGHTS, "command": {"name": name, "args": args}}


def transcript(
    rng: random.Random, steps: int
) -> tuple[list[dict[str, Any]], dict[int, tuple[str, str]]]:
    """Random replies, and the file each writing step leaves, by step number."""
    replies, files = [], {}
    for i in range(steps):
        kind = rng.choice(["write", "python_write", "raise", "hang", "read", "list", "daemon"])
        name = f"f{i}.txt"
        if kind == "write":
            replies.append(command("write_file", filename=name, text=f"w{i}"))
            files[i + 1] = (name, f"w{i}")
        elif kind == "python_write":
            pause = rng.uniform(0, 0.3)
            code = f"import time; time.sleep({pause:.2f}); open({name!r}, 'w').write('p{i}')"
            replies.append(command("execute_python_code", code=code))
            files[i + 1] = (name, f"p{i}")
        elif kind == "raise":
            replies.append(command("execute_python_code", code="raise ValueError('injected')"))
        elif kind == "daemon":
            code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(120)\n"
                    "    os._exit(0)")  # fmt: skip
            replies.append(command("execute_python_code", code=code))
        elif kind == "hang":
            replies.append(command("execute_python_code", code="import time; time.sleep(60)"))
        elif kind == "read":
            replies.append(command("read_file", filename="nothing-here.txt"))
        else:
            replies.append(command("list_files", directory="."))
    replies.append(command("finish", reason="done"))
    return replies, files


def agent(*args: str) -> list[str]:
    """The command line of our CLI."""
    return [sys.executable, "-m", "offline_agent", *args]


def processes_in(folder: Path) -> list[int]:
    """Pids of the processes (ours to see) whose working folder is inside `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == str(folder) or cwd.startswith(f"{folder}/"):
                found.append(int(entry.name))
    return found


def soak_one(rng: random.Random, folder: Path, kill_share: float, sandbox: str) -> dict[str, Any]:
    """One run with its faults; returns what happened."""
    replies, files = transcript(rng, rng.randint(2, 6))
    script = folder / "replies.jsonl"
    script.write_text("\n".join(json.dumps(r) for r in replies))
    runs_dir, ws = folder / "runs", folder / "ws"
    argv = agent(
        "run", "--goal", "soak", "--model", f"scripted:{script}", "--continuous", "--no-memory",
        "--workspace", str(ws), "--runs-dir", str(runs_dir), "--python-timeout", "0.5",
        "--sandbox", sandbox, "--rule", "none",  # the replies are in Auto-GPT's format
    )  # fmt: skip
    kills, kept_before_kill, lost, finished = 0, [], 0, False
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _attempt in range(10):
        if rng.random() < kill_share and kills < 3:
            time.sleep(rng.uniform(0.05, 1.5))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        proc.wait()
        run_folders = list(runs_dir.glob("*"))
        if not run_folders:  # killed before the run folder existed: start over
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            continue
        (run,) = run_folders
        entries = read_entries(run)
        if (
            entries
            and entries[-1]["type"] == "end"
            and entries[-1]["result"]["status"] == "finished"
        ):
            finished = True
            break
        kept_before_kill.append(recorded_steps(run))
        resume = agent("runs", "resume", run.name, "--runs-dir", str(runs_dir))
        proc = subprocess.Popen(resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        verify(run)
    except StorageError:
        lost += 1
    steps = recorded_steps(run)
    lost += sum(1 for before in kept_before_kill if steps[: len(before)] != before)
    # A command killed mid-run is not run again on resume (it may have taken effect), so
    # only steps the record shows as completed must have left their file.
    done = {step["index"] for step in steps if step["status"] == "ok"}
    wrong_files = [
        name
        for index, (name, text) in files.items()
        if index in done and (not (ws / name).exists() or (ws / name).read_text() != text)
    ]
    return {"finished": finished, "kills": kills, "resumes": len(kept_before_kill),
            "lost": lost, "wrong_files": wrong_files, "steps": len(steps)}  # fmt: skip


def main() -> None:
    """Run the soak and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-share", type=float, default=0.5)
    parser.add_argument("--sandbox", choices=["on", "off"], default="on")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    start = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        for i in range(args.runs):
            folder = Path(tmp) / f"run{i}"
            folder.mkdir()
            results.append(soak_one(rng, folder, args.kill_share, args.sandbox))
            if (i + 1) % 20 == 0:
                print(f"{i + 1}/{args.runs} runs, {time.monotonic() - start:.0f} s", flush=True)
        time.sleep(1.0)  # the kernel ends a sandbox's processes as its command ends
        left = processes_in(Path(tmp))
        for pid in left:  # leave the machine clean whatever the result
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    summary = {
        "runs": len(results),
        "completed": sum(1 for r in results if r["finished"]),
        "killed": sum(1 for r in results if r["kills"]),
        "kills": sum(r["kills"] for r in results),
        "resumed": sum(1 for r in results if r["resumes"]),
        "resumes": sum(r["resumes"] for r in results),
        "records_lost": sum(r["lost"] for r in results),
        "wrong_files": sum(len(r["wrong_files"]) for r in results),
        "processes_left": len(left),
        "sandbox": args.sandbox,
        "seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps(summary, indent=2))
    failed = (summary["records_lost"] or summary["wrong_files"] or summary["processes_left"]
              or summary["completed"] < args.runs)  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
