"""`doctor`: every check runs with the network blocked and fails loudly on a miss."""

from __future__ import annotations

import contextlib
import shutil
import socket
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent import doctor, modelstore
from offline_agent.cli import cli
from offline_agent.memory import HashEmbedder, Vectors


class PhoningEmbedder(HashEmbedder):
    """Embeds, but first tries to reach a hub, as a library with a hidden download would."""

    def embed(self, texts: Sequence[str]) -> Vectors:
        # Like a library that falls back to its cache after a failed download.
        with contextlib.suppress(OSError):
            urllib.request.urlopen("https://huggingface.co/api/models", timeout=1)
        return super().embed(texts)


def models_copy(real_models: dict[str, Path], tmp_path: Path) -> Path:
    """A models dir holding links to the real files (no multi-hundred-MB copies)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for path in real_models.values():
        (folder / path.name).symlink_to(path)
    return folder


def test_socket_guard_blocks_and_records_then_restores() -> None:
    guard = doctor.SocketGuard()
    with guard.blocking(), pytest.raises(OSError, match="blocked"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with guard.blocking(), socket.socket() as raw, pytest.raises(OSError, match="blocked"):
        raw.connect(("127.0.0.1", 9))
    assert guard.attempts == ["name lookup of 127.0.0.1:9", "connect to ('127.0.0.1', 9)"]
    assert socket.getaddrinfo("127.0.0.1", 9)  # restored


def test_missing_model_fails(tmp_path: Path) -> None:
    checks = doctor.run_checks(tmp_path, ["smollm2-135m"], embedder=HashEmbedder())
    assert not doctor.passed(checks)
    (failed,) = [c for c in checks if c.status == "fail"]
    assert failed.label == "model smollm2-135m"
    assert "not fetched" in failed.detail


def test_network_use_is_caught_and_named(tmp_path: Path) -> None:
    checks = doctor.run_checks(tmp_path, [], embedder=PhoningEmbedder())
    by_label = {c.label: c for c in checks}
    assert by_label["embedder opened no socket"].status == "fail"
    assert "huggingface.co" in by_label["embedder opened no socket"].detail
    assert by_label["no network used"].status == "fail"
    lenient = doctor.run_checks(tmp_path, [], embedder=PhoningEmbedder(), strict=False)
    assert {c.label: c.status for c in lenient}["no network used"] == "warn"


@pytest.mark.model
@pytest.mark.embedder
@pytest.mark.slow
def test_doctor_passes_on_this_install(real_models: dict[str, Path], tmp_path: Path) -> None:
    folder = models_copy(real_models, tmp_path)
    result = CliRunner().invoke(cli, ["doctor", "--offline", "--models-dir", str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(line.startswith("✓") for line in lines[:-1]), result.output
    assert any(line.startswith("✓ model smollm2-135m") for line in lines)
    assert any(line.startswith("✓ embedder opened no socket") for line in lines)
    assert lines[-1] == "ready for an offline run"


@pytest.mark.model
def test_doctor_fails_on_a_missing_model(real_models: dict[str, Path], tmp_path: Path) -> None:
    folder = models_copy(real_models, tmp_path)
    (folder / real_models["gemma3-270m"].name).unlink()
    checks = doctor.run_checks(folder, embedder=HashEmbedder())
    assert [c.label for c in checks if c.status == "fail"] == ["model gemma3-270m"]


@pytest.mark.model
@pytest.mark.slow
def test_doctor_fails_on_a_corrupted_copy(real_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    source = real_models["smollm2-135m"]
    copy = folder / source.name
    shutil.copyfile(source, copy)
    with copy.open("r+b") as f:  # same size, one byte flipped
        f.seek(copy.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    checks = doctor.run_checks(folder, ["smollm2-135m"], embedder=HashEmbedder())
    (failed,) = [c for c in checks if c.status == "fail"]
    assert failed.label == "model smollm2-135m"
    assert "sha256" in failed.detail
    assert modelstore.sha256_file(copy) in failed.detail


@pytest.mark.embedder
@pytest.mark.slow
def test_doctor_cli_prints_a_cross_and_exits_non_zero(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["doctor", "--models-dir", str(tmp_path), "--model", "no-such-model"]
    )
    assert result.exit_code == 1
    assert "✗ model registry readable: unknown model 'no-such-model'" in result.stdout
    assert "not ready for an offline run" in result.stderr


def test_a_llama_build_with_amx_kernels_on_a_cpu_with_amx_is_named() -> None:
    info = "CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | "
    (check,) = doctor.check_llama_build(info, ["avx2", "amx_int8"])
    assert check.status == "warn" and "AMX" in check.detail
    (elsewhere,) = doctor.check_llama_build(info, ["avx2"])  # kernels the CPU never picks
    assert elsewhere.status == "ok" and elsewhere.detail == "AVX2, AVX512, AMX_INT8, OPENMP"


def test_the_installed_llama_build_does_not_hold_kernels_that_crash_here() -> None:
    (check,) = doctor.check_llama_build()
    assert check.status == "ok", check.detail
