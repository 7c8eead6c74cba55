"""The HTTP backend: a fake server for the wire format and failures, a real llama_cpp.server
for the agent end to end, in-process vs server parity, and a server killed mid-run."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from offline_agent import cores
from offline_agent.agent import Agent, AgentConfig
from offline_agent.cli import cli
from offline_agent.cli.run import _redacted
from offline_agent.cli.serve import server_argv
from offline_agent.cores import usable_cores
from offline_agent.errors import BackendError, ConfigError
from offline_agent.llm import HttpModel, HttpOptions, LlamaOptions, open_model
from offline_agent.llm.http import MESSAGE_OVERHEAD, response_format
from offline_agent.modelstore import ResolvedModel
from offline_agent.records import Profile
from offline_agent.runs import RunRecord, read_entries, verify
from offline_agent.tools import ToolContext, builtin_tools
from offline_agent.workspace import Workspace
from tests.conftest import (
    NONE,
    FakeServer,
    Served,
    completion_body,
    free_port,
    start_server,
    stop_server,
)

GOAL = "Write the word Washington to a file named output.txt"
PROFILE = Profile("FileBot", "an assistant that manages files", (GOAL,))
MESSAGES = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object"}


def http_model(url: str, sleeps: list[float], **options: Any) -> HttpModel:
    return HttpModel(HttpOptions(url, **options), "m", sleep=sleeps.append)


def test_request_carries_the_schema_sampling_and_key(fake: FakeServer) -> None:
    fake.script = [(200, completion_body(finish="length"), 0.0)]
    model = http_model(fake.url, [], api_key="sekrit")
    completion = model.complete(MESSAGES, schema=SCHEMA, max_tokens=9)
    method, path, headers, body = fake.requests[0]
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert headers["Authorization"] == "Bearer sekrit"
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert body["messages"] == MESSAGES
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == ("m", 9, 0, 0)
    assert body["repeat_penalty"] == 1.0
    assert completion.text == '{"a": 1}'
    assert completion.finish_reason == "length"
    assert completion.constrained
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 3)


@pytest.mark.parametrize("constraint", ["json_schema", "none"])
def test_constraint_modes(fake: FakeServer, constraint: Any) -> None:
    fake.script = [(200, completion_body(), 0.0)] * 2
    model = http_model(fake.url, [], constraint=constraint)
    completion = model.complete(MESSAGES, schema=SCHEMA, max_tokens=9)
    sent = fake.requests[0][3].get("response_format")
    assert sent == response_format(SCHEMA, constraint)
    assert completion.constrained is (constraint != "none")
    if constraint == "json_schema":
        assert sent["json_schema"]["schema"] == SCHEMA
    # No schema: nothing is constrained, whatever the mode.
    assert not model.complete(MESSAGES, schema=None, max_tokens=9).constrained
    assert "response_format" not in fake.requests[1][3]


def test_unknown_constraint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown constraint"):
        HttpModel(HttpOptions("http://127.0.0.1:1/v1", constraint="grammar"), "m")  # type: ignore[arg-type]


def test_5xx_is_retried_with_backoff_then_succeeds(fake: FakeServer) -> None:
    fake.script = [(503, {"error": {"message": "busy"}}, 0.0)] * 2
    fake.script.append((200, completion_body(), 0.0))
    sleeps: list[float] = []
    completion = http_model(fake.url, sleeps).complete(MESSAGES, schema=None, max_tokens=9)
    assert completion.text == '{"a": 1}'
    assert len(fake.requests) == 3
    assert sleeps == [0.5, 1.0]


def test_5xx_every_time_gives_one_line_backend_error(fake: FakeServer) -> None:
    fake.script = [(500, {"error": {"message": "model\n crashed"}}, 0.0)] * 4
    sleeps: list[float] = []
    with pytest.raises(BackendError) as caught:
        http_model(fake.url, sleeps).complete(MESSAGES, schema=None, max_tokens=9)
    assert str(caught.value) == f"server at {fake.url} failed (4 tries): HTTP 500: model crashed"
    assert len(fake.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_4xx_is_not_retried_and_shows_the_server_message(fake: FakeServer) -> None:
    fake.script = [(400, {"error": {"message": "context window exceeded"}}, 0.0)]
    sleeps: list[float] = []
    with pytest.raises(BackendError, match=r"HTTP 400\): context window exceeded$"):
        http_model(fake.url, sleeps).complete(MESSAGES, schema=None, max_tokens=9)
    assert len(fake.requests) == 1
    assert sleeps == []


def test_connection_refused_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    sleeps: list[float] = []
    with pytest.raises(BackendError) as caught:
        http_model(url, sleeps).complete(MESSAGES, schema=None, max_tokens=9)
    assert str(caught.value) == f"server at {url} is unreachable (4 tries): connection refused"
    assert sleeps == [0.5, 1.0, 2.0]


def test_timeout_is_reported(fake: FakeServer) -> None:
    fake.script = [(200, completion_body(), 1.0)]
    with pytest.raises(BackendError, match=r"unreachable: no answer within 0.2 s$"):
        http_model(fake.url, [], timeout=0.2, retries=0).complete(
            MESSAGES, schema=None, max_tokens=9
        )


def test_malformed_completion_is_a_backend_error(fake: FakeServer) -> None:
    fake.script = [(200, {"choices": []}, 0.0), (200, "<html>", 0.0)]
    model = http_model(fake.url, [])
    with pytest.raises(BackendError, match="malformed completion"):
        model.complete(MESSAGES, schema=None, max_tokens=9)
    with pytest.raises(BackendError, match="not JSON"):
        model.complete(MESSAGES, schema=None, max_tokens=9)


def test_model_name_comes_from_the_server_when_not_given(fake: FakeServer) -> None:
    fake.script = [(200, {"data": [{"id": "served-one"}]}, 0.0)]
    model = open_model(None, LlamaOptions(n_ctx=1234), Path("unused"), http=HttpOptions(fake.url))
    assert (model.name, model.context_length) == ("served-one", 1234)
    assert fake.requests[0][:2] == ("GET", "/v1/models")


def test_token_count_uses_the_server_tokenizer_when_offered(fake: FakeServer) -> None:
    fake.script = [(200, {"count": 1}, 0.0), (200, {"count": 40}, 0.0)]
    model = http_model(fake.url, [])
    text = "x" * 100
    expected = 40 + MESSAGE_OVERHEAD + 3
    assert model.count_tokens([{"role": "user", "content": text}]) == expected
    assert model.count_tokens([{"role": "user", "content": text}]) == expected  # cached
    assert [r[1] for r in fake.requests] == ["/extras/tokenize/count"] * 2
    assert fake.requests[1][3] == {"model": "m", "input": text}


def test_token_count_estimates_without_a_server_tokenizer(fake: FakeServer) -> None:
    fake.script = [(404, {"detail": "Not Found"}, 0.0)]
    model = http_model(fake.url, [])
    count = model.count_tokens([{"role": "user", "content": "x" * 99}])
    assert count == 33 + MESSAGE_OVERHEAD + 3
    assert len(fake.requests) == 1  # probed once, then estimated locally


# --- A real llama_cpp.server ---------------------------------------------------------


def test_serve_uses_every_usable_core_unless_told(tmp_path: Path) -> None:
    model = ResolvedModel(tmp_path / "m.gguf", None, "chatml")
    argv = server_argv(model, host="h", port=1, n_ctx=2, n_gpu_layers=0, threads=None,
                       chat_format=None)  # fmt: skip
    cores = str(usable_cores())
    assert argv[argv.index("--n_threads") + 1] == argv[argv.index("--n_threads_batch") + 1]
    assert argv[argv.index("--n_threads") + 1] == cores  # the server's own default is half
    argv = server_argv(model, host="h", port=1, n_ctx=2, n_gpu_layers=0, threads=3,
                       chat_format=None)  # fmt: skip
    assert argv[argv.index("--n_threads") + 1] == argv[argv.index("--n_threads_batch") + 1] == "3"


@pytest.mark.parametrize(
    ("quota", "cap"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1), ("", None)]
)
def test_usable_cores_is_capped_by_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quota: str, cap: int | None
) -> None:
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(cores, "CPU_QUOTA", cpu_max)
    free = usable_cores()  # no such file: the CPUs this process may run on
    cpu_max.write_text(quota + "\n")
    assert usable_cores() == (free if cap is None else min(free, cap))


@pytest.fixture(scope="module")
def server(
    real_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    served = start_server(real_models["smollm2-135m"], tmp_path_factory.mktemp("srv") / "log")
    yield served
    stop_server(served)


def run_agent(
    model: Any, tmp_path: Path, steps: int, reply_tokens: int = 512
) -> tuple[Agent, list[dict[str, Any]]]:
    record = RunRecord.create(tmp_path / "runs", "http", {})
    agent = Agent(
        PROFILE,
        model,
        builtin_tools(memory=False),
        ToolContext(workspace=Workspace.create(tmp_path / "ws")),
        AgentConfig(max_steps=steps, reply_tokens=reply_tokens),
        rules=NONE,  # the backend under test, not the step rules
        record=record,
    )
    agent.run()
    record.close()
    return agent, [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]


@pytest.mark.model
@pytest.mark.slow
def test_server_constrained_replies_validate(server: Served, tmp_path: Path) -> None:
    model = HttpModel(HttpOptions(server.url, constraint="json_object"), context_length=2048)
    assert model.name == "smollm2-135m"  # the alias `serve` gave the registered file
    agent, steps = run_agent(model, tmp_path, 2)
    assert len(steps) >= 1
    for step in steps:
        completion = step["completion"]
        assert completion["constrained"] is True
        assert step["status"] in ("ok", "finished"), step["error"]
        assert step["reply"]["command"]["name"] in agent.tools
        # The server's own count of the prompt is what we estimated, give or take a little.
        counted = model.count_tokens(step["messages"])
        assert abs(counted - completion["usage"]["prompt_tokens"]) <= 8


@pytest.mark.model
@pytest.mark.slow
def test_server_unconstrained_failures_are_fed_back(server: Served, tmp_path: Path) -> None:
    model = HttpModel(HttpOptions(server.url, constraint="none"), context_length=2048)
    _, steps = run_agent(model, tmp_path, 2, reply_tokens=96)
    assert len(steps) == 2
    assert all(step["completion"]["constrained"] is False for step in steps)
    # Unconstrained, SmolLM2-135M writes prose or code, not our JSON: the failure is not
    # fatal, it is shown to the model in the next prompt.
    failed = [s for s in steps if s["status"] in ("format_error", "truncated")]
    assert failed, [s["completion"]["text"] for s in steps]
    for before, after in itertools.pairwise(steps):
        if before in failed:
            assert before["completion"]["text"].strip() == after["messages"][-3]["content"]
            assert before["error"] in after["messages"][-2]["content"]


def test_unconstrained_reply_is_repaired(fake: FakeServer, tmp_path: Path) -> None:
    sloppy = (
        "Sure! Here is my reply:\n```json\n{'thoughts': {'text': 't', 'reasoning': 'r', "
        "'plan': 'p', 'criticism': 'c',}, 'command': {'name': 'finish', "
        "'args': {'reason': 'done'}}\n```"
    )
    fake.script = [(404, "no tokenizer here", 0.0), (200, completion_body(sloppy), 0.0)]
    _, steps = run_agent(http_model(fake.url, [], constraint="none"), tmp_path, 1)
    assert steps[0]["completion"]["constrained"] is False
    assert steps[0]["status"] == "finished", steps[0]["error"]
    assert steps[0]["reply"]["command"] == {"name": "finish", "args": {"reason": "done"}}
    assert "response_format" not in fake.requests[-1][3]


@pytest.mark.model
@pytest.mark.slow
def test_same_commands_in_process_and_through_the_server(
    server: Served, real_models: dict[str, Path], tmp_path: Path
) -> None:
    # Same rendered prompt (the server applies the GGUF's template with the same Jinja
    # settings), greedy decoding, repeat_penalty 1.0 on both sides, and the same grammar:
    # llama.cpp's GBNF from llama-cpp-python's converter (gbnf.json_schema_grammar, which
    # `serve` uses too). The default in-process engine, llguidance, writes compact JSON
    # ('{"thoughts"') where the GBNF grammar lets the model
    # choose its whitespace ('{ "thoughts"'), so with it the texts differ from the first
    # token on (see docs/servers.md). Only the first step is compared token for token: from
    # the second on, the in-process model gives its own reply back as the tokens it decoded
    # (`LlamaModel._splice`), where the server tokenises the reply's text again.
    from offline_agent.llm.llama import LlamaModel  # noqa: PLC0415

    options = LlamaOptions(n_ctx=2048, grammar_engine="llama")
    local = LlamaModel(real_models["smollm2-135m"], "template", options)
    remote = HttpModel(HttpOptions(server.url), context_length=2048)
    _, local_steps = run_agent(local, tmp_path / "local", 2)
    _, remote_steps = run_agent(remote, tmp_path / "remote", 2)
    first, remote_first = local_steps[0], remote_steps[0]
    assert first["messages"] == remote_first["messages"]
    # The same reply; the GBNF grammar leaves the model a choice of white space, and a tie
    # there has gone either way between the two processes (a space before the last brace).
    assert json.loads(first["completion"]["text"]) == json.loads(remote_first["completion"]["text"])
    assert first["reply"]["command"] == remote_first["reply"]["command"]
    usage, remote_usage = first["completion"]["usage"], remote_first["completion"]["usage"]
    assert usage["prompt_tokens"] == remote_usage["prompt_tokens"]
    assert len(local_steps) == len(remote_steps) == 2

    def unspaced(messages: list[dict[str, str]]) -> list[str]:  # see the white-space tie above
        return ["".join(m["content"].split()) for m in messages]

    assert unspaced(local_steps[1]["messages"]) == unspaced(remote_steps[1]["messages"])


@pytest.mark.model
@pytest.mark.slow
def test_server_killed_mid_run_ends_the_record_with_one_line_error(
    real_models: dict[str, Path], tmp_path: Path
) -> None:
    served = start_server(real_models["smollm2-135m"], tmp_path / "log")
    runs = tmp_path / "runs"

    def kill_after_first_step() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for folder in runs.glob("*"):
                if any(e["type"] == "step" for e in read_entries(folder)):
                    stop_server(served)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_step, daemon=True)
    killer.start()
    argv = [
        "run", "--goal", GOAL, "--base-url", served.url, "--api-key", "k",
        "--n-ctx", "2048", "--no-memory", "--continuous", "--max-steps", "5",
        "--workspace", str(tmp_path / "ws"), "--runs-dir", str(runs),
    ]  # fmt: skip
    try:
        result = CliRunner().invoke(cli, argv)
    finally:
        killer.join(timeout=310)
        stop_server(served)
    assert result.exit_code == BackendError.exit_code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: server at {served.url} is unreachable (4 tries): connection refused"]
    (folder,) = runs.iterdir()
    entries = read_entries(folder)
    assert verify(folder).lines == len(entries)
    steps = [e["step"] for e in entries if e["type"] == "step"]
    assert steps[0]["result"] is not None  # the step before the kill, intact
    assert len(steps) == 2
    assert steps[-1]["completion"] is None  # the server died before step 2 got an answer
    assert entries[-1]["type"] == "end"
    assert entries[-1]["result"]["status"] == "error"
    assert entries[-1]["result"]["reason"] == errors[0].removeprefix("Error: ")
    meta = json.loads((folder / "run.json").read_text())
    http = meta["settings"]["http"]
    assert (http["base_url"], http["constraint"], http["api_key"]) == (
        served.url,
        "json_object",
        None,  # the API key is not kept
    )


def test_api_key_is_hidden_in_the_recorded_command_line() -> None:
    argv = ["run", "--api-key", "sekrit", "--api-key=sekrit2", "--goal", "g"]
    assert _redacted(argv) == ["run", "--api-key", "***", "--api-key=***", "--goal", "g"]


def _one_step_through_server(
    fake: FakeServer, tmp_path: Path, args: dict[str, str], *rules: str
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """One step writing `args` over the fake server with `rules` switched on: what the CLI
    printed, the chat requests sent, and the rules `run.json` recorded."""
    write = {"thought": "t", "command": {"name": "write_file", "args": args}}
    fake.route = lambda path, _: (
        (404, "no tokenizer here", 0.0)
        if not path.endswith("/chat/completions")
        else (200, completion_body(json.dumps(write)), 0.0)
    )
    argv = [
        "run", "--goal", GOAL, "--base-url", fake.url, "--model", "m", "--no-memory",
        "--continuous", "--max-steps", "1", *(item for r in rules for item in ("--rule", r)),
        "--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, argv)
    chats = [body for _, path, _, body in fake.requests if path.endswith("/chat/completions")]
    (run_json,) = (tmp_path / "runs").glob("*/run.json")
    return result.output, chats, json.loads(run_json.read_text())["settings"]["rules"]


def test_text_blocks_stay_json_through_a_server(fake: FakeServer, tmp_path: Path) -> None:
    args = {"filename": "output.txt", "text": "Washington"}
    output, chats, rules = _one_step_through_server(fake, tmp_path, args, "text_blocks=on")
    assert "text_blocks is off: this backend cannot constrain a text block" in output
    assert (tmp_path / "ws" / "output.txt").read_text() == "Washington"
    system = chats[0]["messages"][0]["content"]
    assert "```" not in system and "x-blocks" not in json.dumps(chats[0])
    assert rules["text_blocks"] is False
    assert rules["break_loops"] is False  # a server decodes with its own samplers


def test_code_stays_in_the_json_through_a_server(fake: FakeServer, tmp_path: Path) -> None:
    args = {"filename": "hello.py", "text": "print(1)"}
    _, chats, rules = _one_step_through_server(
        fake, tmp_path, args, "code_turn=on", "goal_targets=off"
    )
    assert (tmp_path / "ws" / "hello.py").read_text() == "print(1)"
    assert len(chats) == 1  # no code turn
    assert rules["code_turn"] is False
