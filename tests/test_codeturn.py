"""Rule `code_turn`: Python code is asked for in a turn of its own, as one fenced block."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from llguidance import LLMatcher

from offline_agent.cli import cli
from offline_agent.cli.console import ConsoleEvents
from offline_agent.codeturn import (
    CONTINUED_BYTES,
    code_text,
    continued,
    header,
    is_ask,
    restart,
    signature,
    write_code,
)
from offline_agent.errors import FormatError
from offline_agent.llm.guidance import JSON_OPTIONS, reply_grammar
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.prompt import replies_and_results, step_starts
from offline_agent.pyrepair import kept_compiling, pruned, trimmed
from offline_agent.records import CommandCall, Completion
from offline_agent.replay import recorded_steps
from offline_agent.reply import CODE_KEY, code_schema, parse_reply, reply_schema
from offline_agent.runs import read_entries
from offline_agent.state import Rules
from offline_agent.tools import builtin_tools
from offline_agent.tools.base import ToolRegistry
from offline_agent.workspace import Workspace
from tests.conftest import (
    BYTE_TOKENIZER,
    COMPACT_FINISH,
    PROFILE,
    accepts,
    byte_tokens,
    compact,
    make_agent,
    replied_step,
    script,
)

TOOLS = builtin_tools(memory=False, agents=False)
SCHEMA = reply_schema(TOOLS, "compact", code_turn=True)
RULES = Rules(code_turn=True, goal_targets=False)
"""The rule on; goal_targets off, so that the scripted agent may write any file."""


def _json(name: str, **args: Any) -> str:
    return json.dumps(compact(name, **args))


def _matcher(schema: dict[str, Any]) -> LLMatcher:
    grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
    return LLMatcher(BYTE_TOKENIZER, grammar)


def _completion(text: str) -> Completion:
    return Completion(text=text, finish_reason="stop")


def test_a_python_files_text_is_left_out_of_the_json_and_other_text_is_not() -> None:
    for good in (
        _json("write_file", filename="hello.py"),
        _json("append_file", filename="tools/util.py"),
        _json("write_file", filename="notes.txt", text="x"),
        _json("write_file", filename="a.pyc", text="x"),
        _json("execute_python_code", code="print(1)"),  # code to run stays in the JSON
    ):
        assert accepts(_matcher(SCHEMA), byte_tokens(good)), good
    for bad in (
        _json("write_file", filename="hello.py", text="print(1)"),
        _json("write_file", filename="notes.txt"),
        _json("execute_python_code"),
    ):
        assert not accepts(_matcher(SCHEMA), byte_tokens(bad)), bad
    # Off, the schema is as it was: the text in the JSON.
    assert accepts(
        _matcher(reply_schema(TOOLS, "compact")),
        byte_tokens(_json("write_file", filename="hello.py", text="print(1)")),
    )


def test_a_file_argument_narrowed_to_names_is_split_by_its_names() -> None:
    write = TOOLS.get("write_file")
    names = {"type": "string", "enum": ["main.py", "out.txt"]}
    narrowed = replace(write, parameters={**write.parameters, "filename": names})
    schema = reply_schema(ToolRegistry([narrowed]), "compact", code_turn=True)
    enums = [b["properties"]["args"]["properties"]["filename"]["enum"]
             for b in schema["properties"]["command"]["anyOf"]]  # fmt: skip
    assert enums == [["main.py"], ["out.txt"]]
    assert accepts(_matcher(schema), byte_tokens(_json("write_file", filename="main.py")))
    assert not accepts(_matcher(schema), byte_tokens(_json("write_file", filename="out.txt")))
    only_text = replace(write, parameters={**write.parameters, "filename": names | {"enum": ["a"]}})
    schema = reply_schema(ToolRegistry([only_text]), "compact", code_turn=True)
    assert len(schema["properties"]["command"]["anyOf"]) == 1  # no Python file: no split


def test_a_reply_leaving_its_code_out_validates_only_where_code_is_to_come() -> None:
    reply = parse_reply(_completion(_json("write_file", filename="hello.py")), TOOLS, SCHEMA)
    assert reply.command.args == {"filename": "hello.py"}
    with pytest.raises(FormatError, match="missing argument text"):
        parse_reply(_completion(_json("write_file", filename="notes.txt")), TOOLS, SCHEMA)
    with pytest.raises(FormatError, match="missing argument text"):
        parse_reply(
            _completion(_json("write_file", filename="hello.py")),
            TOOLS,
            reply_schema(TOOLS, "compact"),
        )


def test_the_answer_is_one_fenced_block_that_is_not_empty() -> None:
    grammar = LLMatcher.grammar_from_lark(reply_grammar(code_schema("python", 100)))
    for good in ("```python\nprint(`x`)\n```", "```python\n\ndef f():\n    pass\n```"):
        assert accepts(LLMatcher(BYTE_TOKENIZER, grammar), byte_tokens(good)), good
    for bad in (
        "```python\n```",  # empty: Gemma-3-270M closed the block at once
        "```python\n \n```",
        "```python\nx\n```\nmore",  # the block ends at its first fence
        "```python\nx```",  # the closing fence has a line of its own
        "print(1)",  # the opening fence is forced
    ):
        assert not accepts(LLMatcher(BYTE_TOKENIZER, grammar), byte_tokens(bad)), bad
    assert code_text("```python\nprint(1)\n```", "python") == "print(1)\n"


def test_a_header_is_forced_and_the_code_after_it_starts_with_a_statement() -> None:
    top = '"""a-b/hello.py: Write hello.py"""\n'
    again = restart("a-b/hello.py")
    schema = code_schema("python", 100, top, again)
    grammar = LLMatcher.grammar_from_lark(reply_grammar(schema))
    for good in (
        f"```python\n{top}print(1)\n```",
        f"```python\n{top}import os\n\n# x\n```",
        f"```python\n{top}print(1)\n{again}",  # began anew: the block ends there
        f'```python\n{top}def f():\n    """a-b/hello.py"""\n```',  # not at a line's start
        f'```python\n{top}x = 1\n"""a-bXhelloXpy: y"""\n```',  # its dot and slash are literal
        f'```python\n{top}x = """a-b/hello.py: y"""\n```',  # mid-line, the name is text
        f'```python\n{top}def f():\n    """a-b/hello.py: y"""\n```',  # so is it indented
    ):
        assert accepts(LLMatcher(BYTE_TOKENIZER, grammar), byte_tokens(good)), good
    for bad in (
        f"```python\n{top}print(1)\n{again} more",
        "```python\nprint(1)\n```",  # the header is forced
        f"```python\n{top}{top}```",  # the docstring again
        f"```python\n{top}# print it\nprint(1)\n```",  # a comment first
        f"```python\n{top}\nprint(1)\n```",  # a blank line first
        f"```python\n{top}```",  # nothing after the header
    ):
        assert not accepts(LLMatcher(BYTE_TOKENIZER, grammar), byte_tokens(bad)), bad


def test_a_header_names_the_file_and_the_goals_and_is_cut_where_it_comes_again() -> None:
    top = header("a.py", ('Write  a.py, which prints """x"""', "Then\nrun it"))
    assert top == "\"\"\"a.py: Write a.py, which prints '''x''' Then run it\"\"\"\n"
    for awkward in ('ends in "quotes"', "a \\x escape", 'x"""y', "\\"):
        text = header("b.py", (awkward,))
        assert text.count("\n") == 1 and compile(text, "b.py", "exec"), text
    again = restart("a.py")
    assert again == '"""a.py:' and restart("my file.py") == ""
    answer = f"```python\n{top}print(1)\n{again}"  # the grammar ends it there
    assert code_text(answer, "python", again) == f"{top}print(1)\n"
    assert code_text(f"```python\n{top}print(1)\n```", "python", again) == f"{top}print(1)\n"


def test_code_cut_off_mid_line_is_trimmed_to_what_compiles() -> None:
    assert trimmed("x = 1\nprint(x)\nprint(x", "a.py") == "x = 1\nprint(x)\n"
    assert trimmed("def f():\n    return 1\nprint(f(", "a.py") == "def f():\n    return 1\n"
    assert trimmed("print(1)\n", "a.py") == "print(1)\n"
    assert trimmed("(((", "a.py") == "((("  # nothing compiles: left as it was, to fail visibly
    forced = '"""a.py: f"""\ndef f():\n    '  # its docstring alone compiles
    assert trimmed(f"{forced}x = (\n", "a.py", forced) == f"{forced}x = (\n"  # the opening stays
    top = '"""a.py: goal"""\n'
    assert (
        trimmed(f"{top}print(1", "a.py", top) == f"{top}print(1"
    )  # the docstring alone: as it was
    assert trimmed('x = "\\d"\nprint(', "a.py") == 'x = "\\d"\n'  # a warning is not an error
    assert len(header("a.py", ("word " * 1000,))) < 700  # a long goal is cut short


def test_with_code_document_the_code_is_a_document_of_its_own(tmp_path: Path) -> None:
    """Rule code_document: the model is asked with no prompt (a document from its beginning
    of sequence), at every write of a Python file; the chat gets no question; the code opens
    with its docstring; code cut off at the bound is trimmed to what compiles (code_trim). An
    append to a file that holds text continues that text in the document: the file gets
    what follows it."""
    rules = replace(RULES, code_document=True, code_trim=True)
    top = header("hello.py", PROFILE.goals)
    write = _json("write_file", filename="hello.py")
    cut = f"```python\n{top}print('hi')\nprint('hi')\nprint('h"  # reached its bound
    began_anew = f"```python\n{top}print('bye')\n{restart('hello.py')}"
    add = _json("append_file", filename="hello.py")  # to a file with text: it goes on
    more = f"```python\n{top}print('bye')\nprint('more')\n```"
    agent, model, record = make_agent(
        tmp_path, [write, cut, write, began_anew, add, more, COMPACT_FINISH], rules=rules
    )
    agent.run()
    assert model.calls[1] == model.calls[3] == model.calls[5] == []  # no prompt at all
    assert model.schemas[5][CODE_KEY]["header"] == f"{top}print('bye')\n"  # the file's text
    assert not any(is_ask(m) for m in model.calls[4] + model.calls[6])  # no question in the chat
    assert model.calls[2][len(model.calls[0]) :][0]["content"] == write
    steps = [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]
    assert steps[0]["reply"]["command"]["args"]["text"] == f"{top}print('hi')\nprint('hi')\n"
    assert steps[2]["reply"]["command"]["args"]["text"] == "print('more')\n"
    assert (tmp_path / "ws" / "hello.py").read_text() == f"{top}print('bye')\nprint('more')\n"
    assert step_starts(agent.history) == [0, 3, 6]  # request, reply, result: no code turn


def test_an_append_continues_a_file_of_others_after_the_header_and_a_long_one_in_the_chat(
    tmp_path: Path,
) -> None:
    """A file that does not open with the document's header gets it before its text (the
    goals), and its text a last newline where it had none; a document that adds nothing
    (it stopped at once, in a loop: its answer is the opening, stripped of its newline), or
    only statements code_names leaves out, adds nothing; a file too long to open a document
    with is added to in the chat, as is one that cannot be read."""
    rules = replace(RULES, code_document=True, code_names=True)
    top = header("calc.py", PROFILE.goals)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "calc.py").write_text("def add(a, b):\n    return a + b")
    (tmp_path / "ws" / "big.py").write_text("x = 1\n" * (CONTINUED_BYTES // 6 + 1))
    add = _json("append_file", filename="calc.py")
    text = "def add(a, b):\n    return a + b\nprint(add(2, 3))\n"
    more = f"```python\n{top}{text}```"
    nothing = f"```python\n{top}{text}".strip()
    unbound = f"```python\n{top}{text}print(add(a, b))\n```"
    add_big = _json("append_file", filename="big.py")
    chat = "```python\nprint(x)\n```"
    replies = [add, more, add, nothing, add_big, chat, add, unbound, COMPACT_FINISH]
    agent, model, _ = make_agent(tmp_path, replies, rules=rules)
    agent.run()
    assert model.calls[1] == model.calls[3] == model.calls[7] == [] and is_ask(model.calls[5][-1])
    assert (tmp_path / "ws" / "calc.py").read_text() == text
    assert (tmp_path / "ws" / "big.py").read_text().endswith("x = 1\nprint(x)\n")


def appended(workspace: Workspace, answer: str, rules: Rules) -> tuple[ScriptedModel, CommandCall]:
    """An append to the workspace's calc.py, its code turn answered with `answer`: the model
    and the command, its text filled in by `write_code`."""
    model = ScriptedModel([answer])
    step, call = replied_step("append_file", filename="calc.py")
    write_code(
        model, step, TOOLS.get("append_file"), "{}", max_tokens=256, rules=rules,
        goals=PROFILE.goals, files={}, read=workspace.read_text,
    )  # fmt: skip
    return model, call


def test_an_append_reads_the_file_and_is_not_cut_at_a_restart_in_its_own_text(
    tmp_path: Path,
) -> None:
    """A file that opens with a docstring naming it (as another run's document does) is
    not cut there: only the model's lines may begin the document anew. An append to a file
    the step's snapshot does not show still continues its text, read from the workspace."""
    rules = replace(RULES, code_document=True, code_names=True)
    workspace = Workspace.create(tmp_path / "ws")
    old = '"""calc.py: a calculator"""\ndef add(a, b):\n    return a + b\n'
    workspace.write_text("calc.py", old)
    top = header("calc.py", PROFILE.goals)
    model, call = appended(workspace, f"```python\n{top}{old}print(add(1, 2))\n```", rules)
    assert model.schemas[0] == code_schema("python", 248, top + old, restart("calc.py"))
    assert call.args["text"] == "print(add(1, 2))\n"
    assert continued("a.py", (), "x = 1") == f"{header('a.py', ())}x = 1"


def test_code_trim_keeps_a_file_that_compiled_compiling_after_an_append(tmp_path: Path) -> None:
    """An append whose added lines break a file that compiled loses them from the end until
    the file compiles, all of them if need be, even when the model closed its block."""
    old = "def add(a, b):\n    return a + b\n"
    sub = "def sub(a, b):\n    return a - b\n"
    assert kept_compiling(old + sub + '"""\n', "calc.py", old) == old + sub
    assert kept_compiling(old + '"""\n**\n', "calc.py", old) == old  # nothing is added
    assert kept_compiling(old + sub, "calc.py", old) == old + sub
    assert kept_compiling("def (\n" + sub, "x.py", "def (\n") == "def (\n" + sub  # broken before
    workspace = Workspace.create(tmp_path / "ws")
    workspace.write_text("calc.py", old)
    top = header("calc.py", PROFILE.goals)
    trim = replace(RULES, code_document=True, code_trim=True)
    for rules, added in ((trim, sub), (replace(trim, code_trim=False), sub + '"""\n')):
        _, call = appended(workspace, f'```python\n{top}{old}{sub}"""\n```', rules)
        assert call.args["text"] == added


def test_code_names_leaves_out_statements_that_use_a_name_nothing_binds() -> None:
    top = '"""calc.py: add(a, b)"""\n'
    assert pruned(f"{top}def add(a, b):\n    return a + b\nprint(add(a, b))\n") == (
        f"{top}def add(a, b):\n    return a + b\n"
    )  # a and b are the function's own
    chained = "def f(m):\n    print(m)\n\nm = Morning(t=1)\nm.show()\nprint('ok')\n"
    assert pruned(chained) == "def f(m):\n    print(m)\n\nprint('ok')\n"  # m went with Morning
    kept = [
        "import os.path\nprint(os.path.sep, __name__, len([i for i in range(3)]))\n",
        "def g():\n    global z\n    z = 1\ng()\nprint(z)\n",
        "try:\n    foo()\nexcept NameError:\n    pass\n",  # it may catch its own
        "x = 1; print(y)\n",  # one line with a statement that stays
        "class A:\n    b = 1\n    c = b\nprint(A.c)\n",
        "from m import *\nprint(q)\n",
        "def f():\n    return q\nwith open('f') as fh:\n    pass\nprint(fh, f)\n",
        "print(",
    ]
    for code in kept:
        assert pruned(code) == code, code
    assert pruned("x = q\nprint(1)\nprint(q)\n", "x = q\n") == "x = q\nprint(1)\n"
    assert pruned("@deco\ndef f():\n    pass\nprint(1)\n") == "print(1)\n"
    assert pruned("if __name__ == '__main__':\n    main()\n") == ""  # nothing is left
    again = "def add(a, b):\n    return a + b\ndef sub(a, b):\n    return a - b\n"
    more = "def add(a, b):\n    return a - b\nclass sub:\n    pass\nprint(add(1, 2))\n"
    assert pruned(again + more) == again + "print(add(1, 2))\n"  # the first ones stay
    assert pruned(again + more, again) == again + "print(add(1, 2))\n"
    overloads = "@overload\ndef f(x: int) -> int: ...\n@overload\ndef f(x: str) -> str: ...\n"
    decorated = f"{overloads}def f(x):\n    return x\ndef _(x):\n    pass\ndef _(y):\n    pass\n"
    assert pruned(f"from typing import overload\n{decorated}") == (
        f"from typing import overload\n{decorated}"
    )  # a decorated definition, or `_`, is meant to be defined again
    assert pruned("x: Later = 1\nprint(x)\n") == "x: Later = 1\nprint(x)\n"  # not evaluated
    deep = "x = " + "+".join(["a"] * 1500) + "\nprint(1)\n"
    assert pruned(deep) == "print(1)\n"  # deeper than the recursion limit
    assert pruned("a = 1\n\x0c\nprint(undefined)\nb = 2\n") == "a = 1\n\x0c\nb = 2\n"
    assert pruned('x = "a\u2028b"\nprint(undefined)\n') == 'x = "a\u2028b"\n'
    assert pruned("a = 1\rprint(undefined)\rb = a\r", "a = 1\r") == "a = 1\rb = a\r"


def test_code_names_leaves_out_statements_that_read_a_name_before_anything_binds_it() -> None:
    area = "def area(w, h):\n    return w * h\n"
    assert pruned(f"{area}\narea_w_h = area_w_h()\nprint(area_w_h)\n") == f"{area}\n"
    assert pruned(f"print(area(2, 3))\n{area}") == area  # called before its definition
    assert pruned("total += 1\nprint(2)\n") == "print(2)\n"
    assert pruned("a = b\nb = 1\nprint(a)\n") == "b = 1\n"  # a went with `a = b`
    kept = [
        "x = [x for x in range(3)]\nprint(x)\n",  # the comprehension's own x
        "for i in range(2):\n    print(i)\n",
        "print(y := 5, y)\n",
        "def main():\n    helper()\ndef helper():\n    pass\nmain()\n",  # read when called
        "import os\nos = os.path\n",
        "def init():\n    global K\n    K = 1\nprint(K)\n",  # a global: bound, to be safe
    ]
    for code in kept:
        assert pruned(code) == code, code


def test_code_names_prunes_a_written_file_but_not_an_append_asked_in_the_chat(
    tmp_path: Path,
) -> None:
    rules = replace(RULES, code_names=True)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "old.py").write_text("a = 1\n")
    write = _json("write_file", filename="new.py")
    code = "```python\ndef add(a, b):\n    return a + b\nprint(add(a, b))\n```"
    add = _json("append_file", filename="old.py")
    more = "```python\nprint(a)\n```"  # `a` is the file's: the chat does not know it
    agent, _, _ = make_agent(tmp_path, [write, code, add, more, COMPACT_FINISH], rules=rules)
    agent.run()
    assert (tmp_path / "ws" / "new.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert (tmp_path / "ws" / "old.py").read_text() == "a = 1\nprint(a)\n"


def test_code_that_reaches_its_bound_ends_there_as_a_complete_answer() -> None:
    grammar = LLMatcher.grammar_from_lark(reply_grammar(code_schema("python", 8)))
    matcher = LLMatcher(BYTE_TOKENIZER, grammar)
    code = byte_tokens("```python\n", "x = 1 + 2 + 3\n")
    assert matcher.try_consume_tokens(code) == len("```python\n") + 8
    assert matcher.is_accepting() and matcher.is_stopped()
    assert code_text("```python\nx = 1 + ", "python") == "x = 1 + "


def test_a_run_asks_for_the_code_and_writes_it(tmp_path: Path) -> None:
    write = _json("write_file", filename="hello.py")
    code = "```python\nprint('Hello, World!')\n```"
    listing = _json("list_files", directory=".")
    agent, model, record = make_agent(tmp_path, [write, code, listing, COMPACT_FINISH], rules=RULES)
    agent.run()
    script = tmp_path / "ws" / "hello.py"
    assert script.read_text() == "print('Hello, World!')\n"
    asked = model.calls[1]
    assert asked[:-2] == model.calls[0]  # the same prompt, then the reply and the question
    assert [m["role"] for m in asked[-2:]] == ["assistant", "user"]
    assert asked[-2]["content"] == write and is_ask(asked[-1])
    assert "hello.py" in asked[-1]["content"]
    later = [m["content"] for m in model.calls[2][len(asked) :]]
    assert later[0] == code and later[1].startswith("Command write_file returned: Wrote")
    steps = [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]
    assert steps[0]["code"]["text"] == code
    assert steps[0]["reply"]["command"]["args"]["text"] == "print('Hello, World!')\n"
    # A step starts at its request, not at the code turn's question.
    assert step_starts(agent.history) == [0, 5]
    assert agent.history[5] == model.calls[2][-1]


def test_the_console_shows_the_code_turns_tokens_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write = _json("write_file", filename="hello.py")
    code = "```python\nprint('Hello, World!')\n```"
    agent, _, _ = make_agent(tmp_path, [write, code, COMPACT_FINISH], rules=RULES)
    agent.events = ConsoleEvents("Coder")
    agent.run()
    lines = [line for line in capsys.readouterr().out.splitlines() if "tok/s" in line]
    assert len(lines) == 3 and lines[1].startswith("(code turn: ")  # reply, code, finish


def test_a_cut_off_block_writes_nothing(tmp_path: Path) -> None:
    write = _json("write_file", filename="hello.py")
    cut = "```python\nprint(6 *<<LENGTH>>"
    notes = _json("write_file", filename="notes.txt", text="x")
    agent, _, record = make_agent(tmp_path, [write, cut, notes, COMPACT_FINISH], rules=RULES)
    agent.run()
    steps = [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]
    assert steps[0]["status"] == "truncated" and steps[0]["result"] is None
    assert "cut off" in steps[0]["error"] and steps[0]["reply"] is None
    assert not (tmp_path / "ws" / "hello.py").exists()


def test_without_the_rule_the_code_stays_in_the_json(tmp_path: Path) -> None:
    write = _json("write_file", filename="hello.py", text="print(1)")
    run = _json("execute_python_code", code="print(6 * 7)")
    rules = replace(RULES, code_turn=False)
    agent, model, _ = make_agent(tmp_path, [write, run, COMPACT_FINISH], rules=rules)
    agent.run()
    assert (tmp_path / "ws" / "hello.py").read_text() == "print(1)"
    assert len(model.calls) == 3
    # Code to run stays in the JSON with the rule on, too.
    agent, model, record = make_agent(tmp_path / "on", [run, COMPACT_FINISH], rules=RULES)
    agent.run()
    steps = [e["step"] for e in read_entries(record.folder) if e["type"] == "step"]
    assert steps[0]["result"]["output"].endswith("Output:\n42\n") and len(model.calls) == 2


GOAL = "Write a Python script called hello.py that prints Hello, World!"


@pytest.mark.model
@pytest.mark.slow
def test_smollm2_writes_a_script_that_runs_when_asked_for_its_code(
    real_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy SmolLM2 writes `Hello, World!` as hello.py's text inside JSON; asked for the
    code apart, as a document of its own, as its registry entry has it by default, it writes
    a program that prints it."""
    monkeypatch.setenv("OFFLINE_AGENT_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, [
        "run", "--name", "Coder", "--role", "an assistant that writes code", "--goal", GOAL,
        "--model", "smollm2-135m", "--models-dir", str(real_models["smollm2-135m"].parent),
        "--workspace", str(tmp_path / "ws"), "--continuous", "--max-steps", "2", "--no-memory",
        "--n-ctx", "2048",
    ])  # fmt: skip
    own = "code_turn=on, code_document=on, code_trim=on, code_names=on"
    assert f"The model's own rules from the registry: {own}" in result.stderr
    (run,) = (tmp_path / "home" / "runs").iterdir()
    rules = json.loads((run / "run.json").read_text())["settings"]["rules"]
    assert all(rules[name] is True for name in ("code_turn", "code_document", "code_trim"))
    assert rules["code_names"] is True
    script = tmp_path / "ws" / "hello.py"
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
    assert ran.returncode == 0 and "Hello, World!" in ran.stdout, script.read_text()


def test_a_resumed_run_takes_up_the_script_after_its_code_turns(tmp_path: Path) -> None:
    replies = [
        compact("write_file", filename="hello.py"),
        "```python\nprint('hi')\n```",
        compact("list_files", directory="."),
        COMPACT_FINISH,
    ]
    runs = {}
    for name, more in (("whole", []), ("cut", ["--max-steps", "1"])):
        (tmp_path / name).mkdir()
        CliRunner().invoke(cli, [
            "run", "--goal", "Write hello.py", "--continuous", "--no-memory",
            "--model", script(tmp_path / name, replies),
            "--rule", "code_turn=on", "--rule", "goal_targets=off", *more,
            "--workspace", str(tmp_path / name / "ws"), "--runs-dir", str(tmp_path / name / "runs"),
        ])  # fmt: skip
        (runs[name],) = (tmp_path / name / "runs").iterdir()
    resumed = CliRunner().invoke(cli, ["runs", "resume", str(runs["cut"]), "--max-steps", "9"])
    assert resumed.exit_code == 0, resumed.output
    expected, got = recorded_steps(runs["whole"]), recorded_steps(runs["cut"])
    assert [s["reply"]["command"]["name"] for s in got] == ["write_file", "list_files", "finish"]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["messages"] == theirs["messages"] and mine["history"] == theirs["history"]


@pytest.mark.parametrize(
    ("rule", "command", "document"),
    [("off", "write_file", False), ("on", "write_file", True), ("on", "append_file", True)],
    ids=["chat", "document", "append-as-a-document"],
)
def test_a_command_killed_after_its_code_turn_is_resumed_with_that_turn(
    tmp_path: Path, rule: str, command: str, document: bool
) -> None:
    """The process dies while the command runs: the record ends at its `command` line,
    which holds the code turn's answer. The interrupted step keeps that turn in its history
    (a document of its own has none there; with code_document, an append to a file with
    text is one too, opening with that text), and the script goes on after both replies."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "hello.py").write_text("x = 1\n")
    opening = header("hello.py", ("Write hello.py",)) if document else ""
    opening += "x = 1\n" if command == "append_file" else ""
    replies = [
        compact(command, filename="hello.py"),
        f"```python\n{opening}print('hi')\n```",
        compact("list_files", directory="."),
        COMPACT_FINISH,
    ]
    CliRunner().invoke(cli, [
        "run", "--goal", "Write hello.py", "--continuous", "--no-memory",
        "--model", script(tmp_path, replies), "--max-steps", "1",
        "--rule", "code_turn=on", "--rule", "goal_targets=off",
        "--rule", f"code_document={rule}",
        "--workspace", str(tmp_path / "ws"), "--runs-dir", str(tmp_path / "runs"),
    ])  # fmt: skip
    (run,) = (tmp_path / "runs").iterdir()
    lines = (run / "steps.jsonl").read_text().splitlines()
    kept = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "command")
    (run / "steps.jsonl").write_text("\n".join(lines[: kept + 1]) + "\n")
    head = {"lines": kept + 1, "hash": json.loads(lines[kept])["hash"]}
    (run / "steps.head").write_text(json.dumps(head))
    resumed = CliRunner().invoke(cli, ["runs", "resume", str(run), "--max-steps", "9"])
    assert resumed.exit_code == 0, resumed.output
    steps = recorded_steps(run)
    assert [s["status"] for s in steps] == ["interrupted", "ok", "finished"]
    history = steps[0]["history"]
    if document:
        assert len(history) == 3 and not any(is_ask(m) for m in history)
    else:
        assert is_ask(history[2]) and history[3]["content"] == replies[1]
    assert steps[0]["code"]["text"] == replies[1]
    assert steps[1]["reply"]["command"]["name"] == "list_files"


def test_memory_sees_a_reply_with_a_code_turn_as_one_exchange() -> None:
    reply = {"role": "assistant", "content": "{json}"}
    history = [
        {"role": "user", "content": "request"},
        reply,
        {"role": "user", "content": "Write the full text of a.py, between ``` lines."},
        {"role": "assistant", "content": "```python\nx = 1\n```"},
        {"role": "user", "content": "Command write_file returned: Wrote 6 characters"},
        {"role": "user", "content": "request 2"},
        {"role": "assistant", "content": "{json 2}"},
        {"role": "user", "content": "Command list_files returned: a.py"},
    ]
    assert replies_and_results(history) == [(reply, history[4]), (history[6], history[7])]


def test_code_signature_opens_the_document_with_the_function_the_goal_names(
    tmp_path: Path,
) -> None:
    """Rule code_signature: the first function a goal naming the file names with its
    parameters opens the document after the docstring; a name Python has (print), or a
    goal that does not name the file, gives none."""
    assert signature("calc.py", ["Write calc.py with a function add(a, b)"]) == (
        "def add(a, b):\n    "
    )
    assert signature("src/calc.py", ["Make calc.py define main()", "Call add(a, b)"]) == (
        "def main():\n    "
    )
    assert signature("hello.py", ["Write hello.py that calls print(x) and len(y)"]) == ""
    assert signature("hello.py", ["Write add(a, b) into other.py"]) == ""
    assert signature("a.py", ["a.py: f(1, 2) and g(x,y)"]) == "def g(x, y):\n    "
    assert signature("a.py", ["Write data.py with load(path)", "a.py calls calc.add(a, b)"]) == ""
    goals = ["Write calc.py with a function add(a, b)"]
    top = header("calc.py", goals) + "def add(a, b):\n    "
    model = ScriptedModel([f"```python\n{top}return a + b\n```"])
    step, call = replied_step("write_file", filename="calc.py")
    rules = replace(RULES, code_document=True, code_signature=True)
    write_code(model, step, TOOLS.get("write_file"), "{}", max_tokens=256, rules=rules, goals=goals)
    assert model.schemas[0] == code_schema("python", 248, top, restart("calc.py"))
    assert call.args["text"] == f"{top}return a + b\n"
    grammar = LLMatcher.grammar_from_lark(reply_grammar(model.schemas[0] or {}))
    good, bad = f"```python\n{top}return a\n```", f"```python\n{top}# a comment\n```"
    assert accepts(LLMatcher(BYTE_TOKENIZER, grammar), byte_tokens(good))
    assert not accepts(LLMatcher(BYTE_TOKENIZER, grammar), byte_tokens(bad))
