"""GBNF grammars from JSON schemas that llama.cpp parses: nested repetitions compacted."""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import llama_cpp.llama_grammar
import pytest
from hypothesis import given
from hypothesis import strategies as st

from offline_agent.errors import BackendError
from offline_agent.llm import gbnf
from offline_agent.llm.gbnf import compact_repetitions, json_schema_grammar, json_schema_to_gbnf
from offline_agent.llm.llama import LlamaModel, LlamaOptions
from offline_agent.reply import reply_schema
from offline_agent.tools import builtin_tools


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ('s ::= "\\"" (char (char (char)?)?)? "\\"" space', 's ::= "\\"" char{0,3} "\\"" space'),
        ("s ::= char char (char (char)?)?", "s ::= char char char{0,2}"),
        ("s ::= (a (char (char)?)?)?", "s ::= (a char{0,2})?"),  # the enclosing group's `)?`
        ("s ::= (char)? x", "s ::= (char)? x"),
        ('s ::= "(char (char)?)?"', 's ::= "(char (char)?)?"'),  # a literal
        ("s ::= [0-9] ([0-9] ([0-9])?)?", "s ::= [0-9] ([0-9] ([0-9])?)?"),  # short, kept
        ("s ::= (char (chars)?)?", "s ::= (char (chars)?)?"),  # two rules: no repetition
        ('s ::= (item ("," item)?)?', 's ::= (item ("," item)?)?'),  # with a separator
    ],
)
def test_nests_of_one_rule_become_repetitions(before: str, after: str) -> None:
    assert compact_repetitions(before) == after


@given(st.integers(0, 50), st.integers(2, 3000))
def test_a_bounded_string_becomes_one_repetition(low: int, span: int) -> None:
    schema = json.dumps({"type": "string", "minLength": low, "maxLength": low + span})
    rule = next(
        line for line in json_schema_to_gbnf(schema).splitlines() if line.startswith("root ::=")
    )
    assert rule == 'root ::= "\\"" ' + "char " * low + f'char{{0,{span}}} "\\"" space'


def test_the_reply_grammar_is_the_converters_with_repetitions_compacted() -> None:
    schema = json.dumps(reply_schema(builtin_tools()))
    converted = llama_cpp.llama_grammar.json_schema_to_gbnf(schema)
    grammar = json_schema_to_gbnf(schema)
    assert grammar == compact_repetitions(converted) != converted
    assert 'char{0,2000} "\\""' in grammar  # write_file's text
    assert "(char (char" not in grammar


def test_the_server_converts_schemas_as_the_in_process_model_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from offline_agent.llm import llama_server  # noqa: PLC0415 (imports the server's modules)

    original = llama_cpp.llama_grammar.json_schema_to_gbnf
    monkeypatch.setattr(llama_cpp.llama_grammar, "json_schema_to_gbnf", original)  # restored
    llama_server.patch()
    schema = json.dumps(reply_schema(builtin_tools()))
    served = llama_cpp.LlamaGrammar.from_json_schema(schema, verbose=False)
    assert served._grammar == json_schema_grammar(schema)._grammar


@pytest.mark.model
@pytest.mark.parametrize("memory", [False, True])
@pytest.mark.parametrize("reply_format", ["autogpt", "compact", "command"])
def test_llama_cpp_parses_the_reply_grammars(
    real_models: dict[str, Path], memory: bool, reply_format: str
) -> None:
    model = LlamaModel(real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=512))
    schema = reply_schema(builtin_tools(memory=memory), reply_format)  # type: ignore[arg-type]
    assert gbnf.parses(model.grammar(schema), model._llm._model.vocab)


@pytest.mark.model
def test_a_grammar_llama_cpp_cannot_parse_is_an_error_not_a_crash(
    real_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = LlamaOptions(n_ctx=512, grammar_engine="llama")
    model = LlamaModel(real_models["smollm2-135m"], "template", options)
    broken = llama_cpp.LlamaGrammar.from_string("root ::= (", verbose=False)
    monkeypatch.setattr("offline_agent.llm.llama.json_schema_grammar", lambda _: broken)
    with pytest.raises(BackendError, match="cannot parse the GBNF grammar"):
        model.complete([{"role": "user", "content": "hi"}], schema={"type": "object"}, max_tokens=4)
