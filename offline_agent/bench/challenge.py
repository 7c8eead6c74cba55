"""Challenges in agbenchmark's format: a folder with data.json and its artifact folders.

A challenge folder holds `data.json` (the task and how to judge it), `artifacts_in/` (copied
into the workspace before the run), `artifacts_out/` (the files a correct run leaves) and
`custom_python/` (copied into the workspace after the run, before judging). Folders written
for Auto-GPT's agbenchmark load unchanged; keys we do not use, such as `eval_id`, are ignored.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast, get_args

from offline_agent.errors import ChallengeError

BUILTIN = Path(__file__).resolve().parent / "builtin"
"""The folder of the built-in suite, one challenge per subfolder."""

EvalType = Literal["file", "python", "pytest", "llm"]
Scoring = Literal["percentage", "scale", "binary"]
Template = Literal["rubric", "reference", "question", "custom"]

DEFAULT_CUTOFF = 60
"""agbenchmark's time limit in seconds when data.json gives none (or 0)."""

_ARTIFACT_FOLDERS = frozenset({"artifacts_in", "artifacts_out", "custom_python"})


@dataclass(frozen=True)
class Eval:
    """How the outputs are produced: file text, a script's output, pytest, or a judge model."""

    type: EvalType
    scoring: Scoring | None = None
    template: Template | None = None
    examples: str | None = None


@dataclass(frozen=True)
class Ground:
    """What a correct run leaves behind, and the words its outputs must (not) contain."""

    answer: str
    should_contain: tuple[str, ...]
    should_not_contain: tuple[str, ...]
    files: tuple[str, ...]
    """File names relative to the workspace, or ".ext": every top-level file ending so."""
    eval: Eval
    case_sensitive: bool = True


@dataclass(frozen=True)
class Challenge:
    """One task for the agent and how its workspace is judged afterwards."""

    name: str
    task: str
    category: tuple[str, ...]
    cutoff: int
    ground: Ground
    folder: Path
    difficulty: str = ""
    description: str = ""
    dependencies: tuple[str, ...] = ()

    @property
    def artifacts_in(self) -> Path:
        """Files copied into the workspace before the run (the folder may not exist)."""
        return self.folder / "artifacts_in"

    @property
    def artifacts_out(self) -> Path:
        """The reference solution: the files as a correct run leaves them."""
        return self.folder / "artifacts_out"

    @property
    def custom_python(self) -> Path:
        """Files copied into the workspace after the run, before judging (hidden tests)."""
        return self.folder / "custom_python"


class _Fields:
    """Typed access to one JSON object of a data.json, each failure naming the file."""

    def __init__(self, data: object, where: str, path: Path) -> None:
        if not isinstance(data, dict):
            shown = where.rstrip(".") or "the top level"
            raise ChallengeError(f"{path}: {shown} must be a JSON object")
        self.data: Mapping[str, Any] = data
        self.where = where
        self.path = path

    def fail(self, key: str, wanted: str) -> ChallengeError:
        """The error for a key holding something other than `wanted`."""
        return ChallengeError(f"{self.path}: {self.where}{key} must be {wanted}")

    def text(self, key: str, default: str | None = None) -> str:
        """A string value; required unless a default is given (null means the default)."""
        value = self.data.get(key)
        if value is None and default is not None:
            return default
        if not isinstance(value, str):
            raise self.fail(key, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        """A string value or None."""
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, "a string")
        return value

    def texts(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        """A list of strings; missing or null is empty unless required."""
        value = self.data.get(key)
        if value is None and not required:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a list of strings")
        return tuple(value)

    def flag(self, key: str, default: bool) -> bool:
        """A boolean value; missing or null is the default."""
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str | None:
        """One of `allowed`, or None when missing."""
        value = self.data.get(key)
        if value is not None and value not in allowed:
            raise self.fail(key, "one of " + ", ".join(repr(a) for a in allowed))
        return cast(str | None, value)

    def child(self, key: str, *, required: bool) -> _Fields:
        """The nested object at `key` (an empty one when missing and not required)."""
        value = self.data.get(key)
        if value is None and not required:
            value = {}
        return _Fields(value, f"{self.where}{key}.", self.path)


def _file_pattern(pattern: str, fields: _Fields) -> str:
    """`pattern` if it names a place inside the workspace."""
    relative = PurePosixPath(pattern)
    if not pattern.strip() or relative.is_absolute() or ".." in relative.parts:
        raise fields.fail("files", f"relative paths inside the workspace, not {pattern!r}")
    return pattern


def _eval(fields: _Fields) -> Eval:
    """The `ground.eval` object, checked as agbenchmark checks it."""
    kind = fields.choice("type", get_args(EvalType))
    if kind is None:
        raise fields.fail("type", "one of " + ", ".join(repr(a) for a in get_args(EvalType)))
    scoring = fields.choice("scoring", get_args(Scoring))
    template = fields.choice("template", get_args(Template))
    if kind == "llm" and (scoring is None or template is None):
        raise fields.fail("scoring", "given, with template, when type is 'llm'")
    if kind != "llm" and (scoring is not None or template is not None):
        raise fields.fail("scoring", "left out, with template, unless type is 'llm'")
    return Eval(
        type=cast(EvalType, kind),
        scoring=cast(Scoring | None, scoring),
        template=cast(Template | None, template),
        examples=fields.optional_text("examples"),
    )


def _ground(fields: _Fields) -> Ground:
    """The `ground` object."""
    return Ground(
        answer=fields.text("answer", default=""),
        should_contain=fields.texts("should_contain"),
        should_not_contain=fields.texts("should_not_contain"),
        files=tuple(_file_pattern(p, fields) for p in fields.texts("files", required=True)),
        eval=_eval(fields.child("eval", required=True)),
        case_sensitive=fields.flag("case_sensitive", default=True),
    )


def load_challenge(folder: Path) -> Challenge:
    """The challenge in `folder`, read from its data.json; ChallengeError naming the file."""
    path = folder / "data.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChallengeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ChallengeError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ChallengeError(f"{path}: not valid JSON ({exc})") from None
    top = _Fields(data, "", path)
    name = top.text("name")
    if not name.strip():
        raise top.fail("name", "a non-empty string")
    cutoff = top.data.get("cutoff")
    if cutoff is None:
        cutoff = DEFAULT_CUTOFF
    if isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 0:
        raise top.fail("cutoff", "a whole number of seconds")
    info = top.child("info", required=False)
    return Challenge(
        name=name,
        task=top.text("task"),
        category=top.texts("category"),
        cutoff=cutoff or DEFAULT_CUTOFF,
        ground=_ground(top.child("ground", required=True)),
        folder=folder,
        difficulty=info.text("difficulty", default=""),
        description=info.text("description", default=""),
        dependencies=top.texts("dependencies"),
    )


def _challenge_folders(root: Path) -> list[Path]:
    """Every folder under `root` holding a data.json, not counting the artifact folders."""
    found = []
    for spec in root.rglob("data.json"):
        inside = spec.relative_to(root).parts[:-1]
        if spec.is_file() and not _ARTIFACT_FOLDERS.intersection(inside):
            found.append(spec.parent)
    return sorted(found)


def load_suite(source: str | Path) -> list[Challenge]:
    """The challenges of "builtin" or of a folder searched recursively, sorted by folder."""
    root = BUILTIN if source == "builtin" else Path(source)
    if not root.is_dir():
        raise ChallengeError(f"{root}: not a folder of challenges")
    challenges = [load_challenge(folder) for folder in _challenge_folders(root)]
    if not challenges:
        raise ChallengeError(f"{root}: no challenge found (no data.json)")
    seen: dict[str, Path] = {}
    for challenge in challenges:
        if challenge.name in seen:
            first = seen[challenge.name]
            raise ChallengeError(
                f"{challenge.folder / 'data.json'}: the name {challenge.name!r} is also used by"
                f" {first / 'data.json'}"
            )
        seen[challenge.name] = challenge.folder
    return challenges


def copy_tree(source: Path, target: Path) -> None:
    """Copy the files of `source` into `target`, merging folders; caches are left out."""
    shutil.copytree(
        source,
        target,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"),
    )


def prepare_workspace(challenge: Challenge, workspace: Path) -> None:
    """Make `workspace` (if needed) and copy the challenge's artifacts_in into it."""
    workspace.mkdir(parents=True, exist_ok=True)
    if challenge.artifacts_in.is_dir():
        copy_tree(challenge.artifacts_in, workspace)


def destroyed_inputs(challenge: Challenge, workspace: Path) -> list[str]:
    """The input files (`artifacts_in`) a run deleted, or changed although the reference
    solution (`artifacts_out`) leaves them as they were. A file the reference changes is the
    run's to change (the file of a fix-the-bug task)."""
    source = challenge.artifacts_in
    if not source.is_dir():
        return []
    destroyed = []
    for original in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = original.relative_to(source)
        now = workspace / relative
        if not now.is_file():
            destroyed.append(relative.as_posix())
            continue
        reference = challenge.artifacts_out / relative
        if reference.is_file() and reference.read_bytes() != original.read_bytes():
            continue
        if now.read_bytes() != original.read_bytes():
            destroyed.append(relative.as_posix())
    return destroyed
