"""Is this install ready for an air-gapped run? Checks made with every socket blocked.

A run needs its model files (present, matching their sha256), llama.cpp, the JSON and vector
libraries, and the embedding model loaded from local files. Each check runs while opening a
network connection or resolving a host name raises, so a library that would fetch something
on import or first use (tokenizer files, hub downloads) is caught and named.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from offline_agent import modelstore
from offline_agent.bundle import manifest as mf
from offline_agent.errors import AgentError, ToolError
from offline_agent.memory import Embedder, FastEmbedder
from offline_agent.sandbox import protections

REQUIRED_MODULES = ("llama_cpp", "json_repair", "jsonschema", "faiss")

CheckStatus = Literal["ok", "fail", "warn"]


@dataclass(frozen=True)
class Check:
    """One line of the checklist."""

    label: str
    status: CheckStatus
    detail: str = ""


class NetworkBlocked(OSError):
    """Raised in place of a connection or name lookup while the guard is on."""


@dataclass
class SocketGuard:
    """Makes every TCP/UDP connect and host lookup fail, and remembers what was tried."""

    attempts: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def blocking(self) -> Iterator[SocketGuard]:
        """Block the network inside the `with` block; restore it after."""
        saved = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo)
        guard = self

        def connect(sock: socket.socket, address: Any) -> None:
            guard._refuse(sock, address)
            saved[0](sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            guard._refuse(sock, address)
            return saved[1](sock, address)

        def getaddrinfo(host: Any, port: Any, *_args: Any, **_kwargs: Any) -> Any:
            guard.attempts.append(f"name lookup of {host}:{port}")
            raise NetworkBlocked(f"network blocked by offline-agent doctor: lookup of {host}")

        socket.socket.connect = connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
        socket.getaddrinfo = getaddrinfo
        try:
            yield self
        finally:
            socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = saved  # type: ignore[method-assign]

    def _refuse(self, sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            self.attempts.append(f"connect to {address}")
            raise NetworkBlocked(f"network blocked by offline-agent doctor: connect to {address}")


def _attempted(guard: SocketGuard, before: int) -> str:
    new = guard.attempts[before:]
    return f"; tried the network: {', '.join(new[:3])}" if new else ""


def _status(tried: str, strict: bool) -> CheckStatus:
    """ok, unless the network was tried: a failure when strict, else a warning."""
    if not tried:
        return "ok"
    return "fail" if strict else "warn"


def check_modules(
    guard: SocketGuard, modules: Sequence[str] = REQUIRED_MODULES, *, strict: bool = True
) -> list[Check]:
    """Each library importable, without touching the network."""
    checks = []
    distributions = importlib.metadata.packages_distributions()
    for name in modules:
        before = len(guard.attempts)
        try:
            module = importlib.import_module(name)
        except Exception as err:  # any import failure is what the checklist reports
            checks.append(Check(f"{name} importable", "fail", f"{type(err).__name__}: {err}"))
            continue
        dist = (distributions.get(module.__name__) or [""])[0]
        version = f"{dist} {importlib.metadata.version(dist)}" if dist else ""
        tried = _attempted(guard, before)
        checks.append(Check(f"{name} importable", _status(tried, strict), version + tried))
    return checks


def check_models(models_dir: Path, names: Sequence[str] = ()) -> list[Check]:
    """Each registered model (or each of `names`) present and matching its sha256."""
    try:
        registry = modelstore.load_registry(modelstore.user_registry_path(models_dir))
        specs = [registry.get(n) for n in names] if names else list(registry.models.values())
    except AgentError as err:
        return [Check("model registry readable", "fail", str(err))]
    checks = []
    for spec in specs:
        label = f"model {spec.name}"
        try:
            path = modelstore.verify(spec, models_dir)
        except AgentError as err:
            checks.append(Check(label, "fail", str(err)))
        else:
            checks.append(Check(label, "ok", f"{path} (sha256 matches)"))
    return checks


def check_embedder(
    guard: SocketGuard, embedder: Embedder | None = None, *, strict: bool = True
) -> list[Check]:
    """The embedding model loads from local files and embeds, with no network use."""
    # Doctor only looks: a missing ONNX export is reported, not built.
    embedder = embedder or FastEmbedder(build=False)
    label = f"embedder {embedder.model_id} loads from local files"
    before = len(guard.attempts)
    try:
        vectors = embedder.embed(["offline-agent doctor"])
    except Exception as err:  # torch, transformers and friends raise many kinds
        detail = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        return [Check(label, "fail", detail + _attempted(guard, before))]
    tried = _attempted(guard, before)
    checks = [
        Check(label, "ok", f"dimension {vectors.shape[1]}"),
        Check(
            "embedder opened no socket",
            _status(tried, strict),
            tried.removeprefix("; ") or "no connection or name lookup attempted",
        ),
    ]
    if isinstance(embedder, FastEmbedder):
        fast = "fast embedder (onnxruntime, no torch)"
        if embedder.fallback_reason is None:
            checks.append(Check(fast, "ok", str(embedder.export_folder)))
        else:
            why = f"{embedder.fallback_reason}; `offline-agent memory prepare` builds it"
            checks.append(Check(fast, "warn", why))
    return checks


def check_sandbox() -> list[Check]:
    """Whether code commands can run in the sandbox here, and what it holds."""
    try:
        held = protections()
    except ToolError as err:
        detail = f"{err}; code commands refuse to run unless a run passes --sandbox off"
        return [Check("sandbox for agent code", "fail", detail)]
    weak = any("NOT" in line for line in held)
    return [Check("sandbox for agent code", "warn" if weak else "ok", "; ".join(held))]


def check_llama_build(features: str | None = None, cpu: Sequence[str] | None = None) -> list[Check]:
    """llama.cpp's AMX kernels crash with a segmentation fault in the first batch on some
    Sapphire Rapids machines (ggml-org/llama.cpp#20824); `scripts/setup.sh` builds without
    them where the CPU has AMX. `features` is llama.cpp's system info, `cpu` this CPU's flags."""
    label = "llama.cpp CPU kernels"
    if features is None:
        try:
            llama_cpp = importlib.import_module("llama_cpp")
        except Exception:  # check_modules reports the import failure
            return []
        features = llama_cpp.llama_print_system_info().decode(errors="replace")
    flags = mf.cpu_flags() if cpu is None else cpu
    if "AMX_INT8 = 1" in features and "amx_int8" in flags:
        return [Check(label, "warn", "built with AMX, which crashes on some of these CPUs; "
                      "rebuild without: CFLAGS=-mno-amx-int8 CXXFLAGS=-mno-amx-int8 pip install "
                      "--force-reinstall --no-cache-dir --no-deps llama-cpp-python")]  # fmt: skip
    return [Check(label, "ok", ", ".join(re.findall(r"(\w+) = 1", features)))]


def run_checks(
    models_dir: Path,
    names: Sequence[str] = (),
    *,
    embedder: Embedder | None = None,
    strict: bool = True,
    progress: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Every check, with sockets blocked; with `strict`, a network attempt fails, else warns."""
    guard = SocketGuard()
    checks: list[Check] = []

    def add(new: list[Check]) -> None:
        for check in new:
            checks.append(check)
            if progress is not None:
                progress(check)

    with guard.blocking():
        add(check_modules(guard, strict=strict))
        add(check_models(models_dir, names))
        add(check_embedder(guard, embedder, strict=strict))
    add(check_llama_build())
    add(check_sandbox())
    tried = "; ".join(guard.attempts[:5])
    add([Check("no network used", _status(tried, strict), tried or "no socket was even tried")])
    return checks


def _few(items: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_bundle(folder: Path) -> list[Check]:
    """An air-gap bundle against its manifest: every file present and unchanged, and this
    interpreter and machine the ones its wheels are for."""
    try:
        manifest = mf.read(folder)
    except AgentError as err:
        return [Check("bundle manifest", "fail", str(err))]
    models = ", ".join(m["name"] for m in manifest.models) or "no models"
    checks = [
        Check(
            "bundle manifest",
            "ok",
            f"offline_agent {manifest.offline_agent}, {len(manifest.wheels)} wheels, {models}, "
            f"{len(manifest.kv_states)} KV state(s), {manifest.total_size / 1e6:.0f} MB",
        )
    ]
    problems = mf.compare(folder, manifest)
    if problems.missing:
        checks.append(Check("bundle files present", "fail", "missing: " + _few(problems.missing)))
    if problems.changed:
        checks.append(Check("bundle files unchanged", "fail", "changed: " + _few(problems.changed)))
    if not problems.missing and not problems.changed:
        checks.append(Check("bundle files", "ok", f"{len(manifest.files)} match their sha256"))
    if problems.extra:
        checks.append(Check("bundle files listed", "warn", "not in the manifest: "
                            + _few(problems.extra)))  # fmt: skip
    mismatch = mf.python_mismatch(manifest)
    here = mf.this_python()
    checks.append(Check("bundle's Python", "fail" if mismatch else "ok",
                        mismatch or f"{here['tag']} (Python {here['version']})"))  # fmt: skip
    unfit = [w["file"].rsplit("/", 1)[-1] for w in manifest.wheels
             if not mf.wheel_fits(Path(w["file"]))]  # fmt: skip
    platform = mf.this_platform()
    checks.append(
        Check("bundle's platform", "fail", "wheels this Python cannot install: " + _few(unfit))
        if unfit
        else Check("bundle's platform", "ok", f"every wheel fits {platform['tag']}")
    )
    lacking = sorted(set(manifest.platform.get("cpu_flags", [])) - set(platform["cpu_flags"]))
    if lacking:
        detail = (
            f"this CPU lacks {', '.join(lacking)}, which the machine that built "
            "llama-cpp-python has: its native build may stop with 'Illegal instruction'"
        )
        checks.append(Check("bundle's CPU", "warn", detail))
    return checks


def passed(checks: Sequence[Check]) -> bool:
    """True when no check failed (warnings allowed)."""
    return all(c.status != "fail" for c in checks)
