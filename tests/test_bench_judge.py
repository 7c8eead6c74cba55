"""The judge, by agbenchmark's rules, on tiny hand-made challenges."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from offline_agent.bench.challenge import Challenge, load_challenge
from offline_agent.bench.judge import JUDGE_SCHEMA, Output, judge
from offline_agent.records import Completion, Message


def make(
    tmp_path: Path,
    files: list[str],
    *,
    kind: str = "file",
    custom: dict[str, str] | None = None,
    examples: str | None = None,
    **ground: Any,
) -> Challenge:
    """A challenge in tmp_path/challenge judging `files` with the given ground fields."""
    folder = tmp_path / "challenge"
    data = {
        "name": "Tiny",
        "task": "Write the capital of the USA to a .txt file",
        "category": ["general"],
        "cutoff": 60,
        "ground": {"answer": "Washington", "files": files, "eval": {"type": kind}, **ground},
    }
    if kind == "llm":
        data["ground"]["eval"].update(scoring="percentage", template="reference", examples=examples)
    folder.mkdir()
    (folder / "data.json").write_text(json.dumps(data))
    for name, text in (custom or {}).items():
        (folder / "custom_python").mkdir(exist_ok=True)
        (folder / "custom_python" / name).write_text(text)
    return load_challenge(folder)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


# --- file eval -------------------------------------------------------------------------


def test_extension_matches_every_top_level_file_and_any_may_pass(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, [".txt"], should_contain=["Washington"])
    (ws / "a.txt").write_text("Paris")
    (ws / "b.txt").write_text("Washington D.C.")
    (ws / "c.md").write_text("Washington")
    verdict = judge(challenge, ws)
    assert verdict.passed and verdict.score == 1.0
    assert verdict.reason == "passed: b.txt"
    assert verdict.outputs == (
        Output("a.txt", "Paris", 0.0),
        Output("b.txt", "Washington D.C.", 1.0),
    )


def test_extension_ignores_hidden_files_and_subfolders(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, [".txt"], should_contain=["Washington"])
    (ws / ".hidden.txt").write_text("Washington")
    (ws / "sub").mkdir()
    (ws / "sub" / "deep.txt").write_text("Washington")
    (ws / "folder.txt").mkdir()
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason == "no file matches '.txt'"
    assert verdict.outputs == (Output(".txt", "Error: no file matches '.txt'\n", 0.0),)


def test_every_should_contain_word_is_needed(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["out.txt"], should_contain=["Washington", "D.C."])
    (ws / "out.txt").write_text("Washington")
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason == "out.txt lacks 'D.C.'"


def test_should_not_contain(tmp_path: Path, ws: Path) -> None:
    challenge = make(
        tmp_path, ["out.txt"], should_contain=["Washington"], should_not_contain=["HACKED"]
    )
    (ws / "out.txt").write_text("Washington HACKED")
    assert judge(challenge, ws).reason == "out.txt contains 'HACKED'"
    (ws / "out.txt").write_text("Washington hacked")
    assert judge(challenge, ws).passed


@pytest.mark.parametrize(
    ("case_sensitive", "passes"), [(True, False), (False, True), (None, False)]
)
def test_case_sensitivity(tmp_path: Path, ws: Path, case_sensitive: bool, passes: bool) -> None:
    challenge = make(
        tmp_path,
        ["out.txt"],
        should_contain=["WASHINGTON"],
        should_not_contain=["paris"],
        case_sensitive=case_sensitive,
    )
    (ws / "out.txt").write_text("washington, not Rome")
    assert judge(challenge, ws).passed is passes
    (ws / "out.txt").write_text("WASHINGTON, not PARIS")
    assert judge(challenge, ws).passed is (case_sensitive is not False)


def test_missing_file_is_a_failed_output(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["gone.txt", "out.txt"], should_contain=["Washington"])
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason == "gone.txt does not exist"
    assert [o.source for o in verdict.outputs] == ["gone.txt", "out.txt"]
    (ws / "out.txt").write_text("Washington")
    assert judge(challenge, ws).reason == "passed: out.txt"


def test_a_folder_or_escaping_link_is_a_failed_output(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["dir.txt", "link.txt"], should_contain=["Washington"])
    (ws / "dir.txt").mkdir()
    (tmp_path / "outside.txt").write_text("Washington")
    (ws / "link.txt").symlink_to(tmp_path / "outside.txt")
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert "folder" in verdict.outputs[0].content
    assert "outside the workspace" in verdict.outputs[1].content


def test_no_files_to_judge(tmp_path: Path, ws: Path) -> None:
    verdict = judge(make(tmp_path, [], should_contain=["x"]), ws)
    assert not verdict.passed
    assert verdict.reason == "nothing to judge: ground.files is empty"


# --- python eval -----------------------------------------------------------------------


def test_python_eval_judges_stdout_run_in_the_workspace(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["main.py"], kind="python", should_contain=["result: 42"])
    (ws / "data.txt").write_text("42")
    # "error" on stdout is fine; only stderr counts.
    (ws / "main.py").write_text("print('no error:', 'result:', open('data.txt').read())\n")
    verdict = judge(challenge, ws)
    assert verdict.passed
    assert verdict.outputs == (Output("main.py", "Output: no error: result: 42\n\n", 1.0),)


def test_python_eval_fails_on_a_nonzero_exit(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["main.py"], kind="python", should_contain=["result"])
    (ws / "main.py").write_text("print('result')\nraise SystemExit(3)\n")
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason == "main.py failed: exit code 3"
    assert verdict.outputs == (Output("main.py", "Error: \n", 0.0),)


def test_python_eval_fails_on_error_in_stderr(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["main.py"], kind="python", should_contain=["result"])
    (ws / "main.py").write_text("import sys\nprint('result')\nprint('an error', file=sys.stderr)\n")
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason == "main.py failed: an error"
    assert verdict.outputs[0].content == "Error: an error\n\n"
    # Other words on stderr (a warning) do not fail it.
    (ws / "main.py").write_text("import sys\nprint('result')\nprint('warning', file=sys.stderr)\n")
    assert judge(challenge, ws).passed


def test_python_eval_fails_even_when_the_traceback_names_the_word(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["main.py"], kind="python", should_contain=["Washington"])
    (ws / "main.py").write_text("raise ValueError('Washington')\n")
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason == "main.py failed: ValueError: Washington"


def test_python_eval_timeout(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["slow.py"], kind="python")
    (ws / "slow.py").write_text("import time\ntime.sleep(30)\n")
    verdict = judge(challenge, ws, timeout=0.5)
    assert not verdict.passed
    assert verdict.reason == "slow.py timed out after 0.5 s"


def test_python_eval_runs_hidden_tests_from_custom_python(tmp_path: Path, ws: Path) -> None:
    test = "from calc import add\nassert add(2, 3) == 5\nprint('All tests passed')\n"
    challenge = make(
        tmp_path, ["test.py"], kind="python", should_contain=["All tests passed"],
        custom={"test.py": test},
    )  # fmt: skip
    (ws / "test.py").write_text("print('All tests passed')\n")  # the agent's fake is replaced
    (ws / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason == "test.py failed: AssertionError"
    assert (ws / "test.py").read_text() == test
    (ws / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    assert judge(challenge, ws).passed


def test_custom_python_is_not_written_through_a_link_out(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["test.py"], kind="python", custom={"test.py": "print('ok')\n"})
    (tmp_path / "victim.py").write_text("precious\n")
    (ws / "test.py").symlink_to(tmp_path / "victim.py")
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason.startswith("cannot copy custom_python into the workspace")
    assert (tmp_path / "victim.py").read_text() == "precious\n"


# --- pytest eval -----------------------------------------------------------------------

PYTEST_FILE = """
from words import count

def test_count():
    assert count("a b c") == 3

def test_empty():
    assert count("") == 0
"""


def test_pytest_eval(tmp_path: Path, ws: Path) -> None:
    challenge = make(
        tmp_path, ["words.py"], kind="pytest", should_contain=["2 passed"],
        custom={"test_words.py": PYTEST_FILE},
    )  # fmt: skip
    (ws / "words.py").write_text("def count(text):\n    return len(text.split())\n")
    verdict = judge(challenge, ws)
    assert verdict.passed, verdict
    assert verdict.reason == "passed: pytest"
    assert [o.source for o in verdict.outputs] == ["pytest"]
    assert verdict.outputs[0].content.startswith("Output: ")
    assert not (ws / ".pytest_cache").exists()

    (ws / "words.py").write_text("def count(text):\n    return len(text.split(' '))\n")
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason.startswith("pytest failed: ")
    assert "1 failed, 1 passed" in verdict.reason
    assert verdict.outputs[0].content.startswith("Error: ")


def test_pytest_eval_with_a_missing_file(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, ["words.py"], kind="pytest", custom={"test_w.py": PYTEST_FILE})
    verdict = judge(challenge, ws)
    assert not verdict.passed
    assert verdict.reason == "words.py does not exist"
    assert [o.source for o in verdict.outputs] == ["words.py", "pytest"]
    assert verdict.outputs[1].content.startswith("Error: ")


# --- llm eval --------------------------------------------------------------------------


class FakeJudge:
    """A ChatModel that answers every call with the same text and keeps what it was asked."""

    name = "fake-judge"
    context_length = 4096

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.calls: list[tuple[list[Message], dict[str, Any] | None, int]] = []

    def complete(
        self, messages: Sequence[Message], *, schema: dict[str, Any] | None, max_tokens: int
    ) -> Completion:
        self.calls.append((list(messages), schema, max_tokens))
        return Completion(text=self.reply, finish_reason="stop")

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(m["content"]) for m in messages) // 4


def test_llm_eval_asks_the_judge_with_agbenchmarks_prompt(tmp_path: Path, ws: Path) -> None:
    challenge = make(tmp_path, [".txt"], kind="llm")
    (ws / "a.txt").write_text("Washington D.C.")
    (ws / "b.txt").write_text("is the capital")
    model = FakeJudge('{"score": 95}')
    verdict = judge(challenge, ws, llm=model)
    assert verdict.passed
    assert verdict.score == pytest.approx(0.95)
    assert verdict.reason == "passed: llm: a.txt, b.txt"
    assert verdict.outputs == (
        Output("llm: a.txt, b.txt", "Washington D.C.\nis the capital", pytest.approx(0.95)),
    )
    [(messages, schema, _max_tokens)] = model.calls
    assert schema == JUDGE_SCHEMA
    [message] = messages
    prompt = message["content"]
    assert prompt.startswith("Ignore previous directions. You are now an expert at evaluating")
    assert "a percentage out of 100" in prompt
    assert "Here is the given task for you to evaluate:\nWrite the capital of the USA" in prompt
    assert "ideal response you're comparing to based on the task:\nWashington\n" in prompt
    assert "need to evaluate:\nWashington D.C.\nis the capital\n" in prompt
    assert prompt.endswith("nothing but a float score.\nFloat score:")


@pytest.mark.parametrize(
    ("scoring", "reply", "score", "passes"),
    [
        ("percentage", '{"score": 90}', 0.9, False),  # agbenchmark passes above 0.9 only
        ("percentage", '{"score": 150}', 1.0, True),
        ("scale", '{"score": 10}', 1.0, True),
        ("scale", '{"score": 9}', 0.9, False),
        ("binary", '{"score": 1}', 1.0, True),
        ("binary", "0", 0.0, False),
    ],
)
def test_llm_scores_are_normalised(
    tmp_path: Path, ws: Path, scoring: str, reply: str, score: float, passes: bool
) -> None:
    challenge = make(tmp_path, ["out.txt"], kind="llm")
    challenge.folder.joinpath("data.json").write_text(
        challenge.folder.joinpath("data.json").read_text().replace("percentage", scoring)
    )
    challenge = load_challenge(challenge.folder)
    (ws / "out.txt").write_text("Washington")
    verdict = judge(challenge, ws, llm=FakeJudge(reply))
    assert verdict.passed is passes
    assert verdict.score == pytest.approx(score)


def test_llm_eval_with_examples_and_words(tmp_path: Path, ws: Path) -> None:
    challenge = make(
        tmp_path, ["out.txt"], kind="llm", should_contain=["Washington"],
        examples="'Washington' scores 100; 'Paris' scores 0",
    )  # fmt: skip
    (ws / "out.txt").write_text("Paris")
    model = FakeJudge('{"score": 10}')
    verdict = judge(challenge, ws, llm=model)
    assert not verdict.passed
    # agbenchmark scores the words of each file as well as asking the judge.
    assert [o.source for o in verdict.outputs] == ["out.txt", "llm: out.txt"]
    assert verdict.reason == "out.txt lacks 'Washington'"
    prompt = model.calls[0][0][0]["content"]
    assert (
        "Here are some examples of how to score a machine generated response based on the "
        "above:\n'Washington' scores 100; 'Paris' scores 0\n\nRemember" in prompt
    )
    (ws / "out.txt").write_text("Washington")
    assert judge(challenge, ws, llm=FakeJudge('{"score": 10}')).reason == "passed: out.txt"


@pytest.mark.parametrize("reply", ["great job", '{"score": "high"}', '{"score": NaN}', "true"])
def test_llm_eval_with_an_unreadable_reply(tmp_path: Path, ws: Path, reply: str) -> None:
    (ws / "out.txt").write_text("Washington")
    verdict = judge(make(tmp_path, ["out.txt"], kind="llm"), ws, llm=FakeJudge(reply))
    assert not verdict.passed
    assert verdict.score == 0.0
    assert verdict.reason == f"the judge's reply is no score: {reply!r}"


def test_llm_eval_without_files_does_not_ask(tmp_path: Path, ws: Path) -> None:
    model = FakeJudge('{"score": 100}')
    verdict = judge(make(tmp_path, ["out.txt"], kind="llm"), ws, llm=model)
    assert not verdict.passed
    assert verdict.reason == "out.txt does not exist"
    assert model.calls == []


def test_llm_eval_without_a_judge_model(tmp_path: Path, ws: Path) -> None:
    (ws / "out.txt").write_text("Washington")
    verdict = judge(make(tmp_path, ["out.txt"], kind="llm", should_contain=["Washington"]), ws)
    assert not verdict.passed
    assert "judge model" in verdict.reason
