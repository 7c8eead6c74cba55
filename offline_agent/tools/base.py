"""Commands are typed functions; their JSON schema comes from the signature and docstring.

A command is a plain function whose first parameter is the `ToolContext` (injected, never
shown to the model) and whose other parameters are the arguments the model fills in:

    @tool
    def write_file(ctx: ToolContext, filename: Short, text: Long) -> str:
        '''Write text to a file in the workspace, replacing it.

        Args:
            filename: path of the file, relative to the workspace
            text: the full new content of the file
        '''

The one-line summary, the `Args:` lines and the type hints are the single source for the
command list in the prompt, the reply schema and the grammar, so they cannot drift apart.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

import jsonschema

from offline_agent.errors import AgentError, CommandFailed, Finished, ToolError, ToolServerGone
from offline_agent.records import CommandCall, ToolResult
from offline_agent.sandbox import (
    ProcessResult,
    Sandbox,
    SandboxUnavailable,
    run_process,
    sandbox_problem,
)

if TYPE_CHECKING:
    from offline_agent.workspace import Workspace


@dataclass(frozen=True)
class MaxLength:
    """Annotated metadata: the longest string the grammar lets the model write."""

    chars: int


DEFAULT_MAX_LENGTH = 120

Short = Annotated[str, MaxLength(DEFAULT_MAX_LENGTH)]
"""A name, a path or a one-line answer."""

Long = Annotated[str, MaxLength(2000)]
"""A command line, a message to a sub-agent."""


@dataclass(frozen=True)
class Block:
    """Annotated metadata: the argument is a file's content or code, which a reply with
    `text_blocks` writes after its JSON, between ``` lines (`offline_agent.reply`)."""


Text = Annotated[str, MaxLength(2000), Block()]
"""File content or code: a `Long` that may be written as a block."""


@dataclass(frozen=True)
class Names:
    """Annotated metadata: the argument names something that must exist when the command
    runs (a file, a folder, a sub-agent), so each step's grammar can offer only those."""

    kind: Literal["file", "folder", "agent", "target", "appended"]
    """"target": the file a command writes, which need not exist (see `WrittenFile`);
    "appended": the file a command adds to, which need not exist (see `AppendedFile`)."""
    suffix: str = ""
    """For files: only names ending so (".py")."""
    answer: Literal["", "text", "listing"] = ""
    """What the command returns about what it names, when that is all it returns: "text",
    the file's whole text (`read_file`); "listing", the names of the files in the folder
    (`list_files`). The rule `shown_looks` leaves such a look out while the requests already
    show its whole answer."""


WrittenFile = Annotated[str, MaxLength(DEFAULT_MAX_LENGTH), Names("target")]
"""The path of a file a command writes: new or existing."""

AppendedFile = Annotated[str, MaxLength(DEFAULT_MAX_LENGTH), Names("appended")]
"""The path of a file a command adds to: a target, or with the rule `append_existing` a file
that exists."""

ExistingFile = Annotated[str, MaxLength(DEFAULT_MAX_LENGTH), Names("file")]
"""The path of a file that exists in the workspace."""

FileToRead = Annotated[str, MaxLength(DEFAULT_MAX_LENGTH), Names("file", answer="text")]
"""The path of an existing file whose whole text the command returns."""

PythonFile = Annotated[str, MaxLength(DEFAULT_MAX_LENGTH), Names("file", ".py")]
"""The path of a Python file that exists in the workspace."""

Folder = Annotated[str, MaxLength(DEFAULT_MAX_LENGTH), Names("folder")]
"""A folder that exists in the workspace ("." is its root)."""

FolderToList = Annotated[str, MaxLength(DEFAULT_MAX_LENGTH), Names("folder", answer="listing")]
"""An existing folder whose files' names the command returns."""

AgentKey = Annotated[int, Names("agent")]
"""The key of a running sub-agent."""


class MemoryLike(Protocol):
    """What commands need from long-term memory (see `offline_agent.memory`)."""

    def remember(self, text: str, kind: str = "fact") -> bool:
        """Store `text`; False when an identical memory already exists."""
        ...

    def recall(self, query: str, k: int = 5) -> list[tuple[float, str]]:
        """The k memories most similar to `query`, as (score, text), best first."""
        ...

    def preload(self) -> None:
        """Start loading what `remember` and `recall` need, in the background."""
        ...


class SubAgentsLike(Protocol):
    """What commands need to run sub-agents (see `offline_agent.subagents`)."""

    def start(self, name: str, task: str, prompt: str) -> tuple[int, str]:
        """Create a sub-agent and send it a first message; returns (key, its answer)."""
        ...

    def message(self, key: int, message: str) -> str:
        """Send a message to sub-agent `key` and return its answer."""
        ...

    def list(self) -> list[tuple[int, str, str]]:
        """All sub-agents as (key, name, task)."""
        ...

    def delete(self, key: int) -> None:
        """Forget sub-agent `key`; raises ToolError when there is none."""
        ...

    @property
    def version(self) -> int:
        """A number that changes whenever any sub-agent changes."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON of all sub-agents, for the run record."""
        ...

    def load(self, snapshot: dict[str, Any]) -> None:
        """Bring back the sub-agents of a snapshot."""
        ...


@dataclass(frozen=True)
class ShellPolicy:
    """Which programs `execute_shell` may start: only `allow` if given, never `deny`."""

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()


@dataclass
class ToolContext:
    """What a command may touch: the workspace jail and, when enabled, memory and sub-agents."""

    workspace: Workspace
    memory: MemoryLike | None = None
    agents: SubAgentsLike | None = None
    shell: ShellPolicy | None = None
    python_timeout: float = 30.0
    output_limit: int = 4000
    sandbox: Sandbox | None = field(default_factory=Sandbox.default)
    """Where programs the agent starts are confined (None: `--sandbox off`, as the user)."""
    check_syntax: bool = False
    """Writes that leave a .py or .json file that does not parse fail (`Rules.check_syntax`)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def confinement(self) -> Sandbox | None:
        """The sandbox for a program about to start; ToolError when it cannot be set up here
        (fail closed: code does not run unconfined unless the user turned the sandbox off)."""
        if self.sandbox is None:
            return None
        problem = sandbox_problem()
        if problem is not None:
            raise SandboxUnavailable(problem)
        return self.sandbox

    def run_program(self, argv: list[str]) -> ProcessResult:
        """Run `argv` (no shell) in the workspace under this context's time and output limits,
        confined; a program that does not succeed is the caller's to report."""
        return run_process(
            argv,
            cwd=self.workspace.root,
            timeout=self.python_timeout,
            output_limit=self.output_limit,
            sandbox=self.confinement(),
        )


_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


_T = TypeVar("_T")


def _extra(annotation: Any, kind: type[_T]) -> _T | None:
    """The `kind` metadata of an `Annotated` type hint, if it has one."""
    if typing.get_origin(annotation) is not Annotated:
        return None
    return next((e for e in typing.get_args(annotation)[1:] if isinstance(e, kind)), None)


def _param_schema(annotation: Any) -> dict[str, Any]:
    """JSON schema for one parameter's type hint."""
    max_length: int | None = None
    if typing.get_origin(annotation) is Annotated:
        annotation, *extras = typing.get_args(annotation)
        max_length = next((e.chars for e in extras if isinstance(e, MaxLength)), None)
    json_type = _JSON_TYPES.get(annotation)
    if json_type is None:
        raise TypeError(f"unsupported command parameter type: {annotation!r}")
    schema: dict[str, Any] = {"type": json_type}
    if json_type == "string":
        schema["maxLength"] = max_length or DEFAULT_MAX_LENGTH
    return schema


_ARG_LINE = re.compile(r"^\s+(\w+):\s*(.+)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary line and the `Args:` descriptions of a docstring."""
    lines = inspect.cleandoc(doc).splitlines()
    summary = lines[0].strip() if lines else ""
    args: dict[str, str] = {}
    in_args = False
    for line in lines[1:]:
        if line.strip() == "Args:":
            in_args = True
        elif in_args and (match := _ARG_LINE.match(line)):
            args[match.group(1)] = match.group(2).strip()
        elif in_args and line.strip() and not line.startswith(" "):
            in_args = False
    return summary, args


@dataclass(frozen=True)
class Tool:
    """A command the model can call."""

    name: str
    description: str
    func: Callable[..., str]
    parameters: dict[str, dict[str, Any]]
    arg_docs: dict[str, str]
    required: tuple[str, ...]
    names: dict[str, Names] = field(default_factory=dict)
    """Arguments that name something that must exist (see `Names`)."""
    schema: dict[str, Any] | None = None
    """The whole JSON schema of `args` when an outside tool gives one (an MCP server's);
    then `parameters` only describe it for the prompt, and arguments are checked against
    it."""
    block: str = ""
    """The argument a reply may write as a block after its JSON (see `Block`); "" if none."""

    def args_schema(self) -> dict[str, Any]:
        """JSON schema of this command's `args` object."""
        if self.schema is not None:
            return self.schema
        return {
            "type": "object",
            "properties": self.parameters,
            "required": list(self.required),
            "additionalProperties": False,
        }

    def signature_text(self, prose: bool = False) -> str:
        """One line for the prompt: `name: description. Args: "a": <what a is>`; in `prose`,
        `name(a): description. Arguments: a, what a is.`: no placeholder in the place of a
        JSON value, which small models copy as the value."""
        if prose:
            args = "; ".join(
                f"{name}, {self.arg_docs[name].rstrip('.')}" for name in self.parameters
            )
            described = f" Arguments: {args}." if args else ""
            return f"{self.name}({', '.join(self.parameters)}): {self.description}{described}"
        args = ", ".join(f'"{name}": <{self.arg_docs[name]}>' for name in self.parameters)
        return f"{self.name}: {self.description} Args: {args or 'none'}"

    def check_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return `args` with types checked; raise ToolError naming what is wrong."""
        if self.schema is not None:
            problem = next(
                iter(jsonschema.Draft202012Validator(self.schema).iter_errors(args)), None
            )
            if problem is not None:
                where = "/".join(str(p) for p in problem.absolute_path) or "args"
                raise ToolError(f"{self.name}: {where}: {problem.message}")
            return args
        unknown = sorted(set(args) - set(self.parameters))
        if unknown:
            raise ToolError(f"{self.name} takes no argument named {', '.join(unknown)}")
        missing = [name for name in self.required if name not in args]
        if missing:
            raise ToolError(f"{self.name} is missing argument {', '.join(missing)}")
        checked: dict[str, Any] = {}
        for name, given in args.items():
            expected = self.parameters[name]["type"]
            value = given
            if expected == "number" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            python_type = {v: k for k, v in _JSON_TYPES.items()}[expected]
            if not isinstance(value, python_type) or (
                expected in ("integer", "number") and isinstance(value, bool)
            ):
                raise ToolError(f"{self.name}: argument {name} must be a {expected}")
            checked[name] = value
        return checked

    def __call__(self, ctx: ToolContext, args: dict[str, Any]) -> str:
        """Run the command with checked arguments; its exceptions propagate."""
        return self.func(ctx, **self.check_args(args))


def tool(func: Callable[..., str]) -> Tool:
    """Turn a typed, documented function into a `Tool`; its name is the function's name."""
    if not func.__doc__:
        raise TypeError(f"command {func.__name__} needs a docstring")
    summary, arg_docs = _parse_docstring(func.__doc__)
    hints = typing.get_type_hints(func, include_extras=True)
    params = list(inspect.signature(func).parameters.values())[1:]  # first is the context
    parameters: dict[str, dict[str, Any]] = {}
    required: list[str] = []
    names: dict[str, Names] = {}
    blocks: list[str] = []
    for param in params:
        if param.name not in arg_docs:
            raise TypeError(f"command {func.__name__}: argument {param.name} is not documented")
        parameters[param.name] = _param_schema(hints[param.name])
        if (named := _extra(hints[param.name], Names)) is not None:
            names[param.name] = named
        if _extra(hints[param.name], Block) is not None:
            blocks.append(param.name)
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    if len(blocks) > 1:
        raise TypeError(f"command {func.__name__}: at most one argument can be a Block")
    return Tool(
        func.__name__, summary, func, parameters, arg_docs, tuple(required), names,
        block=blocks[0] if blocks else "",
    )  # fmt: skip


class ToolRegistry:
    """An ordered set of commands; the order is the order shown to the model."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            if t.name in self._tools:
                raise ValueError(f"command {t.name} registered twice")
            self._tools[t.name] = t

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        """Command names in order."""
        return list(self._tools)

    def get(self, name: str) -> Tool:
        """The command called `name`; ToolError listing the known ones otherwise."""
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(self._tools)
            raise ToolError(f"unknown command {name!r}; the commands are: {known}") from None

    def without(self, *names: str) -> ToolRegistry:
        """A copy without the named commands (e.g. memory commands under --no-memory)."""
        return ToolRegistry(t for t in self if t.name not in names)


def execute_command(tools: ToolRegistry, ctx: ToolContext, call: CommandCall) -> ToolResult:
    """Run a command; its failures become the observation the model sees."""
    try:
        return ToolResult(tools.get(call.name)(ctx, call.args))
    except (Finished, ToolServerGone):
        raise
    except CommandFailed as err:
        return ToolResult(str(err), ok=False)
    except AgentError as err:
        return ToolResult(f"Error: {err}", ok=False)
    except Exception as err:  # a command's own failure is the model's observation
        return ToolResult(f"Error: {type(err).__name__}: {err}", ok=False)
