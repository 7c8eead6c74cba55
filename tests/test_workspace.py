"""The workspace jail: escapes refused, atomic writes, listings and messages the model can use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline_agent.errors import ConfigError, StorageError, WorkspaceError
from offline_agent.runs import ORIGINALS, RunRecord
from offline_agent.state import Snapshot
from offline_agent.tools import ToolContext
from offline_agent.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


ESCAPES = [
    "..",
    "../outside/secret.txt",
    "a/../../outside/secret.txt",
    "./../outside/secret.txt",
    "a/b/../../../outside/secret.txt",
    "/etc/passwd",
    "/",
    "//etc/passwd",
    "~",
    "~/secret.txt",
    "~root/.bashrc",
    "file:///etc/passwd",
    "FILE://etc/passwd",
    "",
    "   ",
    "a\x00b",
    "secret.txt\x00.png",
    "\udc80abc",
    "a/\ud800",
    "new\nline.txt",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_escapes_and_bad_paths_are_refused_everywhere(
    ws: Workspace, outside: Path, path: str
) -> None:
    for call in (
        lambda: ws.resolve(path),
        lambda: ws.read_text(path),
        lambda: ws.write_text(path, "pwned"),
        lambda: ws.append_text(path, "pwned"),
        lambda: ws.delete(path),
        lambda: ws.exists(path),
        lambda: ws.list_files(path),
    ):
        with pytest.raises(WorkspaceError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        message.encode("utf-8")  # a message with lone surrogates could not be shown or saved
    assert (outside / "secret.txt").read_text() == "top secret"
    assert not Path("/pwned").exists()


def test_absolute_path_is_an_error_not_re_rooted(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="absolute path"):
        ws.write_text("/notes.txt", "x")
    assert ws.list_files() == []


def test_dotdot_that_stays_inside_is_fine(ws: Workspace) -> None:
    assert ws.resolve("a/../b.txt") == ws.root / "b.txt"
    assert ws.resolve("./c/./d.txt") == ws.root / "c" / "d.txt"
    assert ws.resolve(".") == ws.root


def test_non_string_path_is_a_workspace_error(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="must be text"):
        ws.resolve(b"bytes.txt")  # type: ignore[arg-type]


def test_root_is_resolved_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    ws = Workspace(tmp_path / "link")
    assert ws.root == real
    ws.write_text("x.txt", "hi")
    assert (real / "x.txt").read_text() == "hi"


# --- symlinks -----------------------------------------------------------------------------


def test_symlinked_folder_to_outside_is_refused(ws: Workspace, outside: Path) -> None:
    (ws.root / "etc").symlink_to("/etc")
    (ws.root / "out").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.read_text("etc/passwd")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.read_text("out/secret.txt")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.write_text("out/new.txt", "pwned")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.list_files("out")
    assert not (outside / "new.txt").exists()


def test_symlinked_file_to_outside_is_refused(ws: Workspace, outside: Path) -> None:
    (ws.root / "link.txt").symlink_to(outside / "secret.txt")
    for call in (
        lambda: ws.read_text("link.txt"),
        lambda: ws.write_text("link.txt", "pwned"),
        lambda: ws.append_text("link.txt", "pwned"),
        lambda: ws.delete("link.txt"),
    ):
        with pytest.raises(WorkspaceError, match="outside the workspace"):
            call()
    assert (outside / "secret.txt").read_text() == "top secret"
    assert (ws.root / "link.txt").is_symlink()


def test_dangling_symlink_to_outside_does_not_create_the_target(
    ws: Workspace, outside: Path
) -> None:
    (ws.root / "dangling.txt").symlink_to(outside / "created.txt")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.write_text("dangling.txt", "pwned")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.append_text("dangling.txt", "pwned")
    assert not (outside / "created.txt").exists()


def test_relative_symlink_climbing_out_is_refused(ws: Workspace, outside: Path) -> None:
    (ws.root / "sub").mkdir()
    (ws.root / "sub" / "up").symlink_to("../../outside")
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.read_text("sub/up/secret.txt")


def test_symlink_made_after_a_first_use_is_checked_again(ws: Workspace, outside: Path) -> None:
    ws.write_text("data/file.txt", "mine")
    assert ws.read_text("data/file.txt") == "mine"
    (ws.root / "data" / "file.txt").unlink()
    (ws.root / "data").rmdir()
    (ws.root / "data").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.write_text("data/file.txt", "pwned")
    assert not (outside / "file.txt").exists()


def test_symlink_loop_is_a_workspace_error(ws: Workspace) -> None:
    (ws.root / "loop").symlink_to("loop")
    (ws.root / "ping").symlink_to("pong")
    (ws.root / "pong").symlink_to("ping")
    for path in ("loop", "loop/x.txt", "ping/../../x", "ping"):
        with pytest.raises(WorkspaceError):
            ws.read_text(path)
        with pytest.raises(WorkspaceError):
            ws.write_text(path, "x")


def test_a_symlink_loop_does_not_hide_a_link_to_outside(ws: Workspace, outside: Path) -> None:
    # Code the agent runs can make both links; the file commands run outside its sandbox.
    (ws.root / "loop").symlink_to("loop")
    (ws.root / "out").symlink_to(outside)
    for path in ("loop/../out/new.txt", "loop/../out/secret.txt"):
        with pytest.raises(WorkspaceError):
            ws.write_text(path, "pwned")
        with pytest.raises(WorkspaceError):
            ws.read_text(path)
    assert (outside / "secret.txt").read_text() == "top secret"
    assert not (outside / "new.txt").exists()


def test_symlink_inside_is_followed_and_deleting_it_removes_only_the_link(ws: Workspace) -> None:
    ws.write_text("real.txt", "content")
    (ws.root / "alias.txt").symlink_to("real.txt")
    assert ws.read_text("alias.txt") == "content"
    ws.delete("alias.txt")
    assert not (ws.root / "alias.txt").exists()
    assert ws.read_text("real.txt") == "content"


def test_list_files_skips_links_to_outside_and_does_not_enter_linked_folders(
    ws: Workspace, outside: Path
) -> None:
    ws.write_text("b.txt", "b")
    ws.write_text("a/z.txt", "z")
    (ws.root / "out").symlink_to(outside)
    (ws.root / "etc").symlink_to("/etc")
    (ws.root / "secret.txt").symlink_to(outside / "secret.txt")
    (ws.root / "inner.txt").symlink_to("b.txt")
    (ws.root / "self").symlink_to(ws.root)
    assert ws.list_files() == ["a/z.txt", "b.txt", "inner.txt"]


# --- effects ------------------------------------------------------------------------------


def test_write_read_append_roundtrip(ws: Workspace) -> None:
    assert ws.write_text("notes/day1/todo.txt", "héllo\r\n") == 7
    assert ws.append_text("notes/day1/todo.txt", "wörld") == 5
    assert ws.read_text("notes/day1/todo.txt") == "héllo\r\nwörld"
    assert ws.read_text("notes/day1/todo.txt", max_chars=3) == "hél"
    assert ws.append_text("new.txt", "x") == 1
    assert ws.exists("new.txt")
    assert ws.exists("notes")
    assert not ws.exists("nope.txt")


def test_write_replaces_and_keeps_the_file_mode(ws: Workspace) -> None:
    ws.write_text("run.sh", "old")
    (ws.root / "run.sh").chmod(0o751)
    ws.write_text("run.sh", "new")
    assert (ws.root / "run.sh").read_text() == "new"
    assert (ws.root / "run.sh").stat().st_mode & 0o777 == 0o751


def test_write_is_atomic_when_the_final_rename_fails(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws.write_text("data.json", '{"ok": true}')

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(WorkspaceError, match=r"cannot write data\.json: No space left"):
        ws.write_text("data.json", "half")
    monkeypatch.undo()
    assert ws.read_text("data.json") == '{"ok": true}'
    assert sorted(p.name for p in ws.root.iterdir()) == ["data.json"]  # no temp file left


def test_write_over_a_symlink_inside_replaces_the_link(ws: Workspace) -> None:
    ws.write_text("target.txt", "target")
    (ws.root / "link.txt").symlink_to("target.txt")
    ws.write_text("link.txt", "new")
    assert ws.read_text("target.txt") == "new"


def test_lone_surrogates_in_text_are_written_not_raised(ws: Workspace) -> None:
    assert ws.write_text("s.txt", "a\ud800b") == 3
    assert ws.read_text("s.txt") == "a?b"


def test_invalid_utf8_is_read_with_replacement(ws: Workspace) -> None:
    (ws.root / "bin.dat").write_bytes(b"ok\xff\xfeend")
    assert ws.read_text("bin.dat") == "ok\ufffd\ufffdend"


def test_missing_file_message_lists_the_files(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="the workspace is empty"):
        ws.read_text("output.txt")
    ws.write_text("a.txt", "a")
    ws.write_text("b.txt", "b")
    with pytest.raises(
        WorkspaceError, match=r"^output\.txt does not exist; the files are: a\.txt, b\.txt$"
    ):
        ws.read_text("output.txt")
    with pytest.raises(WorkspaceError, match=r"does not exist; the files are: a\.txt, b\.txt"):
        ws.delete("output.txt")


def test_folders_are_not_files(ws: Workspace) -> None:
    ws.write_text("dir/f.txt", "f")
    with pytest.raises(WorkspaceError, match="is a folder"):
        ws.read_text("dir")
    with pytest.raises(WorkspaceError, match="is a folder"):
        ws.write_text("dir", "x")
    with pytest.raises(WorkspaceError, match="is a folder"):
        ws.delete("dir")
    with pytest.raises(WorkspaceError, match="is a folder"):
        ws.delete(".")
    with pytest.raises(WorkspaceError, match="is a file, not a folder"):
        ws.list_files("dir/f.txt")
    with pytest.raises(WorkspaceError, match="does not exist"):
        ws.list_files("nowhere")
    assert ws.read_text("dir/f.txt") == "f"


def test_fifo_is_not_read(ws: Workspace) -> None:
    os.mkfifo(ws.root / "pipe")
    with pytest.raises(WorkspaceError, match="not a regular file"):
        ws.read_text("pipe")


def test_too_long_name_is_a_workspace_error(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="cannot"):
        ws.write_text("x" * 300, "x")
    with pytest.raises(WorkspaceError, match="cannot"):
        ws.read_text("x" * 300)


def test_delete_removes_a_file(ws: Workspace) -> None:
    ws.write_text("gone.txt", "x")
    ws.delete("gone.txt")
    assert ws.list_files() == []


def test_list_files_is_sorted_recursive_capped_and_relative(ws: Workspace) -> None:
    for name in ("z.txt", "a/b/c.txt", "a.txt", "m/n.txt"):
        ws.write_text(name, "x")
    assert ws.list_files() == ["a.txt", "a/b/c.txt", "m/n.txt", "z.txt"]
    assert ws.list_files("a") == ["a/b/c.txt"]
    assert ws.list_files(limit=2) == ["a.txt", "a/b/c.txt"]


def test_create_makes_the_folder_and_refuses_a_file(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "deep" / "ws")
    assert ws.root.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"cannot use .* as the workspace"):
        Workspace.create(tmp_path / "file")
    with pytest.raises(ConfigError):
        Workspace.create(tmp_path / "file" / "ws")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_create_refuses_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError):
            Workspace.create(folder)
    finally:
        folder.chmod(0o700)


# --- property -----------------------------------------------------------------------------

SEGMENTS = st.sampled_from(
    ["..", ".", "", "a", "b.txt", "out", "etc", "loop", "up", "~", "/", "\x00", "\udc80", " "]
)
PATHS = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=40),
    st.lists(SEGMENTS, max_size=8).map("/".join),
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=PATHS)
def test_no_path_resolves_outside_the_root(ws: Workspace, outside: Path, path: str) -> None:
    # Fixture state is only read here, so sharing it across examples is sound.
    if not (ws.root / "out").is_symlink():
        (ws.root / "out").symlink_to(outside)
        (ws.root / "etc").symlink_to("/etc")
        (ws.root / "loop").symlink_to("loop")
        (ws.root / "a").mkdir()
        (ws.root / "a" / "up").symlink_to("../..")
    try:
        real = ws.resolve(path)
    except WorkspaceError:
        return
    assert real.is_relative_to(ws.root)
    assert Path(os.path.realpath(real)) == real


def test_the_first_version_of_a_changed_file_is_handed_over_once(tmp_path: Path) -> None:
    kept: list[tuple[str, str]] = []
    ws = Workspace.create(tmp_path / "ws")
    (ws.root / "notes").mkdir()
    for name in ("a.txt", "b.txt", "notes/c.txt"):
        (ws.root / name).write_text(f"first {name}")
    ws.keep = lambda name, real: kept.append((name, real.read_text()))
    ws.write_text("a.txt", "second")
    ws.write_text("a.txt", "third")  # kept once: its first version
    ws.append_text("notes/c.txt", "+")
    ws.delete("b.txt")
    ws.write_text("new.txt", "made by the run")
    ws.write_text("new.txt", "and changed")  # the run's own file: nothing to keep
    assert kept == [("a.txt", "first a.txt"), ("notes/c.txt", "first notes/c.txt"),
                    ("b.txt", "first b.txt")]  # fmt: skip


def test_a_file_whose_first_version_cannot_be_kept_is_left_as_it_was(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    (ws.root / "a.txt").write_text("precious")

    def full(name: str, real: Path) -> None:
        raise StorageError("cannot keep a.txt: No space left on device")

    ws.keep = full
    for change in (lambda: ws.write_text("a.txt", "x"), lambda: ws.append_text("a.txt", "x"),
                   lambda: ws.delete("a.txt")):  # fmt: skip
        with pytest.raises(WorkspaceError, match=r"^a\.txt was left as it was: its first version"):
            change()
    assert (ws.root / "a.txt").read_text() == "precious"


def test_a_long_name_a_hard_link_and_the_mode_when_keeping_first_versions(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path / "runs", "t", {})
    ws = Workspace.create(tmp_path / "ws")
    ws.keep = record.keep_original
    long = "n" * 240 + ".txt"
    (ws.root / long).write_text("first")
    ws.write_text(long, "second")
    assert (record.folder / ORIGINALS / long).read_text() == "first"
    script = ws.root / "run.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    ws.append_text("run.sh", "echo again\n")
    assert (record.folder / ORIGINALS / "run.sh").stat().st_mode & 0o777 == 0o755
    (ws.root / "linked.txt").write_text("shared")
    os.link(ws.root / "linked.txt", tmp_path / "elsewhere.txt")
    with pytest.raises(WorkspaceError, match="other names"):
        ws.append_text("linked.txt", "x")
    assert not (record.folder / ORIGINALS / "linked.txt").exists()  # refused: nothing read


def test_a_symlink_swapped_during_a_look_is_an_error_or_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.path.realpath raises EINVAL when a symlink becomes a file between its lstat and its
    readlink (code the agent runs can swap one in a loop): that is the command's one-line
    error, or a name left out of a listing, never an OSError that ends the run."""
    workspace = Workspace.create(tmp_path / "ws")
    workspace.write_text("swap.txt", "plain")
    workspace.write_text("notes.txt", "kept")
    realpath = os.path.realpath

    def racing(path: str | os.PathLike[str], **kwargs: bool) -> str:
        if os.fspath(path).endswith("swap.txt"):
            raise OSError(22, "Invalid argument", os.fspath(path))
        return realpath(path, **kwargs)

    monkeypatch.setattr(os.path, "realpath", racing)
    with pytest.raises(WorkspaceError, match=r"swap\.txt cannot be resolved"):
        workspace.read_text("swap.txt")
    assert workspace.list_files() == ["notes.txt"]
    assert list(Snapshot.take(ToolContext(workspace=workspace)).files) == ["notes.txt"]
