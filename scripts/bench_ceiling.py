"""The ceiling of content: how much of a suite the bare model passes when the agent's work is
done for it, and only the answer is left to write.

For each challenge the model is asked once, in its own chat format, for the full text of the
file the goal asks for (the first file the goal names that does not exist yet, else the
first it names), with the text of every input file in view; it answers in one fenced block,
under the grammar of the code turn (`offline_agent.codeturn`). The block is written to that
file and the challenge's own judge decides. There are no commands, no steps, no rules: a
challenge failed here needs content the model does not write even when handed everything,
so no grammar or prompt of the agent's can be expected to pass it with this model (a
program the agent ran could; these models do not write such programs). Comparing a model's
ceiling with its score in `offline-agent bench` tells the agent's limits from the model's.

Usage: python scripts/bench_ceiling.py [--model NAME ...] [--suite builtin|DIR]
       [--models-dir DIR] [--write]
`--write` puts the table between the `ceiling` markers of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchlib import log, machine, write_doc_block

from offline_agent.bench.challenge import Challenge, load_suite, prepare_workspace
from offline_agent.bench.judge import judge
from offline_agent.codeturn import code_text
from offline_agent.errors import AgentError
from offline_agent.llm import open_model
from offline_agent.llm.base import ChatModel
from offline_agent.llm.options import LlamaOptions
from offline_agent.modelstore import default_models_dir
from offline_agent.records import Message
from offline_agent.reply import CODE_SUFFIX, FENCE, LANGUAGE, code_schema
from offline_agent.state import Snapshot, named_paths
from offline_agent.tools import ToolContext
from offline_agent.workspace import Workspace

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
INPUT_CHARS = 1500
"""The most characters of each input file shown (the suite's inputs are all shorter)."""
ANSWER_TOKENS = 512


def question(challenge: Challenge, workspace: Path) -> tuple[str, Message]:
    """The file to write and the one message that asks for its text."""
    snapshot = Snapshot.take(ToolContext(workspace=Workspace(workspace)))
    named = named_paths([challenge.task], snapshot)
    missing = [path for path in named if path not in snapshot.files]
    target = (missing or named or ["output.txt"])[0]
    shown = "".join(
        f"{path}:\n{FENCE}\n{(workspace / path).read_text(errors='replace')[:INPUT_CHARS]}\n"
        f"{FENCE}\n\n"
        for path in snapshot.files
    )
    files = f"The files of the workspace:\n\n{shown}" if shown else ""
    return target, Message(
        role="user",
        content=f"{files}Task: {challenge.task}\n\nWrite the full text of {target} once the "
        f"task is done, between {FENCE} lines.",
    )


def attempt(model: ChatModel, challenge: Challenge) -> tuple[bool, str, str]:
    """(passed, the file written, its text) for one challenge."""
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        prepare_workspace(challenge, workspace)
        target, message = question(challenge, workspace)
        language = LANGUAGE if target.endswith(CODE_SUFFIX) else ""
        try:
            answer = model.complete(
                [message],
                schema=code_schema(language, ANSWER_TOKENS),
                max_tokens=ANSWER_TOKENS + 16,
            )
        except AgentError as err:  # a prompt past the context, a backend error: a fail
            return False, target, f"({err})"
        text = code_text(answer.text, language)
        path = workspace / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return judge(challenge, workspace, timeout=20).passed, target, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--suite", default="builtin")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    models = args.model or ["smollm2-135m", "gemma3-270m"]
    challenges = load_suite(args.suite)
    results: dict[str, list[bool]] = {}
    for name in models:
        model = open_model(name, LlamaOptions(n_ctx=4096, seed=0, temperature=0.0),
                           args.models_dir or default_models_dir())  # fmt: skip
        results[name] = []
        for challenge in challenges:
            started = time.perf_counter()
            passed, target, text = attempt(model, challenge)
            results[name].append(passed)
            log(f"{name} {challenge.name}: {'pass' if passed else 'fail'} "
                f"({time.perf_counter() - started:.1f} s) {target} <- {text[:60]!r}")  # fmt: skip
    lines = [
        f"Suite `{args.suite}`, one greedy answer per challenge. Machine: {machine()}.",
        "",
        "| challenge | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
        *(
            f"| {c.name} | " + " | ".join("✅" if results[m][i] else "❌" for m in models) + " |"
            for i, c in enumerate(challenges)
        ),
        "| **passed** | "
        + " | ".join(f"**{sum(results[m])}/{len(challenges)}**" for m in models)
        + " |",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_doc_block(DOC, "ceiling", table, "Benchmarks", "The ceiling of content")


if __name__ == "__main__":
    main()
