"""One run's settings, saved in its record, and building the agent from them.

`run` and `runs resume` share this: a run's settings are written to its run.json, so a
resumed run gets the same model, workspace, memory, limits and shell policy as it started
with, and continues the same record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_agent.agent import Agent, AgentConfig, Approval, Events
from offline_agent.codeturn import ask, header
from offline_agent.errors import AgentError, ConfigError, StorageError
from offline_agent.llm import (
    SCRIPTED_PREFIX,
    ChatModel,
    HttpModel,
    HttpOptions,
    LlamaOptions,
    ScriptedModel,
    open_model,
)
from offline_agent.llm.base import breaks_loops, writes_blocks, writes_documents
from offline_agent.memory import FastEmbedder, open_memory
from offline_agent.modelstore import load_registry, resolve, sha256_file, user_registry_path
from offline_agent.prompt import PromptBuilder
from offline_agent.prompt.examples import closest
from offline_agent.records import (
    CommandCall,
    Completion,
    Message,
    Profile,
    Reply,
    RunResult,
    Step,
    Thoughts,
    ToolResult,
)
from offline_agent.reply import FENCE, LANGUAGE, file_arg
from offline_agent.runs import (
    RunMeta,
    RunRecord,
    last_event,
    read_entries,
    recorded_steps_with_snapshots,
)
from offline_agent.sandbox import Sandbox
from offline_agent.state import Rules, Snapshot
from offline_agent.subagents import SubAgents
from offline_agent.tools import ToolContext, ToolRegistry, builtin_tools
from offline_agent.tools.base import ShellPolicy
from offline_agent.tools.mcp_servers import MCPServers
from offline_agent.tools.user import with_user_tools
from offline_agent.workspace import Workspace

if TYPE_CHECKING:
    from offline_agent.llm.llama import LlamaModel


@dataclass(frozen=True)
class RunSettings:
    """Everything needed to start, or restart, one run."""

    profile: Profile
    model: str | None
    models_dir: Path
    workspace: Path
    runs_dir: Path
    llama: LlamaOptions = field(default_factory=LlamaOptions)
    agent: AgentConfig = field(default_factory=AgentConfig)
    rules: Rules = field(default_factory=Rules)
    chat_format: str | None = None
    http: HttpOptions | None = None
    memory_dir: Path | None = None
    continuous: bool = False
    shell: ShellPolicy | None = None
    python_timeout: float = 30.0
    sandbox: bool = True
    """Programs the agent starts run in the kernel sandbox (`offline_agent.sandbox`)."""
    tools: tuple[Path, ...] = ()
    """Python files whose functions are commands too (`offline_agent.tools.user`)."""
    mcp: tuple[str, ...] = ()
    """Command lines of MCP servers whose tools are commands too (`tools.mcp_servers`)."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for run.json; an API key is never written."""
        data = asdict(self)
        data["profile"]["goals"] = list(self.profile.goals)
        if self.http is not None:
            data["http"]["api_key"] = None
        if self.shell is not None:
            data["shell"] = {
                "allow": sorted(self.shell.allow) if self.shell.allow is not None else None,
                "deny": sorted(self.shell.deny),
            }
        for key in ("models_dir", "workspace", "runs_dir", "memory_dir"):
            data[key] = None if data[key] is None else str(data[key])
        data["tools"] = [str(path) for path in self.tools]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        """The settings saved by `to_json`."""
        try:
            shell = data["shell"]
            return cls(
                profile=Profile(
                    data["profile"]["name"],
                    data["profile"]["role"],
                    tuple(data["profile"]["goals"]),
                ),
                model=data["model"],
                models_dir=Path(data["models_dir"]),
                workspace=Path(data["workspace"]),
                runs_dir=Path(data["runs_dir"]),
                llama=LlamaOptions(**data["llama"]),
                agent=AgentConfig(**data["agent"]),
                # A run recorded before rules existed ran with none of them.
                rules=Rules.from_json(data.get("rules") or {}),
                chat_format=data["chat_format"],
                http=HttpOptions(**data["http"]) if data["http"] else None,
                memory_dir=Path(data["memory_dir"]) if data["memory_dir"] else None,
                continuous=data["continuous"],
                python_timeout=data["python_timeout"],
                # Runs recorded before the sandbox resume inside it.
                sandbox=data.get("sandbox", True),
                tools=tuple(Path(path) for path in data.get("tools") or ()),
                mcp=tuple(data.get("mcp") or ()),
                shell=ShellPolicy(
                    frozenset(shell["allow"]) if shell["allow"] is not None else None,
                    frozenset(shell["deny"]),
                )
                if shell
                else None,
            )
        except (KeyError, TypeError) as err:
            raise StorageError(f"run.json does not hold valid run settings: {err}") from None


def build_agent(
    settings: RunSettings,
    events: Events,
    approve: Callable[[Step], Approval] | None,
    model: ChatModel | None = None,
    *,
    record: Callable[[ChatModel, ToolRegistry, Rules], RunRecord] | None = None,
    servers: MCPServers | None = None,
) -> Agent:
    """Open the workspace, the commands, the model and memory named by `settings`, and make
    the agent.

    The user's commands load, and `servers` (the run's MCP servers, which the caller stops)
    start, before the model, so that a bad one is an error at once.
    `record` opens the run's record once everything else is open, so that a model that
    fails to load leaves no empty run behind. `model`, when given, is the already loaded
    model `settings` names (the benchmark loads one for many runs).
    """
    workspace = Workspace.create(settings.workspace)
    memory_on = settings.memory_dir is not None
    tools = with_user_tools(
        run_tools(settings.rules, memory=memory_on, shell=settings.shell is not None),
        settings.tools,
        servers.start() if servers is not None and settings.mcp else (),
    )
    if model is None:
        model = open_model(
            settings.model, settings.llama, settings.models_dir, settings.chat_format, settings.http
        )
    memory = None
    if settings.memory_dir is not None:
        memory = open_memory(settings.memory_dir, notify=events.notice)
        if isinstance(model, HttpModel):  # the model computes elsewhere: load memory now
            memory.preload()
        # Otherwise the agent starts loading it once the first reply is in (`Agent._step`).
    examples: list[str] = []
    if settings.rules.examples:
        embedder = memory.embedder if memory is not None else FastEmbedder(notify=events.notice)
        chosen = closest(settings.profile.goals, embedder.embed)
        examples = [example.render(settings.rules.reply_format) for example in chosen]
    rules = settings.rules
    if rules.text_blocks and not writes_blocks(model):
        events.notice("text_blocks is off: this backend cannot constrain a text block")
        rules = replace(rules, text_blocks=False)
    if rules.code_turn and (rules.text_blocks or not writes_blocks(model)):
        why = (
            "text_blocks writes code after the JSON"
            if rules.text_blocks
            else "this backend cannot constrain a code block"
        )
        events.notice(f"code_turn is off: {why}")
        rules = replace(rules, code_turn=False)
    if rules.code_turn and rules.code_document and not writes_documents(model):
        events.notice("code_document is off: this backend decodes only chat turns")
        rules = replace(rules, code_document=False)
    if rules.break_loops and not breaks_loops(model):
        rules = replace(rules, break_loops=False)  # a server decodes with its own samplers
    ctx = ToolContext(
        workspace=workspace,
        memory=memory,
        agents=SubAgents(model) if settings.rules.agent_commands else None,
        shell=settings.shell,
        python_timeout=settings.python_timeout,
        sandbox=Sandbox.default() if settings.sandbox else None,
        check_syntax=settings.rules.check_syntax,
    )
    opened = record(model, tools, rules) if record is not None else None
    if opened is not None:  # the first version of each file the run changes is kept
        workspace.keep = opened.keep_original
    return Agent(
        settings.profile,
        model,
        tools,
        ctx,
        settings.agent,
        rules=rules,
        examples=examples,
        memory=memory,
        record=opened,
        events=events,
        approve=None if settings.continuous else approve,
    )


def run_tools(rules: Rules, *, memory: bool, shell: bool) -> ToolRegistry:
    """The commands a run offers: what the rules and the run's memory and shell enable."""
    return builtin_tools(
        memory=memory and rules.memory_commands,
        agents=rules.agent_commands,
        shell=shell,
        delete=rules.delete_command,
    )


def opening_prompt(model: ChatModel, *, memory: bool) -> list[Message]:
    """The first prompt of a run with the default rules and no shell, for a placeholder agent:
    the system message opens with what every such run's shares (its name, role and goals
    come last)."""
    placeholder = Profile("Agent", "an assistant", ("a goal",))
    rules = Rules()
    tools = run_tools(rules, memory=memory, shell=False)
    builder = PromptBuilder(
        placeholder,
        tools,
        model,
        AgentConfig().reply_tokens,
        rules.reply_format,
        prose_signatures=rules.prose_signatures,
    )
    return builder.build([])


def warm_up(model: LlamaModel, *, memory: bool) -> int:
    """Save the KV state of that opening, so that even the first run on a machine restores
    it; the tokens evaluated (0: it was saved already)."""
    return model.save_opening(opening_prompt(model, memory=memory))


def model_digest(settings: RunSettings) -> str | None:
    """sha256 of the model file the run uses (None for a server's model)."""
    if settings.http is not None:
        return None
    registry = load_registry(user_registry_path(settings.models_dir))
    model = settings.model or registry.default
    if model.startswith(SCRIPTED_PREFIX):
        return sha256_file(Path(model.removeprefix(SCRIPTED_PREFIX)))
    resolved = resolve(model, registry, settings.models_dir)
    # resolve() has checked a registered file against its recorded sha256 (once per file
    # state), and a store names its files by their sha256; any other file is hashed here.
    return resolved.sha256 or sha256_file(resolved.path)


def start(settings: RunSettings, model: str, extra: dict[str, Any] | None = None) -> RunRecord:
    """A new run record of `settings` on the loaded `model` (its name), with its digest."""
    return RunRecord.create(
        settings.runs_dir,
        settings.profile.name,
        settings.to_json(),
        model=model,
        model_sha256=model_digest(settings),
        extra=extra,
    )


def reopen(folder: Path, max_steps: int | None = None) -> tuple[RunSettings, RunRecord]:
    """The settings and record of an interrupted run, ready to continue it."""
    entries = read_entries(folder)
    if (
        entries
        and entries[-1].get("type") == "end"
        and entries[-1]["result"]["status"] == "finished"
    ):
        raise ConfigError(f"run {folder.name} already finished; nothing to resume")
    settings = RunSettings.from_json(RunMeta.load(folder).settings)
    if max_steps is not None:
        settings = replace(settings, agent=replace(settings.agent, max_steps=max_steps))
    return settings, RunRecord.reopen(folder)


INTERRUPTED = (
    "Command {name} was interrupted: the run stopped while it ran, so it may or may not have "
    "taken effect. Check its effect before running it again."
)


def _code_turn(agent: Agent, command: dict[str, Any], code: str | None) -> list[Message]:
    """The code turn an interrupted step's history held: its question and `code`, the answer
    (none when the reply had no code turn, or wrote its code as a document of its own, which
    opens with its file's `header`)."""
    if code is None or command["name"] not in agent.tools:
        return []
    tool = agent.tools.get(command["name"])
    name = str(command["args"].get(file_arg(tool)))
    if code.startswith(f"{FENCE}{LANGUAGE}\n{header(name, agent.profile.goals)}"):
        return []
    return [ask(tool, command["args"]), Message(role="assistant", content=code.strip())]


def restore(agent: Agent, folder: Path, record: RunRecord) -> int:
    """Give `agent` the state of the run recorded in `folder`, as if its steps had just run
    in this process; the steps restored.

    A command that was running when the process died is not run again (it may have taken
    effect): its step is recorded as interrupted, with the request that chose it, and the
    model is told to check.
    """
    entries = read_entries(folder)
    steps = recorded_steps_with_snapshots(entries)
    # A step recorded as interrupted by an earlier resume has a reply but no completion.
    # A code turn's answer is a reply of its own.
    used_replies = sum(
        (s["completion"] is not None or s["reply"] is not None) + (s.get("code") is not None)
        for s in steps
    )
    pending = last_event(entries)
    if pending is not None and pending["type"] == "command":
        command = pending["reply"]["command"]
        told = INTERRUPTED.format(name=command["name"])
        request = pending.get("request")  # records made before it was kept have none
        code = pending.get("code")  # the code turn's answer, when the reply had one
        turn = _code_turn(agent, command, code)
        step = Step(
            index=len(steps) + 1,
            messages=[request] if request else [],
            reply=Reply(Thoughts(**pending["reply"]["thoughts"]), CommandCall(**command)),
            result=ToolResult(told, ok=False),
            status="interrupted",
            history=[
                *([request] if request else []),
                Message(role="assistant", content=pending["raw"]),
                *turn,
                Message(role="user", content=told),
            ],
            code=Completion(code, "stop") if code is not None else None,
            snapshot=pending.get("snapshot"),
        )
        record.write_step(step)
        steps.append(step.to_dict())
        used_replies += 1 + (code is not None)
    if steps:  # the files there were at the start, as its first step saw them
        first = steps[0].get("snapshot")
        agent.ctx.workspace.started_with = _files(Snapshot.from_json(first)) if first else None
    snapshots = [step["subagents"] for step in steps if step.get("subagents")]
    if snapshots and agent.ctx.agents is not None:
        agent.ctx.agents.load(snapshots[-1])
    agent.restore(steps)
    if isinstance(agent.model, ScriptedModel):
        # A scripted model replays a fixed transcript: skip the replies already used.
        agent.model.skip(used_replies)
    return len(steps)


def _files(snapshot: Snapshot) -> frozenset[str] | None:
    """The snapshot's files, if it has them all."""
    return None if snapshot.partial else frozenset(snapshot.files)


class Run:
    """One run's life: its agent built complete with its record, run, and the record closed
    with how the run ended whatever happens. `offline-agent run`, `runs resume` and the
    benchmark all go through it."""

    def __init__(
        self, agent: Agent, record: RunRecord, servers: MCPServers, restored: int = 0
    ) -> None:
        self.agent = agent
        self.record = record
        self.servers = servers
        self.restored = restored
        """Steps taken before this process (a resumed run)."""

    @classmethod
    def new(
        cls,
        settings: RunSettings,
        events: Events,
        approve: Callable[[Step], Approval] | None,
        extra: dict[str, Any] | None = None,
        model: ChatModel | None = None,
    ) -> Run:
        """A new run of `settings`; `extra` goes into its run.json, with the commands offered
        and the MCP tools left out."""
        records: list[RunRecord] = []
        servers = MCPServers(settings.mcp, settings.python_timeout)

        def opened(loaded: ChatModel, tools: ToolRegistry, rules: Rules) -> RunRecord:
            """The record, with the rules the run applies (a backend may turn one off)."""
            offered = {"commands": tools.names, "mcp_left_out": servers.left_out}
            ran = replace(settings, rules=rules)
            records.append(start(ran, loaded.name, {**(extra or {}), **offered}))
            return records[0]

        with _closed_on_error(servers):
            agent = build_agent(settings, events, approve, model, record=opened, servers=servers)
        # The files the user's workspace holds as the run starts: the ones it keeps first
        # versions of (a resumed run learns them from its record, in `restore`).
        agent.ctx.workspace.started_with = _files(Snapshot.take(agent.ctx))
        return cls(agent, records[0], servers)

    @classmethod
    def resume(
        cls,
        folder: Path,
        events: Events,
        approve: Callable[[Step], Approval] | None,
        max_steps: int | None = None,
    ) -> Run:
        """The interrupted run in `folder`, restored to where its record ends."""
        settings, record = reopen(folder, max_steps)
        servers = MCPServers(settings.mcp, settings.python_timeout)
        with _closed_on_error(servers):
            agent = build_agent(
                settings, events, approve, record=lambda *_: record, servers=servers
            )
            return cls(agent, record, servers, restore(agent, folder, record))

    def execute(self, drive: Callable[[Agent], RunResult] = Agent.run) -> RunResult:
        """Run the agent through `drive` to its end, and close the record with that end.

        An AgentError (a server that went away) ends the record as an error and is raised
        again; anything else leaves the record without an end, for `runs resume`.
        """
        try:
            try:
                result = drive(self.agent)
            except AgentError as err:
                self.record.write_end(RunResult("error", self.agent.steps_taken, str(err)))
                raise
            self.record.write_end(result)
            return result
        finally:
            self.record.close()
            self.servers.close()


@contextlib.contextmanager
def _closed_on_error(servers: MCPServers) -> Iterator[None]:
    """Stop the MCP servers if what follows fails (a model that does not load)."""
    try:
        yield
    except BaseException:
        servers.close()
        raise
