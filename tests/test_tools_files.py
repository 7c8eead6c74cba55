"""File commands as the model calls them: observations, caps, and the jail against agent code."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline_agent.errors import ToolError, WorkspaceError
from offline_agent.tools.base import ToolContext
from offline_agent.tools.code import execute_python_code
from offline_agent.tools.files import (
    FILE_TOOLS,
    append_file,
    delete_file,
    list_files,
    read_file,
    write_file,
)
from offline_agent.workspace import Workspace


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(workspace=Workspace.create(tmp_path / "ws"), output_limit=200)


def test_file_tools_are_exported_in_order() -> None:
    assert [t.name for t in FILE_TOOLS] == [
        "read_file",
        "write_file",
        "append_file",
        "list_files",
        "delete_file",
    ]


def test_schemas_come_from_the_signatures() -> None:
    assert write_file.args_schema() == {
        "type": "object",
        "properties": {
            "filename": {"type": "string", "maxLength": 120},
            "text": {"type": "string", "maxLength": 2000},
        },
        "required": ["filename", "text"],
        "additionalProperties": False,
    }
    assert read_file.description == "Read a text file from the workspace."
    assert list_files.arg_docs["directory"].startswith("folder to list")


def test_write_read_append_delete_observations(ctx: ToolContext) -> None:
    assert write_file(ctx, {"filename": "output.txt", "text": "0123456789"}) == (
        "Wrote 10 characters to output.txt."
    )
    assert append_file(ctx, {"filename": "output.txt", "text": "abc"}) == (
        "Appended 3 characters to output.txt."
    )
    assert read_file(ctx, {"filename": "output.txt"}) == "0123456789abc"
    assert delete_file(ctx, {"filename": "output.txt"}) == "Deleted output.txt."
    assert not (ctx.workspace.root / "output.txt").exists()


def test_read_file_of_an_empty_file_says_so(ctx: ToolContext) -> None:
    write_file(ctx, {"filename": "empty.txt", "text": ""})
    assert read_file(ctx, {"filename": "empty.txt"}) == "empty.txt is empty."


def test_read_file_is_capped_at_the_output_limit(ctx: ToolContext) -> None:
    write_file(ctx, {"filename": "big.txt", "text": "a" * 1000})
    assert read_file(ctx, {"filename": "big.txt"}) == (
        "a" * 200 + "\n[cut: only the first 200 characters of big.txt are shown]"
    )
    write_file(ctx, {"filename": "fits.txt", "text": "b" * 200})
    assert read_file(ctx, {"filename": "fits.txt"}) == "b" * 200


def test_read_missing_file_names_the_files(ctx: ToolContext) -> None:
    write_file(ctx, {"filename": "a.txt", "text": "a"})
    write_file(ctx, {"filename": "b.txt", "text": "b"})
    with pytest.raises(WorkspaceError) as info:
        read_file(ctx, {"filename": "output.txt"})
    assert str(info.value) == "output.txt does not exist; the files are: a.txt, b.txt"


def test_list_files(ctx: ToolContext) -> None:
    assert list_files(ctx, {"directory": "."}) == "The workspace is empty."
    assert list_files(ctx, {"directory": ""}) == "The workspace is empty."
    (ctx.workspace.root / "sub").mkdir()
    assert list_files(ctx, {"directory": "sub"}) == "sub has no files."
    write_file(ctx, {"filename": "b.txt", "text": "b"})
    write_file(ctx, {"filename": "sub/a.txt", "text": "a"})
    assert list_files(ctx, {"directory": "."}) == "b.txt\nsub/a.txt"
    assert list_files(ctx, {"directory": "sub"}) == "sub/a.txt"


def test_list_files_is_capped_at_the_output_limit(ctx: ToolContext) -> None:
    for i in range(100):
        write_file(ctx, {"filename": f"file{i:03}.txt", "text": ""})
    listing = list_files(ctx, {"directory": "."})
    lines = listing.splitlines()
    assert len(listing) <= 200 + 60
    assert lines[0] == "file000.txt"
    assert (
        lines[-1]
        == f"[{100 - (len(lines) - 1)} more files not shown; list a subfolder to see them]"
    )


def test_arguments_are_checked_before_the_call(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="missing argument text"):
        write_file(ctx, {"filename": "x.txt"})
    with pytest.raises(ToolError, match="must be a string"):
        read_file(ctx, {"filename": 3})


@pytest.mark.parametrize(
    "path", ["../outside/secret.txt", "/etc/passwd", "~/.ssh/id_rsa", "file:///etc/passwd"]
)
def test_file_commands_refuse_escapes(ctx: ToolContext, outside: Path, path: str) -> None:
    for command, args in (
        (read_file, {"filename": path}),
        (write_file, {"filename": path, "text": "pwned"}),
        (append_file, {"filename": path, "text": "pwned"}),
        (delete_file, {"filename": path}),
        (list_files, {"directory": path}),
    ):
        with pytest.raises(WorkspaceError):
            command(ctx, args)
    assert (outside / "secret.txt").read_text() == "top secret"


def test_symlinks_made_by_agent_code_are_refused(ctx: ToolContext, outside: Path) -> None:
    code = (
        "import os\n"
        "os.symlink('/etc', 'etc')\n"
        f"os.symlink({str(outside)!r}, 'out')\n"
        f"os.symlink({str(outside / 'secret.txt')!r}, 'secret.txt')\n"
        f"os.symlink({str(outside / 'planted.txt')!r}, 'planted.txt')\n"
        "print('linked')\n"
    )
    observation = execute_python_code(ctx, {"code": code})
    assert observation == "The program exited with code 0.\nOutput:\nlinked\n"
    assert (ctx.workspace.root / "etc").is_symlink()

    refused = [
        (read_file, {"filename": "etc/passwd"}),
        (read_file, {"filename": "out/secret.txt"}),
        (read_file, {"filename": "secret.txt"}),
        (write_file, {"filename": "out/secret.txt", "text": "pwned"}),
        (write_file, {"filename": "out/new.txt", "text": "pwned"}),
        (write_file, {"filename": "secret.txt", "text": "pwned"}),
        (write_file, {"filename": "planted.txt", "text": "pwned"}),
        (append_file, {"filename": "secret.txt", "text": "pwned"}),
        (append_file, {"filename": "etc/hostname", "text": "pwned"}),
        (delete_file, {"filename": "secret.txt"}),
        (delete_file, {"filename": "out/secret.txt"}),
        (list_files, {"directory": "out"}),
        (list_files, {"directory": "etc"}),
    ]
    for command, args in refused:
        with pytest.raises(WorkspaceError, match="outside the workspace"):
            command(ctx, args)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "top secret"
    assert list_files(ctx, {"directory": "."}) == "The workspace is empty."


def test_an_identical_rewrite_is_noticed(tmp_path: Path) -> None:
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"))
    assert write_file(ctx, {"filename": "a.txt", "text": "x"}) == "Wrote 1 characters to a.txt."
    again = write_file(ctx, {"filename": "a.txt", "text": "x"})
    assert again == "a.txt already holds exactly this text; nothing changed."
    assert write_file(ctx, {"filename": "a.txt", "text": "y"}).startswith("Wrote 1")


def test_check_syntax_refuses_writes_that_leave_a_file_unparseable(tmp_path: Path) -> None:
    ctx = ToolContext(workspace=Workspace.create(tmp_path / "ws"), check_syntax=True)
    with pytest.raises(ToolError, match=r"hello.py was left as it was: it is not valid Python"):
        write_file(ctx, {"filename": "hello.py", "text": "Hello, World!"})
    assert not (tmp_path / "ws" / "hello.py").exists()
    write_file(ctx, {"filename": "hello.py", "text": "print('hi')\n"})
    with pytest.raises(ToolError, match="not valid Python"):
        append_file(ctx, {"filename": "hello.py", "text": "def f(:\n"})
    assert (tmp_path / "ws" / "hello.py").read_text() == "print('hi')\n"
    with pytest.raises(ToolError, match="not valid JSON"):
        write_file(ctx, {"filename": "data.json", "text": "{'a': 1}"})
    write_file(ctx, {"filename": "data.json", "text": '{"a": 1}'})
    write_file(ctx, {"filename": "notes.txt", "text": "def f(:"})  # no parser: any text


def test_without_check_syntax_any_text_is_written(ctx: ToolContext) -> None:
    write_file(ctx, {"filename": "hello.py", "text": "Hello, World!"})
    assert ctx.workspace.read_text("hello.py") == "Hello, World!"
