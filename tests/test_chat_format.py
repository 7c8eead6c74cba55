"""Chat formats we render ourselves: system message kept, prompt prefix stable as history grows."""

from __future__ import annotations

import pytest

from offline_agent.errors import ModelError
from offline_agent.llm.chat_format import BUILTIN_FORMATS, chat_format_for

SYSTEM = {"role": "system", "content": "You are FileBot."}


@pytest.mark.parametrize("name", sorted(BUILTIN_FORMATS))
def test_the_system_message_is_kept_and_the_prefix_only_grows(name: str) -> None:
    render = BUILTIN_FORMATS[name].render
    step1 = render([SYSTEM, {"role": "user", "content": "next step 1"}])
    step2 = render(
        [
            SYSTEM,
            {"role": "assistant", "content": "reply 1"},
            {"role": "user", "content": "result 1"},
            {"role": "user", "content": "next step 2"},
        ]
    )
    pairs = enumerate(zip(step1, step2, strict=False))
    shared = next((i for i, (a, b) in pairs if a != b), len(step1))
    common = step1[:shared]
    assert "You are FileBot." in common
    # Everything before the volatile last message is shared, bar that message's turn header.
    assert 0 < step1.index("next step 1") - len(common) <= len("<start_of_turn>user\n")


def test_gemma_turns() -> None:
    text = BUILTIN_FORMATS["gemma"].render([SYSTEM, {"role": "assistant", "content": "hi"}])
    assert text == (
        "<bos><start_of_turn>user\nYou are FileBot.<end_of_turn>\n"
        "<start_of_turn>model\nhi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_a_file_without_template_needs_a_named_format() -> None:
    with pytest.raises(ModelError, match="no chat template; choose a chat format"):
        chat_format_for("template", None, "<s>", "</s>")
    with pytest.raises(ModelError, match="unknown chat format 'llama-2'"):
        chat_format_for("llama-2", None, "<s>", "</s>")


def test_a_file_template_is_rendered_with_the_generation_prompt() -> None:
    template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}"
    fmt = chat_format_for("template", template, "<s>", "</s>")
    assert fmt.render([SYSTEM]) == "[system]You are FileBot.</s>"
    assert fmt.stop == ("</s>",)


# Templates written for these tests in the ways published ones behave (not copies of any).
REFUSES_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
IGNORES_SYSTEM = (
    "{% for m in messages %}{% if m.role != 'system' %}<{{ m.role }}>{{ m.content }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
DATED_WITH_TOOLS_AND_THINKING = (
    "{% if messages[0].role == 'system' %}{% set system = messages[0].content %}"
    "{% set rest = messages[1:] %}{% else %}{% set system = '' %}{% set rest = messages %}"
    "{% endif %}<sys>Today: {{ strftime_now('%d %b %Y') }}\n{{ system }}"
    "{% if tools is defined and tools %}\nTools: {{ tools | tojson }}{% endif %}</sys>\n"
    "{% for m in rest %}{% if loop.index > 50 %}{% break %}{% endif %}"
    "<{{ m.role }}>{{ m.content }}</{{ m.role }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}"
    "{% endif %}"
)
USER = {"role": "user", "content": "next step"}


def test_a_template_that_refuses_the_system_role_gets_it_in_the_first_user_turn() -> None:
    fmt = chat_format_for("template", REFUSES_SYSTEM, "<s>", "</s>")
    assert fmt.name == "template+folded-system"
    assert fmt.render([SYSTEM, USER]) == "<s>[user]You are FileBot.\n\nnext step\n[assistant]"


def test_a_template_that_drops_the_system_message_does_not_drop_ours() -> None:
    fmt = chat_format_for("template", IGNORES_SYSTEM, "<s>", "</s>")
    assert fmt.name == "template+folded-system"
    assert "You are FileBot." in fmt.render([SYSTEM, USER])
    history = [SYSTEM, USER, {"role": "assistant", "content": "a"}, USER]
    assert fmt.render(history).startswith("<user>You are FileBot.\n\nnext step\n<assistant>a\n")


def test_helpers_templates_call_are_there() -> None:
    fmt = chat_format_for("template", DATED_WITH_TOOLS_AND_THINKING, "<s>", "</s>")
    text = fmt.render([SYSTEM, USER])
    assert fmt.name == "template" and "You are FileBot." in text
    assert text.startswith("<sys>Today: ")
    # enable_thinking is given, and false: thinking is off (tests/test_thinking.py)
    assert text.endswith("<user>next step</user>\n<assistant><think></think>")
