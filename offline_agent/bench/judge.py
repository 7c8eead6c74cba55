"""Judging a workspace after a run, by agbenchmark's rules.

The rules follow Significant-Gravitas/AutoGPT, benchmark/agbenchmark/challenges/builtin.py
(`get_outputs_for_eval`, `score_result`, `evaluate_workspace_content`): each pattern in
`ground.files` gives outputs (a file's text, or what running it printed), each output is
scored against the words of the ground truth, and the challenge passes when any output does.
"""

from __future__ import annotations

import glob
import json
import math
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jinja2 import Environment, StrictUndefined

from offline_agent.bench.challenge import Challenge, Ground
from offline_agent.errors import AgentError
from offline_agent.llm.base import ChatModel
from offline_agent.sandbox import ProcessResult, run_process
from offline_agent.workspace import Workspace

PASS_ABOVE = 0.9
"""An output passes when its score is above this (agbenchmark: `passed=score > 0.9`)."""

OUTPUT_LIMIT = 100_000
"""The most characters of a file or of a program's stdout or stderr that are judged."""

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "number"}},
    "required": ["score"],
}
"""What the judge model must answer with in an `llm` eval."""

_JUDGE_MAX_TOKENS = 32
_SCALE = {"percentage": 100.0, "scale": 10.0, "binary": 1.0}

# Runs argv[2:] with stderr sent to the file argv[1], so that it can be told apart from
# stdout (agbenchmark looks for "error" in stderr alone); `run_process` merges the two.
_STDERR_TO_FILE = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
    "os.dup2(fd, 2)\n"
    "os.close(fd)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


@dataclass(frozen=True)
class Output:
    """One thing judged: where it came from, its text, and its score from 0 to 1."""

    source: str
    content: str
    score: float


@dataclass(frozen=True)
class Verdict:
    """Whether the challenge passed, its best score, every output judged, and why."""

    passed: bool
    score: float
    outputs: tuple[Output, ...]
    reason: str


@dataclass(frozen=True)
class _Judged:
    """An output and, when it failed, a short reason."""

    output: Output
    failure: str = ""


def _fold(text: str, ground: Ground) -> str:
    return text if ground.case_sensitive else text.lower()


def _score_words(source: str, content: str, ground: Ground) -> _Judged:
    """Score `content`: every should_contain word in it, no should_not_contain word."""
    # The current agbenchmark returns after the first word of a list (a `return 1.0` sits
    # inside the loop); its earlier versions checked every word, as the docs describe.
    text = _fold(content, ground)
    for word in ground.should_contain:
        if _fold(word, ground) not in text:
            return _Judged(Output(source, content, 0.0), f"{source} lacks {word!r}")
    for word in ground.should_not_contain:
        if _fold(word, ground) in text:
            return _Judged(Output(source, content, 0.0), f"{source} contains {word!r}")
    return _Judged(Output(source, content, 1.0))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:120] if lines else ""


def _run(argv: list[str], workspace: Path, timeout: float) -> tuple[ProcessResult, str]:
    """Run `argv` in the workspace; its result (stdout only) and its stderr."""
    with tempfile.TemporaryDirectory(prefix="offline-agent-judge-") as scratch:
        stderr_file = Path(scratch) / "stderr"
        result = run_process(
            [sys.executable, "-c", _STDERR_TO_FILE, str(stderr_file), *argv],
            cwd=workspace,
            timeout=timeout,
            output_limit=OUTPUT_LIMIT,
        )
        try:
            with stderr_file.open(encoding="utf-8", errors="replace") as file:
                stderr = file.read(OUTPUT_LIMIT)
        except FileNotFoundError:
            stderr = ""
    return result, stderr


def _program_output(
    source: str, argv: list[str], workspace: Path, ground: Ground, timeout: float
) -> _Judged:
    """Run a program and judge what it printed, as agbenchmark's python and pytest evals do."""
    result, stderr = _run(argv, workspace, timeout)
    if result.timed_out:
        content = f"Error: timed out after {timeout:g} s\n{stderr}"
        return _Judged(Output(source, content, 0.0), f"{source} timed out after {timeout:g} s")
    if "error" in stderr or result.exit_code != 0:
        # pytest reports failures on stdout; agbenchmark shows that when stderr is empty.
        shown = stderr.strip() or result.output if source == "pytest" else stderr
        detail = _last_line(shown) or f"exit code {result.exit_code}"
        # agbenchmark also scores an "Error:" output by its words, so a traceback quoting the
        # expected word could pass there; its earlier versions failed the test outright.
        return _Judged(Output(source, f"Error: {shown}\n", 0.0), f"{source} failed: {detail}")
    return _score_words(source, f"Output: {result.output}\n", ground)


@dataclass(frozen=True)
class _File:
    """A file a `files` pattern names: its real path and text, or why it cannot be judged."""

    name: str
    path: Path | None = None
    text: str = ""
    problem: str = ""

    def failed(self) -> _Judged:
        """The failed output of a file that cannot be judged."""
        return _Judged(Output(self.name, f"Error: {self.problem}\n", 0.0), self.problem)


def _file(name: str, jail: Workspace, *, read: bool) -> _File:
    """The file `name` in the workspace, with its text when `read`."""
    try:
        if not jail.resolve(name).exists():
            return _File(name, problem=f"{name} does not exist")
        path = jail.existing_file(name)
        if not read:
            return _File(name, path)
        with path.open(encoding="utf-8", errors="replace") as handle:
            return _File(name, path, handle.read(OUTPUT_LIMIT))
    except AgentError as exc:
        return _File(name, problem=str(exc))
    except OSError as exc:
        return _File(name, problem=f"{name} cannot be read: {exc.strerror or exc}")


def _files(ground: Ground, workspace: Path) -> Iterator[_File]:
    """The files every `files` pattern names; ".ext" is every top-level "*.ext" file."""
    jail = Workspace(workspace)
    read = ground.eval.type in ("file", "llm")
    for pattern in ground.files:
        if not pattern.startswith("."):
            yield _file(pattern, jail, read=read)
            continue
        # glob.glob, as agbenchmark uses, so hidden files are left out as they are there.
        names = [
            n for n in glob.glob("*" + pattern, root_dir=workspace) if (workspace / n).is_file()
        ]
        if not names:
            yield _File(pattern, problem=f"no file matches {pattern!r}")
        for name in sorted(names):
            yield _file(name, jail, read=read)


def _judge_prompt(challenge: Challenge, response: str) -> str:
    """agbenchmark's prompt for an `llm` eval, from bench/templates/llm_judge.j2."""
    env = Environment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    source = resources.files(__package__).joinpath("templates", "llm_judge.j2")
    ground = challenge.ground
    template = env.from_string(source.read_text("utf-8"))
    return template.render(
        template=ground.eval.template,
        scoring=ground.eval.scoring,
        task=challenge.task,
        answer=ground.answer,
        response=response,
        examples=ground.eval.examples or "",
    ).strip()


def _parse_score(text: str) -> float | None:
    """The number in a judge's reply: {"score": n} as asked, or a bare number."""
    try:
        reply = json.loads(text)
    except json.JSONDecodeError:
        reply = text.strip()
    if isinstance(reply, dict):
        reply = reply.get("score")
    if isinstance(reply, bool):
        return None
    try:
        score = float(reply)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def _llm_output(challenge: Challenge, found: list[_File], llm: ChatModel) -> _Judged:
    """The judge model's score of the files' text, joined, as agbenchmark's llm eval does."""
    sources = ", ".join(f.name for f in found)
    combined = "\n".join(f.text for f in found)
    # One user message where agbenchmark sends a system one: some chat formats have no
    # system role, and small models answer poorly with no user turn.
    completion = llm.complete(
        [{"role": "user", "content": _judge_prompt(challenge, combined)}],
        schema=JUDGE_SCHEMA,
        max_tokens=_JUDGE_MAX_TOKENS,
    )
    raw = _parse_score(completion.text)
    if raw is None:
        reply = completion.text.strip()[:60]
        return _Judged(Output("llm", combined, 0.0), f"the judge's reply is no score: {reply!r}")
    scale = _SCALE[challenge.ground.eval.scoring or "binary"]
    score = min(max(raw / scale, 0.0), 1.0)
    output = Output(f"llm: {sources}", combined, score)
    if score > PASS_ABOVE:
        return _Judged(output)
    return _Judged(output, f"the judge model scored {sources} {raw:g} of {scale:g}")


def _copy_custom_python(challenge: Challenge, workspace: Path) -> None:
    """Copy custom_python into the workspace, never through a link the agent left pointing out."""
    source = challenge.custom_python
    if not source.is_dir():
        return
    jail = Workspace(workspace)
    for file in sorted(source.rglob("*")):
        if not file.is_file() or "__pycache__" in file.parts:
            continue
        jail.write_text(file.relative_to(source).as_posix(), file.read_text(encoding="utf-8"))


def _evaluate(
    challenge: Challenge, workspace: Path, llm: ChatModel | None, timeout: float
) -> list[_Judged]:
    """Every judged output, in agbenchmark's order."""
    ground = challenge.ground
    files = list(_files(ground, workspace))
    failed = [file.failed() for file in files if file.problem]
    found = [file for file in files if not file.problem]
    match ground.eval.type:
        case "file":
            return [*failed, *(_score_words(f.name, f.text, ground) for f in found)]
        case "python":
            runs = [
                _program_output(f.name, [str(f.path)], workspace, ground, timeout) for f in found
            ]
            return [*failed, *runs]
        case "pytest":
            # The files only have to exist; what pytest prints is judged.
            argv = ["-m", "pytest", "-p", "no:cacheprovider"]
            return [*failed, _program_output("pytest", argv, workspace, ground, timeout)]
        case "llm":
            assert llm is not None
            judged = failed
            # agbenchmark scores each file by its words only when the ground lists words.
            if ground.should_contain or ground.should_not_contain:
                judged += [_score_words(f.name, f.text, ground) for f in found]
            if found:
                judged.append(_llm_output(challenge, found, llm))
            return judged


def judge(
    challenge: Challenge, workspace: Path, *, llm: ChatModel | None = None, timeout: float = 60.0
) -> Verdict:
    """Copy custom_python into `workspace`, then judge it; `timeout` bounds each program run."""
    try:
        _copy_custom_python(challenge, workspace)
    except (AgentError, OSError, UnicodeDecodeError) as exc:
        return Verdict(False, 0.0, (), f"cannot copy custom_python into the workspace: {exc}")
    if challenge.ground.eval.type == "llm" and llm is None:
        return Verdict(False, 0.0, (), "an llm eval needs a judge model; none was given")
    judged = _evaluate(challenge, workspace, llm, timeout)
    outputs = tuple(j.output for j in judged)
    best = max((o.score for o in outputs), default=0.0)
    winner = next((o for o in outputs if o.score > PASS_ABOVE), None)
    if winner is not None:
        return Verdict(True, best, outputs, f"passed: {winner.source}")
    failures = [j.failure for j in judged if j.failure]
    reason = failures[0] if failures else "nothing to judge: ground.files is empty"
    return Verdict(False, best, outputs, reason)
