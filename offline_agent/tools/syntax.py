"""Whether a text parses as what its file name says it is: Python or JSON.

One owner for "does this compile", asked by the `check_syntax` rule before a write, by
the checks of `--samples` on a candidate reply, and by the repairs of a code turn's code
(`offline_agent.pyrepair`).
"""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import PurePosixPath


def parse_python(source: str) -> ast.Module:
    """`source` parsed; SyntaxError, or ValueError for null bytes. A warning (an invalid
    escape sequence: the program still runs) is not an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source)


def compiles(source: str, name: str) -> bool:
    """Whether `source` compiles, as the file `name`: it parses, and the compiler accepts it
    too (a `return` outside a function parses, and does not compile). Warnings as in
    `parse_python`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, name, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def python_error(source: str) -> str | None:
    """Why `source` is not valid Python, or None when it is."""
    try:
        parse_python(source)
    except SyntaxError as err:
        return f"{type(err).__name__}: {err.msg} (line {err.lineno})"
    except ValueError as err:  # null bytes
        return str(err)
    return None


def file_error(filename: str, text: str) -> str | None:
    """Why `text` is not a valid file of `filename`'s kind, or None when it is or when the
    kind (by its suffix) is not one parsed here."""
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix == ".py":
        problem = python_error(text)
        return None if problem is None else f"it is not valid Python: {problem}"
    if suffix == ".json":
        try:
            json.loads(text)
        except ValueError as err:
            return f"it is not valid JSON: {err}"
    return None
