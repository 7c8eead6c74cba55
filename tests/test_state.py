"""The per-step rules: each step's schema is a function of the registry, the state and the
rules, compiled by both grammar engines and used for validation. No model is needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import pytest
from llguidance import LLMatcher

from offline_agent import state
from offline_agent.errors import ConfigError, FormatError
from offline_agent.llm.guidance import JSON_OPTIONS
from offline_agent.llm.scripted import ScriptedModel
from offline_agent.records import CommandCall, Completion
from offline_agent.reply import parse_reply, reply_schema
from offline_agent.session import run_tools
from offline_agent.state import (
    MAX_CHOICES,
    Progress,
    RepeatGuard,
    Rules,
    Snapshot,
    StateView,
    Steering,
    StepPlan,
    named_paths,
    plan_step,
)
from offline_agent.subagents import SubAgents
from offline_agent.tools import ToolContext, ToolRegistry, builtin_tools
from offline_agent.tools.base import ExistingFile, FileToRead, FolderToList, Names, tool
from offline_agent.workspace import Workspace

EVERYTHING = builtin_tools(memory=True, agents=True, shell=False, delete=True)
GOALS = ("Read notes.txt and write its first line to reports/first.txt",)


def context(tmp_path: Path, files: dict[str, str] | None = None) -> ToolContext:
    workspace = Workspace.create(tmp_path / "ws")
    for name, text in (files or {}).items():
        workspace.write_text(name, text)
    return ToolContext(workspace=workspace)


def plan(
    ctx: ToolContext, rules: Rules | None = None, progress: Progress | None = None
) -> StepPlan:
    return plan_step(
        EVERYTHING, Snapshot.take(ctx), rules or Rules(), progress or Progress(), GOALS
    )


def args_of(step: StepPlan, command: str) -> dict[str, Any]:
    return step.tools.get(command).args_schema()["properties"]  # type: ignore[no-any-return]


def completion(name: str, **args: Any) -> Completion:
    return Completion(json.dumps({"thought": "t", "command": {"name": name, "args": args}}), "stop")


def test_an_empty_workspace_offers_no_reading_and_no_finish(tmp_path: Path) -> None:
    step = plan(context(tmp_path))
    for name in ("read_file", "delete_file", "execute_python_file"):
        assert name not in step.tools
        assert step.left_out[name].startswith("unusable_commands: no file")
    assert step.left_out["finish"] == "finish_after_success: no command has succeeded yet"
    assert step.left_out["message_agent"] == "unusable_commands: no agent exists"
    assert step.left_out["list_files"] == "shown_looks: the request lists every file already"
    assert {"write_file", "execute_python_code"} <= set(step.tools.names)


def test_arguments_that_name_existing_things_are_enums_of_them(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": "a\nb", "src/run.py": "print(1)"})
    step = plan(ctx)
    assert args_of(step, "read_file")["filename"] == {
        "type": "string",
        "enum": ["notes.txt", "src/run.py"],
    }
    assert args_of(step, "execute_python_file")["filename"]["enum"] == ["src/run.py"]
    looks = plan(ctx, Rules(shown_looks=False))  # a listing here shows nothing new
    assert args_of(looks, "list_files")["directory"]["enum"] == [".", "src"]
    # Switched off, the same arguments are free strings again, as before the rules.
    free = plan(ctx, Rules(existing_names=False))
    assert "enum" not in args_of(free, "read_file")["filename"]
    assert args_of(free, "read_file")["filename"]["maxLength"] == 120


def test_past_the_cap_an_argument_is_a_free_string(tmp_path: Path) -> None:
    ctx = context(tmp_path, {f"f{i}.txt": "x" for i in range(MAX_CHOICES + 1)})
    assert "enum" not in args_of(plan(ctx), "read_file")["filename"]


def test_finish_waits_for_a_success_and_for_the_files_the_goals_name(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": "first\nsecond"})
    assert "finish" not in plan(ctx, progress=Progress(succeeded=False)).tools
    assert "finish" in plan(ctx, progress=Progress(succeeded=True)).tools  # the default
    named = Rules(finish_after_named=True)
    waiting = plan(ctx, named, Progress(succeeded=True))
    assert waiting.left_out["finish"] == (
        "finish_after_named: reports/first.txt does not exist yet"
    )
    ctx.workspace.write_text("reports/first.txt", "first")
    assert "finish" in plan(ctx, named, Progress(succeeded=True)).tools


def test_writes_go_to_the_files_the_goals_name_until_they_exist(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": "first"})
    step = plan(ctx)
    assert args_of(step, "write_file")["filename"]["enum"] == ["reports/first.txt"]
    assert args_of(step, "append_file")["filename"]["enum"] == ["reports/first.txt"]
    ctx.workspace.write_text("reports/first.txt", "first")
    assert "enum" not in args_of(plan(ctx), "write_file")["filename"]
    assert "enum" not in args_of(plan(context(tmp_path / "b"), Rules(goal_targets=False)),
                                 "write_file")["filename"]  # fmt: skip


def test_appends_go_to_existing_files_with_append_existing(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": "first"})
    rules = Rules(append_existing=True)
    assert args_of(plan(ctx, rules), "append_file")["filename"]["enum"] == ["notes.txt"]
    assert args_of(plan(ctx, rules), "write_file")["filename"]["enum"] == ["reports/first.txt"]
    empty = plan(context(tmp_path / "b"), rules)
    assert empty.left_out["append_file"] == "unusable_commands: no file exists"


def test_a_look_in_an_unchanged_workspace_is_not_offered_again(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": "a", "other.txt": "b"})
    before = Snapshot.take(ctx)
    ran = ((CommandCall("read_file", {"filename": "notes.txt"}), before),
           (CommandCall("list_files", {"directory": "."}), before))  # fmt: skip
    rules = Rules(no_rereads=True, shown_looks=False)
    step = plan(ctx, rules, Progress(succeeded=True, ran=ran))
    assert args_of(step, "read_file")["filename"]["enum"] == ["other.txt"]
    assert step.left_out["list_files"].startswith("no_rereads:")
    off = plan(ctx, Rules(shown_looks=False), Progress(succeeded=True, ran=ran))  # default
    assert args_of(off, "read_file")["filename"]["enum"] == ["notes.txt", "other.txt"]
    ctx.workspace.write_text("notes.txt", "changed")  # now a read may show something new
    again = plan(ctx, rules, Progress(succeeded=True, ran=ran))
    assert args_of(again, "read_file")["filename"]["enum"] == ["notes.txt", "other.txt"]
    assert "list_files" in again.tools


def test_a_look_at_what_the_request_shows_in_full_is_not_offered(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": "first\nsecond\n", "long.txt": "x" * 700})
    goals = ("Read notes.txt and long.txt and write a summary to reports/first.txt",)
    steering = Steering(EVERYTHING, Rules(), goals)  # the default: on
    step, lines = steering.plan(ctx)
    assert "Text of notes.txt:\nfirst\nsecond\n" in lines  # shown in full...
    assert args_of(step, "read_file")["filename"]["enum"] == ["long.txt"]  # ...cut: readable
    assert step.left_out["list_files"] == "shown_looks: the request lists every file already"
    assert steering.plan(ctx)[0].left_out["list_files"].startswith("shown_looks:")  # still so
    ctx.workspace.write_text("long.txt", "short now")
    step, _ = steering.plan(ctx)
    assert step.left_out["read_file"].startswith("shown_looks: the full text of every file")
    off, _ = Steering(EVERYTHING, Rules(shown_looks=False), goals).plan(ctx)
    assert "read_file" in off.tools and "list_files" in off.tools
    ctx.workspace.write_text("notes.txt", "changed\n")  # changed and shown again: in view
    step, lines = steering.plan(ctx)
    assert "Text of notes.txt:\nchanged\n" in lines and "read_file" in step.left_out
    ctx.workspace.write_text("reports/first.txt", "first")  # nothing the goals name is missing
    step, _ = steering.plan(ctx)
    assert "read_file" in step.tools and "list_files" in step.tools
    always = Steering(EVERYTHING, Rules(shown_looks_always=True), goals)
    step, _ = always.plan(ctx)  # shown_looks_always: out even with nothing missing
    assert step.left_out["list_files"].startswith("shown_looks:")


def test_shown_looks_goes_by_what_an_argument_answers_not_by_command_name(
    tmp_path: Path,
) -> None:
    @tool
    def show_text(ctx: ToolContext, filename: FileToRead) -> str:
        """Show a file's text.

        Args:
            filename: the file
        """
        return ""

    @tool
    def show_names(ctx: ToolContext, directory: FolderToList) -> str:
        """Show the names of a folder's files.

        Args:
            directory: the folder
        """
        return ""

    @tool
    def count_lines(ctx: ToolContext, filename: ExistingFile) -> str:
        """Count a file's lines: not its text.

        Args:
            filename: the file
        """
        return ""

    @tool
    def misdeclared(
        ctx: ToolContext, folder: Annotated[str, Names("folder", answer="text")]
    ) -> str:
        """A look whose `answer` does not fit what it names: no rule, and no crash.

        Args:
            folder: a folder
        """
        return ""

    ctx = context(tmp_path, {"notes.txt": "first\nsecond\n"})
    step, _ = Steering(ToolRegistry([misdeclared]), Rules(), GOALS).plan(ctx)
    assert step.tools.names == ["misdeclared"]
    tools = ToolRegistry([show_text, show_names, count_lines])
    step, _ = Steering(tools, Rules(), GOALS).plan(ctx)
    assert step.left_out["show_text"].startswith("shown_looks: the full text of every file")
    assert step.left_out["show_names"] == "shown_looks: the request lists every file already"
    assert step.tools.names == ["count_lines"]


def test_a_step_that_would_offer_nothing_offers_everything(tmp_path: Path) -> None:
    only = ToolRegistry([t for t in EVERYTHING if t.name in ("read_file", "finish")])
    step = plan_step(only, Snapshot.take(context(tmp_path)), Rules(), Progress(), GOALS)
    assert step.tools.names == ["read_file", "finish"] and step.left_out == {}


def test_a_huge_workspace_is_walked_partly_and_named_files_are_not_guessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "MAX_WALKED", 3)
    ctx = context(tmp_path, {f"d{i}/f.txt": "x" for i in range(6)})
    snapshot = Snapshot.take(ctx)
    assert snapshot.partial and len(snapshot.files) < 6
    assert (
        "enum"
        not in args_of(plan(ctx, progress=Progress(succeeded=True)), "write_file")["filename"]
    )
    assert "finish" in plan(ctx, progress=Progress(succeeded=True)).tools


def test_a_held_back_command_is_left_out(tmp_path: Path) -> None:
    step = plan(context(tmp_path), progress=Progress(held_back="write_file"))
    assert "write_file" not in step.tools and step.left_out["write_file"].startswith("repeat:")


def test_sub_agent_keys_are_enums_of_running_agents(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    ctx.agents = SubAgents(ScriptedModel(["hi"]))
    ctx.agents.start("helper", "count", "hello")
    assert args_of(plan(ctx), "message_agent")["key"] == {"type": "integer", "enum": [1]}


@pytest.mark.parametrize("reply_format", ["autogpt", "compact", "command"])
def test_every_step_schema_compiles_in_both_engines(tmp_path: Path, reply_format: str) -> None:
    from llama_cpp import LlamaGrammar  # noqa: PLC0415 (only this test needs it)

    ctx = context(tmp_path, {"notes.txt": "a", "run.py": "print(1)"})
    progress = Progress(succeeded=True, held_back="append_file")
    for rules in (
        Rules(),
        Rules.none(),
        Rules(existing_names=False, goal_targets=False),
        Rules(append_existing=True),
        Rules(shown_looks=True),
    ):
        for step in (plan(context(tmp_path / "empty")), plan(ctx, rules, progress)):
            schema = reply_schema(step.tools, reply_format)  # type: ignore[arg-type]
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
            is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
            assert not is_error and messages == [], messages
            assert LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False) is not None


def test_validation_holds_to_the_step_schema(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": "a"})
    step = plan(ctx)
    schema = reply_schema(step.tools, "compact")
    reply = parse_reply(completion("read_file", filename="notes.txt"), step.tools, schema)
    assert reply.command.args == {"filename": "notes.txt"}
    assert reply.thoughts.text == "t"
    with pytest.raises(FormatError, match="command/args of read_file/filename"):
        parse_reply(completion("read_file", filename="nope.txt"), step.tools, schema)
    with pytest.raises(FormatError, match=r"finish cannot be used now \(finish_after_success"):
        parse_reply(completion("finish", reason="x"), step.tools, schema, step.left_out)


def test_named_paths_finds_files_with_extensions_and_existing_names(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"Makefile": "all:"})
    found = named_paths(
        ["Put the total in total.txt (out/total.txt), e.g. 12, and fix Makefile; see notes.md."],
        Snapshot.take(ctx),
    )
    assert found == ["out/total.txt", "notes.md", "Makefile"]


def test_the_state_view_shows_files_changes_and_goal_files_once(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"notes.txt": "first\nsecond"})
    view = StateView(GOALS)
    first = view.lines(ctx, Snapshot.take(ctx))
    assert first == [
        "Workspace files: notes.txt (12 bytes)",
        "Named in the goals, not yet in the workspace: reports/first.txt",
        "Text of notes.txt:\nfirst\nsecond",
    ]
    ctx.workspace.write_text("reports/first.txt", "first")
    second = view.lines(ctx, Snapshot.take(ctx))
    assert second[0] == "Last change: reports/first.txt was created (5 bytes)"
    assert "Text of notes.txt:\nfirst\nsecond" not in second  # shown once while unchanged
    assert "Text of reports/first.txt:\nfirst" in second


def test_rules_parse_names_values_and_none() -> None:
    assert Rules.parse(["show_state=off", "reply-format=autogpt"]) == Rules(
        show_state=False, reply_format="autogpt"
    )
    assert Rules.parse(["none", "existing_names=on"]) == Rules(**{
        **Rules.none().__dict__, "existing_names": True
    })  # fmt: skip
    assert Rules.parse(["none"]).changed()[0] == "existing_names=off"
    for bad in ("nonsense=on", "show_state", "show_state=maybe", "reply_format=poem"):
        with pytest.raises(ConfigError):
            Rules.parse([bad])


def test_a_models_own_rules_sit_between_the_defaults_and_the_users() -> None:
    own = ("code_turn=on", "show_state=off")
    assert Rules.for_model("m", own, []) == Rules(code_turn=True, show_state=False)
    assert Rules.for_model("m", own, ["code_turn=off"]) == Rules(show_state=False)
    assert Rules.for_model("m", own, ["none"]) == Rules.none()
    with pytest.raises(ConfigError, match=r"^the registry's rules for m: unknown rule 'x=on'"):
        Rules.for_model("m", ("x=on",), [])


def test_saved_rules_missing_a_newer_rule_read_it_as_off() -> None:
    saved = Rules().__dict__ | {"show_state": False}
    del saved["examples"]
    assert Rules.from_json(saved) == Rules(show_state=False, examples=False)
    assert Rules.from_json({}) == Rules.none()  # a run recorded before the rules existed


def test_run_tools_follow_the_rules() -> None:
    default = run_tools(Rules(), memory=True, shell=False)
    assert "delete_file" not in default and "start_agent" not in default
    assert "memory_add" not in default
    every = run_tools(Rules.none(), memory=True, shell=False)
    assert {"delete_file", "start_agent", "memory_add"} <= set(every.names)


def test_the_repeat_guard_counts_repeats_and_cycles() -> None:
    guard = RepeatGuard()
    a, b = CommandCall("list_files", {"directory": "."}), CommandCall("read_file", {"f": "x"})
    assert [guard.observe(a, "r1"), guard.observe(a, "r1"), guard.observe(b, "r2")] == [0, 1, 0]
    assert [guard.observe(a, "r1"), guard.observe(b, "r2")] == [1, 2]
    assert guard.observe(b, "new") == 3  # ran just before
    assert guard.observe(a, "other") == 0
