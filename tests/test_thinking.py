"""Reasoning models: thinking off where the chat template can turn it off; otherwise a think
block of bounded length before the JSON reply, kept in the record and left out of the
history, as the models' own templates leave it out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from llguidance import LLMatcher

from offline_agent.cli import cli
from offline_agent.codeturn import header
from offline_agent.errors import ConfigError, TruncatedReplyError
from offline_agent.gguf import describe
from offline_agent.llm.chat_format import Thinking, chat_format_for
from offline_agent.llm.guidance import ThinkBlock, reply_grammar
from offline_agent.llm.http import HttpModel, HttpOptions
from offline_agent.llm.llama import LlamaModel, LlamaOptions
from offline_agent.records import THINK_CLOSE, THINK_OPEN, Completion, split_thinking
from offline_agent.reply import code_schema, parse_reply, reply_schema
from offline_agent.runs import RunMeta, read_entries
from offline_agent.tools import builtin_tools
from tests.conftest import (
    BYTE_TOKENIZER,
    CLOSE_ID,
    FINISH,
    OPEN_ID,
    FakeServer,
    accepts,
    byte_tokens,
    completion_body,
    craft_gguf,
    make_agent,
    one_real_step,
    reply,
    retemplate_gguf,
    script,
)

# Templates written for these tests in the ways the families' published ones behave where
# thinking is concerned: the generation prompt, the switch, and assistant turns rendered
# without their think block.
QWEN3_LIKE = (  # Qwen3, SmolLM3: `enable_thinking`, on unless false
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set content = message.content %}"
    "{%- if '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
R1_LIKE = (  # DeepSeek-R1 distills, QwQ: the generation prompt opens the block; no switch
    "{{ bos_token }}{%- for m in messages %}{%- if m.role == 'system' %}{{ m.content }}"
    "{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}{{ '<｜User｜>' + m.content }}"
    "{%- elif m.role == 'assistant' %}{%- set content = m.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}"
    "{%- endif %}{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{%- endif %}"
)
NEMOTRON_LIKE = (  # Nemotron Nano v2: a /no_think flag in a message, taken out of the text
    "{%- set ns = namespace(thinking=true) %}"
    "{%- for m in messages %}{%- if m.role in ['system', 'user'] %}"
    "{%- if '/no_think' in m.content %}{%- set ns.thinking = false %}"
    "{%- elif '/think' in m.content %}{%- set ns.thinking = true %}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- for m in messages %}{%- set content = m.content %}"
    "{%- if m.role == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1] %}{%- elif m.role != 'assistant' %}"
    "{%- set content = content.replace('/no_think', '').replace('/think', '') %}{%- endif %}"
    "{%- set content = content.strip() %}"
    "{{- '<SPECIAL_11>' + m.role + '\\n' + content + '\\n<SPECIAL_12>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<SPECIAL_11>assistant\\n' }}"
    "{%- if ns.thinking %}{{- '<think>\\n' }}{%- else %}{{- '<think></think>' }}{%- endif %}"
    "{%- endif %}"
)
V31_LIKE = (  # DeepSeek-V3.1, Granite: `thinking`, off unless true
    "{%- for m in messages %}{{ '<' + m.role + '>' + m.content }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<assistant>' }}"
    "{%- if thinking is defined and thinking %}{{ '<think>' }}{%- else %}{{ '</think>' }}"
    "{%- endif %}{%- endif %}"
)
PLAIN = (  # SmolLM2's kind: ChatML, nothing about thinking
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SYSTEM = {"role": "system", "content": "You are FileBot."}
USER = {"role": "user", "content": "next step"}
ANSWER = json.dumps(reply("finish", reason="done"))


# --- Rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "thinking", "start", "switch", "ending"),
    [
        (QWEN3_LIKE, False, "never", "enable_thinking", "assistant\n<think>\n\n</think>\n\n"),
        (
            QWEN3_LIKE,
            True,
            "may",
            "enable_thinking",
            "next step<|im_end|>\n<|im_start|>assistant\n",
        ),
        (NEMOTRON_LIKE, False, "never", "/no_think", "<SPECIAL_11>assistant\n<think></think>"),
        (NEMOTRON_LIKE, True, "opened", "/no_think", "<SPECIAL_11>assistant\n<think>\n"),
        (V31_LIKE, False, "never", "thinking", "<user>next step<assistant></think>"),
        (V31_LIKE, True, "opened", "thinking", "<user>next step<assistant><think>"),
        (R1_LIKE, False, "opened", "", "<｜User｜>next step<｜Assistant｜><think>\n"),
        (R1_LIKE, True, "opened", "", "<｜User｜>next step<｜Assistant｜><think>\n"),
        (PLAIN, False, "never", "", "next step<|im_end|>\n<|im_start|>assistant\n"),
    ],
)
def test_thinking_is_off_where_the_template_can_turn_it_off(
    tmp_path: Path, template: str, thinking: bool, start: str, switch: str, ending: str
) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(craft_gguf(template=template))
    fmt = chat_format_for(
        "template", describe(path).chat_template, "<s>", "</s>", thinking=thinking
    )
    assert fmt.thinking == Thinking(start, switch)  # type: ignore[arg-type]
    text = fmt.render([SYSTEM, USER])
    assert text.endswith(ending)
    assert "You are FileBot." in text and "/no_think" not in text


# --- The grammar -------------------------------------------------------------------------

SMALL = {
    "type": "object",
    "properties": {"a": {"type": "string", "maxLength": 5}},
    "required": ["a"],
    "additionalProperties": False,
}


def _matcher(block: ThinkBlock, special: bool, schema: dict[str, Any] = SMALL) -> LLMatcher:
    lark = reply_grammar(schema, block, (OPEN_ID, CLOSE_ID) if special else None)
    matcher = LLMatcher(BYTE_TOKENIZER, LLMatcher.grammar_from_lark(lark), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher


def _tags(special: bool) -> tuple[str | int, str | int]:
    return (OPEN_ID, CLOSE_ID) if special else (THINK_OPEN, THINK_CLOSE)


@pytest.mark.parametrize("special", [True, False], ids=["special-tags", "text-tags"])
def test_a_think_block_within_the_bound_is_accepted_and_a_longer_one_is_not(
    special: bool,
) -> None:
    opening, closing = _tags(special)
    block = ThinkBlock(8)
    assert accepts(_matcher(block, special), byte_tokens(opening, "8 tokens", closing, '{"a":"x"}'))
    assert accepts(_matcher(block, special), byte_tokens(opening, "ok", closing, '\n\n{"a":"x"}'))
    assert accepts(_matcher(block, special), byte_tokens('{"a": "x"}'))  # no block at all
    longer = byte_tokens(opening, "9 tokens!", closing, '{"a":"x"}')
    assert _matcher(block, special).try_consume_tokens(longer) == len(byte_tokens(opening)) + 8
    at_the_bound = _matcher(block, special)
    at_the_bound.consume_tokens(byte_tokens(opening, "8 tokens"))
    assert at_the_bound.compute_ff_tokens() == byte_tokens(closing)  # the block is closed for it


@pytest.mark.parametrize("special", [True, False], ids=["special-tags", "text-tags"])
def test_the_reply_after_the_think_block_is_still_held_to_the_schema(special: bool) -> None:
    opening, closing = _tags(special)
    for bad in ('{"a":"too long"}', '{"b":"x"}', "plain words"):
        tokens = byte_tokens(opening, "ok", closing, bad)
        assert not accepts(_matcher(ThinkBlock(8), special), tokens), bad


@pytest.mark.parametrize("special", [True, False], ids=["special-tags", "text-tags"])
def test_a_block_the_prompt_opened_must_be_closed_before_the_reply(special: bool) -> None:
    _, closing = _tags(special)
    opened = ThinkBlock(8, opened=True)
    assert accepts(_matcher(opened, special), byte_tokens("I plan", closing, '{"a":"x"}'))
    assert not accepts(_matcher(opened, special), byte_tokens('{"a":"x"}'))
    at_once = _matcher(ThinkBlock(0, opened=True), special)  # --think-tokens 0
    assert at_once.compute_ff_tokens() == byte_tokens(closing)
    assert accepts(at_once, byte_tokens(closing, '{"a":"x"}'))


def test_the_closing_tag_cannot_be_spelled_inside_the_thinking() -> None:
    spelled = byte_tokens(OPEN_ID, "a</think>", CLOSE_ID, '{"a":"x"}')
    assert not accepts(_matcher(ThinkBlock(32), special=True), spelled)


def test_every_builtin_reply_schema_compiles_after_a_think_block() -> None:
    for tools in (builtin_tools(), builtin_tools(memory=False, agents=False, shell=True)):
        for special in (None, (OPEN_ID, CLOSE_ID)):
            lark = reply_grammar(reply_schema(tools, "compact"), ThinkBlock(512), special)
            matcher = LLMatcher(BYTE_TOKENIZER, LLMatcher.grammar_from_lark(lark), log_level=0)
            assert not matcher.is_error(), matcher.get_error()


@pytest.mark.parametrize(
    ("start", "tokens", "block"),
    [
        ("never", 512, None),
        ("may", 512, ThinkBlock(512)),
        ("may", 0, None),
        ("opened", 512, ThinkBlock(512, opened=True)),
        ("opened", 0, ThinkBlock(0, opened=True)),
    ],
)
def test_the_block_a_reply_may_have(start: Any, tokens: int, block: ThinkBlock | None) -> None:
    assert ThinkBlock.allowed(start, tokens) == block


# --- Parsing and the history -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "thinking", "answer"),
    [
        (ANSWER, "", ANSWER),
        (f"<think>\nI plan.\n</think>\n\n{ANSWER}", "I plan.", ANSWER),
        (f"I plan.\n</think>\n\n{ANSWER}", "I plan.", ANSWER),  # the prompt opened it
        (f"</think>{ANSWER}", "", ANSWER),
        ("<think>I plan and pla", "I plan and pla", ""),  # cut off while thinking
        ('{"text": "</think> is a tag"}', "", '{"text": "</think> is a tag"}'),
    ],
)
def test_a_reply_is_split_into_its_thinking_and_its_answer(
    text: str, thinking: str, answer: str
) -> None:
    assert split_thinking(text) == (thinking, answer)
    completion = Completion(text, "stop")
    assert (completion.thinking, completion.answer) == (thinking, answer)


def test_the_parser_reads_the_reply_after_a_think_block() -> None:
    tools = builtin_tools()
    schema = reply_schema(tools)
    thinking = 'Not {"command": {"name": "list_files", "args": {}}} yet.'  # JSON in thoughts
    for text in (f"<think>{thinking}</think>\n{ANSWER}", f"{thinking}</think>{ANSWER}"):
        parsed = parse_reply(Completion(text, "stop"), tools, schema)
        assert parsed.command.name == "finish"
    with pytest.raises(TruncatedReplyError):
        parse_reply(Completion("<think>still thinking", "length"), tools, schema)


def test_the_record_keeps_the_thinking_and_the_history_drops_it(tmp_path: Path) -> None:
    write = json.dumps(reply("write_file", filename="output.txt", text="Washington"))
    agent, model, record = make_agent(
        tmp_path, [f"<think>\nFirst the file.\n</think>\n\n{write}", FINISH]
    )
    assert agent.run().status == "finished"
    first = next(e["step"] for e in read_entries(record.folder) if e["type"] == "step")
    assert first["status"] == "ok"
    assert "First the file." in first["completion"]["text"]
    assert [m["content"] for m in first["history"] if m["role"] == "assistant"] == [write]
    assert all("First the file." not in m["content"] for m in model.calls[1])


def test_thinking_a_server_splits_off_is_kept_in_the_record_too(fake: FakeServer) -> None:
    body = completion_body(ANSWER)
    body["choices"][0]["message"]["reasoning_content"] = "I plan."
    fake.script = [(200, body, 0.0)]
    completion = HttpModel(HttpOptions(fake.url), "m").complete([USER], schema=None, max_tokens=64)
    assert (completion.thinking, completion.answer) == ("I plan.", ANSWER)


# --- The command line --------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("command", [["run", "--goal", "g"], ["bench"]], ids=["run", "bench"])
@pytest.mark.parametrize(
    ("value", "message"),
    [("-1", "'--think-tokens': -1 is not in the range"), ("many", "'many' is not a valid")],
)
def test_a_bad_think_tokens_is_one_line(
    home: Path, command: list[str], value: str, message: str
) -> None:
    result = CliRunner().invoke(cli, [*command, "--think-tokens", value])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2
    assert len(lines) == 1 and lines[0].startswith("Error: Invalid value") and message in lines[0]


def test_the_thinking_options_are_saved_with_the_run(tmp_path: Path, home: Path) -> None:
    model = script(tmp_path, [f"<think>Done already.</think>{json.dumps(FINISH)}"])
    args = ["run", "--goal", "g", "--model", model, "--continuous", "--no-memory", "--rule", "none"]
    result = CliRunner().invoke(cli, [*args, "--think-tokens", "64", "--thinking", "on"])
    assert result.exit_code == 0, result.output
    assert "THINKING: Done already.\nTHOUGHTS: t\n" in result.stdout
    (run,) = (home / "runs").iterdir()
    llama = RunMeta.load(run).settings["llama"]
    assert (llama["think_tokens"], llama["thinking"]) == (64, True)


# --- A real model --------------------------------------------------------------------------

SMOLLM2_THINK_TAGS = {12: THINK_OPEN, 13: THINK_CLOSE}
"""Two of SmolLM2's special tokens (<jupyter_text>, <jupyter_code>) renamed, as a reasoning
model's vocabulary has its tags."""


@pytest.mark.model
@pytest.mark.parametrize("special", [True, False], ids=["special-tags", "text-tags"])
def test_a_real_step_thinks_within_the_bound_and_its_reply_validates(
    real_models: dict[str, Path], tmp_path: Path, special: bool
) -> None:
    path = retemplate_gguf(
        real_models["smollm2-135m"],
        tmp_path / "smollm2-r1.gguf",
        R1_LIKE,
        SMOLLM2_THINK_TAGS if special else None,
    )
    model = LlamaModel(path, "template", LlamaOptions(n_ctx=2048, think_tokens=24))
    assert model.think == ThinkBlock(24, opened=True)
    assert model.context_length == 2048 - model.think.reserve
    tags = model.guided.think_tokens
    assert (tags is not None) == special
    agent, step = one_real_step(model, tmp_path, reply_tokens=256)
    assert step.completion is not None and step.completion.constrained
    assert step.reply is not None, step.error  # the reply after the block validated
    (last,) = model._decodes  # the one reply decoded from the step's prompt
    decoded = last.reply
    if tags is not None:
        thought = decoded.index(tags[1])
    else:  # text tags: the thinking holds no "<", the closing tag starts with one
        thought = next(i for i, t in enumerate(decoded) if b"<" in model._piece(t))
    assert thought <= 24
    assert THINK_CLOSE in step.completion.text
    assert agent.history[1]["content"] == step.completion.answer.strip()
    assert THINK_CLOSE not in agent.history[1]["content"]


@pytest.mark.model
def test_a_document_has_no_think_block(real_models: dict[str, Path], tmp_path: Path) -> None:
    """Rule code_document: a reasoning model's document is code from its first token, not a
    think block (the chat's replies open one)."""
    path = retemplate_gguf(
        real_models["smollm2-135m"], tmp_path / "r1.gguf", R1_LIKE, SMOLLM2_THINK_TAGS
    )
    model = LlamaModel(path, "template", LlamaOptions(n_ctx=2048, think_tokens=24))
    top = header("hello.py", ("Write hello.py, which prints hi",))
    code = model.complete_document(schema=code_schema("python", 32, top), max_tokens=32 + 64)
    assert code.constrained and code.text.startswith(f"```python\n{top}"), code.text
    assert THINK_OPEN not in code.text and THINK_CLOSE not in code.text


@pytest.mark.model
def test_think_tokens_are_set_aside_only_for_a_model_that_thinks(
    real_models: dict[str, Path], tmp_path: Path
) -> None:
    smollm2 = real_models["smollm2-135m"]
    plain = LlamaModel(smollm2, "template", LlamaOptions(n_ctx=1024, think_tokens=600))
    assert plain.think is None and plain.context_length == 1024
    path = retemplate_gguf(smollm2, tmp_path / "smollm2-r1.gguf", R1_LIKE)
    with pytest.raises(ConfigError, match="--think-tokens 600 takes over half of the context"):
        LlamaModel(path, "template", LlamaOptions(n_ctx=1024, think_tokens=600))
