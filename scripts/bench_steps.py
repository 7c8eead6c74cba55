"""Benchmark the KV-cache effect of the prompt layout, and start-up; write docs/performance.md.

A 30-step run with a scripted history (the same replies and command results each time, and
recalled memories: the three latest "earlier" events, so one new each step), fed to the real
model in three layouts:

    append         ours: system message, then per step its request, reply and result; the
                   request stays in the history, so a prompt plus its reply begins the next
                   prompt, and a memory is shown once while it is in view
    rebuild-last   the layout before that: the request (all three memories, the goals) is
                   rebuilt at the end of every prompt and not kept, so the reply after it is
                   evaluated again
    rebuild-early  the request right after the system message, as classic Auto-GPT laid it
                   out: everything behind it is evaluated again every step

Each step evaluates the prompt, then the scripted reply is put in the KV cache as decoding
it would (its tokens evaluated after the prompt's, in one batch: faster than decoding them
one by one, the same for every layout). What the next prompt finds of it in the cache is the
layout's doing. Also `offline-agent --help` start-up time and the time from a cold
interpreter to the first model token with the default model: with no saved KV state, then
with the state of the prompt's opening that the first process saved (see
`offline_agent/llm/kvcache.py`), for the same goal and for another; and the same from
the start of a real `offline-agent run` with long-term memory on, as by default.

Usage: python scripts/bench_steps.py [--model smollm2-135m] [--steps 30] [--n-ctx 4096]
       [--layouts append,rebuild-last,rebuild-early] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from benchlib import log, machine, write_doc_block

from offline_agent.llm.llama import LlamaModel, _Decode
from offline_agent.llm.options import LlamaOptions
from offline_agent.modelstore import default_models_dir, load_registry, resolve
from offline_agent.prompt import PromptBuilder
from offline_agent.records import Message, Profile
from offline_agent.tools import builtin_tools

GOAL = "Write the word Washington to a file named output.txt"
OTHER_GOAL = "Find the capital of France and write it to a file named capital.txt"
PROFILE = Profile("FileBot", "an assistant that manages files", (GOAL,))
DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
ROOT = Path(__file__).resolve().parent.parent
FIRST_TOKEN = """
import time
start = time.perf_counter()
from offline_agent.llm import LlamaOptions, open_model
from offline_agent.modelstore import default_models_dir, load_registry
from offline_agent.prompt import PromptBuilder
from offline_agent.records import Profile
from offline_agent.reply import reply_schema
from offline_agent.tools import builtin_tools
tools = builtin_tools(memory=False)
model = open_model(load_registry().default, LlamaOptions(), default_models_dir())
loaded = time.perf_counter()
profile = Profile("FileBot", "an assistant that manages files", ({goal!r},))
messages = PromptBuilder(profile, tools, model, 512).build([])
model.complete(messages, schema=reply_schema(tools), max_tokens=1)
print(loaded - start, time.perf_counter() - start)
"""


def exchange(i: int) -> tuple[Message, Message]:
    """The i-th scripted (reply, result) pair: varied, realistic sizes."""
    name = f"notes_{i}.txt"
    text = f"step {i} " * 8
    reply = {
        "thoughts": {
            "text": f"I should keep notes on step {i} in a file.",
            "reasoning": "Notes help me remember what I did.",
            "plan": f"- write {name}\n- read it back\n- finish",
            "criticism": "I could be faster.",
        },
        "command": {"name": "write_file", "args": {"filename": name, "text": text}},
    }
    result = f"Command write_file returned: Wrote {len(text)} characters to {name}."
    return (
        {"role": "assistant", "content": json.dumps(reply)},
        {"role": "user", "content": result},
    )


def memories(i: int) -> list[str]:
    """Memories recalled at step i: the three latest earlier events, so one is new each step."""
    return [f"Earlier: wrote notes_{j}.txt, result ok" for j in range(i, max(0, i - 3), -1)]


@dataclass
class Layout:
    name: str
    seconds: list[float]
    evaluated: list[int]
    prompt: list[int]


def decode_scripted(model: LlamaModel, messages: list[Message], reply: str) -> None:
    """Leave the model as if it had decoded `reply` after `messages`: its tokens evaluated
    behind the prompt's in the KV cache, and known to the model as its last reply."""
    text, tokens = model._tokens(messages)
    reply_tokens = model._tokenize(reply.encode("utf-8"))
    model._llm.n_tokens = len(tokens)
    model._llm.eval(reply_tokens)
    model._decodes = [_Decode(text, tokens, reply_tokens)]


def run_layout(model: LlamaModel, name: str, steps: int) -> Layout:
    tools = builtin_tools(memory=True)
    if name == "append":
        builder = PromptBuilder(PROFILE, tools, model, 512)
    else:  # the builder's settings before requests were kept
        builder = PromptBuilder(PROFILE, tools, model, 512, memory_share=0.25, keep_share=0.5)
    model._llm.reset()  # type: ignore[no-untyped-call]
    model._decodes = []
    history: list[Message] = []
    out = Layout(name, [], [], [])
    for i in range(steps):
        recalled = memories(i)
        if name == "append":  # as the agent recalls: not what a request in view shows
            in_view = "\n".join(m["content"] for m in history[builder.first_kept :])
            recalled = [m for m in recalled if m not in in_view]
        messages = builder.build(history, recalled)
        if name == "rebuild-early":
            messages = [messages[0], messages[-1], *messages[1:-1]]
        reply, result = exchange(i)
        start = time.perf_counter()
        completion = model.complete(messages, schema=None, max_tokens=1)
        decode_scripted(model, messages, reply["content"])
        out.seconds.append(time.perf_counter() - start)
        out.prompt.append(completion.usage.prompt_tokens)
        out.evaluated.append(completion.usage.prompt_tokens - completion.usage.cached_tokens)
        history += [messages[-1], reply, result] if name == "append" else [reply, result]
    log(f"  {name}: evaluated {out.evaluated}")
    return out


def help_time(repeats: int = 5) -> float:
    exe = Path(sys.executable).parent / "offline-agent"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def environment(home: Path) -> dict[str, str]:
    """A child process's environment: `home` as $OFFLINE_AGENT_HOME (its KV states and
    runs), the models where they are."""
    return {
        **os.environ,
        "OFFLINE_AGENT_HOME": str(home),
        "OFFLINE_AGENT_MODELS": str(default_models_dir()),
    }


def first_token_time(goal: str, home: Path) -> tuple[float, float, float]:
    """(seconds to a loaded model, to the first token, wall of the whole process).

    `home` is the process's $OFFLINE_AGENT_HOME, where the KV states of prompt openings are
    saved (the models stay where they are).
    """
    env = environment(home)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", FIRST_TOKEN.format(goal=goal)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    wall = time.perf_counter() - start
    loaded, first = (float(x) for x in done.stdout.split()[-2:])
    return loaded, first, wall


def run_first_token(goal: str, home: Path) -> tuple[float, float]:
    """A real `offline-agent run` (one step, continuous, long-term memory on as by default):
    (seconds from starting the process to the first token, to the end of step 1).

    The first token comes when step 1's prompt has been evaluated: the step's start (its
    record's time less its duration) plus the model call's prompt seconds. Building the
    prompt before the call (under 10 ms) and sampling that token are left out.
    """
    env = environment(home)
    exe = Path(sys.executable).parent / "offline-agent"
    with tempfile.TemporaryDirectory() as workspace:
        start = time.time()
        done = subprocess.run(
            [str(exe), "run", "--goal", goal, "--continuous", "--max-steps", "1",
             "--workspace", workspace],
            check=False, capture_output=True, text=True, env=env,
        )  # fmt: skip
    if done.returncode not in (0, 10):  # 10: the one-step limit reached without finishing
        raise SystemExit(f"offline-agent run failed ({done.returncode}): {done.stderr.strip()}")
    (steps,) = (home / "runs").glob("*/steps.jsonl")
    entry = next(e for e in map(json.loads, steps.read_text().splitlines()) if e["type"] == "step")
    shutil.rmtree(steps.parent)  # the next run's record is then the only one
    step = entry["step"]
    step_start = entry["time"] - step["seconds"] - start
    return step_start + step["completion"]["prompt_seconds"], entry["time"] - start


def startup_rows() -> list[str]:
    """The start-up table: --help, and the first token without and with a saved KV state."""
    help_s = help_time()
    with tempfile.TemporaryDirectory() as home:
        loaded, cold, cold_wall = first_token_time(GOAL, Path(home))
        _, same, _ = first_token_time(GOAL, Path(home))
        _, other, other_wall = first_token_time(OTHER_GOAL, Path(home))
    with tempfile.TemporaryDirectory() as home:
        run_cold, run_cold_step = run_first_token(GOAL, Path(home))
        run_warm, run_warm_step = run_first_token(OTHER_GOAL, Path(home))
    return [
        "| start-up | seconds |",
        "|---|---|",
        f"| `offline-agent --help` (median of 5) | {help_s:.2f} |",
        f"| cold interpreter to the default model loaded | {loaded:.2f} |",
        "| cold interpreter to the first model token (first prompt evaluated), no saved KV "
        f"state | {cold:.2f} |",
        "| the same, the prompt's opening restored from the state the run above saved, "
        f"same goal | {same:.2f} |",
        f"| the same, another goal (its first run) | {other:.2f} |",
        "| the whole process, interpreter start and exit included: no saved state / "
        f"restored | {cold_wall:.2f} / {other_wall:.2f} |",
        "| `offline-agent run` (long-term memory on, the default), from the process's start "
        f"to the first token: no saved state / restored, another goal | {run_cold:.2f} / "
        f"{run_warm:.2f} |",
        "| the same, to the end of step 1 (its reply, the command, and the memory of the "
        f"step stored: the embedder loaded) | {run_cold_step:.2f} / {run_warm_step:.2f} |",
    ]


def render(layouts: list[Layout], startup: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `scripts/bench_steps.py --model "
        f"{args.model} --steps {args.steps} --n-ctx {args.n_ctx}` on "
        f"{machine(f'llama-cpp-python {llama_cpp.__version__}')}.",
        "",
        f"{args.steps} steps of scripted history, context {args.n_ctx}: each step's prompt "
        "evaluated, then its scripted reply (about 125 tokens) put in the KV cache as "
        "decoding it would. *Evaluated per step*: the prompt's tokens not found in the cache.",
        "",
        "| layout | s/step, mean | s/step, median | s/step, steps 1-10 / 11-20 / 21-30 "
        "| prompt tokens, mean | evaluated per step, mean | served from the KV cache |",
        "|---|---|---|---|---|---|---|",
    ]
    for lay in layouts:
        thirds = [lay.seconds[i : i + 10] for i in range(0, len(lay.seconds), 10)]
        cached = 1 - sum(lay.evaluated[1:]) / max(1, sum(lay.prompt[1:]))
        lines.append(
            f"| {lay.name} | {statistics.mean(lay.seconds):.2f} "
            f"| {statistics.median(lay.seconds):.2f} "
            f"| {' / '.join(f'{statistics.mean(t):.2f}' for t in thirds if t)} "
            f"| {statistics.mean(lay.prompt):.0f} | {statistics.mean(lay.evaluated):.0f} "
            f"| {cached:.0%} (steps 2+) |"
        )
    return "\n".join([*lines, "", *startup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--layouts", default="append,rebuild-last,rebuild-early")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    startup = startup_rows()
    log("\n".join(startup))
    resolved = resolve(args.model, load_registry(None), default_models_dir())
    model = LlamaModel(
        resolved.path,
        resolved.chat_format or "template",
        LlamaOptions(n_ctx=args.n_ctx),
        name=args.model,
    )
    layouts = [run_layout(model, n, args.steps) for n in args.layouts.split(",")]
    block = render(layouts, startup, args)
    print(block)
    if not args.no_write:
        write_doc_block(
            DOC, "bench_steps", block, "Performance", "Prompt layout and the KV cache; start-up"
        )
        log(f"written to {DOC}")


if __name__ == "__main__":
    main()
