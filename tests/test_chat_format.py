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
