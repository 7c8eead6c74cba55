"""A backend for any OpenAI-compatible chat-completions server, with the standard library only.

The server renders the chat template, so the prompt text is not known here: token counts are
the server's own per-message counts where it offers them (`llama_cpp.server`'s
`/extras/tokenize/count`) plus a fixed overhead per message, and an estimate otherwise.
Whether the server honours `response_format` or not, every reply is still validated by
`offline_agent.reply`, so a server that ignores the constraint costs format errors, not
wrong commands.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from offline_agent.errors import BackendError, ConfigError
from offline_agent.records import THINK_CLOSE, THINK_OPEN, Completion, Message, Usage

Constraint = Literal["json_object", "json_schema", "none"]
"""How the reply schema is sent: llama.cpp style, OpenAI style, or not at all."""

CONSTRAINTS: tuple[str, ...] = get_args(Constraint)
RETRY_STATUS = frozenset({408, 429})  # and every 5xx
CHARS_PER_TOKEN = 3  # conservative for JSON-heavy prompts: better too few tokens than a 400
MESSAGE_OVERHEAD = 6  # role markers and separators a chat template adds around each message
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HttpOptions:
    """Where the server is and how to talk to it."""

    base_url: str
    api_key: str | None = None
    constraint: Constraint = "json_object"
    timeout: float = 300.0
    retries: int = 3
    backoff: float = 0.5


def response_format(schema: dict[str, Any], constraint: Constraint) -> dict[str, Any] | None:
    """The `response_format` request field that carries `schema`, or None to send none."""
    if constraint == "json_object":
        return {"type": "json_object", "schema": schema}
    if constraint == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema, "strict": True},
        }
    return None


def _reason(err: BaseException, timeout: float) -> str:
    """A few words on why a request failed at the transport level."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        inner = err.reason
        err = inner if isinstance(inner, BaseException) else err
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection"
    if isinstance(err, ConnectionResetError):
        return "connection reset"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host ({err.strerror})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def _server_message(body: bytes) -> str:
    """The error text of an OpenAI-style, FastAPI-style or plain error body, on one line."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            text = error if isinstance(error, str) else json.dumps(error)
    return " ".join(text.split())[:300] or "(no message)"


class HttpModel:
    """A `ChatModel` served over the OpenAI chat-completions wire format."""

    def __init__(
        self,
        options: HttpOptions,
        model: str | None = None,
        *,
        context_length: int = 4096,
        seed: int = 0,
        temperature: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if options.constraint not in CONSTRAINTS:
            raise ConfigError(
                f"unknown constraint {options.constraint!r}; use one of {', '.join(CONSTRAINTS)}"
            )
        self.options = options
        self.base_url = options.base_url.rstrip("/")
        self.context_length = context_length
        self.seed = seed
        self.temperature = temperature
        self._sleep = sleep
        self._counts: dict[str, int] = {}
        self._server_counts: bool | None = None  # None: not probed yet
        self.name = model or self._served_model()

    # --- Transport ---------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _root_url(self, path: str) -> str:
        """A URL beside the OpenAI prefix: `/extras/...` lives at the root, not under `/v1`."""
        parts = urllib.parse.urlsplit(self.base_url)
        root = parts.path.removesuffix("/v1")
        return urllib.parse.urlunsplit(parts._replace(path=root + path))

    def _once(self, url: str, payload: dict[str, Any] | None, timeout: float) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(payload).encode("utf-8")
        if self.options.api_key:
            headers["Authorization"] = f"Bearer {self.options.api_key}"
        request = urllib.request.Request(url, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise BackendError(f"server at {self.base_url} sent a reply that is not JSON") from None

    def request(self, url: str, payload: dict[str, Any] | None = None) -> Any:
        """GET (no payload) or POST JSON; retry transport failures and 5xx with backoff."""
        tries = max(1, self.options.retries + 1)
        failure = ""
        for attempt in range(tries):
            try:
                return self._once(url, payload, self.options.timeout)
            except urllib.error.HTTPError as err:
                message = _server_message(err.read())
                if err.code < 500 and err.code not in RETRY_STATUS:
                    raise BackendError(
                        f"server at {self.base_url} refused the request "
                        f"(HTTP {err.code}): {message}"
                    ) from None
                failure = f"HTTP {err.code}: {message}"
            except (OSError, http.client.HTTPException) as err:
                failure = _reason(err, self.options.timeout)
            if attempt + 1 < tries:
                self._sleep(self.options.backoff * 2**attempt)
        tried = f" ({tries} tries)" if tries > 1 else ""
        if failure.startswith("HTTP "):
            raise BackendError(f"server at {self.base_url} failed{tried}: {failure}")
        raise BackendError(f"server at {self.base_url} is unreachable{tried}: {failure}")

    def _served_model(self) -> str:
        """The first model the server lists: what it serves when no name is given."""
        data = self.request(self._url("/models"))
        try:
            return str(data["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise BackendError(
                f"server at {self.base_url} lists no model; pass --model NAME"
            ) from None

    # --- ChatModel ---------------------------------------------------------------------

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float | None = None,
        break_loops: bool = False,
    ) -> Completion:
        """One chat completion; the schema goes as `response_format` per the constraint mode.
        A server decodes with its own samplers: `break_loops` is not honoured (no
        `breaks_loops`)."""
        payload: dict[str, Any] = {
            "model": self.name,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
            "seed": self.seed,
            # llama.cpp servers default to 1.1; the in-process backend samples with 1.0.
            # Servers that do not know the field ignore it (vLLM, Ollama).
            "repeat_penalty": 1.0,
            "stream": False,
        }
        fmt = response_format(schema, self.options.constraint) if schema is not None else None
        if fmt is not None:
            payload["response_format"] = fmt
        start = time.perf_counter()
        data = self.request(self._url("/chat/completions"), payload)
        total = time.perf_counter() - start
        try:
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            # Servers that split a reasoning model's thinking off (llama-server, vLLM,
            # Ollama): put it back as a think block, for the record.
            thinking = message.get("reasoning_content") or message.get("reasoning")
            if thinking:
                text = f"{THINK_OPEN}{thinking}{THINK_CLOSE}\n{text}"
            usage = data.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            timings = data.get("timings") or {}  # llama.cpp's llama-server reports these
            return Completion(
                text=str(text),
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                usage=Usage(
                    prompt_tokens=int(usage.get("prompt_tokens", 0)),
                    completion_tokens=int(usage.get("completion_tokens", 0)),
                    cached_tokens=int(details.get("cached_tokens", 0)),
                ),
                prompt_seconds=float(timings.get("prompt_ms", 0.0)) / 1000,
                total_seconds=total,
                constrained=fmt is not None,
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            raise BackendError(
                f"server at {self.base_url} sent a malformed completion: {err!r}"
            ) from None

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """The server's count of each message's text plus a per-message overhead, or an estimate."""
        total = 3  # the generation prompt that opens the assistant's turn
        for message in messages:
            total += self._content_tokens(message["content"]) + MESSAGE_OVERHEAD
        return total

    def _content_tokens(self, text: str) -> int:
        if text not in self._counts:
            if self._server_counts is None:
                self._server_counts = self._probe_tokenizer()
            if self._server_counts:
                data = self.request(
                    self._root_url("/extras/tokenize/count"), {"model": self.name, "input": text}
                )
                self._counts[text] = int(data["count"])
            else:
                self._counts[text] = math.ceil(len(text) / CHARS_PER_TOKEN)
        return self._counts[text]

    def _probe_tokenizer(self) -> bool:
        """Whether the server counts tokens for us (llama_cpp.server does; others do not)."""
        try:
            data = self._once(
                self._root_url("/extras/tokenize/count"),
                {"model": self.name, "input": "hello"},
                PROBE_TIMEOUT_S,
            )
        except (OSError, http.client.HTTPException, BackendError):
            return False
        return isinstance(data, dict) and isinstance(data.get("count"), int)
