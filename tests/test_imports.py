"""Every module imports on its own, and the command line's help loads no heavy library."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import click
import pytest

import offline_agent
from offline_agent.cli import COMMANDS, cli

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(offline_agent.__path__, "offline_agent.")
    if m.name != "offline_agent.__main__"  # runs the command line when imported
)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, check=False, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_help_and_version_load_no_backend_torch_or_numpy() -> None:
    code = ("import sys\nfrom offline_agent.cli import main\n"
            "for flag in ('--help', '--version'):\n    sys.argv = ['offline-agent', flag]\n"
            "    try:\n        main()\n    except SystemExit:\n        pass\n"
            "heavy = {'llama_cpp', 'torch', 'numpy', 'jsonschema', 'faiss'} & set(sys.modules)\n"
            "print(sorted(heavy))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_help_lines_are_the_commands_own() -> None:
    ctx = click.Context(cli)
    for name, (_, line) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=300) == line
