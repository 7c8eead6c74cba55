"""`python -m offline_agent.llm.llama_server ARGS`: llama-cpp-python's OpenAI-compatible
server, as `python -m llama_cpp.server ARGS` runs it, with JSON schemas converted to grammars
that its llama.cpp parses (`gbnf.compact_repetitions`): with `response_format`'s schema of
our replies, the plain server's grammar fails to parse and its process segfaults."""

from __future__ import annotations

import llama_cpp.llama_grammar
from llama_cpp.server.__main__ import main

from offline_agent.llm.gbnf import json_schema_to_gbnf


def patch() -> None:
    """Have llama-cpp-python convert every JSON schema with `gbnf.json_schema_to_gbnf`
    (`LlamaGrammar.from_json_schema` and the chat handlers look it up at each call)."""
    llama_cpp.llama_grammar.json_schema_to_gbnf = json_schema_to_gbnf


if __name__ == "__main__":
    patch()
    main()  # type: ignore[no-untyped-call]
