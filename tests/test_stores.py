"""Models in other tools' stores (Ollama, the Hugging Face cache, LM Studio), read offline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent import modelstore, session, stores
from offline_agent.cli import cli
from offline_agent.errors import ModelError
from offline_agent.runs import RunMeta
from tests.conftest import craft_gguf

MODEL_LAYER = "application/vnd.ollama.image.model"


def ollama_store(root: Path, models: dict[str, bytes]) -> dict[str, str]:
    """An Ollama models folder holding `models` (manifest path under manifests/ → GGUF
    bytes), as `ollama pull` leaves it; their sha256 by manifest path."""
    digests = {}
    for manifest, data in models.items():
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / f"sha256-{digest}").write_bytes(data)
        layers = [
            {"mediaType": "application/vnd.ollama.image.license", "digest": "sha256:00"},
            {"mediaType": MODEL_LAYER, "digest": f"sha256:{digest}", "size": len(data)},
        ]
        path = root / "manifests" / manifest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
        digests[manifest] = digest
    return digests


def hf_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A hub cache holding `files` of `repo` as huggingface_hub stores them: blobs named by
    their sha256, linked from the snapshot that refs/main names."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "c0ffee" * 6 + "beef"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (folder / "blobs").mkdir(exist_ok=True)
        (folder / "blobs" / digest).write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", digest))
    return folder


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path / "home"),
        "OLLAMA_MODELS": str(tmp_path / "ollama"),
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "LMSTUDIO_MODELS": str(tmp_path / "lms"),
    }


def test_ollama_names_resolve_to_their_blobs(tmp_path: Path, env: dict[str, str]) -> None:
    digests = ollama_store(tmp_path / "ollama", {
        "registry.ollama.ai/library/tiny/latest": craft_gguf(),
        "registry.ollama.ai/library/tiny/q8": craft_gguf(template=None),
        "registry.ollama.ai/someone/model/v1": craft_gguf(),
        "hf.co/org/repo/Q4_K_M": craft_gguf(),
    })  # fmt: skip
    for name, manifest in [
        ("tiny", "registry.ollama.ai/library/tiny/latest"),
        ("tiny:latest", "registry.ollama.ai/library/tiny/latest"),
        ("tiny:q8", "registry.ollama.ai/library/tiny/q8"),
        ("someone/model:v1", "registry.ollama.ai/someone/model/v1"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo/Q4_K_M"),
    ]:
        found = stores.find(f"ollama:{name}", env)
        assert found.path == tmp_path / "ollama" / "blobs" / f"sha256-{digests[manifest]}"
        assert found.sha256 == digests[manifest] and found.store == "Ollama"
    listed = {f.name for f in stores.discover(env)}
    assert listed == {"ollama:tiny:latest", "ollama:tiny:q8", "ollama:someone/model:v1",
                      "ollama:hf.co/org/repo:Q4_K_M"}  # fmt: skip
    for name in listed:  # every name discover prints loads
        assert stores.find(name, env).store == "Ollama"


def test_ollama_errors_say_what_is_there(tmp_path: Path, env: dict[str, str]) -> None:
    library = "registry.ollama.ai/library"
    ollama_store(tmp_path / "ollama", {f"{library}/tiny/latest": craft_gguf(),
                                       f"{library}/odd/latest": b"NOTGGUF"})  # fmt: skip
    with pytest.raises(ModelError, match=r"ollama:qwen:7b is not in .* has: ollama:tiny:latest"):
        stores.find("ollama:qwen:7b", env)
    with pytest.raises(ModelError, match="is not a GGUF file"):
        stores.find("ollama:odd", env)
    with pytest.raises(ModelError, match="no Ollama store found"):
        stores.find("ollama:tiny", {"OLLAMA_MODELS": str(tmp_path / "nowhere")})


def test_the_hugging_face_cache_by_repo_and_file(tmp_path: Path, env: dict[str, str]) -> None:
    one, two = craft_gguf(), craft_gguf(template=None)
    hf_cache(tmp_path / "hf", "org/single", {"model-Q4_K_M.gguf": one, "README.md": b"# hi"})
    hf_cache(tmp_path / "hf", "org/many", {"a/x-Q4.gguf": one, "a/x-Q8.gguf": two})
    found = stores.find("hf:org/single", env)
    assert found.name == "hf:org/single/model-Q4_K_M.gguf"
    assert found.sha256 == hashlib.sha256(one).hexdigest() and found.path.read_bytes() == one
    with pytest.raises(ModelError, match=r"holds 2 GGUF files; name one: a/x-Q4\.gguf, a/x-Q8"):
        stores.find("hf:org/many", env)
    assert stores.find("hf:org/many/a/x-Q8.gguf", env).path.read_bytes() == two
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        stores.find("hf:org/absent", env)
    assert {f.name for f in stores.discover(env)} == {
        "hf:org/single/model-Q4_K_M.gguf",
        "hf:org/many/a/x-Q4.gguf",
        "hf:org/many/a/x-Q8.gguf",
    }
    # HF_HOME is the fallback for HF_HUB_CACHE, as huggingface_hub has it.
    moved = {"HOME": env["HOME"], "HF_HOME": str(tmp_path / "hfhome")}
    hf_cache(tmp_path / "hfhome" / "hub", "org/single", {"m.gguf": one})
    assert stores.find("hf:org/single", moved).name == "hf:org/single/m.gguf"


def test_lm_studio_by_publisher_and_repo(tmp_path: Path, env: dict[str, str]) -> None:
    folder = tmp_path / "lms" / "lmstudio-community" / "Tiny-GGUF"
    folder.mkdir(parents=True)
    (folder / "Tiny-Q4_K_M.gguf").write_bytes(craft_gguf())
    found = stores.find("lmstudio:lmstudio-community/Tiny-GGUF", env)
    assert found.name == "lmstudio:lmstudio-community/Tiny-GGUF/Tiny-Q4_K_M.gguf"
    assert [f.name for f in stores.discover(env)] == [found.name]


def test_resolve_names_a_store_model_by_its_store_name(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    digests = ollama_store(tmp_path / "ollama", {"registry.ollama.ai/library/tiny/latest":
                                                 craft_gguf()})  # fmt: skip
    monkeypatch.setenv("OLLAMA_MODELS", env["OLLAMA_MODELS"])
    registry = modelstore.load_registry(None)
    resolved = modelstore.resolve("ollama:tiny", registry, tmp_path / "models")
    assert (resolved.name, resolved.chat_format) == ("ollama:tiny:latest", "template")
    assert resolved.sha256 == digests["registry.ollama.ai/library/tiny/latest"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shown = CliRunner().invoke(cli, ["models", "list", "--discover", "--models-dir",
                                     str(tmp_path / "models")])  # fmt: skip
    assert "1 GGUF file(s) in other tools' stores:" in shown.output
    assert "ollama:tiny:latest" in shown.output


@pytest.mark.model
@pytest.mark.slow
def test_a_run_on_a_model_read_from_an_ollama_store(
    real_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real SmolLM2 file, as `ollama pull` would keep it, runs a real step; its digest
    comes from the store's name for it, not from hashing the file again."""
    model = real_models["smollm2-135m"]
    digest = modelstore.load_registry(None).get("smollm2-135m").sha256
    root = tmp_path / "ollama"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / f"sha256-{digest}").symlink_to(model)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": MODEL_LAYER, "digest": f"sha256:{digest}"}
    manifest.write_text(json.dumps({"layers": [layer]}))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path / "home"))

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(session, "sha256_file", no_hashing)
    result = CliRunner().invoke(cli, [
        "run", "--model", "ollama:smollm2:135m", "--goal", "Write hi to hi.txt", "--continuous",
        "--no-memory", "--max-steps", "1", "--workspace", str(tmp_path / "ws"),
    ])  # fmt: skip
    assert result.exit_code in (0, 10), result.output  # finished, or the one step ran
    (run,) = (tmp_path / "home" / "runs").iterdir()
    meta = RunMeta.load(run)
    assert (meta.model, meta.model_sha256) == ("ollama:smollm2:135m", digest)
    assert meta.settings["model"] == "ollama:smollm2:135m"
