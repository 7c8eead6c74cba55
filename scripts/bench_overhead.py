"""Benchmark what an agent step spends outside the model; write docs/performance.md.

Real runs with the default model, built the way `offline-agent run` builds them (memory in
a fresh folder, or none): per step, the step's wall time against the model call's own
`completion.total_seconds`, and where the rest goes. Each part is timed by wrapping the
agent's collaborators (never by changing them):

    prompt     PromptBuilder.build, of which `counting` is model.count_tokens inside it
    recall     memory search for the next prompt (embedding the query, the index search)
    remember   storing each exchange in memory (embedding it, saving the store)
    parse      validating the reply against the schema
    tools      running the command
    tokenize   inside model.complete but outside its timer: rendering and tokenising
    other      the rest of the step (results cut to size, loop checks, records)

Usage: python scripts/bench_overhead.py [--steps 6] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
from benchlib import log, machine, write_doc_block

import offline_agent.agent as agent_module
from offline_agent.agent import AgentConfig, SilentEvents
from offline_agent.llm import LlamaOptions
from offline_agent.modelstore import default_models_dir, load_registry
from offline_agent.records import Profile, Step
from offline_agent.session import RunSettings, build_agent

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
ROLE = "an assistant that manages files"
GOALS = {
    "write": "Write the word Washington to a file named output.txt",
    "read-write": "Read the file notes.txt and write its lines in reverse order to a file "
    "named reversed.txt",
}
NOTES = "apples\nbananas\ncherries\n"
PARTS = ("prompt", "counting", "recall", "remember", "parse", "tools", "tokenize", "other")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class StepTimes:
    wall: float
    model: float
    parts: dict[str, float]
    counts: int


@dataclass
class Timers:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: int = 0

    def wrap(self, name: str, fn: F) -> F:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                if name == "counting":
                    self.counts += 1

        return timed  # type: ignore[return-value]


class Collect:
    """A step sink that keeps each step's times and starts the timers afresh."""

    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.steps: list[StepTimes] = []

    def write_command(self, step: Step) -> None:
        """Nothing to persist."""

    def write_step(self, step: Step) -> None:
        """Keep the step's times."""
        parts = dict(self.timers.seconds)
        model = step.completion.total_seconds if step.completion else 0.0
        parts["tokenize"] = parts.pop("complete", 0.0) - model
        parts["other"] = step.seconds - model - sum(v for k, v in parts.items() if k != "counting")
        self.steps.append(StepTimes(step.seconds, model, parts, self.timers.counts))
        self.timers.seconds.clear()
        self.timers.counts = 0


def run(goal: str, memory: bool, steps: int, folder: Path, *, wait: bool) -> list[StepTimes]:
    """One real run; the times of each of its steps.

    With memory, `wait` lets the embedder finish loading before the first step; otherwise it
    loads in the background from step 1's reply on, as in `offline-agent run`, and storing
    step 1's exchange waits for it.
    """
    settings = RunSettings(
        profile=Profile("FileBot", ROLE, (GOALS[goal],)),
        model=None,
        models_dir=default_models_dir(),
        workspace=folder / "ws",
        runs_dir=folder / "runs",
        llama=LlamaOptions(),
        agent=AgentConfig(max_steps=steps),
        memory_dir=folder / "memory" if memory else None,
        continuous=True,
    )
    agent = build_agent(settings, SilentEvents(), None)
    (folder / "ws" / "notes.txt").write_text(NOTES)
    timers = Timers()
    sink = Collect(timers)
    agent.record = sink
    agent.prompt.build = timers.wrap("prompt", agent.prompt.build)  # type: ignore[method-assign]
    model: Any = agent.model
    model.count_tokens = timers.wrap("counting", model.count_tokens)
    model.complete = timers.wrap("complete", model.complete)
    if agent.memory is not None:
        memory_: Any = agent.memory
        memory_.recall = timers.wrap("recall", memory_.recall)
        memory_.remember = timers.wrap("remember", memory_.remember)
        if wait:
            memory_.store()
            memory_.embedder.embed(["warm-up"])
    loop: Any = agent_module  # the loop calls these by their names in its module
    originals = (loop.parse_reply, loop.execute_command)
    loop.parse_reply = timers.wrap("parse", loop.parse_reply)
    loop.execute_command = timers.wrap("tools", loop.execute_command)
    try:
        result = agent.run()
    finally:
        loop.parse_reply, loop.execute_command = originals
    log(f"  {goal}, memory {memory}, wait {wait}: {result.status} after {result.steps} steps")
    return sink.steps


def render(rows: list[tuple[str, list[StepTimes]]], args: argparse.Namespace) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `scripts/bench_overhead.py --steps "
        f"{args.steps}` on {machine(f'llama-cpp-python {llama_cpp.__version__}')}.",
        "",
        f"Real runs of the default model ({load_registry().default}), at most {args.steps} "
        "steps each. *Outside the model* is a step's wall time minus the model call's own "
        "time; its parts are means per step in milliseconds (*counting*, the calls to "
        "`count_tokens`, is part of *prompt* and *other*). The model's cache of saved KV states "
        "is the user's, as in `offline-agent run`.",
        "",
        "| run | steps | s/step | model s, step 1 | outside the model | largest step share "
        f"| {' | '.join(PARTS)} | counts/step |",
        f"|---|---|---|---|---|---|{'---|' * len(PARTS)}---|",
    ]
    for name, steps in rows:
        wall = sum(s.wall for s in steps)
        outside = wall - sum(s.model for s in steps)
        worst = max((s.wall - s.model) / s.wall for s in steps)
        parts = " | ".join(
            f"{1000 * statistics.mean(s.parts.get(p, 0.0) for s in steps):.0f}" for p in PARTS
        )
        counts = statistics.mean(s.counts for s in steps)
        lines.append(
            f"| {name} | {len(steps)} | {wall / len(steps):.2f} | {steps[0].model:.2f} "
            f"| {outside / wall:.1%} "
            f"| {worst:.1%} | {parts} | {counts:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    runs = {  # the first run is the first in this process to load the embedder (and torch)
        "write, memory on, embedder loading after step 1's reply": ("write", True, False),
        "write, memory off": ("write", False, True),
        "write, memory on": ("write", True, True),
        "read-write, memory off": ("read-write", False, True),
        "read-write, memory on": ("read-write", True, True),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (goal, memory, wait)) in enumerate(runs.items()):
            rows.append((name, run(goal, memory, args.steps, Path(tmp) / str(i), wait=wait)))
    block = render(rows, args)
    print(block)
    if not args.no_write:
        write_doc_block(DOC, "bench_overhead", block, "Performance", "Time outside the model")
        log(f"written to {DOC}")


if __name__ == "__main__":
    main()
