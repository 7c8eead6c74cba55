"""`offline_agent.atomic`: a replaced file is the old one or the new one, never half."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from offline_agent import atomic


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if atomic.TEMP_FILE.match(p.name))


def test_a_file_is_replaced_whole_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    target.write_text("old")
    with atomic.replacing(target) as file:
        file.write(b"new ")
        assert target.read_text() == "old"  # not visible before the block ends
        file.write(b"text")
    assert target.read_text() == "new text"
    assert _leftovers(tmp_path) == []


def test_an_error_in_the_block_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    target.write_text("old")

    def half_then_fail() -> None:
        with atomic.replacing(target) as file:
            file.write(b"half")
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        half_then_fail()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    script = (
        "import os, sys\nfrom pathlib import Path\nfrom offline_agent import atomic\n"
        "with atomic.replacing(Path(sys.argv[1])) as f:\n"
        "    f.write(b'half'); f.flush(); os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    assert done.returncode == 9
    assert target.read_bytes() == b"old"
    assert len(_leftovers(tmp_path)) == 1  # recognisable, for its folder's owner to clean


def test_mode_sets_the_permission_bits_and_the_default_follows_the_umask(tmp_path: Path) -> None:
    atomic.write_bytes(tmp_path / "shared", b"x", mode=0o640)
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o640
    old = os.umask(0o077)
    try:
        atomic.write_bytes(tmp_path / "private", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o600


def test_a_symlink_at_the_path_is_replaced_and_what_it_points_to_is_not(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(elsewhere)
    atomic.write_bytes(link, b"new")
    assert not link.is_symlink()
    assert link.read_text() == "new"
    assert elsewhere.read_text() == "keep"


def test_a_temporary_name_stays_within_name_max_and_is_recognised(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 255)
    name = atomic.temp_name(target).name
    assert len(name) <= 255
    assert atomic.TEMP_FILE.match(name)
    atomic.write_bytes(target, b"long")
    assert target.read_bytes() == b"long"


def test_fsync_folder_is_best_effort(tmp_path: Path) -> None:
    atomic.fsync_folder(tmp_path)
    atomic.fsync_folder(tmp_path / "missing")  # no error: nothing to make durable
