"""Shared fixtures and helpers: the real model files, found where `offline-agent models fetch`
put them; scripted replies and an agent built around a scripted model."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

from offline_agent import modelstore
from offline_agent.agent import Agent, AgentConfig, SilentEvents
from offline_agent.llm.base import ChatModel
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.records import (
    THINK_CLOSE,
    THINK_OPEN,
    CommandCall,
    Profile,
    Reply,
    Step,
    Thoughts,
)
from offline_agent.runs import RunRecord
from offline_agent.state import Rules
from offline_agent.tools import ToolContext, ToolRegistry, builtin_tools, tool
from offline_agent.tools.base import Short
from offline_agent.workspace import Workspace

REAL_MODELS = ("smollm2-135m", "gemma3-270m")

NONE = Rules.none()
"""Every step rule off: the loop's own behaviour, which most scripted tests exercise."""


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """The real registered files in the default models dir; skip (or fail in CI) if absent."""
    registry = modelstore.load_registry(None)
    models_dir = modelstore.default_models_dir()
    found, missing = {}, []
    for name in REAL_MODELS:
        spec = registry.get(name)
        path = spec.location(models_dir)
        if path.is_file() and path.stat().st_size == spec.size:
            found[name] = path
        else:
            missing.append(name)
    if missing:
        message = f"not fetched into {models_dir}: {', '.join(missing)}"
        if os.environ.get("OFFLINE_AGENT_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message + " (run: offline-agent models fetch --all)")
    return found


PROFILE = Profile("FileBot", "an assistant that manages files", ("Write Washington to output.txt",))


def reply(name: str, **args: Any) -> dict[str, Any]:
    """A well-formed reply calling `name`, in Auto-GPT's format (`Rules.none()`)."""
    thoughts = {"text": "t", "reasoning": "r", "plan": "p", "criticism": "c"}
    return {"thoughts": thoughts, "command": {"name": name, "args": args}}


def compact(name: str, **args: Any) -> dict[str, Any]:
    """A well-formed reply calling `name`, in the compact format (the default rules)."""
    return {"thought": "t", "command": {"name": name, "args": args}}


def replied_step(name: str, **args: Any) -> tuple[Step, CommandCall]:
    """A first step whose reply calls `name` with `args`, as the loop has it after parsing
    (what `codeturn.write_code` takes), and that call."""
    call = CommandCall(name, args)
    return Step(index=1, reply=Reply(Thoughts(text="t"), call)), call


FINISH = reply("finish", reason="done")


@tool
def explode(ctx: ToolContext, what: Short) -> str:
    """Fail on purpose.

    Args:
        what: what to say
    """
    raise RuntimeError(f"boom: {what}")


COMPACT_FINISH = compact("finish", reason="done")


def make_agent(
    tmp_path: Path,
    replies: list[Any],
    *,
    tools: ToolRegistry | None = None,
    config: AgentConfig | None = None,
    approve: Any = None,
    context_length: int = 4096,
    rules: Rules | None = None,
) -> tuple[Agent, ScriptedModel, RunRecord]:
    """An agent on a scripted model with a fresh workspace and record; without `rules`, the
    loop as it is with every rule off."""
    model = ScriptedModel(replies, context_length=context_length)
    record = RunRecord.create(tmp_path / "runs", "test", {})
    workspace = Workspace.create(tmp_path / "ws")
    agent = Agent(
        PROFILE,
        model,
        tools or builtin_tools(memory=False),
        ToolContext(workspace=workspace),
        config or AgentConfig(max_steps=10),
        rules=rules or NONE,
        record=record,
        approve=approve,
    )
    return agent, model, record


class _Replies(SilentEvents):
    """Events that keep every step the agent replied in."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def replied(self, step: Step) -> None:
        self.steps.append(step)


def one_real_step(model: ChatModel, tmp_path: Path, reply_tokens: int) -> tuple[Agent, Step]:
    """One step of the FileBot agent with `model` (the default rules, no memory)."""
    events = _Replies()
    agent = Agent(
        PROFILE,
        model,
        builtin_tools(memory=False),
        ToolContext(workspace=Workspace.create(tmp_path / "ws")),
        AgentConfig(max_steps=1, reply_tokens=reply_tokens),
        rules=Rules(),
        events=events,
    )
    agent.run()
    (step,) = events.steps
    return agent, step


def script(tmp_path: Path, replies: list[object]) -> str:
    """A scripted model (`--model` value) that gives `replies` in order."""
    path = tmp_path / "replies.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in replies))
    return f"scripted:{path}"


# --- Crafting GGUF bytes by hand ------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
        BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}  # fmt: skip


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _val(kind: int, value: object) -> bytes:
    if kind == STR:
        assert isinstance(value, str)
        return _s(value)
    return struct.pack(_FMT[kind], value)


def _kv(key: str, kind: int, value: object) -> bytes:
    return _s(key) + struct.pack("<I", kind) + _val(kind, value)


def _kv_array(key: str, kind: int, items: list[object]) -> bytes:
    body = struct.pack("<IQ", kind, len(items)) + b"".join(_val(kind, v) for v in items)
    return _s(key) + struct.pack("<I", ARR) + body


def craft_gguf(*, template: str | None = "{{ messages }}", version: int = 3) -> bytes:
    """A valid little GGUF: every value type, a long token array, one 4x8 F32 tensor."""
    kvs = [
        _kv("general.architecture", STR, "tiny"),
        _kv("general.name", STR, "Tiny Test"),
        _kv("general.file_type", U32, 3),
        _kv("tiny.context_length", U32, 2048),
        _kv("t.u8", U8, 200),
        _kv("t.i8", I8, -5),
        _kv("t.u16", U16, 60000),
        _kv("t.i16", I16, -300),
        _kv("t.i32", I32, -70000),
        _kv("t.f32", F32, 0.5),
        _kv("t.bool", BOOL, True),
        _kv("t.u64", U64, 2**40),
        _kv("t.i64", I64, -(2**40)),
        _kv("t.f64", F64, 0.25),
        _kv_array("general.languages", STR, ["en", "fr"]),
        _kv_array("tokenizer.ggml.tokens", STR, [f"tok{i}" for i in range(600)]),
        _kv_array("tokenizer.ggml.scores", F32, [0.0] * 600),
        # An array of arrays: [[1, 2], [3]] of int32.
        _s("t.nested")
        + struct.pack("<IIQ", ARR, ARR, 2)
        + struct.pack("<IQii", I32, 2, 1, 2)
        + struct.pack("<IQi", I32, 1, 3),
    ]
    if template is not None:
        kvs.append(_kv("tokenizer.chat_template", STR, template))
    tensor = _s("w") + struct.pack("<I", 2) + struct.pack("<QQ", 4, 8) + struct.pack("<IQ", 0, 0)
    head = b"GGUF" + struct.pack("<IQQ", version, 1, len(kvs)) + b"".join(kvs) + tensor
    padding = b"\0" * (-len(head) % 32)
    return head + padding + b"\0" * (4 * 8 * 4)


def retemplate_gguf(
    src: Path, dst: Path, template: str, renamed: dict[int, str] | None = None
) -> Path:
    """A copy of the GGUF file `src` at `dst` with `template` as its chat template and the
    tokens `renamed` (id → text): a real model's tensors under another family's template."""
    data = src.read_bytes()

    def string(at: int) -> tuple[str, int]:
        (size,) = struct.unpack_from("<Q", data, at)
        return data[at + 8 : at + 8 + size].decode(), at + 8 + size

    def skip(kind: int, at: int) -> int:
        if kind == STR:
            return string(at)[1]
        if kind != ARR:
            return at + struct.calcsize(_FMT[kind])
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item in _FMT:
            return at + count * struct.calcsize(_FMT[item])
        for _ in range(count):
            at = skip(item, at)
        return at

    version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    at, alignment, kvs = 24, 32, []
    for _ in range(n_kv):
        start = at
        key, at = string(at)
        (kind,) = struct.unpack_from("<I", data, at)
        value_at, at = at + 4, skip(kind, at + 4)
        if key == "tokenizer.chat_template":
            continue
        if key == "tokenizer.ggml.tokens" and renamed:
            tokens, item_at = [], value_at + 12
            for _ in range(struct.unpack_from("<IQ", data, value_at)[1]):
                token, item_at = string(item_at)
                tokens.append(token)
            for index, text in renamed.items():
                tokens[index] = text
            kvs.append(_kv_array(key, STR, list(tokens)))
            continue
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", data, value_at)
        kvs.append(data[start:at])
    kvs.append(_kv("tokenizer.chat_template", STR, template))
    infos = at
    for _ in range(n_tensors):
        at = string(at)[1]
        (n_dims,) = struct.unpack_from("<I", data, at)
        at += 4 + 8 * n_dims + 4 + 8  # dims, type, offset
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs)) + b"".join(kvs)
    head += data[infos:at]
    dst.write_bytes(
        head + b"\0" * (-len(head) % alignment) + data[-(-at // alignment) * alignment :]
    )
    return dst


# --- A fake server -------------------------------------------------------------------


@dataclass
class FakeServer:
    """Answers each request with the next (status, body, delay) of `script`; keeps requests."""

    url: str
    script: list[tuple[int, Any, float]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    route: Callable[[str, Any], tuple[int, Any, float]] | None = None
    """When set, answers (path, body) instead of the script: for concurrent clients."""


@contextlib.contextmanager
def fake_server() -> Iterator[FakeServer]:
    """A fake OpenAI-compatible server on loopback, answering from its `script`."""
    state = FakeServer("")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            state.requests.append((self.command, self.path, dict(self.headers), body))
            if state.route is not None:
                status, answer, delay = state.route(self.path, body)
            else:
                status, answer, delay = state.script.pop(0) if state.script else (404, "no", 0.0)
            time.sleep(delay)
            data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server


def completion_body(text: str = '{"a": 1}', finish: str = "stop") -> dict[str, Any]:
    """An OpenAI chat completion answering `text`."""
    return {
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }


def with_default_ctrl_c(argv: list[str]) -> list[str]:
    """`argv` run with SIGINT at its default (Ctrl-C as at a terminal), even when pytest was
    started by a shell without job control, which starts background jobs ignoring SIGINT and
    whose children would ignore it too. An exec shim, not `preexec_fn` (unsafe with threads)."""
    shim = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", shim, *argv]


# --- A real `offline-agent serve` ------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running `offline-agent serve` process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path


def start_server(model: Path, log: Path, n_ctx: int = 2048) -> Served:
    """`offline-agent serve` on a free loopback port; returns once /v1/models answers."""
    port = free_port()
    argv = [
        sys.executable, "-m", "offline_agent", "serve", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--n-ctx", str(n_ctx),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(served.url + "/models", timeout=2) as answer:
                if answer.status == 200:
                    return served
        except OSError:
            time.sleep(0.2)
    stop_server(served)
    raise RuntimeError("server did not answer within 120 s")


def stop_server(served: Served) -> None:
    if served.process.poll() is None:
        served.process.kill()
    served.process.wait(timeout=30)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the workspace, holding a secret the jail must protect."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("top secret")
    return folder


# --- Grammars over a tokenizer of single bytes --------------------------------------------

OPEN_ID, CLOSE_ID, EOS_ID = 256, 257, 258
"""The think tags' and end of text's tokens in `BYTE_TOKENIZER`."""


class _Bytes:
    """A tokenizer of single bytes, with the think tags as special tokens of their own."""

    def __init__(self) -> None:
        self.tokens = [bytes([i]) for i in range(256)]
        self.tokens += [b"\xff" + THINK_OPEN.encode(), b"\xff" + THINK_CLOSE.encode(), b"\xff</s>"]
        self.eos_token_id, self.bos_token_id = EOS_ID, None

    def __call__(self, text: str | bytes) -> list[int]:
        return list(text.encode() if isinstance(text, str) else text)


BYTE_TOKENIZER = LLTokenizer(TokenizerWrapper(_Bytes()))
"""llguidance's view of `_Bytes`: what a grammar admits, byte by byte, without a model."""


def byte_tokens(*parts: str | int) -> list[int]:
    """Texts as their bytes, and token ids as themselves, in `BYTE_TOKENIZER`."""
    return [t for p in parts for t in ([p] if isinstance(p, int) else list(p.encode()))]


def accepts(matcher: LLMatcher, tokens: list[int]) -> bool:
    """Whether `matcher` takes all of `tokens` and is then complete."""
    return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()
