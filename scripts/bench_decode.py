"""Benchmark decoding and agent steps on the registered models; write docs/performance.md.

For each model, one real agent prompt (the Washington goal, built with PromptBuilder):

    free       create_completion with no grammar and the end-of-turn tokens banned, run for
               exactly as many tokens as the constrained reply just before it
    llama      llama.cpp's GBNF grammar from the reply schema (a full mask every token)
    llguidance our loop in offline_agent/llm/guidance.py (check first, mask on rejection,
               forced tokens fast-forwarded)

Engines are interleaved within each repeat, so a busy machine slows them alike; the ratio
of each engine to the free run of the same length is taken per repeat, then the median.
"non-model ms/token" is wall time minus llama.cpp's own decode time, per token: the cost of
sampling and grammar work, which load on other cores does not hide.

Then a short real run per engine (the Agent, continuous, Washington goal): seconds per
step and how much of each prompt came from the KV cache.

Usage: python scripts/bench_decode.py [--models smollm2-135m,gemma3-270m] [--repeats 3]
       [--max-tokens 512] [--steps 5] [--engines llguidance,llama] [--no-write]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import llama_cpp
from benchlib import log, machine, write_doc_block

from offline_agent.agent import Agent, AgentConfig
from offline_agent.errors import FormatError
from offline_agent.llm.llama import LlamaModel
from offline_agent.llm.options import LlamaOptions
from offline_agent.modelstore import default_models_dir, load_registry, resolve
from offline_agent.prompt import PromptBuilder
from offline_agent.records import Completion, Message, Profile, Step, Usage
from offline_agent.reply import parse_reply, reply_schema
from offline_agent.subagents import SubAgents
from offline_agent.tools import ToolContext, ToolRegistry, builtin_tools
from offline_agent.workspace import Workspace

GOAL = "Write the word Washington to a file named output.txt"
PROFILE = Profile("FileBot", "an assistant that manages files", (GOAL,))
DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
Engine = Literal["llguidance", "llama"]


@dataclass
class Run:
    """One timed decode."""

    tokens: int
    seconds: float  # decoding only, prompt evaluation excluded
    model_seconds: float  # of which llama.cpp's own decode calls
    valid: bool | None = None

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def overhead_ms(self) -> float:
        return 1000 * (self.seconds - self.model_seconds) / max(1, self.tokens)


def load(name: str, n_ctx: int, threads: int | None) -> LlamaModel:
    models_dir = default_models_dir()
    resolved = resolve(name, load_registry(None), models_dir)
    return LlamaModel(
        resolved.path,
        resolved.chat_format or "template",
        LlamaOptions(n_ctx=n_ctx, n_threads=threads),
        name=name,
    )


def with_engine(model: LlamaModel, engine: Engine) -> None:
    model.options = dataclasses.replace(model.options, grammar_engine=engine)


def perf_reset(model: LlamaModel) -> None:
    llama_cpp.llama_perf_context_reset(model._llm._ctx.ctx)


def perf_model_seconds(model: LlamaModel) -> float:
    perf = llama_cpp.llama_perf_context(model._llm._ctx.ctx)
    return float(perf.t_eval_ms + perf.t_p_eval_ms) / 1000


def constrained(
    model: LlamaModel,
    engine: Engine,
    messages: list[Message],
    tools: ToolRegistry,
    schema: dict[str, Any],
    max_tokens: int,
) -> tuple[Run, Completion]:
    with_engine(model, engine)
    model.complete(messages, schema=schema, max_tokens=1)  # prompt into the KV cache
    perf_reset(model)
    completion = model.complete(messages, schema=schema, max_tokens=max_tokens)
    decode = completion.total_seconds - completion.prompt_seconds
    try:
        parse_reply(completion, tools, schema)
        valid = True
    except FormatError as err:
        log(f"    invalid {engine} reply: {err}")
        valid = False
    # The prompt's last token is re-evaluated (a cache hit on all but it); its time is in
    # llama.cpp's counters and in prompt_seconds, so it is subtracted from both.
    model_seconds = perf_model_seconds(model) - completion.prompt_seconds
    run = Run(completion.usage.completion_tokens, decode, model_seconds, valid)
    return run, completion


def free(model: LlamaModel, messages: list[Message], n_tokens: int) -> Run:
    llm = model._llm
    _, tokens = model._tokens(messages)
    ban = {
        t: -1e9 for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t)
    }
    llm.create_completion(tokens, max_tokens=1, temperature=0.0)
    perf_reset(model)
    start = time.perf_counter()
    out: Any = llm.create_completion(
        tokens, max_tokens=n_tokens, temperature=0.0, repeat_penalty=1.0, logit_bias=ban, stop=[]
    )
    wall = time.perf_counter() - start
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    got = int(out["usage"]["completion_tokens"])
    if got != n_tokens:
        log(f"    free run stopped at {got} of {n_tokens} tokens")
    prompt = float(perf.t_p_eval_ms) / 1000
    return Run(got, wall - prompt, float(perf.t_eval_ms) / 1000)


@dataclass
class DecodeResult:
    model: str
    engine: str
    rates: list[float]
    free_rates: list[float]
    ratios: list[float]
    overhead_ms: list[float]
    free_overhead_ms: list[float]
    tokens: list[int]
    valid: int
    total: int


def bench_decode(
    model: LlamaModel, engines: list[Engine], repeats: int, max_tokens: int
) -> list[DecodeResult]:
    tools = builtin_tools(memory=False)
    schema = reply_schema(tools)
    messages = PromptBuilder(PROFILE, tools, model, max_tokens).build([])
    prompt_tokens = model.count_tokens(messages)
    log(f"  prompt: {prompt_tokens} tokens")
    results = {e: DecodeResult(model.name, e, [], [], [], [], [], [], 0, 0) for e in engines}
    for r in range(repeats):
        order = engines if r % 2 == 0 else engines[::-1]
        for engine in order:
            run, _ = constrained(model, engine, messages, tools, schema, max_tokens)
            base = free(model, messages, run.tokens)
            res = results[engine]
            res.rates.append(run.rate)
            res.free_rates.append(base.rate)
            res.ratios.append(run.rate / base.rate)
            res.overhead_ms.append(run.overhead_ms)
            res.free_overhead_ms.append(base.overhead_ms)
            res.tokens.append(run.tokens)
            res.valid += bool(run.valid)
            res.total += 1
            log(
                f"  {engine:>10} repeat {r + 1}: {run.tokens} tokens, {run.rate:.1f} tok/s "
                f"vs free {base.rate:.1f} ({run.rate / base.rate:.2f}x), "
                f"non-model {run.overhead_ms:.2f} vs {base.overhead_ms:.2f} ms/token"
            )
    return list(results.values())


@dataclass
class StepResult:
    model: str
    engine: str
    seconds: list[float]
    prompt_tokens: list[int]
    cached_tokens: list[int]
    statuses: list[str]
    outcome: str


def bench_steps(model: LlamaModel, engine: Engine, steps: int) -> StepResult:
    with_engine(model, engine)
    llm = model._llm
    llm.reset()  # type: ignore[no-untyped-call]  # a cold cache, as at the start of a real run
    log_ = StepLog()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.create(Path(tmp) / "ws")
        agent = Agent(
            PROFILE,
            model,
            builtin_tools(memory=False),
            ToolContext(workspace=ws, agents=SubAgents(model)),
            AgentConfig(max_steps=steps),
            record=log_,
        )
        result = agent.run()
        done = (ws.root / "output.txt").is_file() and "Washington" in (
            ws.root / "output.txt"
        ).read_text(encoding="utf-8", errors="replace")
    records = [
        (s.seconds, s.completion.usage if s.completion else Usage(), s.status) for s in log_.steps
    ]
    usages = [s[1] for s in records]
    res = StepResult(
        model.name,
        engine,
        [s[0] for s in records],
        [u.prompt_tokens for u in usages],
        [u.cached_tokens for u in usages],
        [s[2] for s in records],
        f"{result.status} after {result.steps} steps; output.txt has Washington: {done}",
    )
    log(f"  steps with {engine}: {res.seconds} s, cached {res.cached_tokens}, {res.outcome}")
    return res


class StepLog:
    """Collects the agent's steps (the StepSink protocol)."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def write_command(self, step: Step) -> None:
        pass

    def write_step(self, step: Step) -> None:
        self.steps.append(step)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def render(decodes: list[DecodeResult], steps: list[StepResult], args: argparse.Namespace) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `scripts/bench_decode.py "
        f"--repeats {args.repeats} --max-tokens {args.max_tokens} --steps {args.steps}` "
        f"on {machine(f'llama-cpp-python {llama_cpp.__version__}')}.",
        "",
        "Decoding one reply to the first Washington prompt at temperature 0; medians over "
        "repeats. *free* is the same prompt decoded without a grammar for the same number of "
        "tokens, measured right after the constrained run.",
        "",
        "| model | engine | tokens | constrained tok/s | free tok/s | ratio | "
        "non-model ms/token (constrained / free) | valid |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in decodes:
        lines.append(
            f"| {d.model} | {d.engine} | {med([float(t) for t in d.tokens]):.0f} "
            f"| {med(d.rates):.1f} | {med(d.free_rates):.1f} | {med(d.ratios):.2f}x "
            f"| {med(d.overhead_ms):.2f} / {med(d.free_overhead_ms):.2f} "
            f"| {d.valid}/{d.total} |"
        )
    if steps:
        lines += [
            "",
            f"A real run of the Washington goal (continuous, at most {args.steps} steps, cold "
            "KV cache at the start): seconds per step and prompt tokens served from the cache.",
            "",
            "| model | engine | s/step (median) | s/step (each) | prompt tokens | cached | "
            "cached share (steps 2+) | valid replies | outcome |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in steps:
            later_p, later_c = sum(s.prompt_tokens[1:]), sum(s.cached_tokens[1:])
            share = f"{later_c / later_p:.0%}" if later_p else "-"
            lines.append(
                f"| {s.model} | {s.engine} | {med(s.seconds):.2f} "
                f"| {' '.join(f'{x:.1f}' for x in s.seconds)} "
                f"| {' '.join(map(str, s.prompt_tokens))} "
                f"| {' '.join(map(str, s.cached_tokens))} | {share} "
                f"| {sum(x in ('ok', 'finished') for x in s.statuses)}/{len(s.statuses)} "
                f"| {s.outcome} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--engines", default="llguidance,llama")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=512, help="limit of a reply")
    parser.add_argument("--steps", type=int, default=5, help="agent steps per engine; 0: none")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    engines: list[Engine] = []
    for e in args.engines.split(","):
        if e not in ("llguidance", "llama"):
            parser.error(f"unknown engine {e!r}")
        engines.append("llguidance" if e == "llguidance" else "llama")
    decodes: list[DecodeResult] = []
    steps: list[StepResult] = []
    for name in args.models.split(","):
        log(f"{name}:")
        model = load(name, args.n_ctx, args.threads)
        decodes += bench_decode(model, engines, args.repeats, args.max_tokens)
        if args.steps > 0:
            steps += [bench_steps(model, e, args.steps) for e in engines]
    block = render(decodes, steps, args)
    print(block)
    if not args.no_write:
        write_doc_block(DOC, "bench_decode", block, "Performance", "Decoding speed and agent steps")
        log(f"written to {DOC}")


if __name__ == "__main__":
    main()
