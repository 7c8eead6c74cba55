"""The benchmark runner, its resume, the scoreboard and the report, with scripted models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from offline_agent.agent import AgentConfig
from offline_agent.bench.challenge import load_suite
from offline_agent.bench.parallel import ParallelRunner
from offline_agent.bench.report import describe
from offline_agent.bench.runner import (
    RESULTS_FILE,
    Attempt,
    BenchSettings,
    Planned,
    Progress,
    Runner,
    read_results,
    read_settings,
)
from offline_agent.bench.scoreboard import score, wilson
from offline_agent.cli import cli
from offline_agent.records import Completion, Step
from offline_agent.replay import recorded_steps
from offline_agent.runs import verify
from offline_agent.state import Rules
from tests.conftest import (
    FINISH,
    NONE,
    completion_body,
    fake_server,
    make_agent,
    reply,
    start_server,
    stop_server,
)


def challenge(root: Path, name: str, word: str, filename: str, cutoff: int = 60) -> None:
    folder = root / name.lower()
    (folder / "artifacts_in").mkdir(parents=True)
    (folder / "artifacts_in" / "notes.txt").write_text("keep me\n")
    data = {
        "name": name,
        "task": f"Write the word {word} to a file named {filename}",
        "category": ["general"],
        "cutoff": cutoff,
        "info": {"difficulty": "basic", "description": "d", "side_effects": []},
        "ground": {
            "answer": word,
            "should_contain": [word],
            "should_not_contain": [],
            "files": [filename],
            "eval": {"type": "file"},
        },
    }
    (folder / "data.json").write_text(json.dumps(data))


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    root = tmp_path / "suite"
    challenge(root, "WriteWashington", "Washington", "output.txt")
    challenge(root, "WriteParis", "Paris", "city.txt")
    return root


@pytest.fixture
def script(tmp_path: Path) -> str:
    """A scripted model that always writes Washington to output.txt, then finishes."""
    path = tmp_path / "replies.json"
    path.write_text(
        json.dumps([reply("write_file", filename="output.txt", text="Washington"), FINISH])
    )
    return f"scripted:{path}"


def settings(suite: Path, script: str, **overrides: Any) -> BenchSettings:
    values: dict[str, Any] = {"suite": str(suite), "models": (script,), "repeats": 2, "rules": NONE}
    return BenchSettings(**{**values, **overrides})


class Recorder(Progress):
    """Collects what ran; can stop the benchmark as Ctrl-C would, before attempt `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.started_names: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def started(self, done: int, total: int, planned: Planned) -> None:
        if self.stop_at is not None and len(self.started_names) == self.stop_at:
            raise KeyboardInterrupt
        self.started_names.append((planned.challenge.name, planned.repeat))


def test_runs_every_attempt_in_a_fresh_workspace_and_judges_it(
    tmp_path: Path, suite: Path, script: str
) -> None:
    out = tmp_path / "out"
    Runner(settings(suite, script), load_suite(suite), out).run()
    attempts = read_results(out)
    assert sorted((a.challenge, a.repeat, a.passed) for a in attempts) == [
        ("WriteParis", 0, False),
        ("WriteParis", 1, False),
        ("WriteWashington", 0, True),
        ("WriteWashington", 1, True),
    ]
    for a in attempts:
        assert (a.status, a.steps, a.replies, a.valid_replies) == ("finished", 2, 2, 2)
        assert a.wall_seconds > 0 and a.peak_rss_mb > 0
        run = out / "runs" / a.run_id
        assert verify(run).lines > 0  # each attempt leaves an intact run record
        assert json.loads((run / "run.json").read_text())["bench"] == [
            a.model,
            a.challenge,
            a.repeat,
        ]
    paris = out / "workspaces" / "replies.json" / "r1" / "WriteParis"
    assert sorted(p.name for p in paris.iterdir()) == ["notes.txt", "output.txt"]
    assert paris.joinpath("notes.txt").read_text() == "keep me\n"  # artifacts_in copied first
    assert next(a for a in attempts if a.challenge == "WriteParis").judged != ""


def test_an_interrupted_benchmark_continues_where_it_stopped(
    tmp_path: Path, suite: Path, script: str
) -> None:
    out = tmp_path / "out"
    first = Recorder(stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        Runner(settings(suite, script), load_suite(suite), out, first).run()
    assert len(read_results(out)) == 2
    # A crash while writing leaves half a line: it is dropped, not parsed nor appended to.
    with (out / RESULTS_FILE).open("a") as f:
        f.write('{"model": "scripted:x", "chall')
    second = Recorder()
    Runner(settings(suite, script), load_suite(suite), out, second).run()
    assert first.started_names + second.started_names == [
        ("WriteParis", 0),
        ("WriteWashington", 0),
        ("WriteParis", 1),
        ("WriteWashington", 1),
    ]
    lines = (out / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    # Nothing left to do: a third invocation runs nothing.
    third = Recorder()
    Runner(settings(suite, script), load_suite(suite), out, third).run()
    assert third.started_names == []


def test_more_repeats_extend_a_benchmark_but_other_settings_are_refused(
    tmp_path: Path, suite: Path, script: str
) -> None:
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["bench", "--suite", str(suite), "--model", script, "--out", str(out), "--no-report",
            "--rule", "none"]  # fmt: skip
    assert runner.invoke(cli, [*args, "--repeats", "1"]).exit_code == 0
    assert len(read_results(out)) == 2
    assert runner.invoke(cli, [*args, "--repeats", "2"]).exit_code == 0
    assert len(read_results(out)) == 4
    refused = runner.invoke(cli, [*args, "--temperature", "0.9"])
    assert refused.exit_code != 0
    assert "other settings (temperature 0.0 → 0.9)" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output


def test_a_model_with_rules_of_its_own_runs_with_them_and_its_results_keep_apart(
    tmp_path: Path, suite: Path, script: str
) -> None:
    out = tmp_path / "out"
    own = Rules.parse(["show_state=on"], NONE)
    Runner(settings(suite, script, repeats=1, model_rules=((script, own),)), load_suite(suite),
           out).run()  # fmt: skip
    for a in read_results(out):
        recorded = json.loads((out / "runs" / a.run_id / "run.json").read_text())
        assert Rules.from_json(recorded["settings"]["rules"]) == own
    assert f"({script}: {', '.join(own.changed())})." in describe(read_settings(out))
    saved = read_settings(out)["settings"]
    # The same model under the common rules would not give the same numbers...
    assert settings(suite, script, repeats=1).conflicts(saved) == [
        f"{script}'s rules → " + ", ".join(NONE.changed())
    ]
    # ...but another model, with rules of its own, may join the folder.
    joined = settings(suite, script, repeats=1, models=(script, "other"),
                      model_rules=((script, own), ("other", Rules())))  # fmt: skip
    assert joined.conflicts(saved) == []


def test_a_bench_of_served_models_does_not_read_the_registry(tmp_path: Path, suite: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "registry.toml").write_text("[models.mine]\nfilename = 3\n")  # broken
    result = CliRunner().invoke(cli, [
        "bench", "--suite", str(suite), "--challenge", "WriteWashington", "--model", "m",
        "--base-url", "http://127.0.0.1:9/v1", "--models-dir", str(models), "--no-report",
        "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert result.exit_code == 0 and "registry.toml" not in result.output, result.output
    assert [a.model for a in read_results(tmp_path / "out")] == ["m"]  # tried, the server down
    result = CliRunner().invoke(cli, [
        "bench", "--suite", str(suite), "--challenge", "WriteWashington", "--no-report",
        "--model", "m=http://127.0.0.1:9/v1", "--models-dir", str(models),
        "--out", str(tmp_path / "out2"),
    ])  # fmt: skip
    assert result.exit_code == 0 and "registry.toml" not in result.output, result.output


def test_the_default_is_runs_greedy_decoding_once_and_sampling_three_times(
    tmp_path: Path, suite: Path, script: str
) -> None:
    args = ["bench", "--suite", str(suite), "--model", script, "--no-report", "--rule", "none"]
    assert CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "greedy")]).exit_code == 0
    assert {a.repeat for a in read_results(tmp_path / "greedy")} == {0}
    assert "1 repeat (seed 0), temperature 0.0," in describe(read_settings(tmp_path / "greedy"))
    sampled = [*args, "--out", str(tmp_path / "sampled"), "--temperature", "0.5"]
    assert CliRunner().invoke(cli, sampled).exit_code == 0
    assert {a.repeat for a in read_results(tmp_path / "sampled")} == {0, 1, 2}


def test_cli_runs_a_suite_and_writes_the_report(tmp_path: Path, suite: Path, script: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--suite",
            str(suite),
            "--model",
            script,
            "--repeats",
            "1",
            "--out",
            str(out),
            "--rule",
            "none",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2/2" in result.output and "ETA" in result.output
    assert "scripted:" in result.output and "1/2 passed (50%)" in result.output
    md = (out / "report.md").read_text()
    assert "| WriteWashington | basic | ✅ 1/1 |" in md
    assert "| WriteParis | basic | ❌ 0/1 |" in md
    assert "finished 2" in md
    page = (out / "report.html").read_text()
    for chart in ("success_by_model", "time_by_model", "success_by_challenge"):
        assert (out / "charts" / f"{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"charts/{chart}.png" in page and f"charts/{chart}.png" in md


def test_bad_input_gets_one_line(tmp_path: Path, suite: Path, script: str) -> None:
    runner = CliRunner()
    cases = [
        ["bench", "--suite", str(tmp_path / "nowhere"), "--model", script],
        ["bench", "--suite", str(suite), "--model", script, "--challenge", "Nope"],
        ["bench", "--suite", str(suite), "--model", script, "--repeats", "0"],
        ["bench", "report", str(tmp_path / "empty")],
    ]
    for args in cases:
        result = runner.invoke(
            cli, [*args, "--out", str(tmp_path / "o")] if args[1] != "report" else args
        )
        assert result.exit_code != 0, args
        assert "Traceback" not in result.output
        assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1


def attempt(model: str, name: str, repeat: int, passed: bool, **kw: Any) -> Attempt:
    values: dict[str, Any] = {
        "model": model,
        "challenge": name,
        "repeat": repeat,
        "seed": repeat,
        "category": ["c"],
        "difficulty": "basic",
        "passed": passed,
        "status": "finished" if passed else "step_limit",
        "steps": 3,
        "replies": 3,
        "valid_replies": 3,
        "prompt_tokens": 3000,
        "cached_tokens": 2400,
        "completion_tokens": 300,
        "prompt_seconds": 2.0,
        "decode_seconds": 6.0,
        "wall_seconds": 10.0,
        "peak_rss_mb": 500.0,
    }
    return Attempt(**{**values, **kw})


def test_scoreboard_numbers() -> None:
    rows = [
        attempt("a", "X", 0, True),
        attempt("a", "X", 1, False, wall_seconds=30.0, peak_rss_mb=700.0),
        attempt("a", "Y", 0, True),
        attempt("a", "Y", 1, True, valid_replies=2, invalid_constrained=1, status="finished"),
        attempt("b", "X", 0, False, status="format_errors"),
    ]
    a, b = score(rows)
    assert (a.model, a.attempts, a.passed, a.rate) == ("a", 4, 3, 0.75)
    assert a.repeat_rates == [1.0, 0.5]
    assert a.per_challenge == {"X": (1, 2), "Y": (2, 2)}
    assert a.ci == pytest.approx(wilson(3, 4))
    assert a.tokens_per_second == pytest.approx(50.0)
    assert a.cached_share == pytest.approx(0.8)
    assert (a.wall_mean, a.wall_median, a.peak_rss_mb) == (15.0, 10.0, 700.0)
    assert a.valid_share == pytest.approx(11 / 12) and a.invalid_constrained == 1
    assert a.endings == {"finished": 3, "step_limit": 1}
    assert (b.rate, b.endings) == (0.0, {"format_errors": 1})


def test_wilson_interval() -> None:
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_report_is_rebuilt_from_saved_results_alone(tmp_path: Path) -> None:
    out = tmp_path / "copied"
    out.mkdir()
    saved = BenchSettings(suite="builtin", models=("a", "b"), repeats=2)
    (out / "bench.json").write_text(json.dumps({"settings": saved.to_json(), "machine": {}}))
    rows = [attempt("a", "X", 0, True), attempt("a", "X", 1, True), attempt("b", "X", 0, False)]
    (out / RESULTS_FILE).write_text("".join(json.dumps(r.__dict__) + "\n" for r in rows))
    result = CliRunner().invoke(cli, ["bench", "report", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "| a | 100% (2/2) | 34%–100% | 100% 100% |" in md
    assert "| X | basic | ✅ 2/2 | ❌ 0/1 |" in md
    assert "temperature 0.0" in md


def test_invalid_reply_from_a_constraining_backend_is_counted_apart() -> None:
    a = attempt("m", "X", 0, False, replies=0, valid_replies=0)
    a.count(Step(1, completion=Completion("{", "stop", constrained=True), status="format_error"))
    a.count(Step(2, completion=Completion("{", "stop", constrained=False), status="format_error"))
    # Cut off by the token limit: invalid, but no sign that the constraint failed.
    a.count(Step(3, completion=Completion('{"th', "length", constrained=True), status="truncated"))
    assert (a.replies, a.valid_replies, a.truncated, a.invalid_constrained) == (3, 0, 1, 1)


def test_time_limit_ends_a_run_between_steps(tmp_path: Path) -> None:
    slow = reply("execute_python_code", code="import time; time.sleep(0.5)")
    agent, _, _ = make_agent(
        tmp_path, [slow, slow, FINISH], config=AgentConfig(max_steps=10, time_limit=0.3)
    )
    result = agent.run()
    assert (result.status, result.steps) == ("time_limit", 1)


@pytest.mark.model
@pytest.mark.slow
def test_real_model_benchmark_through_the_cli(
    tmp_path: Path, real_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2 on two built-in challenges: every reply constrained and valid, all recorded.
    The model keeps its KV states in a folder of its own, not the home folder's: a greedy
    result must not depend on what other runs saved there."""
    monkeypatch.setenv("OFFLINE_AGENT_MODELS", str(real_models["smollm2-135m"].parent))
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    out = tmp_path / "out"
    args = ["bench", "--model", "smollm2-135m", "--repeats", "1", "--max-steps", "3"]
    args += ["--challenge", "WriteFile", "--challenge", "ReadFile", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    attempts = read_results(out)
    assert sorted(a.challenge for a in attempts) == ["ReadFile", "WriteFile"]
    for a in attempts:
        assert a.replies >= 1 and a.valid_replies == a.replies and a.invalid_constrained == 0
        assert a.status in {"finished", "step_limit", "loop", "time_limit"}
        assert a.completion_tokens > 0 and a.decode_seconds > 0 and a.peak_rss_mb > 100
        assert verify(out / "runs" / a.run_id).lines > 0
    assert (out / "report.html").exists() and (out / "charts" / "success_by_model.png").exists()
    assert not (tmp_path / "home" / "kv-cache").exists()
    assert list((tmp_path / "temp").iterdir()) == []  # its own folder is gone again


def test_llm_evals_are_scored_by_the_judge_model(tmp_path: Path, script: str) -> None:
    root = tmp_path / "suite"
    challenge(root, "JudgedWashington", "Washington", "output.txt")
    data_file = root / "judgedwashington" / "data.json"
    data = json.loads(data_file.read_text())
    data["ground"].update(
        should_contain=[], eval={"type": "llm", "scoring": "binary", "template": "reference"}
    )
    data_file.write_text(json.dumps(data))
    judge_script = tmp_path / "judge.json"
    judge_script.write_text(json.dumps([{"score": 1}]))
    judged = settings(root, script, repeats=1, judge_model=f"scripted:{judge_script}")
    [with_judge] = Runner(judged, load_suite(root), tmp_path / "a").run()
    assert (with_judge.passed, with_judge.judged) == (True, "passed: llm: output.txt")
    [without] = Runner(settings(root, script, repeats=1), load_suite(root), tmp_path / "b").run()
    assert not without.passed and "judge model" in without.judged


def test_bench_takes_the_users_tools_and_mcp_servers(tmp_path: Path, suite: Path) -> None:
    """Models compared on goals that need a user's commands: a tools file and an MCP server
    (the published reference server) are there in every attempt."""
    tools = tmp_path / "my_tools.py"
    tools.write_text(
        'def shout(text: str) -> str:\n    """Say it louder.\n\n    Args:\n'
        '        text: what to say\n    """\n    return text.upper()\n'
    )
    replies = [reply("shout", text="washington"),
               reply("mcp_time_get_current_time", timezone="UTC"),
               reply("write_file", filename="output.txt", text="Washington"), FINISH]  # fmt: skip
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    out = tmp_path / "out"
    server = f"{sys.executable} -m mcp_server_time --local-timezone UTC"
    result = CliRunner().invoke(cli, [
        "bench", "--suite", str(suite), "--model", f"scripted:{path}", "--repeats", "1",
        "--out", str(out), "--rule", "none", "--no-report", "--challenge", "WriteWashington",
        "--tools", str(tools), "--mcp", server,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    (attempt,) = read_results(out)
    assert attempt.passed
    outputs = [s["result"]["output"] for s in recorded_steps(out / "runs" / attempt.run_id)]
    assert outputs[0] == "WASHINGTON" and '"timezone": "UTC"' in outputs[1]
    saved = json.loads((out / "bench.json").read_text())["settings"]
    assert saved["tools"] == [str(tools)] and saved["mcp"] == [server]


def test_jobs_run_attempts_at_once_with_the_same_results(
    tmp_path: Path, suite: Path, script: str
) -> None:
    """Two worker processes give the results one at a time gives, each attempt once, and
    the results file is written by the driver alone (whole lines, resumable)."""
    challenge(suite, "WriteRome", "Rome", "rome.txt")
    one, two = tmp_path / "one", tmp_path / "two"
    Runner(settings(suite, script), load_suite(suite), one).run()
    recorder = Recorder()
    ran = ParallelRunner(settings(suite, script), load_suite(suite), two, recorder, jobs=2).run()
    assert len(ran) == 6 and len(recorder.started_names) == 6

    def outcome(out: Path) -> list[tuple[Any, ...]]:
        return sorted((a.key, a.passed, a.status, a.steps, a.replies) for a in read_results(out))

    assert outcome(two) == outcome(one)
    lines = (two / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)
    assert {a.run_id for a in read_results(two)} == {p.name for p in (two / "runs").iterdir()}
    # Nothing left: running again with jobs starts nothing.
    again = Recorder()
    assert ParallelRunner(settings(suite, script), load_suite(suite), two, again).run() == []


def test_each_model_on_its_own_server(tmp_path: Path, suite: Path) -> None:
    """`--model NAME=URL`: each model's requests go to its own server, N at a time."""
    write = json.dumps(reply("write_file", filename="output.txt", text="Washington"))
    done = json.dumps(FINISH)

    def answer(path: str, body: Any) -> tuple[int, Any, float]:
        if path.endswith("/tokenize/count"):
            return 404, "no", 0.0  # the client then estimates token counts
        replied = any(m["role"] == "assistant" for m in body["messages"])
        return 200, completion_body(done if replied else write), 0.0

    with fake_server() as a, fake_server() as b:
        a.route = b.route = answer
        result = CliRunner().invoke(cli, [
            "bench", "--suite", str(suite), "--challenge", "WriteWashington", "--repeats", "2",
            "--model", f"alpha={a.url}", "--model", f"beta={b.url}", "--out", str(tmp_path / "o"),
            "--rule", "none", "--no-report", "--jobs", "2", "--constraint", "none",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        for server, name in ((a, "alpha"), (b, "beta")):
            posts = [body for _, path, _, body in server.requests if path.endswith("/completions")]
            assert len(posts) == 4 and {body["model"] for body in posts} == {name}
    attempts = read_results(tmp_path / "o")
    assert sorted((x.model, x.repeat, x.passed) for x in attempts) == [
        ("alpha", 0, True), ("alpha", 1, True), ("beta", 0, True), ("beta", 1, True)]  # fmt: skip
    saved = json.loads((tmp_path / "o" / "bench.json").read_text())["settings"]
    assert saved["servers"] == {"alpha": a.url, "beta": b.url}


@pytest.mark.model
@pytest.mark.slow
def test_jobs_against_a_real_local_server(
    tmp_path: Path, suite: Path, real_models: dict[str, Path]
) -> None:
    """`--jobs 2` with the real SmolLM2 behind a real `offline-agent serve` on loopback:
    two agents' requests at once, every attempt once, every reply constrained and valid."""
    served = start_server(real_models["smollm2-135m"], tmp_path / "server.log", n_ctx=4096)
    out = tmp_path / "out"
    try:
        result = CliRunner().invoke(cli, [
            "bench", "--suite", str(suite), "--repeats", "2", "--max-steps", "3",
            "--model", f"smollm2-135m={served.url}", "--jobs", "2", "--out", str(out),
            "--no-report",
        ])  # fmt: skip
    finally:
        stop_server(served)
    assert result.exit_code == 0, result.output
    ran = read_results(out)
    assert sorted((a.challenge, a.repeat) for a in ran) == [
        (name, repeat) for name in ("WriteParis", "WriteWashington") for repeat in (0, 1)
    ]
    assert all(a.replies >= 1 and a.valid_replies == a.replies for a in ran)
    for attempt in ran:
        steps = recorded_steps(out / "runs" / attempt.run_id)
        assert steps and all(step["completion"]["constrained"] for step in steps)


@pytest.mark.slow
def test_ray_tasks_give_the_results_one_at_a_time_gives(
    tmp_path: Path, suite: Path, script: str
) -> None:
    """A local Ray instance (the machine's cores) runs every attempt once; the driver alone
    writes the results, and they equal a sequential run's."""
    pytest.importorskip("ray")
    from offline_agent.bench.cluster import RayRunner  # noqa: PLC0415 - needs the extra

    challenge(suite, "WriteRome", "Rome", "rome.txt")
    one, ray_out = tmp_path / "one", tmp_path / "ray"
    Runner(settings(suite, script), load_suite(suite), one).run()
    recorder = Recorder()
    ran = RayRunner(settings(suite, script), load_suite(suite), ray_out, recorder).run()
    assert len(ran) == 6 and len(recorder.started_names) == 6

    def outcome(out: Path) -> list[tuple[Any, ...]]:
        return sorted((a.key, a.passed, a.status, a.steps, a.replies) for a in read_results(out))

    assert outcome(ray_out) == outcome(one)
    assert len((ray_out / RESULTS_FILE).read_text().splitlines()) == 6
    assert {a.run_id for a in read_results(ray_out)} == {
        p.name for p in (ray_out / "runs").iterdir()
    }


@pytest.mark.slow
def test_a_ray_worker_killed_mid_attempt_loses_nothing(tmp_path: Path, suite: Path) -> None:
    """`bench --ray local` while a worker is killed with SIGKILL in the middle of an attempt:
    Ray runs that attempt again, and every attempt is saved exactly once, passed."""
    pytest.importorskip("ray")
    path = tmp_path / "replies.json"
    path.write_text(json.dumps([
        reply("execute_python_code", code="import time\ntime.sleep(4)"),
        reply("write_file", filename="output.txt", text="Washington"), FINISH,
    ]))  # fmt: skip
    out = tmp_path / "out"
    bench = subprocess.Popen(
        [sys.executable, "-m", "offline_agent", "bench", "--suite", str(suite), "--model",
         f"scripted:{path}", "--repeats", "1", "--challenge", "WriteWashington", "--out",
         str(out), "--rule", "none", "--no-report", "--ray", "local"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and bench.poll() is None:
        pgrep = ["pgrep", "-f", "ray::run_attempt"]
        running = subprocess.run(pgrep, check=False, capture_output=True, text=True).stdout.split()
        if running and (out / "runs").exists() and any((out / "runs").iterdir()):
            killed = int(running[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    output, _ = bench.communicate(timeout=300)
    assert killed is not None, output
    assert bench.returncode == 0, output
    (attempt,) = read_results(out)
    assert attempt.passed, output
    assert len((out / RESULTS_FILE).read_text().splitlines()) == 1
    assert len(list((out / "runs").iterdir())) == 2  # the killed try's record, and the re-run


@pytest.mark.model
@pytest.mark.slow
def test_ray_runs_the_real_model(tmp_path: Path, suite: Path, real_models: dict[str, Path]) -> None:
    pytest.importorskip("ray")
    from offline_agent.bench.cluster import RayRunner  # noqa: PLC0415 - needs the extra

    real = settings(suite, "", models=("smollm2-135m",), repeats=1, max_steps=2,
                    models_dir=real_models["smollm2-135m"].parent, rules=Rules())  # fmt: skip
    ran = RayRunner(real, load_suite(suite), tmp_path / "out").run()
    assert sorted(a.challenge for a in ran) == ["WriteParis", "WriteWashington"]
    assert all(a.replies >= 1 and a.valid_replies == a.replies for a in ran)


def test_a_bad_ray_address_is_one_line(tmp_path: Path, suite: Path, script: str) -> None:
    args = ["--model", script, "--ray", "head:10001", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, ["bench", "--suite", str(suite), *args])
    assert result.exit_code == 2
    assert "--ray takes local, auto or ray://HOST:PORT" in result.output
    assert not (tmp_path / "o").exists()
