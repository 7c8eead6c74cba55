"""The fast embedder's model file: an ONNX export of the packaged model, made here, once.

sentence-transformers loads the model from its package folder (as `SentenceTransformerEmbedder`
does), `torch.onnx` exports its transformer, onnxruntime's optimizer fuses attention, layer
norms and GELU, and (variant `int8`) quantizes the weights dynamically. Nothing comes from a
hub. The result is checked against sentence-transformers on a few texts before it is kept.

    $OFFLINE_AGENT_HOME/embedders/<model>-onnx-<variant>/
      export.json          the commit point: the model file's name and sha256, where it came from
      model-<sha>.onnx     the exported transformer, never changed once written
      .lock                one builder at a time

Loading reads export.json, checks that the source files are the ones it was built from, reads
the model file and checks its sha256. The source check compares path, sizes and times, so a
start costs no hashing of the 90 MB source; where they differ (another installation of the
same package: each checkout's virtual environment has its own copy) it compares the files'
sha256, so that checkouts sharing one home share its export. An export that is missing,
stale or damaged is built again, under the lock.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np

from offline_agent import atomic
from offline_agent.errors import MemoryStoreError
from offline_agent.home import home_dir
from offline_agent.memory.disk import locked
from offline_agent.memory.embedder import sentence_transformer_class
from offline_agent.memory.onnxrt import OnnxEmbedder

Variant = Literal["fp32", "int8"]
VARIANTS: tuple[str, ...] = get_args(Variant)
FORMAT = 1
INFO = "export.json"
SOURCE_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "tokenizer.json",
    "model.safetensors",
)
"""What an export depends on; a change to any of them makes it stale."""
PROBES = (
    "hello world",
    "The web server returned HTTP 502 because the upstream app had crashed.",
    "To bake sourdough, feed the starter the day before, mix flour, water and salt. " * 8,
)
AGREEMENT = {"fp32": 0.9999, "int8": 0.95}
"""Least cosine between an export's vectors and sentence-transformers' on PROBES."""

Notify = Callable[[str], None]


@dataclass(frozen=True)
class ExportInfo:
    """What export.json says."""

    model_id: str
    variant: str
    onnx_file: str
    onnx_sha256: str
    dimension: int
    max_tokens: int
    source: str
    source_files: dict[str, list[int]]
    agreement: float
    built: str
    versions: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT
    source_sha256: dict[str, str] = field(default_factory=dict)
    """Each source file's sha256 (absent from exports built before it was recorded)."""

    def to_json(self) -> str:
        """The export.json text."""
        return json.dumps(asdict(self), indent=1)


@dataclass(frozen=True)
class Export:
    """A checked export: its description, the model file's bytes, and the source model folder
    it was checked against (the one built from, or a copy of it)."""

    folder: Path
    info: ExportInfo
    model: bytes
    source: Path

    @property
    def tokenizer_file(self) -> Path:
        """The source model's tokenizer.json."""
        return self.source / "tokenizer.json"


def variant(value: str) -> Variant:
    """`value` as a Variant; MemoryStoreError naming the choices otherwise."""
    if value not in VARIANTS:
        raise MemoryStoreError(f"unknown ONNX variant {value!r}; choose one of {VARIANTS}")
    return cast(Variant, value)


def export_dir(model_id: str, kind: Variant = "fp32", root: Path | None = None) -> Path:
    """Where the export of `model_id` lives: `<root or home>/embedders/<model>-onnx-<kind>`."""
    return (root or home_dir() / "embedders") / f"{model_id}-onnx-{kind}"


def source_stamp(model_path: Path) -> dict[str, list[int]]:
    """Size and modification time (ns) of each file an export is built from."""
    stamp: dict[str, list[int]] = {}
    for name in SOURCE_FILES:
        try:
            info = (model_path / name).stat()
        except OSError:
            continue
        stamp[name] = [info.st_size, info.st_mtime_ns]
    return stamp


def source_hashes(model_path: Path) -> dict[str, str]:
    """The sha256 of each file an export is built from."""
    hashes: dict[str, str] = {}
    for name in SOURCE_FILES:
        try:
            with (model_path / name).open("rb") as f:
                hashes[name] = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            continue
    return hashes


def read_export(folder: Path, model_path: Path) -> tuple[Export | None, str]:
    """The export in `folder` if it is whole and built from `model_path` as it is now;
    else None and why not."""
    try:
        data = json.loads((folder / INFO).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None, f"it has format {data.get('format')!r}, not {FORMAT}"
        info = ExportInfo(**data)
    except FileNotFoundError:
        return None, "there is none yet"
    except (OSError, ValueError, TypeError) as err:
        return None, f"its {INFO} is unreadable ({err})"
    same = Path(info.source) == model_path and info.source_files == source_stamp(model_path)
    if not same and (not info.source_sha256 or info.source_sha256 != source_hashes(model_path)):
        return None, f"the model in {model_path} changed since it was built"
    try:
        model = (folder / info.onnx_file).read_bytes()
    except OSError as err:
        return None, f"{info.onnx_file} cannot be read ({err.strerror})"
    if hashlib.sha256(model).hexdigest() != info.onnx_sha256:
        return None, f"{info.onnx_file} does not match its sha256"
    return Export(folder, info, model, model_path), ""


def require_export(folder: Path, model_path: Path) -> Export:
    """`read_export`, or MemoryStoreError saying why there is no usable export."""
    found, why = read_export(folder, model_path)
    if found is None:
        raise MemoryStoreError(f"no usable ONNX export in {folder}: {why}")
    return found


def ensure_export(
    model_path: Path,
    folder: Path,
    kind: Variant = "fp32",
    notify: Notify | None = None,
    model_id: str | None = None,
) -> Export:
    """The checked export in `folder`, built first when missing, stale or damaged."""
    name = model_id or model_path.name
    with locked(folder, exclusive=False):
        found, why = read_export(folder, model_path)
    if found is not None:
        return found
    with locked(folder, exclusive=True):
        found, why = read_export(folder, model_path)  # another process may have built it
        if found is not None:
            return found
        if notify is not None:
            notify(
                f"Building the fast embedder (an ONNX export of {name}, once) in {folder}: {why}"
            )
        build_export(model_path, folder, kind, name)
        found, why = read_export(folder, model_path)
    if found is None:
        raise MemoryStoreError(f"the ONNX export just built in {folder} is unusable: {why}")
    return found


def build_export(
    model_path: Path, folder: Path, kind: Variant = "fp32", model_id: str | None = None
) -> ExportInfo:
    """Export, optimize (and for int8 quantize) the model at `model_path` into `folder`.

    Loads torch and sentence-transformers. MemoryStoreError if a library is missing, the
    model is not a mean-pooled transformer, or the export disagrees with the original.
    """
    name = model_id or model_path.name
    stamp, hashes = source_stamp(model_path), source_hashes(model_path)
    model = _load_sentence_transformer(model_path)
    dimension, max_tokens = _check_architecture(model, name)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            data = _export(model, tmp, kind)
        except MemoryStoreError:
            raise
        except Exception as err:  # torch.onnx, onnx and onnxruntime raise many kinds
            raise MemoryStoreError(f"cannot export {name} to ONNX: {err}") from err
    agreement = _agreement(model, data, model_path, name, (dimension, max_tokens))
    if agreement < AGREEMENT[kind]:
        raise MemoryStoreError(
            f"the ONNX export of {name} disagrees with sentence-transformers "
            f"(cosine {agreement:.4f} < {AGREEMENT[kind]})"
        )
    digest = hashlib.sha256(data).hexdigest()
    info = ExportInfo(
        model_id=name,
        variant=kind,
        onnx_file=f"model-{digest[:16]}.onnx",
        onnx_sha256=digest,
        dimension=dimension,
        max_tokens=max_tokens,
        source=str(model_path),
        source_files=stamp,
        agreement=round(agreement, 6),
        built=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=_versions(),
        source_sha256=hashes,
    )
    atomic.write_bytes(folder / info.onnx_file, data)
    atomic.fsync_folder(folder)
    atomic.write_bytes(folder / INFO, info.to_json().encode())
    atomic.fsync_folder(folder)
    for path in folder.glob("model-*.onnx"):
        if path.name != info.onnx_file:
            path.unlink(missing_ok=True)
    return info


def _load_sentence_transformer(model_path: Path) -> Any:
    SentenceTransformer = sentence_transformer_class()
    try:
        # Eager attention exports as plain MatMul/Softmax, which the optimizer fuses.
        return SentenceTransformer(
            str(model_path),
            device="cpu",
            local_files_only=True,
            model_kwargs={"attn_implementation": "eager"},
        )
    except (OSError, ValueError) as err:
        raise MemoryStoreError(f"cannot load embedding model from {model_path}: {err}") from err


def _check_architecture(model: Any, name: str) -> tuple[int, int]:
    """(dimension, max tokens) of a Transformer → mean Pooling (→ Normalize) model."""
    names = [type(module).__name__ for module in model]
    pooling = model[1] if len(names) > 1 else None
    mode = getattr(pooling, "pooling_mode", None) or (
        "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None
    )
    if names[:2] != ["Transformer", "Pooling"] or mode != "mean" or len(names) > 3:
        raise MemoryStoreError(
            f"{name} is {' → '.join(names)} (pooling {mode}); the ONNX embedder "
            "runs Transformer → mean Pooling → Normalize only"
        )
    dimension = model.get_embedding_dimension()
    return int(dimension), int(model.max_seq_length)


def _export(model: Any, tmp: Path, kind: Variant) -> bytes:
    import torch  # noqa: PLC0415
    from onnxruntime.transformers.optimizer import optimize_model  # noqa: PLC0415

    transformer = model[0].auto_model.eval()
    config = transformer.config

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    sample = model[0].tokenizer(["an example", "a longer example text"], padding=True)
    args = tuple(
        torch.tensor(sample[name]) for name in ("input_ids", "attention_mask", "token_type_ids")
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    raw = tmp / "raw.onnx"
    # Tracing warns about shapes it records as constants; the check after the export (and
    # `test_onnx_vectors_are_sentence_transformers_vectors`) is what shows the graph is right.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHidden(),
            args,
            str(raw),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript
            external_data=False,
        )
    fused = tmp / "fused.onnx"
    optimize_model(
        str(raw),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
    ).save_model_to_file(str(fused))
    if kind == "fp32":
        return fused.read_bytes()
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    quantized = tmp / "int8.onnx"
    quantize_dynamic(
        str(fused),
        str(quantized),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # The fused ops' outputs have no inferred type; they are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return quantized.read_bytes()


def _agreement(
    model: Any, data: bytes, model_path: Path, name: str, shape: tuple[int, int]
) -> float:
    """Least cosine between the export's vectors and sentence-transformers' on PROBES."""
    fast = OnnxEmbedder(
        data,
        model_path / "tokenizer.json",
        model_id=name,
        dimension=shape[0],
        max_tokens=shape[1],
    )
    ours = fast.embed(PROBES)
    theirs = np.asarray(model.encode(list(PROBES), normalize_embeddings=True), dtype=np.float32)
    return float((ours * theirs).sum(axis=1).min())


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    found = {}
    for name in ("torch", "sentence-transformers", "onnxruntime", "onnx"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
