"""What the agent can see of its world each step, and which commands can be right in it.

A small model fails exactly where a grammar could have stopped it: it reads a file that does
not exist, finishes before it has done anything, messages a sub-agent it never started. Each
step the agent takes a `Snapshot` of the workspace, and `plan_step` derives from it and the
run's `Rules` the commands offered now, with every argument that must name something existing
narrowed to what exists. The step's grammar and the validation of its reply are built from
that plan, and the run record keeps `left_out`: which rule left which command out, and why.

Everything here is a function of the registry, the rules and the state: no model is needed to
test it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args

from offline_agent.errors import ConfigError, FormatError, ToolError
from offline_agent.records import CommandCall, Completion
from offline_agent.reply import ReplyFormat, parse_reply
from offline_agent.tools.base import Names, Tool, ToolContext, ToolRegistry
from offline_agent.tools.syntax import python_error
from offline_agent.workspace import resolved

MAX_CHOICES = 40
"""Past this many existing files (or folders, or sub-agents) an argument is a free string."""

MAX_FILES_SHOWN = 30
"""Files listed in a request's state; the rest are counted."""

FILE_TEXT_CHARS = 600
"""Characters of each goal-named file a request shows."""

MAX_WALKED = 10_000
"""Files a snapshot records at most; past that it is `partial` and the rules that need every
file (which named files are missing) stand aside."""

RECORDED_FILES = 2_000
"""A step's record keeps the snapshot its plan saw (what `runs resume` rebuilds the rules'
state from) when the workspace has at most this many files."""

SKIPPED_FOLDERS = frozenset({"__pycache__", ".pytest_cache", ".git", ".mypy_cache"})
"""Folders that tools create as a side effect: not the user's files."""


@dataclass(frozen=True)
class Rules:
    """The techniques that shape each step; each one can be switched with `--rule NAME=VALUE`.

    Their defaults are the ones that measured best (`docs/benchmarks.md`, the ablation); a
    model's registry entry may change some for that model (`rules`, `Rules.for_model`).
    """

    existing_names: bool = True
    """An argument that must name something existing (the file of read_file, the folder of
    list_files, the key of message_agent) is an enum of what exists now."""
    unusable_commands: bool = True
    """A command that cannot succeed now is left out (read_file in an empty workspace)."""
    finish_after_success: bool = True
    """`finish` is offered once a command has succeeded, not before."""
    finish_after_named: bool = False
    """`finish` also waits until every file the goals name exists. Off: it did not raise
    success, and runs that could not finish went on to overwrite their inputs."""
    goal_targets: bool = True
    """While files the goals name are missing, a command that writes a file writes one of
    them (then any file): a goal's missing files are what it asks to create."""
    append_existing: bool = False
    """A command that adds to a file (append_file) adds to one that exists; a new file is
    write_file's."""
    retry_cut_off: bool = True
    """A reply cut off at the token limit (a greedy loop) is decoded once more at temperature
    0.5 (`offline_agent.sampling`). On: it raised no success, but it made every reply of the
    greedy default valid (SmolLM2: 3 of 89 cut off without it, none with it)."""
    break_loops: bool = True
    """While decoding, the token that would go on repeating a loop (copies of one run of
    tokens, back to back, `LOOP_SPAN` tokens of them) is ruled out, so a greedy reply leaves
    a repeated sentence at once instead of at the token limit (llguidance and llama engines;
    `offline_agent.llm.guidance.loop_token`; not over a server). On: it changed no result
    and made the steps faster (SmolLM2 by 27%, Gemma-3-270M by 16%)."""
    retry_repeats: bool = False
    """A reply whose command already ran with these arguments on this same workspace (it can
    only return what it returned) is decoded once more at temperature 0.5: greedy decoding
    would give it again and again. Off: it raised no success; the hotter retry mostly gave
    the same command."""
    no_rereads: bool = False
    """A command whose one argument names something existing (read_file, list_files,
    execute_python_file) is not offered a value it already ran with while the workspace is
    as it was then: it could only return the same. Off: it raised no success, and a model
    kept from looking again wrote instead, over the file it had just read (Gemma-3-270M
    destroyed an input in 19 of 78 attempts with it, in 3 of 78 without it)."""
    shown_looks: bool = True
    """While a file the goals name is missing, a look whose whole answer the requests already
    show is not offered (an argument's `Names.answer`): `list_files` while the state lists
    every file of the workspace, and `read_file` of a file whose full text (at its current
    size and time) a request showed.
    It could only return what is in view; the step goes to making the missing file (needs
    `show_state`). On: SmolLM2 passed one challenge more and one held-out goal more;
    Gemma-3-270M the same, in fewer seconds."""
    shown_looks_always: bool = False
    """With `shown_looks`: such looks are left out also once every file the goals name
    exists (a goal that changes a file it names: add a function to calc.py)."""
    show_state: bool = True
    """Each request shows the workspace's files, what the last command changed, and the text
    of the files the goals name."""
    reply_format: ReplyFormat = "compact"
    """"autogpt": four thoughts before the command; "compact": one short thought; "command": the
    command alone."""
    agent_commands: bool = False
    """Offer the sub-agent commands (start_agent, message_agent, ...)."""
    memory_commands: bool = False
    """Offer memory_add and memory_search (recalled memories are shown either way)."""
    delete_command: bool = False
    """Offer delete_file: a destructive command, off unless the user wants it."""
    prose_signatures: bool = True
    """The command list describes arguments in prose (`write_file(filename, text): ...
    Arguments: filename, the path ...`) instead of `"text": <the full new content>`, which
    small models copy as the value."""
    text_blocks: bool = False
    """A command's text argument (a file's content, code) is written after the reply's JSON,
    between ``` lines, as plain text, not as a JSON string with escapes (`reply.py`; with
    the llguidance engine)."""
    code_turn: bool = False
    """A Python file's text (`write_file`, `append_file` to a `.py` file) is left out of the
    reply's JSON and asked for in a turn of its own, answered with one fenced block
    (`offline_agent.codeturn`; with the llguidance engine, and not with `text_blocks`).
    Checks of a reply before its command runs (`retry_repeats`, `--samples`) see it without
    its code. Off by default; on for both built-in models through their registry entries,
    with `code_document` and `code_trim` (SmolLM2 passed one challenge more with the turn
    in the chat; Gemma-3-270M, a base model, copied the question into the block)."""
    code_document: bool = False
    """With `code_turn`: a Python file's code is written as a document of its own, not as an
    answer in the chat (an append to a file that holds text continues that text).
    The model gets no prompt but its beginning of sequence; the block opens with a docstring
    naming the file and the goals, forced, and its code starts with a statement (not a
    comment, a string or a blank line). A base model, not tuned for chat, continues such a
    document with code, where asked in the chat it copies the question
    (`offline_agent.codeturn`; with the llama backends, whose KV cache then evaluates the
    run's prompt again past its saved opening). On for both built-in models, with
    `code_trim`: held-out code goals passed 5 of 8 for each, against 3 and 0."""
    code_trim: bool = False
    """With `code_turn`: Python code cut off at the block's token bound loses its last lines
    until it compiles (a small model's code runs on until the bound, and stops mid-line).
    With `code_document`, Gemma-3-270M passed 5 of 8 held-out code goals with it, 1
    without."""
    code_names: bool = False
    """With `code_turn`: a top-level statement of the code that reads a name nothing bound
    before it (not the file, not Python's builtins) is left out: it could only stop the program, and
    every import of the file, with a NameError; so is a top-level function or class defined
    a second time, the model going round with variations: the first stays
    (`offline_agent.pyrepair.pruned`). On for both built-in models: Gemma-3-270M passed one
    challenge more and one held-out goal more."""
    code_signature: bool = False
    """With `code_document`: a file's document opens, after its docstring, with the first
    line of the function a goal naming the file names with its parameters (`def add(a, b):`
    for "calc.py with a function add(a, b)"), as HumanEval prompts a model: its code starts
    with that function's body."""
    check_syntax: bool = False
    """A write that would leave a `.py` file that does not compile, or a `.json` file that
    does not parse, fails with the error and leaves the file as it was (SWE-agent's edit
    linter)."""
    examples: bool = False
    """Show the worked example closest to the goals in the system prompt
    (`offline_agent.prompt.examples`; loads the embedder at the start of a run)."""

    @classmethod
    def none(cls) -> Rules:
        """Every rule off, all commands offered, Auto-GPT's reply format: the agent as it was
        before the rules (the baseline of the ablation, and of runs recorded before them)."""
        return cls(
            existing_names=False,
            unusable_commands=False,
            finish_after_success=False,
            finish_after_named=False,
            goal_targets=False,
            no_rereads=False,
            shown_looks=False,
            show_state=False,
            reply_format="autogpt",
            agent_commands=True,
            memory_commands=True,
            delete_command=True,
            prose_signatures=False,
            retry_cut_off=False,
            retry_repeats=False,
            break_loops=False,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rules:
        """Rules saved by an earlier version: a rule it did not know yet was not applied."""
        known = {f.name for f in fields(cls)}
        return replace(cls.none(), **{k: v for k, v in data.items() if k in known})

    @classmethod
    def parse(cls, items: Iterable[str], base: Rules | None = None) -> Rules:
        """`base` (the defaults) with `NAME=VALUE` items applied in order; the item `none`
        turns every rule off first (`Rules.none`). ConfigError names a bad item."""
        rules = base or cls()
        known = {f.name: f for f in fields(cls)}
        for item in items:
            if item.strip().lower() == "none":
                rules = cls.none()
                continue
            name, sep, raw = item.partition("=")
            name, raw = name.strip().replace("-", "_"), raw.strip().lower()
            if name not in known or not sep:
                raise ConfigError(
                    f"unknown rule {item!r}; give 'none' or NAME=VALUE, NAME one of "
                    + ", ".join(known)
                )
            value: Any
            if name == "reply_format":
                if raw not in get_args(ReplyFormat):
                    raise ConfigError(
                        f"reply_format must be one of {', '.join(get_args(ReplyFormat))}"
                    )
                value = raw
            elif raw in ("on", "true", "yes", "1"):
                value = True
            elif raw in ("off", "false", "no", "0"):
                value = False
            else:
                raise ConfigError(f"rule {name} takes on or off, not {raw!r}")
            rules = replace(rules, **{name: value})
        return rules

    @classmethod
    def for_model(cls, model: str, model_items: Sequence[str], items: Iterable[str]) -> Rules:
        """The defaults, then the model's own rules from the registry (`model_items`), then
        the user's `items` (ai_settings.yaml, then `--rule`): the later one wins."""
        try:
            base = cls.parse(model_items)
        except ConfigError as err:
            raise ConfigError(f"the registry's rules for {model}: {err}") from None
        return cls.parse(items, base)

    def changed(self) -> list[str]:
        """The rules that differ from the defaults, as `NAME=VALUE` (for labels and reports)."""
        default = Rules()
        return [
            f"{f.name}={_shown(getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]


def _shown(value: object) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Snapshot:
    """The workspace's files (with size and modification time) and the running sub-agents."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Path relative to the workspace → (size in bytes, mtime in ns)."""
    folders: tuple[str, ...] = (".",)
    agents: tuple[int, ...] = ()
    partial: bool = False
    """The workspace holds more than `MAX_WALKED` files; `files` has the first of them."""

    @classmethod
    def take(cls, ctx: ToolContext) -> Snapshot:
        """The state of `ctx`'s workspace and sub-agents now."""
        root = ctx.workspace.root
        files: dict[str, tuple[int, int]] = {}
        folders = ["."]
        partial = False
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            if len(files) >= MAX_WALKED:
                partial = True
                break
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_FOLDERS)
            here = Path(dirpath)
            if here != root:
                folders.append(here.relative_to(root).as_posix())
            for name in filenames:
                path = here / name
                real = resolved(path)
                if real is None or not real.is_relative_to(root):
                    continue
                try:
                    info = real.stat()
                except OSError:
                    continue
                files[path.relative_to(root).as_posix()] = (info.st_size, info.st_mtime_ns)
        agents = tuple(key for key, _, _ in ctx.agents.list()) if ctx.agents is not None else ()
        return cls(dict(sorted(files.items())), tuple(folders), agents, partial)

    def to_json(self) -> dict[str, Any] | None:
        """Plain JSON for a step's record; None past `RECORDED_FILES` files."""
        if len(self.files) > RECORDED_FILES:
            return None
        return {"files": {p: list(v) for p, v in self.files.items()}, "folders": list(self.folders),
                "agents": list(self.agents), "partial": self.partial}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        """The snapshot `to_json` saved."""
        files = {path: (int(size), int(mtime)) for path, (size, mtime) in data["files"].items()}
        return cls(files, tuple(data["folders"]), tuple(data["agents"]), bool(data["partial"]))

    def choices(self, names: Names) -> list[Any]:
        """What an argument that names an existing `names.kind` can be now."""
        if names.kind == "folder":
            return list(self.folders)
        if names.kind == "agent":
            return list(self.agents)
        return [path for path in self.files if path.endswith(names.suffix)]

    def changes(self, before: Snapshot) -> list[str]:
        """What changed since `before`, one line a file."""
        lines = []
        for path, (size, mtime) in self.files.items():
            if path not in before.files:
                lines.append(f"{path} was created ({_size(size)})")
            elif before.files[path] != (size, mtime):
                lines.append(f"{path} was changed ({_size(size)})")
        lines += [f"{path} was deleted" for path in before.files if path not in self.files]
        return lines


def _size(size: int) -> str:
    return f"{size} byte{'s' if size != 1 else ''}"


_PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.[A-Za-z][A-Za-z0-9]{0,7})(?![\w/-])")
"""A relative path with an extension, as goals write them: "notes.txt", "reports/status.txt"."""


def named_paths(texts: Sequence[str], snapshot: Snapshot) -> list[str]:
    """The files the texts name: paths with an extension, and existing files named in full;
    a bare name that another named path ends with ("status.txt", "reports/status.txt") is
    that path."""
    found: dict[str, None] = {}
    for text in texts:
        for match in _PATH.finditer(text):
            stem, _, extension = match.group(1).rpartition(".")
            if len(stem) > 1 or len(extension) > 1:  # not an abbreviation such as "e.g"
                found[match.group(1)] = None
        for path in snapshot.files:
            if path in text:
                found[path] = None
    return [p for p in found if not any(other.endswith("/" + p) for other in found)]


@dataclass
class StepPlan:
    """The commands offered at one step, with arguments narrowed to what exists."""

    tools: ToolRegistry
    left_out: dict[str, str]
    """Command → the rule that left it out, and why."""


def _narrowed(tool: Tool, choices: dict[str, list[Any]]) -> Tool:
    """`tool` whose listed arguments may only take the given values."""
    parameters = dict(tool.parameters)
    for arg, values in choices.items():
        schema = {k: v for k, v in parameters[arg].items() if k != "maxLength"}
        parameters[arg] = schema | {"enum": values}
    return replace(tool, parameters=parameters)


@dataclass(frozen=True)
class Progress:
    """What the run has done so far, as far as the rules care."""

    succeeded: bool = False
    """A command has succeeded."""
    held_back: str = ""
    """A command the repeat guard leaves out of this step."""
    ran: tuple[tuple[CommandCall, Snapshot], ...] = ()
    """The commands run so far, each with the workspace as it was when it ran."""
    shown: frozenset[tuple[str, tuple[int, int]]] = frozenset()
    """(file, (size, mtime)) whose full text a request has shown (`shown_looks`)."""


def plan_step(
    tools: ToolRegistry,
    snapshot: Snapshot,
    rules: Rules,
    progress: Progress,
    goals: Sequence[str] = (),
) -> StepPlan:
    """The commands that can be right now, given the state, the progress and the rules."""
    offered: list[Tool] = []
    left_out: dict[str, str] = {}
    done = _done_here(progress, snapshot) if rules.no_rereads else set()
    missing_named = _missing(goals, snapshot)  # once a step: a regex over goals and files
    seen_looks = (
        rules.shown_looks and rules.show_state and (bool(missing_named) or rules.shown_looks_always)
    )
    for tool in tools:
        if tool.name == progress.held_back:
            left_out[tool.name] = "repeat: it just returned what it returned before"
            continue
        if tool.name == "finish" and (why := _not_done(rules, progress, missing_named)):
            left_out[tool.name] = why
            continue
        narrowed: dict[str, list[Any]] = {}
        missing = ""
        for arg, declared in tool.names.items():
            names = _planned(declared, rules)
            if names.kind == "target":
                if rules.goal_targets and missing_named:
                    narrowed[arg] = missing_named
                continue
            listing = names.answer == "listing" and names.kind == "folder"
            if seen_looks and listing and _listed_in_full(snapshot):
                missing = "shown_looks: the request lists every file already"
                break
            values = snapshot.choices(names)
            if seen_looks and names.answer == "text" and names.kind == "file" and values:
                values = [v for v in values if (v, snapshot.files[v]) not in progress.shown]
                if not values:
                    missing = "shown_looks: the full text of every file is shown already"
                    break
            if len(tool.parameters) == 1 and (seen := [v for n, v in done if n == tool.name]):
                values = [v for v in values if v not in seen]
                if not values:
                    missing = "no_rereads: it ran with each value in this same workspace"
                    break
            if not values:
                missing = (
                    "unusable_commands: no "
                    f"{names.kind}{' ' + names.suffix if names.suffix else ''} exists"
                )
            elif rules.existing_names and len(values) <= MAX_CHOICES:
                narrowed[arg] = values
        if missing and (rules.unusable_commands or missing.startswith(("no_rereads", "shown_"))):
            left_out[tool.name] = missing
            continue
        offered.append(_narrowed(tool, narrowed) if narrowed else tool)
    if not offered:  # a grammar needs a command: rather every command than none
        return StepPlan(tools, {})
    return StepPlan(ToolRegistry(offered), left_out)


def _listed_in_full(snapshot: Snapshot) -> bool:
    """The state's listing names every file of the workspace."""
    return not snapshot.partial and len(snapshot.files) <= MAX_FILES_SHOWN


def _planned(names: Names, rules: Rules) -> Names:
    """What an argument names at this step: a file added to is an existing file with
    `append_existing`, else a target like any file a command writes."""
    if names.kind != "appended":
        return names
    return replace(names, kind="file" if rules.append_existing else "target")


def _done_here(progress: Progress, snapshot: Snapshot) -> set[tuple[str, Any]]:
    """(command, value of its one argument) for the one-argument commands that ran in a
    workspace just like this one."""
    return {
        (call.name, value)
        for call, then in progress.ran
        if then == snapshot and len(call.args) == 1
        for value in call.args.values()
        if isinstance(value, (str, int))
    }


def _not_done(rules: Rules, progress: Progress, missing_named: list[str]) -> str:
    """Why `finish` is not offered yet; empty when it is."""
    if rules.finish_after_success and not progress.succeeded:
        return "finish_after_success: no command has succeeded yet"
    if rules.finish_after_named and missing_named:
        return f"finish_after_named: {', '.join(missing_named)} does not exist yet"
    return ""


def _missing(goals: Sequence[str], snapshot: Snapshot) -> list[str]:
    """The files the goals name that do not exist (none known in a partial snapshot)."""
    if snapshot.partial:
        return []
    return [path for path in named_paths(goals, snapshot) if path not in snapshot.files]


class StateView:
    """What each request shows of the state: the workspace's files, what changed since the
    last request, which files the goals name that are missing, and the text of those that
    exist (each text once, and again only when the file changes)."""

    def __init__(self, goals: Sequence[str]) -> None:
        self.goals = tuple(goals)
        self._before: Snapshot | None = None
        self._shown: set[tuple[str, tuple[int, int]]] = set()
        self.in_full: set[tuple[str, tuple[int, int]]] = set()
        """(file, (size, mtime)) whose text was shown whole (at most `FILE_TEXT_CHARS`)."""

    def lines(self, ctx: ToolContext, snapshot: Snapshot) -> list[str]:
        """This request's lines about the state."""
        changes, named, texts = self.observe(snapshot)
        lines = [f"Last change: {change}" for change in changes]
        listed = [f"{path} ({_size(size)})" for path, (size, _) in snapshot.files.items()]
        more = len(listed) - MAX_FILES_SHOWN
        shown = ", ".join(listed[:MAX_FILES_SHOWN]) + (f", and {more} more" if more > 0 else "")
        lines.append(f"Workspace files: {shown or 'none yet'}")
        missing = [path for path in named if path not in snapshot.files]
        if missing:
            lines.append(f"Named in the goals, not yet in the workspace: {', '.join(missing)}")
        lines += [f"Text of {path}:\n{_excerpt(ctx, path)}" for path in texts]
        return lines

    def observe(self, snapshot: Snapshot) -> tuple[list[str], list[str], list[str]]:
        """Take `snapshot` as the state a request shows: the changes since the last one, the
        files the goals name, and those whose text is shown now (new or changed)."""
        changes = snapshot.changes(self._before) if self._before is not None else []
        self._before = snapshot
        named = named_paths(self.goals, snapshot)
        texts = []
        for path in named:
            key = (path, snapshot.files.get(path, (0, 0)))
            if path in snapshot.files and key not in self._shown:
                self._shown.add(key)
                texts.append(path)
                if key[1][0] <= FILE_TEXT_CHARS:  # bytes: at least as many as characters
                    self.in_full.add(key)
        return changes, named, texts


def _excerpt(ctx: ToolContext, path: str) -> str:
    """The start of a file's text, cut to `FILE_TEXT_CHARS` with a notice."""
    try:
        text = ctx.workspace.read_text(path, max_chars=FILE_TEXT_CHARS + 1)
    except ToolError as err:
        return f"(cannot be shown: {err})"
    if not text:
        return "(empty)"
    if len(text) > FILE_TEXT_CHARS:
        return text[:FILE_TEXT_CHARS] + f"\n[only the first {FILE_TEXT_CHARS} characters are shown]"
    return text


def python_problem(call: CommandCall) -> str:
    """Why the Python source `call` writes or runs would not compile; empty when it would,
    or when the command carries no Python source."""
    source = None
    if call.name == "execute_python_code":
        source = call.args.get("code")
    elif call.name == "write_file" and str(call.args.get("filename", "")).endswith(".py"):
        source = call.args.get("text")
    if not isinstance(source, str):
        return ""
    problem = python_error(source)
    return "" if problem is None else f"its Python does not compile: {problem}"


class RepeatGuard:
    """Counts steps in a row that only repeat: a command with the same arguments that ran
    just before (A A), or that returned this same result before (A B A B)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._last_call = ""
        self.stale = 0
        """Repeating steps in a row, the last one included."""

    def observe(self, call: CommandCall, result: str) -> int:
        """Count a step's command and what it returned; the stale steps in a row."""
        key = json.dumps([call.name, call.args], sort_keys=True)
        digest = hashlib.sha256(f"{key}\n{result}".encode()).hexdigest()
        repeated = key == self._last_call or digest in self._seen
        self.stale = self.stale + 1 if repeated else 0
        self._seen.add(digest)
        self._last_call = key
        return self.stale


class Steering:
    """The rules applied to one run: each step's plan and state lines from the workspace, and
    the progress they depend on (what succeeded, what ran where, what repeats)."""

    def __init__(self, tools: ToolRegistry, rules: Rules, goals: Sequence[str]) -> None:
        self.tools = tools
        self.rules = rules
        self.goals = tuple(goals)
        self.view = StateView(goals)
        self.guard = RepeatGuard()
        self.succeeded = False
        """A command has succeeded in this run (what `finish_after_success` waits for)."""
        self._held_back = ""
        self._ran: list[tuple[CommandCall, Snapshot]] = []
        self._now = Snapshot()

    def plan(self, ctx: ToolContext) -> tuple[StepPlan, list[str]]:
        """This step's commands, and the lines its request shows of the state."""
        self._now = Snapshot.take(ctx)
        state = self.view.lines(ctx, self._now) if self.rules.show_state else []
        progress = Progress(
            self.succeeded, self._held_back, tuple(self._ran), frozenset(self.view.in_full)
        )
        self._held_back = ""
        plan = plan_step(self.tools, self._now, self.rules, progress, self.goals)
        return plan, state

    @property
    def snapshot(self) -> Snapshot:
        """The workspace as the last `plan` saw it."""
        return self._now

    def running(self, call: CommandCall) -> None:
        """Note a command about to run in the workspace as `plan` last saw it."""
        self._ran.append((call, self._now))

    def doubt(self, plan: StepPlan, schema: dict[str, Any], completion: Completion) -> str:
        """Why a reply to this step's `plan` is likely wrong, by checks that need no model:
        it is invalid, its command is the one that ran just before or ran in this same
        workspace before, its Python does not compile; empty when none applies (`--samples`
        prefers replies without doubt)."""
        try:
            call = parse_reply(completion, plan.tools, schema, plan.left_out).command
        except FormatError as err:
            return f"invalid: {err}"
        return self._repeat(call) or python_problem(call)

    def retry(self, plan: StepPlan, schema: dict[str, Any], completion: Completion) -> str:
        """Why a single greedy reply should be decoded once more, hotter (rules
        `retry_cut_off` and `retry_repeats`); empty when it stands."""
        if self.rules.retry_cut_off and completion.finish_reason == "length":
            return "cut off at the token limit"
        if not self.rules.retry_repeats:
            return ""
        try:
            call = parse_reply(completion, plan.tools, schema, plan.left_out).command
        except FormatError:
            return ""
        return self._repeat(call)

    def _repeat(self, call: CommandCall) -> str:
        """Why `call` would only repeat a step of this run; empty when it would not."""
        if self._ran and call == self._ran[-1][0]:
            return "it is the command that ran just before"
        if any(call == earlier and then == self._now for earlier, then in self._ran):
            return "it ran with these arguments in this same workspace before"
        return ""

    def restore(self, steps: Sequence[dict[str, Any]], ctx: ToolContext) -> list[str]:
        """Rebuild this run's progress from its recorded steps as if they had just run; the
        notes the last step left for the next request. An invalid reply leaves the repeat
        count as it was (as in the loop: a model that alternates a repeat and an invalid
        reply is still looping).

        Each step's snapshot stands for the `plan` that step made (a workspace bigger than
        `RECORDED_FILES` files was not recorded; the snapshot of now stands in for it).
        """
        notes: list[str] = []
        now = Snapshot.take(ctx) if any(not step.get("snapshot") for step in steps) else None
        for step in steps:
            saved = step.get("snapshot")
            self._now = Snapshot.from_json(saved) if saved else now or Snapshot()
            self.view.observe(self._now)
            self._held_back = ""
            reply, result = step.get("reply"), step.get("result")
            notes = []
            if step["status"] == "interrupted" and reply:  # it was running when it stopped
                self.running(CommandCall(**reply["command"]))
            elif step["status"] == "ok" and reply and result is not None:
                call = CommandCall(**reply["command"])
                self.running(call)
                stale = self.ran(call, bool(result.get("ok")), step["history"][-1]["content"])
                notes = self.repeat_notes(call.name, stale)
        return notes

    def ran(self, call: CommandCall, ok: bool, result: str) -> int:
        """Note what a command returned; the repeating steps in a row, this one included. A
        repeating command is left out of the next step's grammar, which does what no note
        can make a small model do: try something else."""
        self.succeeded = self.succeeded or ok
        stale = self.guard.observe(call, result)
        if stale:
            self._held_back = call.name
        return stale

    def repeat_notes(self, command: str, stale: int) -> list[str]:
        """What the next request says about `stale` repeating steps of `command` in a row."""
        if not stale:
            return []
        may_finish = self.succeeded or not self.rules.finish_after_success
        return [
            f"{command} with these arguments ran just before or returned the same before "
            f"({stale} such step{'s' if stale > 1 else ''} in a row); running it again "
            "changes nothing." + (" If every goal is done, use finish." if may_finish else "")
        ]
