"""Model backends behind one protocol, chosen by name.

- a registry name (`smollm2-135m`) or the path of a GGUF file: in-process llama.cpp, its
  prompt openings' KV states kept in `$OFFLINE_AGENT_HOME/kv-cache` for the next process;
- `scripted:PATH`: replay the replies in a JSON/JSONL file (tests, demos);
- with `HttpOptions` (a base URL): any OpenAI-compatible server, `model` being the name
  the server knows (or None: the first model it lists).
"""

from __future__ import annotations

from pathlib import Path

from offline_agent.llm.base import ChatModel
from offline_agent.llm.http import HttpModel, HttpOptions
from offline_agent.llm.kvfile import default_state_dir
from offline_agent.llm.options import LlamaOptions
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.modelstore import load_registry, resolve, user_registry_path

SCRIPTED_PREFIX = "scripted:"


def open_model(
    model: str | None,
    options: LlamaOptions,
    models_dir: Path,
    chat_format: str | None = None,
    http: HttpOptions | None = None,
    *,
    state_dir: Path | None = None,
) -> ChatModel:
    """Load the backend that `model` names, or connect to the server `http` points at. A
    GGUF model reads and writes its prompt openings' KV states in `state_dir` (default:
    the home folder's `kv-cache`)."""
    if http is not None:
        return HttpModel(
            http,
            model,
            context_length=options.n_ctx,
            seed=options.seed,
            temperature=options.temperature,
        )
    if model is not None and model.startswith(SCRIPTED_PREFIX):
        return ScriptedModel.from_file(Path(model.removeprefix(SCRIPTED_PREFIX)), options.n_ctx)
    registry = load_registry(user_registry_path(models_dir))
    model = model or registry.default
    resolved = resolve(model, registry, models_dir)
    # Imported here: loading llama.cpp's library is not needed for --help or scripted runs.
    from offline_agent.llm.llama import LlamaModel  # noqa: PLC0415

    return LlamaModel(
        resolved.path,
        chat_format or resolved.chat_format or "template",
        options,
        name=resolved.name,
        state_dir=state_dir or default_state_dir(),
    )


__all__ = [
    "SCRIPTED_PREFIX",
    "ChatModel",
    "HttpModel",
    "HttpOptions",
    "LlamaOptions",
    "ScriptedModel",
    "open_model",
]
