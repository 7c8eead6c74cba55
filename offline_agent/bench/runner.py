"""Running a benchmark: models by challenges by repeats, each attempt in a fresh workspace.

Every finished attempt is one line of `results.jsonl`, flushed and fsynced before the next
attempt starts, so a benchmark that is interrupted (Ctrl-C, a crash, a reboot) continues
where it stopped: attempts already in the file are skipped, and an attempt that was cut
short is run again from a fresh workspace. `bench.json` holds the settings the results were
made with; continuing with other settings is refused, since the numbers would not compare.

Each model is loaded once per repeat, with that repeat's seed. The temperature is `run`'s,
0 (greedy), by default, so that the scores are what a user's runs get; repeats then decode
alike, and one is the default (sample, e.g. at 0.5 with 3 repeats, to see the spread).
Attempts of one repeat share the model's KV cache for their common prompt prefix, as steps
of a run do.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar, Literal

from offline_agent.agent import AgentConfig, SilentEvents
from offline_agent.bench.challenge import Challenge, destroyed_inputs, prepare_workspace
from offline_agent.bench.judge import judge
from offline_agent.errors import AgentError, ConfigError, StorageError
from offline_agent.llm import SCRIPTED_PREFIX, ChatModel, HttpOptions, LlamaOptions, open_model
from offline_agent.llm.http import Constraint
from offline_agent.records import Profile, RunResult, Step
from offline_agent.runs import write_json_atomic
from offline_agent.session import Run, RunSettings
from offline_agent.state import Rules

RESULTS_FILE = "results.jsonl"
SETTINGS_FILE = "bench.json"
ROLE = "an autonomous assistant that pursues its goals"


@dataclass(frozen=True)
class BenchSettings:
    """How every attempt of a benchmark is run; results made with other settings don't mix."""

    suite: str
    models: tuple[str, ...]
    repeats: int = 1
    seed: int = 0
    """Repeat r runs with seed `seed + r`."""
    max_steps: int = 10
    temperature: float = 0.0
    """`run`'s default; sampling (with repeats) shows the spread."""
    samples: int = 1
    """Candidate replies per step (`--samples`)."""
    n_ctx: int = 4096
    threads: int | None = None
    n_gpu_layers: int = 0
    grammar_engine: Literal["llguidance", "llama"] = "llguidance"
    think_tokens: int = LlamaOptions.think_tokens
    thinking: bool = False
    memory: bool = False
    rules: Rules = field(default_factory=Rules)
    """The step rules the attempts run with (`--rule`, `--reply-format`)..."""
    model_rules: tuple[tuple[str, Rules], ...] = ()
    """...except a model's whose registry entry sets rules of its own: (model, the rules its
    attempts run with, `--rule` applied over the registry's)."""
    base_url: str | None = None
    """Benchmark models served by an OpenAI-compatible server instead of in-process."""
    servers: tuple[tuple[str, str], ...] = ()
    """(model, URL): a model served by a server of its own (`--model NAME=URL`)."""
    constraint: Constraint = "json_object"
    judge_model: str | None = None
    """The local model that scores `llm` evals (greedy, in-process); without one they fail."""
    models_dir: Path = field(default=Path())
    sandbox: bool = True
    """Programs the agents start run in the kernel sandbox (`offline_agent.sandbox`)."""
    tools: tuple[str, ...] = ()
    """Python files of the user's own commands, for every attempt (`--tools`)."""
    mcp: tuple[str, ...] = ()
    """MCP servers started for every attempt (`--mcp`)."""

    # What may differ between two invocations that write to the same results folder: the
    # attempts they cover, and where the files live. Everything else changes the numbers.
    EXTENSIBLE: ClassVar[tuple[str, ...]] = ("models", "repeats", "threads", "models_dir", "suite")
    # Settings added later, with the value results saved before them were made with.
    # (The thinking settings change nothing for a model whose template knows no think block,
    # as every model benchmarked before them.)
    ADDED: ClassVar[dict[str, Any]] = {
        "samples": 1,
        "sandbox": False,
        "tools": [],
        "mcp": [],
        "servers": {},
        "think_tokens": LlamaOptions.think_tokens,
        "thinking": False,
        "model_rules": {},
    }

    def threads_each(self, threads: int) -> BenchSettings:
        """These settings with `threads` CPU threads per in-process model, unless `--threads`
        chose them or the models are served (then a worker needs no cores of its own)."""
        if self.threads is None and self.base_url is None and not self.servers:
            return replace(self, threads=threads)
        return self

    def rules_for(self, model: str) -> Rules:
        """The step rules of this model's attempts."""
        return dict(self.model_rules).get(model, self.rules)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for bench.json."""
        data = asdict(self)
        data["models"] = list(self.models)
        data["models_dir"] = str(self.models_dir)
        data["tools"], data["mcp"] = list(self.tools), list(self.mcp)
        data["servers"] = dict(self.servers)
        data["model_rules"] = {model: asdict(rules) for model, rules in self.model_rules}
        return data

    def conflicts(self, saved: dict[str, Any]) -> list[str]:
        """The settings that differ from those saved in a results folder, as `name a → b`.
        A model's own rules are compared for the models both benchmarks run (another
        model may join a folder, with rules of its own)."""
        mine = self.to_json()
        found = [
            f"{f.name} {saved.get(f.name)!r} → {mine[f.name]!r}"
            for f in fields(self)
            if f.name not in (*self.EXTENSIBLE, "model_rules")
            and saved.get(f.name, self.ADDED.get(f.name)) != mine[f.name]
        ]
        theirs = saved.get("model_rules", {})
        for model in set(saved.get("models", ())) & set(self.models):
            before = theirs.get(model, saved.get("rules"))
            now = mine["model_rules"].get(model, mine["rules"])
            if before != now:
                changed = Rules.from_json(now).changed() if now else []
                found.append(f"{model}'s rules → {', '.join(changed) or 'the defaults'}")
        return found


@dataclass
class Attempt:
    """One model's attempt at one challenge: the line written to results.jsonl."""

    model: str
    challenge: str
    repeat: int
    seed: int
    category: list[str]
    difficulty: str
    passed: bool = False
    score: float = 0.0
    judged: str = ""
    """The judge's one-line reason."""
    destroyed: list[str] = field(default_factory=list)
    """Input files the run deleted, or changed where the reference solution keeps them."""
    status: str = "error"
    """How the run ended: finished, step_limit, time_limit, format_errors, loop or error."""
    reason: str = ""
    steps: int = 0
    replies: int = 0
    valid_replies: int = 0
    truncated: int = 0
    """Replies cut off by the token limit before the reply was complete."""
    invalid_constrained: int = 0
    """Complete replies that were invalid although the backend said it constrained them."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    run_id: str = ""
    started: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies an attempt across invocations."""
        return (self.model, self.challenge, self.repeat)

    def count(self, step: Step) -> None:
        """Add one model reply's validity and token usage."""
        completion = step.completion
        if completion is None:
            return
        self.replies += 1
        valid = step.reply is not None
        truncated = step.status == "truncated"
        self.valid_replies += valid
        self.truncated += truncated
        # A grammar cannot stop the token limit from cutting a reply short; a complete but
        # invalid reply under a constraint means the backend did not really constrain.
        self.invalid_constrained += completion.constrained and not valid and not truncated
        for decoded in (completion, step.code):  # a code turn's answer costs its tokens too
            if decoded is not None:
                self.prompt_tokens += decoded.usage.prompt_tokens
                self.cached_tokens += decoded.usage.cached_tokens
                self.completion_tokens += decoded.usage.completion_tokens
                self.prompt_seconds += decoded.prompt_seconds
                self.decode_seconds += decoded.total_seconds - decoded.prompt_seconds


class _Tally(SilentEvents):
    """Events that count each reply into the attempt."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt

    def replied(self, step: Step) -> None:
        """Count the reply."""
        self.attempt.count(step)


@dataclass(frozen=True)
class Planned:
    """An attempt still to run."""

    model: str
    challenge: Challenge
    repeat: int

    @property
    def key(self) -> tuple[str, str, int]:
        """The key of the attempt this will produce (`Attempt.key`)."""
        return (self.model, self.challenge.name, self.repeat)


class Progress:
    """What the runner reports as it goes; the CLI prints, tests collect."""

    def started(self, done: int, total: int, planned: Planned) -> None:
        """An attempt begins; `done` of `total` attempts are finished."""

    def finished(self, done: int, total: int, attempt: Attempt) -> None:
        """An attempt ended and was saved."""


def read_results(out: Path) -> list[Attempt]:
    """The attempts saved in `out`; a line cut short by a crash is ignored."""
    path = out / RESULTS_FILE
    if not path.exists():
        return []
    known = {f.name for f in fields(Attempt)}
    attempts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and {"model", "challenge", "repeat"} <= data.keys():
            attempts.append(Attempt(**{k: v for k, v in data.items() if k in known}))
    return attempts


def read_settings(out: Path) -> dict[str, Any]:
    """The bench.json of a results folder (its settings and the machine it ran on)."""
    try:
        data = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{out} holds no benchmark ({SETTINGS_FILE} is missing)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise StorageError(f"cannot read {out / SETTINGS_FILE}: {err}") from None
    if not isinstance(data, dict) or "settings" not in data:
        raise StorageError(f"{out / SETTINGS_FILE} is not a benchmark's settings file")
    return data


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory and library versions: where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("offline-agent", "llama-cpp-python", "llguidance"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        **versions,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name if "/" in text else text)


class PeakMemory:
    """Peak resident memory of this process during an attempt (model and agent together).

    Linux lets a process reset its high-water mark (`/proc/self/clear_refs`, value 5), so the
    peak is per attempt; elsewhere it is the peak since the process started.
    """

    def reset(self) -> None:
        """Start a new measurement."""
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        """The peak since the last reset, in MiB."""
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Runner:
    """Runs the planned attempts of a benchmark into a results folder."""

    def __init__(
        self,
        settings: BenchSettings,
        challenges: list[Challenge],
        out: Path,
        progress: Progress | None = None,
        command: str = "",
    ) -> None:
        self.settings = settings
        self.command = command
        self.challenges = challenges
        self.out = out
        self.progress = progress or Progress()
        self._memory = PeakMemory()
        self._judge_model: ChatModel | None = None
        self._held: tuple[tuple[str, int], ChatModel] | None = None
        self._states: tempfile.TemporaryDirectory[str] | None = None
        """The held model's own folder of saved KV states, empty when it was loaded."""

    def plan(self) -> tuple[list[Planned], int]:
        """The attempts still to run, model by model and repeat by repeat; and the total."""
        done = {attempt.key for attempt in read_results(self.out)}
        every = [
            Planned(model, challenge, repeat)
            for model in self.settings.models
            for repeat in range(self.settings.repeats)
            for challenge in self.challenges
        ]
        todo = [p for p in every if p.key not in done]
        return todo, len(every)

    def run(self) -> list[Attempt]:
        """Run every attempt not yet in the results; return the ones run now. This process
        alone writes the results (`execute` may run attempts elsewhere)."""
        self.prepare()
        todo, total = self.plan()
        ran: list[Attempt] = []
        with (self.out / RESULTS_FILE).open("a", encoding="utf-8") as results:

            def save(attempt: Attempt) -> None:
                results.write(json.dumps(asdict(attempt)) + "\n")
                results.flush()
                os.fsync(results.fileno())
                ran.append(attempt)
                self.progress.finished(total - len(todo) + len(ran), total, attempt)

            try:
                self.execute(todo, save, total)
            finally:
                self._release()
        return ran

    def execute(self, todo: list[Planned], save: Callable[[Attempt], None], total: int) -> None:
        """Run `todo`, one attempt at a time in this process, passing each to `save`."""
        for done, planned in enumerate(todo, start=total - len(todo)):
            self.progress.started(done, total, planned)
            save(self.attempt(planned, self.model_for(planned)))

    def prepare(self) -> None:
        """Create the results folder, or check that it holds results of the same settings.

        `run` does this first; call it earlier to fail before anything is printed.
        """
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            path = self.out / SETTINGS_FILE
            if path.exists():
                conflicts = self.settings.conflicts(read_settings(self.out)["settings"])
                if conflicts:
                    raise ConfigError(
                        f"{self.out} holds results made with other settings "
                        f"({'; '.join(conflicts)}); use another --out"
                    )
            write_json_atomic(
                path,
                {
                    "settings": self.settings.to_json(),
                    "machine": describe_machine(),
                    "challenges": [c.name for c in self.challenges],
                    "command": self.command,
                    "updated": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            )
            _drop_partial_line(self.out / RESULTS_FILE)
        except OSError as err:
            raise StorageError(f"cannot write to {self.out}: {err.strerror or err}") from None

    def _options(self, seed: int) -> LlamaOptions:
        s = self.settings
        return LlamaOptions(
            s.n_ctx,
            s.threads,
            s.n_gpu_layers,
            seed,
            s.temperature,
            s.grammar_engine,
            think_tokens=s.think_tokens,
            thinking=s.thinking,
        )

    def _http(self, model: str) -> HttpOptions | None:
        """Where `model` is served: its own server, else `--base-url`; None: in-process."""
        s = self.settings
        url = dict(s.servers).get(model) or s.base_url
        return HttpOptions(url, None, s.constraint) if url else None

    def model_for(self, planned: Planned) -> ChatModel:
        """The model of an attempt, loaded with its repeat's seed.

        One model is held at a time, kept while attempts of the same model and repeat follow
        one another. A scripted model replays its replies from the start in every attempt,
        so it is reopened for each.
        """
        seed = self.settings.seed + planned.repeat
        if planned.model.startswith(SCRIPTED_PREFIX):
            return self._open(planned.model, seed)
        key = (planned.model, planned.repeat)
        if self._held is None or self._held[0] != key:
            self._release()  # let the previous model go before the next one loads
            # An attempt must not depend on what other runs saved: Gemma 3's restored states
            # changed its greedy replies (such models now save none; docs/performance.md).
            self._states = tempfile.TemporaryDirectory(prefix="offline-agent-kv-")
            self._held = (key, self._open(planned.model, seed, Path(self._states.name)))
        return self._held[1]

    def _release(self) -> None:
        """Let the held model go, and delete its folder of KV states."""
        self._held = None
        if self._states is not None:
            self._states.cleanup()
            self._states = None

    def _open(self, name: str, seed: int, state_dir: Path | None = None) -> ChatModel:
        http = self._http(name)
        return open_model(
            name, self._options(seed), self.settings.models_dir, http=http, state_dir=state_dir
        )

    def _judge(self, challenge: Challenge) -> ChatModel | None:
        """The judge model for an `llm` eval, loaded on first use."""
        name = self.settings.judge_model
        if challenge.ground.eval.type != "llm" or name is None:
            return None
        if self._judge_model is None:
            options = replace(self._options(0), temperature=0.0)
            self._judge_model = open_model(name, options, self.settings.models_dir)
        return self._judge_model

    def _run_settings(self, planned: Planned, workspace: Path, memory: Path | None) -> RunSettings:
        s = self.settings
        return RunSettings(
            profile=Profile("Agent", ROLE, (planned.challenge.task,)),
            model=planned.model,
            models_dir=s.models_dir,
            workspace=workspace,
            runs_dir=self.out / "runs",
            llama=self._options(s.seed + planned.repeat),
            agent=AgentConfig(
                max_steps=s.max_steps, samples=s.samples, time_limit=float(planned.challenge.cutoff)
            ),
            rules=s.rules_for(planned.model),
            http=self._http(planned.model),
            memory_dir=memory,
            continuous=True,
            python_timeout=min(30.0, float(planned.challenge.cutoff)),
            sandbox=s.sandbox,
            tools=tuple(Path(path) for path in s.tools),
            mcp=s.mcp,
        )

    def attempt(self, planned: Planned, model: ChatModel) -> Attempt:
        """Run one attempt in a fresh workspace and judge it."""
        challenge, s = planned.challenge, self.settings
        attempt = Attempt(
            model=planned.model,
            challenge=challenge.name,
            repeat=planned.repeat,
            seed=s.seed + planned.repeat,
            category=list(challenge.category),
            difficulty=challenge.difficulty,
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        folder = self.out / "workspaces" / _slug(planned.model) / f"r{planned.repeat}"
        workspace = folder / _slug(challenge.name)
        memory_dir = folder / f"{_slug(challenge.name)}.memory" if s.memory else None
        for stale in (workspace, memory_dir):
            if stale is not None and stale.exists():
                shutil.rmtree(stale)  # a previous try of this attempt was cut short
        prepare_workspace(challenge, workspace)
        _reseed(model, attempt.seed)
        settings = self._run_settings(planned, workspace, memory_dir)
        self._memory.reset()
        begin = time.perf_counter()
        result = self._run_agent(settings, model, attempt)
        attempt.wall_seconds = time.perf_counter() - begin
        attempt.peak_rss_mb = self._memory.peak_mb()
        attempt.status, attempt.reason, attempt.steps = result.status, result.reason, result.steps
        attempt.destroyed = destroyed_inputs(challenge, workspace)
        verdict = judge(challenge, workspace, llm=self._judge(challenge))
        attempt.passed, attempt.score, attempt.judged = (
            verdict.passed and not attempt.destroyed,  # a run that wrecked its input failed
            verdict.score,
            verdict.reason,
        )
        if verdict.passed and attempt.destroyed:
            attempt.judged = f"{verdict.reason}; but it destroyed {', '.join(attempt.destroyed)}"
        return attempt

    def _run_agent(self, settings: RunSettings, model: ChatModel, attempt: Attempt) -> RunResult:
        """The agent's run, recorded in `runs/`; a backend failure ends it as an error."""
        run = Run.new(settings, _Tally(attempt), None, {"bench": list(attempt.key)}, model)
        attempt.run_id = run.record.id
        try:
            return run.execute()
        except AgentError as err:  # e.g. a server that went away: this attempt failed
            return RunResult("error", run.agent.steps_taken, str(err))


def _reseed(model: ChatModel, seed: int) -> None:
    """Restart the sampler's random numbers, so an attempt does not depend on the ones before."""
    guided = getattr(model, "guided", None)
    if guided is not None:
        guided.seed(seed)


def _drop_partial_line(path: Path) -> None:
    """Cut a results file back to its last whole line (a crash can leave half of one)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
