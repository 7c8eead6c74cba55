"""Challenge folders: loading agbenchmark's data.json, suites, workspaces, the built-in suite."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from offline_agent.bench.challenge import (
    BUILTIN,
    Challenge,
    ChallengeError,
    Eval,
    Ground,
    copy_tree,
    load_challenge,
    load_suite,
    prepare_workspace,
)
from offline_agent.bench.judge import judge
from offline_agent.errors import ConfigError

SUITE = load_suite("builtin")
LEVELS = ("interface", "basic", "novice", "intermediate", "advanced")


def write_challenge(folder: Path, data: dict[str, Any] | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (folder / "data.json").write_text(text)
    return folder


def spec(name: str = "WriteFile", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "task": "Write the word 'Washington' to a .txt file",
        "category": ["general"],
        "cutoff": 60,
        "ground": {
            "answer": "Washington",
            "should_contain": ["Washington"],
            "files": [".txt"],
            "eval": {"type": "file"},
        },
    }
    data.update(changes)
    return data


# --- the built-in suite ----------------------------------------------------------------


def test_builtin_suite_covers_every_level_deterministically() -> None:
    assert len(SUITE) >= 22
    assert [c.folder for c in SUITE] == sorted(c.folder for c in SUITE)
    assert all(c.folder.parent == BUILTIN for c in SUITE)
    assert {c.difficulty for c in SUITE} == set(LEVELS)
    ranks = [LEVELS.index(c.difficulty) for c in SUITE]
    assert ranks == sorted(ranks), "the folders go from easy to hard"
    assert {c.ground.eval.type for c in SUITE} == {"file", "python", "pytest"}
    names = {c.name for c in SUITE}
    for challenge in SUITE:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", challenge.folder.name)
        assert re.fullmatch(r"(?:[A-Z][a-z0-9]*)+", challenge.name)
        assert 60 <= challenge.cutoff <= 180
        assert challenge.description.startswith("Tests if the agent can")
        assert challenge.artifacts_out.is_dir(), f"{challenge.name} has no reference solution"
        assert set(challenge.dependencies) <= names
        assert challenge.ground.eval == Eval(challenge.ground.eval.type)


def test_builtin_suite_has_injection_challenges() -> None:
    guarded = [c for c in SUITE if "safety" in c.category]
    assert len(guarded) >= 2
    for challenge in guarded:
        planted = "".join(p.read_text() for p in challenge.artifacts_in.iterdir())
        assert challenge.ground.should_not_contain
        assert all(word in planted for word in challenge.ground.should_not_contain)


@pytest.mark.parametrize("challenge", SUITE, ids=[c.name for c in SUITE])
def test_builtin_reference_passes(challenge: Challenge, tmp_path: Path) -> None:
    prepare_workspace(challenge, tmp_path / "ws")
    copy_tree(challenge.artifacts_out, tmp_path / "ws")
    verdict = judge(challenge, tmp_path / "ws")
    assert verdict.passed, verdict
    assert verdict.score == 1.0
    assert verdict.reason.startswith("passed: ")


@pytest.mark.parametrize("challenge", SUITE, ids=[c.name for c in SUITE])
def test_builtin_fails_an_empty_and_an_untouched_workspace(
    challenge: Challenge, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    prepare_workspace(challenge, tmp_path / "untouched")
    for workspace in (tmp_path / "empty", tmp_path / "untouched"):
        verdict = judge(challenge, workspace)
        assert not verdict.passed, (workspace.name, verdict)
        assert verdict.score == 0.0
        assert verdict.reason and "\n" not in verdict.reason


# --- loading data.json -----------------------------------------------------------------


def test_load_challenge_reads_every_field_and_ignores_unknown_keys(tmp_path: Path) -> None:
    data = spec(
        eval_id="81b64bf9-2b6a-4ac8-bcd2-8bfe36244ac0",
        dependencies=["ReadFile"],
        cutoff=90,
        info={"difficulty": "interface", "description": "Tests if...", "side_effects": ["x"]},
        metadata={"anything": 1},
    )
    data["ground"].update(should_not_contain=["Paris"], case_sensitive=False)
    data["ground"]["eval"]["extra"] = True
    challenge = load_challenge(write_challenge(tmp_path / "c", data))
    assert challenge == Challenge(
        name="WriteFile",
        task="Write the word 'Washington' to a .txt file",
        category=("general",),
        cutoff=90,
        ground=Ground(
            answer="Washington",
            should_contain=("Washington",),
            should_not_contain=("Paris",),
            files=(".txt",),
            eval=Eval("file"),
            case_sensitive=False,
        ),
        folder=tmp_path / "c",
        difficulty="interface",
        description="Tests if...",
        dependencies=("ReadFile",),
    )
    assert challenge.artifacts_in == tmp_path / "c" / "artifacts_in"
    assert challenge.artifacts_out == tmp_path / "c" / "artifacts_out"
    assert challenge.custom_python == tmp_path / "c" / "custom_python"


def test_load_challenge_defaults(tmp_path: Path) -> None:
    data = {
        "name": "Bare",
        "task": "t",
        "cutoff": 0,
        "ground": {
            "answer": "a",
            "should_contain": None,
            "files": ["out.txt"],
            "case_sensitive": None,
            "eval": {"type": "llm", "scoring": "binary", "template": "question"},
        },
    }
    challenge = load_challenge(write_challenge(tmp_path / "c", data))
    assert challenge.cutoff == 60  # agbenchmark: `cutoff or 60`
    assert challenge.category == () and challenge.dependencies == ()
    assert (challenge.difficulty, challenge.description) == ("", "")
    assert challenge.ground.should_contain == () and challenge.ground.should_not_contain == ()
    assert challenge.ground.case_sensitive is True
    assert challenge.ground.eval == Eval("llm", "binary", "question")


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


def _ground(**changes: Any) -> dict[str, Any]:
    data = spec()
    data["ground"].update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "the top level must be a JSON object"),
        (_without(spec(), "name"), "name must be a string"),
        (spec(name="  "), "name must be a non-empty string"),
        (spec(task=5), "task must be a string"),
        (spec(category="general"), "category must be a list of strings"),
        (spec(cutoff="60"), "cutoff must be a whole number"),
        (spec(cutoff=True), "cutoff must be a whole number"),
        (spec(info=[]), "info must be a JSON object"),
        (_without(spec(), "ground"), "ground must be a JSON object"),
        (_ground(files=".txt"), r"ground\.files must be a list of strings"),
        (_ground(files=["../secret.txt"]), r"ground\.files must be relative paths"),
        (_ground(files=["/etc/passwd"]), r"ground\.files must be relative paths"),
        (_ground(should_contain=[1]), r"ground\.should_contain must be a list"),
        (_ground(case_sensitive="no"), r"ground\.case_sensitive must be true or false"),
        (_ground(eval={"type": "shell"}), r"ground\.eval\.type must be one of 'file'"),
        (_ground(eval={}), r"ground\.eval\.type must be one of"),
        (_ground(eval={"type": "llm"}), r"ground\.eval\.scoring must be given"),
        (
            _ground(eval={"type": "llm", "scoring": "stars", "template": "rubric"}),
            r"ground\.eval\.scoring must be one of 'percentage'",
        ),
        (
            _ground(eval={"type": "file", "scoring": "binary"}),
            r"ground\.eval\.scoring must be left out",
        ),
    ],
)
def test_invalid_data_json_names_the_file(
    tmp_path: Path, data: dict[str, Any] | str, message: str
) -> None:
    folder = write_challenge(tmp_path / "bad", data)
    with pytest.raises(ChallengeError, match=message) as caught:
        load_challenge(folder)
    assert str(caught.value).startswith(f"{folder / 'data.json'}: ")
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_missing_data_json(tmp_path: Path) -> None:
    with pytest.raises(ChallengeError, match=r"data\.json: no such file"):
        load_challenge(tmp_path)


# --- suites ----------------------------------------------------------------------------


def test_load_suite_searches_recursively_in_folder_order(tmp_path: Path) -> None:
    write_challenge(tmp_path / "b_group" / "02_two", spec("Two"))
    write_challenge(tmp_path / "b_group" / "01_one", spec("One"))
    write_challenge(tmp_path / "a_first", spec("First"))
    # An input file that happens to be called data.json is not a challenge.
    (tmp_path / "a_first" / "artifacts_in").mkdir()
    (tmp_path / "a_first" / "artifacts_in" / "data.json").write_text('{"rows": []}')
    assert [c.name for c in load_suite(tmp_path)] == ["First", "One", "Two"]
    assert [c.name for c in load_suite(str(tmp_path / "b_group"))] == ["One", "Two"]


def test_load_suite_refuses_duplicate_names(tmp_path: Path) -> None:
    write_challenge(tmp_path / "one", spec("Same"))
    write_challenge(tmp_path / "two", spec("Same"))
    message = f"{tmp_path / 'two' / 'data.json'}: the name 'Same' is also used by"
    with pytest.raises(ChallengeError, match=re.escape(message)) as caught:
        load_suite(tmp_path)
    assert str(tmp_path / "one" / "data.json") in str(caught.value)


def test_load_suite_needs_a_folder_with_challenges(tmp_path: Path) -> None:
    with pytest.raises(ChallengeError, match="no challenge found"):
        load_suite(tmp_path)
    with pytest.raises(ChallengeError, match="not a folder of challenges"):
        load_suite(tmp_path / "missing")


def test_load_suite_stops_at_an_invalid_challenge(tmp_path: Path) -> None:
    write_challenge(tmp_path / "good", spec("Good"))
    write_challenge(tmp_path / "bad", _ground(files=None))
    with pytest.raises(ChallengeError, match=re.escape(str(tmp_path / "bad" / "data.json"))):
        load_suite(tmp_path)


# --- workspaces ------------------------------------------------------------------------


def test_prepare_workspace_copies_artifacts_in(tmp_path: Path) -> None:
    folder = write_challenge(tmp_path / "c", spec())
    (folder / "artifacts_in" / "sub").mkdir(parents=True)
    (folder / "artifacts_in" / "a.txt").write_text("alpha")
    (folder / "artifacts_in" / "sub" / "b.csv").write_text("x,y\n")
    (folder / "artifacts_out").mkdir()
    (folder / "artifacts_out" / "answer.txt").write_text("never copied")
    workspace = tmp_path / "runs" / "ws"
    prepare_workspace(load_challenge(folder), workspace)
    assert sorted(p.relative_to(workspace).as_posix() for p in workspace.rglob("*")) == [
        "a.txt",
        "sub",
        "sub/b.csv",
    ]
    assert (workspace / "sub" / "b.csv").read_text() == "x,y\n"


def test_prepare_workspace_without_artifacts_in(tmp_path: Path) -> None:
    prepare_workspace(load_challenge(write_challenge(tmp_path / "c", spec())), tmp_path / "ws")
    assert list((tmp_path / "ws").iterdir()) == []
