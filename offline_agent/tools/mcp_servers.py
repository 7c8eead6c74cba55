"""Commands from MCP servers over stdio (`--mcp "python -m my_server"`), with the MCP SDK.

Each server is started when the run starts and stopped when it ends (also on Ctrl-C and on
errors). Its tools become commands named `<server>_<tool>`, each with a branch of the reply
grammar built from the tool's own input schema; a tool whose schema the grammar engine
cannot hold exactly is left out with a one-line warning, never loosened. A call's text
content is the observation (other content is named, not shown); a tool's error or a
timeout is an observation too; a server that dies ends the run (`errors.ToolServerGone`).

The SDK is asynchronous: one thread runs an event loop, and each server lives in one task
of it (its transport's context managers must open and close in the same task), taking
calls from a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from offline_agent.errors import ConfigError, ToolError, ToolServerGone
from offline_agent.tools.base import Tool, ToolContext

START_SECONDS = 30.0
"""How long a server may take to start and list its tools."""
SHUTDOWN_SECONDS = 5.0
"""How long a server's task may take to end before it is cancelled."""

_NAME = re.compile(r"[^a-z0-9_]+")


@dataclass
class _Server:
    """One server's task: its name, its tools, and the queue its calls go through."""

    command: list[str]
    name: str = ""
    tools: list[Any] = field(default_factory=list)
    calls: asyncio.Queue[tuple[str, dict[str, Any], Future[Any]] | None] | None = None
    gone: str = ""
    """Why the server stopped, once it has."""
    said: str = ""
    """The last line the server wrote to its stderr, when it failed to start."""


MAX_REF_DEPTH = 8
"""How deep `$ref`s are inlined; a schema deeper than that (a recursive one) is left out."""


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every local `$ref` (`#/$defs/X`, `#/definitions/X`) replaced by what it
    points at, so that it still means the same once nested in the reply schema (where `#`
    is another root). ValueError for a reference that is not local, missing, or recursive."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}

    def walk(node: Any, depth: int) -> Any:
        if isinstance(node, list):
            return [walk(item, depth) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = str(node["$ref"])
            name = ref.rsplit("/", 1)[-1]
            if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
                raise ValueError(f"unsupported $ref {ref}")
            if depth >= MAX_REF_DEPTH:
                raise ValueError(f"$ref {ref} nests deeper than {MAX_REF_DEPTH} (recursive?)")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**defs[name], **rest}, depth + 1)
        return {k: walk(v, depth) for k, v in node.items() if k not in ("$defs", "definitions")}

    inlined: dict[str, Any] = walk(schema, 0)
    return inlined


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """Why llguidance cannot hold `schema` exactly (None when it can)."""
    from llguidance import LLMatcher  # noqa: PLC0415 (only runs with MCP servers load it)

    try:
        grammar = LLMatcher.grammar_from_json_schema(schema)
    except (ValueError, TypeError) as err:
        return str(err).splitlines()[0]
    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if failed or messages:
        return "; ".join(m.splitlines()[-1] for m in messages)[:200] or "not compilable"
    return None


def reply_schema_for(args: dict[str, Any]) -> dict[str, Any]:
    """A reply schema with one command whose arguments are `args`: what the grammar
    compiles, checked as a whole (a schema can compile alone and fail nested)."""
    command = {"type": "object", "properties": {"name": {"const": "x"}, "args": args},
               "required": ["name", "args"]}  # fmt: skip
    return {"type": "object", "properties": {"thought": {"type": "string"}, "command": command}}


def _observation(result: Any) -> str:
    """A tool call's result as the model sees it: its text, and a notice for the rest."""
    parts = []
    for item in result.content:
        kind = getattr(item, "type", "?")
        parts.append(item.text if kind == "text" else f"[{kind} content, not shown]")
    text = "\n".join(parts) or "(no content)"
    return f"Error: {text}" if result.is_error else text


class MCPServers:
    """The MCP servers of one run; a context manager that stops them all when it exits."""

    def __init__(self, commands: Sequence[str], call_seconds: float = 60.0) -> None:
        self._servers = [_Server(shlex.split(c)) for c in commands]
        self.call_seconds = call_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[Future[Any]] = []
        self.left_out: dict[str, str] = {}
        """Tools left out at start, by command name, with the reason."""

    def __enter__(self) -> MCPServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> list[Tool]:
        """Start every server and list its tools; ConfigError (one line) when one fails."""
        for server in self._servers:
            if not server.command:
                raise ConfigError("an --mcp command is empty")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        tools: list[Tool] = []
        for server in self._servers:
            ready: Future[None] = Future()
            self._tasks.append(
                asyncio.run_coroutine_threadsafe(self._serve(server, ready), self._loop)
            )
            try:
                ready.result(timeout=START_SECONDS)
            except Exception as err:
                self.close()
                what = shlex.join(server.command)
                said = f" (it said: {server.said})" if server.said else ""
                raise ConfigError(
                    f"MCP server {what!r} did not start: {_reason(err)}{said}"
                ) from None
            tools += self._commands(server)
        return tools

    def close(self) -> None:
        """Stop every server (their processes end with their transports) and the loop."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        with contextlib.suppress(Exception):  # a server that failed has already said why
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._thread is None or not self._thread.is_alive():
            loop.close()

    async def _shutdown(self) -> None:
        """Ask each server's task to end; cancel those that do not, and wait for every one,
        so that each transport closes and ends its server process."""
        for server in self._servers:
            if server.calls is not None:
                server.calls.put_nowait(None)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS) if tasks else ((), ())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_SECONDS)

    async def _serve(self, server: _Server, ready: Future[None]) -> None:
        from mcp import ClientSession, StdioServerParameters  # noqa: PLC0415
        from mcp.client.stdio import stdio_client  # noqa: PLC0415

        params = StdioServerParameters(command=server.command[0], args=server.command[1:])
        # The server's stderr: its last line says why it did not start, when it does not.
        errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed in the finally below, after the except reads it)
        try:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                info = await session.initialize()
                listed = await session.list_tools()
                label = getattr(info.server_info, "name", "") or server.command[-1]
                server.name = _NAME.sub("_", label.lower()).strip("_") or "mcp"
                server.tools = list(listed.tools)
                server.calls = asyncio.Queue()
                ready.set_result(None)
                await self._answer(session, server)
        except BaseException as err:
            server.gone = _reason(err)
            errlog.seek(0)
            said = errlog.read().strip().splitlines()
            server.said = said[-1][:200] if said else ""
            if not ready.done():
                ready.set_exception(err if isinstance(err, Exception) else RuntimeError(str(err)))
            if server.calls is not None:  # fail what waits, and what comes later
                while not server.calls.empty():
                    item = server.calls.get_nowait()
                    if item is not None:
                        item[2].set_exception(ToolServerGone(f"MCP server {server.name} stopped"))
            if not isinstance(err, Exception):
                raise
        finally:
            errlog.close()

    async def _answer(self, session: Any, server: _Server) -> None:
        assert server.calls is not None
        while (item := await server.calls.get()) is not None:
            name, args, done = item
            try:
                result = await asyncio.wait_for(session.call_tool(name, args), self.call_seconds)
            except TimeoutError:
                done.set_exception(ToolError(f"{name} took longer than {self.call_seconds:g} s"))
            except Exception as err:
                done.set_exception(err)
                raise  # a broken connection: the server is gone
            else:
                done.set_result(result)

    def _call(self, server: _Server, tool: str, args: dict[str, Any]) -> str:
        if server.gone or self._loop is None or server.calls is None:
            raise ToolServerGone(f"MCP server {server.name} has stopped: {server.gone or 'closed'}")
        done: Future[Any] = Future()
        self._loop.call_soon_threadsafe(server.calls.put_nowait, (tool, args, done))
        try:
            result = done.result(timeout=self.call_seconds + 5)
        except (ToolError, ToolServerGone):
            raise
        except Exception as err:
            raise ToolServerGone(f"MCP server {server.name} stopped: {_reason(err)}") from None
        return _observation(result)

    def _commands(self, server: _Server) -> list[Tool]:
        commands = []
        for listed in server.tools:
            name = f"{server.name}_{_NAME.sub('_', listed.name.lower()).strip('_')}"
            try:  # it is nested in the reply schema, where `#` is another root
                schema = inline_refs(dict(listed.input_schema or {"type": "object"}))
            except ValueError as err:
                self.left_out[name] = f"its input schema cannot be held by the grammar: {err}"
                continue
            schema.setdefault("type", "object")
            # Only the arguments the server declares: a small model adds others otherwise.
            schema.setdefault("additionalProperties", False)
            problem = _schema_problem(reply_schema_for(schema))
            if problem is not None:
                self.left_out[name] = f"its input schema cannot be held by the grammar: {problem}"
                continue
            properties = schema.get("properties") or {}
            docs = {k: str((v or {}).get("description") or k) for k, v in properties.items()}
            call = _bound(self, server, listed.name)
            description = (listed.description or listed.name).strip().splitlines()[0]
            commands.append(Tool(name, f"{description} (MCP server {server.name})", call,
                                 dict(properties), docs, tuple(schema.get("required") or ()),
                                 schema=schema))  # fmt: skip
        return commands


def _bound(servers: MCPServers, server: _Server, tool: str) -> Callable[..., str]:
    def call(ctx: ToolContext, **args: Any) -> str:
        return servers._call(server, tool, args)

    return call


def _reason(err: BaseException) -> str:
    """One line for what went wrong, looking inside exception groups."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
