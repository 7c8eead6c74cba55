"""GBNF grammars from JSON schemas, written so that llama.cpp's grammar parser accepts them.

llama-cpp-python's converter (`llama_cpp.llama_grammar.json_schema_to_gbnf`) writes a
bounded repetition, such as a string's `maxLength`, as nested optional groups:
`maxLength: 3` becomes `"\\"" (char (char (char)?)?)? "\\""`. The llama.cpp inside
llama-cpp-python 0.3.36 refuses a grammar whose repetition would expand to more than 2000
rules (its `MAX_REPETITION_THRESHOLD`), and a nest counts about two rules a level, so the
2000-character text of `write_file` no longer parses. llama-cpp-python does not check: the
grammar sampler it then adds is NULL and decoding segfaults. llama.cpp's own converter
writes `char{0,3}`, which the parser accepts (one rule repeated 2000 times is at the limit)
and expands to the same rules, so the same texts are allowed. `compact_repetitions`
rewrites the nests that way; 0.3.16's llama.cpp reads both forms.
"""

from __future__ import annotations

import re
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import LlamaGrammar
from llama_cpp.llama_grammar import json_schema_to_gbnf as _converted

_NEST = re.compile(
    r'"(?:\\.|[^"\\])*"'  # a literal: kept as it is
    r"|\[(?:\\.|[^\]\\])*\]"  # a character class: kept as it is
    r"|\((?P<item>[A-Za-z0-9_-]+)(?P<more>(?: \((?P=item))*)\)\?(?P<close>(?:\)\?)*)"
)
"""`(X (X ... (X)?...)?)?`, the converter's `X{0,n}`, with the `)?` that follow it."""


def compact_repetitions(grammar: str) -> str:
    """`grammar` with each nest of optional groups of one rule, `(X (X (X)?)?)?`, written
    as the repetition `X{0,3}` it stands for (literals and character classes untouched)."""

    def rewrite(match: re.Match[str]) -> str:
        item = match["item"]
        if item is None:  # a literal or a character class
            return match[0]
        depth = 1 + len(match["more"]) // (len(item) + 2)
        closes = len(match["close"]) // 2  # the nest's own, then any of enclosing groups
        if depth < 2 or closes < depth - 1:
            return match[0]
        return f"{item}{{0,{depth}}}" + ")?" * (closes - (depth - 1))

    return _NEST.sub(rewrite, grammar)


def json_schema_to_gbnf(schema: str, prop_order: list[str] | None = None) -> str:
    """llama-cpp-python's conversion of a JSON schema, its repetitions compacted."""
    return compact_repetitions(_converted(schema, prop_order))


def json_schema_grammar(schema: str) -> LlamaGrammar:
    """`LlamaGrammar.from_json_schema(schema)`, with the repetitions compacted."""
    return LlamaGrammar.from_string(json_schema_to_gbnf(schema), verbose=False)


def parses(grammar: LlamaGrammar, vocab: Any) -> bool:
    """Whether llama.cpp's parser accepts `grammar` (it prints why not on stderr)."""
    sampler = llama_cpp.llama_sampler_init_grammar(
        vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True
