"""Chat templates in the wild: for each family users run (`tests/chat_templates.py`) the
agent's prompts render, keep the system message once, end with the generation prompt and
grow only at their end where the family allows; with the real SmolLM2 tensors under each
template an agent step runs; a template that cannot render is one line naming the model and
`--chat-format`."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_agent.cli import cli
from offline_agent.errors import ModelError
from offline_agent.gguf import describe
from offline_agent.llm.chat_format import ChatFormat, chat_format_for
from offline_agent.llm.guidance import ThinkBlock
from offline_agent.llm.llama import LlamaModel, LlamaOptions
from offline_agent.records import Message
from tests.chat_templates import FAMILIES, Family
from tests.conftest import (
    FINISH,
    PROFILE,
    craft_gguf,
    make_agent,
    one_real_step,
    reply,
    retemplate_gguf,
)

IDS = [family.name for family in FAMILIES]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> list[list[Message]]:
    """The messages of a scripted run's three steps: what the agent really sends (a step's
    request follows the previous command's result, so two user messages come in a row)."""
    replies = [
        reply("write_file", filename="output.txt", text="Washington"),
        reply("read_file", filename="output.txt"),
        FINISH,
    ]
    agent, model, _ = make_agent(tmp_path_factory.mktemp("run"), replies)
    assert agent.run().status == "finished"
    return model.calls


def _format(family: Family, tmp_path: Path, *, thinking: bool = False) -> ChatFormat:
    path = tmp_path / f"{family.name}.gguf"
    path.write_bytes(craft_gguf(template=family.template))  # the template as a file holds it
    template = describe(path).chat_template
    return chat_format_for(
        "template", template, family.bos, family.eos, thinking=thinking, model=family.name
    )


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_every_family_renders_the_agents_prompts(
    family: Family, prompts: list[list[Message]]
) -> None:
    fmt = chat_format_for("template", family.template, family.bos, family.eos, model=family.name)
    assert (fmt.name, fmt.thinking.start) == (family.format, family.think)
    system = prompts[0][0]["content"]
    rendered = [fmt.render(messages) for messages in prompts]
    for messages, text in zip(prompts, rendered, strict=True):
        assert text.endswith(family.generation)
        assert text.count(system) == 1  # kept, or folded in, once
        for message in messages:  # nothing left out
            assert message["content"].strip() in text
    grows = all(b.startswith(a) for a, b in itertools.pairwise(rendered))
    assert grows == family.grows


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_every_family_renders_from_its_file_and_with_thinking_on(
    family: Family, tmp_path: Path
) -> None:
    fmt = _format(family, tmp_path, thinking=True)
    messages = [
        Message(role="system", content="You are FileBot."),
        Message(role="user", content="next step"),
    ]
    text = fmt.render(messages)
    assert "You are FileBot." in text and "next step" in text


def test_the_system_message_goes_where_each_family_wants_it(tmp_path: Path) -> None:
    messages = [
        Message(role="system", content="SYS"),
        Message(role="user", content="Q1"),
        Message(role="assistant", content="A1"),
        Message(role="user", content="R1"),
        Message(role="user", content="Q2"),
    ]
    by_name = {family.name: family for family in FAMILIES}

    def render(name: str) -> str:
        family = by_name[name]
        fmt = chat_format_for("template", family.template, family.bos, family.eos)
        return fmt.render(messages)

    assert render("gemma2") == (
        "<bos><start_of_turn>user\nSYS\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nR1\n\nQ2<end_of_turn>\n<start_of_turn>model\n"
    )
    assert render("mistral") == "<s>[INST] SYS\n\nQ1 [/INST]A1</s>[INST] R1\n\nQ2 [/INST]"
    assert render("mistral-v3") == "<s>[INST] Q1[/INST] A1</s>[INST] SYS\n\nR1\n\nQ2[/INST]"
    assert render("command-r").startswith(
        "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>SYS<|END_OF_TURN_TOKEN|>"
    )
    assert render("phi3").startswith("<s><|user|>\nSYS\n\nQ1<|end|>\n<|assistant|>\nA1<|end|>")
    assert render("deepseek-r1") == (
        "<｜begin▁of▁sentence｜>SYS<｜User｜>Q1<｜Assistant｜>A1<｜end▁of▁sentence｜>"
        "<｜User｜>R1<｜User｜>Q2<｜Assistant｜><think>\n"
    )


def test_granite_with_thinking_off_allows_no_think_block() -> None:
    """Granite 3.3's template names <think> in a text it writes only with thinking on: with it
    off (the default) a reply opens no block, and no context is set aside for one."""
    granite = next(family for family in FAMILIES if family.name == "granite3")
    off = chat_format_for("template", granite.template, "", granite.eos)
    on = chat_format_for("template", granite.template, "", granite.eos, thinking=True)
    assert (off.thinking.start, off.thinking.switch) == ("never", "thinking")
    assert on.thinking.start == "may"


# --- Templates that cannot render ------------------------------------------------------------

BROKEN = [
    ("{% for m in messages %}{{ m.content }", "does not parse"),
    ("{{ raise_exception('always') }}", "failed: always"),
    ("{% for m in messages %}\n{{ m.content }\n{% endfor %}", r"does not parse: .* \(line 2\)"),
    ("{% if messages %}\n{{ messages | no_such_filter }}\n{% endif %}", "No filter named"),
    ("{{ messages[0].content.nope() }}", "failed"),
    ("{% for m in messages[1:] %}<{{ m.role }}>{{ m.content }}{% endfor %}", "leaves out"),
]


@pytest.mark.parametrize(("template", "message"), BROKEN)
def test_a_template_that_cannot_render_is_one_line_naming_the_model_and_the_option(
    template: str, message: str
) -> None:
    with pytest.raises(ModelError, match=message) as caught:
        chat_format_for("template", template, "<s>", "</s>", model="my-model")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("my-model") and "--chat-format" in text


# --- A real model under each family's template -------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_a_real_step_runs_under_every_family(
    family: Family, real_models: dict[str, Path], tmp_path: Path
) -> None:
    path = retemplate_gguf(
        real_models["smollm2-135m"], tmp_path / f"smollm2-{family.name}.gguf", family.template
    )
    model = LlamaModel(path, "template", LlamaOptions(n_ctx=2048, think_tokens=16))
    assert model.format.name == family.format
    assert model.think == ThinkBlock.allowed(family.think, 16)
    _, step = one_real_step(model, tmp_path, reply_tokens=128)
    assert step.completion is not None and step.completion.constrained
    assert step.reply is not None, step.error
    prompt = model.format.render(step.messages)
    assert PROFILE.name in prompt and prompt.endswith(family.generation)


@pytest.mark.model
@pytest.mark.parametrize(
    ("template", "message"),
    [("{{ raise_exception('no') }}", "failed: no"), ("{% for m in messages %}", "does not parse")],
    ids=["raises", "does-not-parse"],
)
def test_a_real_file_whose_template_cannot_render_is_one_line(
    real_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    template: str,
    message: str,
) -> None:
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path / "home"))
    path = retemplate_gguf(real_models["smollm2-135m"], tmp_path / "broken.gguf", template)
    args = ["run", "--model", str(path), "--goal", "g", "--continuous", "--no-memory"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == ModelError.exit_code, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: broken's chat template") and message in line
    assert "--chat-format" in line


@pytest.mark.model
def test_a_template_llama_cpp_python_cannot_compile_still_loads(
    real_models: dict[str, Path], tmp_path: Path
) -> None:
    """llama-cpp-python compiles the file's template while loading, without loop controls."""
    template = (
        "{% for m in messages %}{% if loop.index > 99 %}{% break %}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "<|im_start|>assistant\n"
    )
    path = retemplate_gguf(real_models["smollm2-135m"], tmp_path / "breaks.gguf", template)
    model = LlamaModel(path, "template", LlamaOptions(n_ctx=512))
    messages = [Message(role="system", content="S"), Message(role="user", content="U")]
    assert model.format.name == "template"
    assert model.count_tokens(messages) > 0
    completion = model.complete(messages, schema={"type": "object"}, max_tokens=8)
    assert completion.constrained
