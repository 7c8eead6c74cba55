"""Model backends behind one protocol, chosen by name.

- a registry name (`smollm2-135m`) or the path of a GGUF file: in-process llama.cpp;
- `scripted:PATH`: replay the replies in a JSON/JSONL file (tests, demos).
"""

from __future__ import annotations

from pathlib import Path

from offline_agent.llm.base import ChatModel
from offline_agent.llm.llama import LlamaOptions
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.modelstore import load_registry, resolve, user_registry_path

SCRIPTED_PREFIX = "scripted:"


def open_model(
    model: str, options: LlamaOptions, models_dir: Path, chat_format: str | None = None
) -> ChatModel:
    """Load the backend that `model` names."""
    if model.startswith(SCRIPTED_PREFIX):
        return ScriptedModel.from_file(Path(model.removeprefix(SCRIPTED_PREFIX)), options.n_ctx)
    resolved = resolve(model, load_registry(user_registry_path(models_dir)), models_dir)
    # Imported here: loading llama.cpp's library is not needed for --help or scripted runs.
    from offline_agent.llm.llama import LlamaModel  # noqa: PLC0415

    return LlamaModel(
        resolved.path,
        chat_format or resolved.chat_format or "template",
        options,
        name=resolved.spec.name if resolved.spec else resolved.path.stem,
    )


__all__ = ["ChatModel", "LlamaOptions", "ScriptedModel", "open_model"]
