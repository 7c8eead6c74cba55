"""The user's own commands from Python files: loading, errors at start, runs and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent.cli import cli
from offline_agent.errors import ConfigError
from offline_agent.replay import recorded_steps
from offline_agent.session import run_tools
from offline_agent.state import Rules
from offline_agent.tools import ToolContext, builtin_tools
from offline_agent.tools.user import load_tools, with_user_tools
from offline_agent.workspace import Workspace
from tests.conftest import FINISH, reply, script

TOOLS = '''
from offline_agent.tools import Short, ToolContext, tool


@tool
def count_rows(ctx: ToolContext, filename: Short) -> str:
    """Count the data rows of a CSV file in the workspace.

    Args:
        filename: the CSV file, relative to the workspace
    """
    return str(len(ctx.workspace.read_text(filename).splitlines()) - 1)


def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def helper(x):
    return x


def documented_helper(x, y):
    """Documented, but without type hints: a helper, not a command."""
    return x + y


def ctx_named(ctx: str) -> str:
    """An argument may be called ctx.

    Args:
        ctx: anything
    """
    return ctx


def _private(a: int) -> int:
    """Not a command.

    Args:
        a: a number
    """
    return a
'''


def tools_file(tmp_path: Path, text: str = TOOLS, name: str = "my_tools.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_decorated_and_plain_functions_become_commands(tmp_path: Path) -> None:
    commands = {c.name: c for c in load_tools(tools_file(tmp_path))}
    assert sorted(commands) == ["add", "count_rows", "ctx_named"]
    assert commands["add"].args_schema()["properties"] == {
        "a": {"type": "integer"},
        "b": {"type": "integer"},
    }
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"))
    (tmp_path / "ws" / "t.csv").write_text("h\n1\n2\n")
    assert commands["add"](ctx, {"a": 2, "b": 3}) == "5"
    assert commands["count_rows"](ctx, {"filename": "t.csv"}) == "2"
    registry = with_user_tools(builtin_tools(), [tools_file(tmp_path)])
    assert registry.names[-4:] == ["count_rows", "add", "ctx_named", "finish"]
    assert commands["ctx_named"](ctx, {"ctx": "hi"}) == "hi"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("def broken(:\n", "cannot load tools from .*SyntaxError"),
        ("import not_a_module_anywhere\n", "ModuleNotFoundError"),
        ('def write_file(a: int) -> str:\n    """W.\n\n    Args:\n        a: x\n    """\n',
         "command write_file has the name of another command"),
        ('def f(x: list) -> str:\n    """F.\n\n    Args:\n        x: x\n    """\n',
         "unsupported command parameter type"),
        ('def f(x: int) -> str:\n    """F without its argument documented."""\n',
         "argument x is not documented"),
        ("def helper(x):\n    return x\n", "defines no command"),
    ],
)  # fmt: skip
def test_a_bad_tools_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_tools(tools_file(tmp_path, text), builtin_tools().names)


def test_a_run_calls_the_users_commands_and_resumes_with_them(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "t.csv").write_text("h\n1\n2\n3\n")
    model = script(tmp_path, [reply("add", a=20, b=22), reply("count_rows", filename="t.csv"),
                              FINISH])  # fmt: skip
    where = ["--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "runs")]
    common = ["--goal", "g", "--model", model, "--continuous", "--no-memory", "--rule", "none",
              *where]  # fmt: skip
    first = CliRunner().invoke(
        cli, ["run", *common, "--tools", str(tools_file(tmp_path)), "--max-steps", "1"]
    )
    assert first.exit_code == 10, first.output
    (run,) = (tmp_path / "runs").iterdir()
    settings = json.loads((run / "run.json").read_text())["settings"]
    assert settings["tools"] == [str(tmp_path / "my_tools.py")]
    resumed = CliRunner().invoke(cli, ["runs", "resume", str(run), "--max-steps", "5"])
    assert resumed.exit_code == 0, resumed.output
    outputs = [s["result"]["output"] for s in recorded_steps(run)]
    assert outputs[:2] == ["42", "3"]


def test_tools_load_before_the_model(tmp_path: Path) -> None:
    bad = tools_file(tmp_path, "def broken(:\n")
    result = CliRunner().invoke(cli, [
        "run", "--goal", "g", "--model", "no-such-model", "--no-memory", "--tools", str(bad),
        "--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "runs"),
    ])  # fmt: skip
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: cannot load tools from {bad}: SyntaxError")
    assert not (tmp_path / "runs").exists()


def test_ai_settings_name_tools_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    tools_file(tmp_path / "conf")
    (tmp_path / "conf" / "ai.yaml").write_text(
        "ai_name: A\nai_role: B\nai_goals: [g]\ntools: [my_tools.py]\n"
    )
    model = script(tmp_path, [reply("add", a=1, b=1), FINISH])
    result = CliRunner().invoke(cli, [
        "run", "--ai-settings", str(tmp_path / "conf" / "ai.yaml"), "--model", model,
        "--continuous", "--no-memory", "--rule", "none", "--workspace", str(tmp_path / "ws"),
        "--runs-dir", str(tmp_path / "runs"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert recorded_steps(run)[0]["result"]["output"] == "2"


def test_tools_list_shows_what_the_model_reads(tmp_path: Path) -> None:
    shown = CliRunner().invoke(cli, ["tools", "list", "--tools", str(tools_file(tmp_path))])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "add(a, b): Add two whole numbers." in lines[-6] and lines[-6].endswith("[added]")
    assert json.loads(lines[-5].split("schema: ", 1)[1])["required"] == ["a", "b"]
    assert len(run_tools(Rules(), memory=True, shell=False)) + 3 == len(lines) // 2
