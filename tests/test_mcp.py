"""Commands from MCP servers: a real server process over stdio, through the real agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent.agent import Agent, AgentConfig
from offline_agent.cli import cli
from offline_agent.errors import ConfigError, Finished
from offline_agent.llm import LlamaOptions, open_model
from offline_agent.records import Profile
from offline_agent.replay import recorded_steps
from offline_agent.runs import RunMeta, read_entries
from offline_agent.state import Rules
from offline_agent.tools import ToolContext, ToolRegistry, builtin_tools
from offline_agent.tools.mcp_servers import MCPServers
from offline_agent.workspace import Workspace
from tests.conftest import FINISH, reply, script

SERVER = '''
import os, sys, time
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

app = MCPServer("Notes Server")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@app.tool()
def shout(text: str) -> str:
    """Say it louder."""
    if text == "fail":
        raise ValueError("cannot shout that")
    if text == "die":
        os._exit(3)
    if text == "hang":
        time.sleep(100)
    return text.upper()


class Point(BaseModel):
    x: float
    y: float


@app.tool()
def norm(p: Point) -> float:
    """The length of a point's vector (its schema refers to $defs)."""
    return (p.x ** 2 + p.y ** 2) ** 0.5


@app.tool()
def pick(choice: Annotated[str, Field(json_schema_extra={"not": {"const": "none"}})]) -> str:
    """Takes what no grammar here holds exactly ("not")."""
    return "picked"


if __name__ == "__main__":
    if "--crash" in sys.argv:
        raise SystemExit("no database here")
    app.run()
'''


@pytest.fixture
def server(tmp_path: Path) -> str:
    path = tmp_path / "notes_server.py"
    path.write_text(SERVER)
    return f"{sys.executable} {path}"


def server_processes(tmp_path: Path) -> list[str]:
    listed = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [
        line for line in listed.stdout.splitlines() if str(tmp_path / "notes_server.py") in line
    ]


def test_tools_become_commands_and_calls_become_observations(tmp_path: Path, server: str) -> None:
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"))
    with MCPServers([server], call_seconds=2) as servers:
        tools = {t.name: t for t in servers.start()}
        assert sorted(tools) == ["notes_server_add", "notes_server_norm", "notes_server_shout"]
        # A schema the grammar cannot hold exactly is left out, and said why; never loosened.
        assert list(servers.left_out) == ["notes_server_pick"]
        assert tools["notes_server_add"].args_schema()["additionalProperties"] is False
        assert tools["notes_server_add"](ctx, {"a": 2, "b": 40}) == "42"
        # $defs are inlined: the schema means the same nested in the reply schema.
        assert "$ref" not in json.dumps(tools["notes_server_norm"].args_schema())
        assert tools["notes_server_norm"](ctx, {"p": {"x": 3, "y": 4}}) == "5.0"
        assert tools["notes_server_shout"](ctx, {"text": "hi"}) == "HI"
        # A tool's error is the observation (this SDK's server hides the exception's text).
        assert tools["notes_server_shout"](ctx, {"text": "fail"}).startswith("Error: ")
        with pytest.raises(Exception, match="took longer than 2 s"):
            tools["notes_server_shout"](ctx, {"text": "hang"})
        assert tools["notes_server_add"](ctx, {"a": 1, "b": 1}) == "2"  # still serving
    time.sleep(0.5)
    assert server_processes(tmp_path) == []


def test_a_server_that_does_not_start_is_one_line(tmp_path: Path, server: str) -> None:
    with pytest.raises(ConfigError, match=r"did not start: .*\(it said: no database here\)"):
        MCPServers([f"{server} --crash"]).start()
    with pytest.raises(ConfigError, match="did not start"):
        MCPServers(["/no/such/program"]).start()


def run_with(tmp_path: Path, server: str, replies: list[object]) -> tuple[int, str, Path]:
    result = CliRunner().invoke(cli, [
        "run", "--goal", "g", "--model", script(tmp_path, replies), "--continuous",
        "--no-memory", "--rule", "none", "--mcp", server, "--python-timeout", "2",
        "--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "runs"),
    ])  # fmt: skip
    (run,) = (tmp_path / "runs").iterdir()
    return result.exit_code, result.stderr, run


def test_a_run_calls_mcp_tools_and_stops_the_server(tmp_path: Path, server: str) -> None:
    replies = [reply("notes_server_add", a=20, b=22), reply("notes_server_shout", text="fail"),
               reply("notes_server_norm", p={"x": 6, "y": 8}), FINISH]  # fmt: skip
    code, err, run = run_with(tmp_path, server, replies)
    assert code == 0, err
    assert "act outside the workspace and the sandbox" in err
    assert "Left out notes_server_pick" in err
    outputs = [s["result"]["output"] for s in recorded_steps(run)]
    assert outputs[0] == "42" and outputs[1].startswith("Error: ") and outputs[2] == "10.0"
    meta = RunMeta.load(run)
    assert "notes_server_add" in meta.extra["commands"]
    assert meta.settings["mcp"] == [server]
    time.sleep(0.5)
    assert server_processes(tmp_path) == []
    replayed = CliRunner().invoke(cli, ["runs", "replay", str(run)])
    assert replayed.exit_code == 0 and "notes_server_add not replayed" in replayed.output


def test_a_server_that_dies_ends_the_run_with_an_intact_record(tmp_path: Path, server: str) -> None:
    replies = [reply("notes_server_add", a=1, b=2), reply("notes_server_shout", text="die"),
               reply("notes_server_add", a=1, b=2), FINISH]  # fmt: skip
    code, err, run = run_with(tmp_path, server, replies)
    assert code == 5
    assert err.strip().splitlines()[-1].startswith("Error: MCP server notes_server stopped")
    end = read_entries(run)[-1]
    assert end["type"] == "end" and end["result"]["status"] == "error"
    assert [s["status"] for s in recorded_steps(run)] == ["ok", "error"]
    assert json.loads((run / "run.json").read_text())["settings"]["mcp"] == [server]


PUBLISHED = f"{sys.executable} -m mcp_server_time --local-timezone UTC"


def test_a_published_server_from_the_registry_works_offline(tmp_path: Path) -> None:
    """mcp-server-time (the MCP project's reference server, installed from the registry)."""
    replies = [reply("mcp_time_get_current_time", timezone="Europe/Paris"), FINISH]
    code, err, run = run_with(tmp_path, PUBLISHED, replies)
    assert code == 0, err
    answer = json.loads(recorded_steps(run)[0]["result"]["output"])
    assert answer["timezone"] == "Europe/Paris" and "datetime" in answer


@pytest.mark.model
@pytest.mark.slow
def test_the_real_model_calls_an_mcp_tool_only_validly(
    real_models: dict[str, Path], tmp_path: Path, server: str
) -> None:
    """SmolLM2 with only the server's commands and finish (not offered before a success):
    its first reply must call an MCP tool, and the grammar makes the call valid."""

    model = open_model(str(real_models["smollm2-135m"]), LlamaOptions(seed=0), tmp_path)
    with MCPServers([server], call_seconds=5) as servers:
        finish = builtin_tools().get("finish")
        tools = ToolRegistry([*servers.start(), finish])
        profile = Profile("Calc", "an assistant with a calculator", ("Add 20 and 22.",))
        ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"))
        agent = Agent(profile, model, tools, ctx, AgentConfig(max_steps=3), rules=Rules())
        calls = 0
        for _ in range(3):
            try:
                step = agent.step()
            except Finished:
                break
            assert step.status == "ok" and step.reply is not None, step.error
            # The arguments held to the server's own schema, and the server ran the call.
            call = step.reply.command
            tools.get(call.name).check_args(call.args)
            assert step.result is not None and step.result.ok, step.result
            if call.name == "notes_server_add":
                assert step.result.output == str(call.args["a"] + call.args["b"])
            calls += 1
        assert calls >= 1
