"""The llguidance engine: replies always validate, commands are constrained, failures are loud."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from llguidance import LLMatcher

from offline_agent.codeturn import code_text, header, restart
from offline_agent.errors import BackendError, TruncatedReplyError
from offline_agent.llm.guidance import (
    JSON_OPTIONS,
    LOOP_LOGIT,
    LOOP_SPAN,
    GuidedDecoder,
    loop_token,
)
from offline_agent.llm.llama import LlamaModel, LlamaOptions, _LoopBreaker
from offline_agent.prompt import PromptBuilder
from offline_agent.records import Message, Profile
from offline_agent.reply import code_schema, parse_reply, reply_schema
from offline_agent.tools import ToolRegistry, builtin_tools

GOAL = "Write the word Washington to a file named output.txt"
PROFILE = Profile("FileBot", "an assistant that manages files", (GOAL,))
FORMATS = {"smollm2-135m": "template", "gemma3-270m": "gemma"}


def test_a_loop_is_found_once_its_copies_span_loop_span_tokens() -> None:
    sentence = list(range(100, 110))  # ten tokens, repeated back to back
    looped = [7] + sentence * 4
    assert len(sentence * 4) >= LOOP_SPAN and loop_token(looped) == sentence[0]
    assert loop_token(looped[:-1]) is None  # 39 tokens: not yet four whole copies
    assert loop_token([1] + sentence * 3) is None  # 30 tokens of copies: under LOOP_SPAN
    assert loop_token([5] * LOOP_SPAN) == 5 and loop_token([5] * (LOOP_SPAN - 1)) is None
    long = list(range(40))  # a run longer than LOOP_SPAN loops at its second copy
    assert loop_token(long + long) == 0 and loop_token(long + long[:-1]) is None
    assert loop_token([*sentence, 1, *sentence, 2, *sentence]) is None  # copies, not a loop
    assert loop_token([]) is None


def test_a_repetition_the_prompt_holds_is_a_copy_until_it_outgrows_it() -> None:
    line = [300, 301, 302, 303]  # a file of nine equal lines, in the prompt
    prompt = [1, *line * 9, 2]
    assert loop_token([7, *line * 8], prompt) is None  # copying the file
    assert loop_token([7, *line * 9], prompt) == 300  # a tenth line would outgrow it
    assert loop_token([7, *line * 8], [1, *line * 6, 2]) == 300  # six shown, eight written
    assert loop_token([7, *line * 8], [t << 8 for t in prompt]) == 300  # no match across tokens


def test_every_builtin_reply_schema_compiles_without_warnings() -> None:
    for tools in (builtin_tools(), builtin_tools(memory=False, agents=False, shell=True)):
        grammar = LLMatcher.grammar_from_json_schema(reply_schema(tools), defaults=JSON_OPTIONS)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
        assert not is_error, messages
        assert messages == []


@pytest.fixture(scope="module", params=list(FORMATS))
def model(request: pytest.FixtureRequest, real_models: dict[str, Path]) -> LlamaModel:
    name = request.param
    return LlamaModel(
        real_models[name], FORMATS[name], LlamaOptions(n_ctx=2048), name=name
    )  # llguidance is the default engine


def _prompt(model: LlamaModel, tools: ToolRegistry) -> list[Message]:
    return PromptBuilder(PROFILE, tools, model, 512).build([])


@pytest.mark.model
@pytest.mark.slow
def test_replies_validate_against_the_schema(model: LlamaModel) -> None:
    assert model.options.grammar_engine == "llguidance"
    tools = builtin_tools(memory=False)
    schema = reply_schema(tools)
    messages = _prompt(model, tools)
    history: list[Message] = []
    for _ in range(2):  # the second call reuses the KV cache of the first
        completion = model.complete([*messages, *history], schema=schema, max_tokens=512)
        assert completion.constrained
        assert completion.finish_reason == "stop"
        reply = parse_reply(completion, tools, schema)
        assert reply.command.name in tools
        history = [
            {"role": "assistant", "content": completion.text},
            {"role": "user", "content": "Command result: done."},
        ]
    assert completion.usage.cached_tokens > completion.usage.prompt_tokens // 2


@pytest.mark.model
@pytest.mark.slow
def test_the_next_prompt_reuses_the_replys_own_tokens(model: LlamaModel) -> None:
    tools = builtin_tools(memory=False)
    schema = reply_schema(tools)
    messages = _prompt(model, tools)
    first = model.complete(messages, schema=schema, max_tokens=512)
    following: list[Message] = [
        *messages,
        {"role": "assistant", "content": first.text.strip()},
        {"role": "user", "content": "Command write_file returned: done."},
    ]
    decoded = model._decodes[-1]
    text, tokens = model._tokens(following)
    assert model._llm.detokenize(tokens, special=True) == text  # the same text, split as decoded
    reply_at = len(decoded.prompt_tokens)
    assert tokens[:reply_at] == decoded.prompt_tokens
    assert tokens[reply_at : reply_at + len(decoded.reply)] == decoded.reply
    second = model.complete(following, schema=schema, max_tokens=512)
    # All but the reply's last token (sampled, never evaluated) come from the KV cache.
    reused = first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert second.usage.cached_tokens >= reused


@pytest.mark.model
@pytest.mark.slow
def test_a_schema_with_one_command_always_yields_it(model: LlamaModel) -> None:
    everything = builtin_tools(memory=False)
    only = ToolRegistry([everything.get("list_files")])
    schema = reply_schema(only)
    # The prompt offers every command and asks to write a file; the grammar allows one.
    completion = model.complete(_prompt(model, everything), schema=schema, max_tokens=512)
    reply = parse_reply(completion, only, schema)
    assert reply.command.name == "list_files"
    assert set(reply.command.args) <= {"directory"}


@pytest.mark.model
@pytest.mark.slow
def test_a_command_with_a_text_block_gets_one_in_the_real_vocabulary(model: LlamaModel) -> None:
    only = ToolRegistry([builtin_tools(memory=False).get("write_file")])
    schema = reply_schema(only, "compact", blocks=True)
    written = (
        '{"thought": "x", "command": {"name": "write_file", "args": {"filename": "a.py"}}}'
        '\n```python\nprint("Hello, World!")\n```'
    )
    for text, whole in ((written, True), (written.split("\n", maxsplit=1)[0], False)):
        tokens = model._tokenize(text.encode())  # the tokenizer's own merges across the fence
        matcher = model.guided.matcher(schema)
        assert (
            matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()
        ) == whole
    completion = model.complete(_prompt(model, only), schema=schema, max_tokens=96)
    assert "\n```" in completion.text  # the grammar opened the block after the JSON
    if completion.finish_reason == "stop":
        assert parse_reply(completion, only, schema).command.args["text"].endswith("\n")
    else:  # these models write on inside the block (docs/benchmarks.md): a cut-off reply
        with pytest.raises(TruncatedReplyError):
            parse_reply(completion, only, schema)


@pytest.mark.model
@pytest.mark.slow
def test_break_loops_stops_a_copy_where_its_source_ends(real_models: dict[str, Path]) -> None:
    model = LlamaModel(real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=2048))
    schema = {"type": "object", "properties": {"chant": {"type": "string"}}, "required": ["chant"]}
    chant = b"go team go! " * 12
    prompt = model._tokenize(b'{"chant": "' + chant + b'"}\n{"chant": "' + chant + b'"}\n')
    greedy = model.guided.decode(
        prompt, model.guided.matcher(schema), max_tokens=300, temperature=0.0
    )
    assert not greedy.finished and greedy.text.count("go team go!") > 12  # it loops on
    broken = model.guided.decode(
        prompt, model.guided.matcher(schema), max_tokens=300, temperature=0.0, break_loops=True
    )
    assert broken.finished and json.loads(broken.text) == {"chant": chant.decode()}
    assert all(t != loop_token(broken.tokens[:i], prompt) for i, t in enumerate(broken.tokens))
    stopped = model.guided.decode(  # a document's decode: it ends where the loop begins
        prompt, model.guided.matcher(schema), max_tokens=300, temperature=0.0, stop_loops=True
    )
    assert stopped.finished and len(stopped.tokens) < len(greedy.tokens)
    assert stopped.tokens == greedy.tokens[: len(stopped.tokens)]
    assert loop_token(stopped.tokens, prompt) is not None


@pytest.mark.model
def test_a_documents_forced_opening_of_repeated_lines_is_a_copy_not_a_loop(
    real_models: dict[str, Path],
) -> None:
    """An append's document opens with the file's text, forced: where that text ends in
    many equal lines, the model still writes (it stopped at once, as in a loop, before)."""
    model = LlamaModel(real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=2048))
    opening = header("log.py", ["Add a line"]) + 'print("tick")\n' * 12
    assert len(model._tokenize(opening.encode())) > 2 * LOOP_SPAN
    schema = code_schema("python", 48, opening, restart("log.py"))
    done = model.complete_document(schema=schema, max_tokens=48 + len(opening))
    code = code_text(done.answer.strip(), "python", restart("log.py"), opening)
    assert code.startswith(opening) and code[len(opening) :].strip()


def test_the_llama_engines_loop_breaker_lowers_only_the_looping_token() -> None:
    prompt = [1, 2, 3]
    reply = [10, 11, 12, 13] * 8  # 32 tokens: a loop, not in the prompt
    scores = np.zeros(20, dtype=np.float32)
    out = _LoopBreaker(len(prompt))(np.array(prompt + reply, dtype=np.intc), scores.copy())
    assert out[10] == LOOP_LOGIT and np.count_nonzero(out) == 1
    calm = _LoopBreaker(len(prompt))(np.array(prompt + reply[:-1], dtype=np.intc), scores.copy())
    assert np.count_nonzero(calm) == 0


@pytest.mark.model
def test_a_failure_inside_decoding_is_a_backend_error(real_models: dict[str, Path]) -> None:
    smol = LlamaModel(real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=2048))
    gemma = LlamaModel(real_models["gemma3-270m"], "gemma", LlamaOptions(n_ctx=2048))
    tools = builtin_tools(memory=False)
    schema = reply_schema(tools)
    # A matcher built on Gemma's 262k vocabulary cannot follow SmolLM2's tokens: the
    # decoder must stop with an error, never hand back what it decoded so far unconstrained.
    wrong = GuidedDecoder(gemma._llm).matcher(schema)
    _, prompt = smol._tokens(_prompt(smol, tools))
    with pytest.raises(BackendError):
        smol.guided.decode(prompt, wrong, max_tokens=64, temperature=0.0)


@pytest.mark.model
def test_a_schema_llguidance_cannot_compile_is_a_backend_error(
    real_models: dict[str, Path],
) -> None:
    smol = LlamaModel(real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=2048))
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)a"}}}
    messages: list[Message] = [{"role": "user", "content": "Hi"}]
    with pytest.raises(BackendError):
        smol.complete(messages, schema=schema, max_tokens=16)


@pytest.mark.model
@pytest.mark.slow
def test_samples_share_the_prompt_and_the_chosen_one_is_continued(
    real_models: dict[str, Path],
) -> None:
    model = LlamaModel(
        real_models["smollm2-135m"], "template", LlamaOptions(n_ctx=2048, temperature=1.0)
    )
    tools = builtin_tools(memory=False)
    schema = reply_schema(tools)
    messages = _prompt(model, tools)
    first, *others = [model.complete(messages, schema=schema, max_tokens=256) for _ in range(3)]
    for sampled in (first, *others):
        assert sampled.logprob is not None and -30 < sampled.logprob < 0
    for sampled in others:  # the prompt is evaluated once
        assert sampled.usage.cached_tokens >= sampled.usage.prompt_tokens - 1
    assert len({c.text for c in (first, *others)}) > 1  # at temperature 1: not all the same
    # The first candidate is kept, though the KV cache last held the third: its own tokens
    # are spliced in, so only its reply (at most) is evaluated again, not the prompt.
    following: list[Message] = [
        *messages,
        {"role": "assistant", "content": first.text.strip()},
        {"role": "user", "content": "Command write_file returned: done."},
    ]
    _, tokens = model._tokens(following)
    assert tokens[: first.usage.prompt_tokens] == model._decodes[0].prompt_tokens
    assert (
        tokens[first.usage.prompt_tokens :][: len(model._decodes[0].reply) - 1]
        == (model._decodes[0].reply[:-1])
    )
    second = model.complete(following, schema=schema, max_tokens=256)
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 1
