"""Python text a small model wrote, cut back to what can run; no model, no execution.

Two repairs of code from a code turn (`offline_agent.codeturn`), each a rule:

- `trimmed` (rule `code_trim`): code cut off at its token bound stops mid-line; its last
  lines go until the rest compiles. `kept_compiling` (the same rule): an append to a file
  that compiles never leaves it not compiling; what it adds is cut back, to nothing if need
  be (SmolLM2 added a correct `sub` to a `calc.py`, then a second append of stray
  triple quotes broke the file).
- `pruned` (rule `code_names`): a top-level statement that reads a name nothing has bound
  when it runs (not a statement before it, not Python's builtins) can only stop the program
  with a NameError, and with it every statement after it, and every import of the file.
  Gemma-3-270M's `calc.py` held `def add(a, b): return a + b` and then `print(add(a, b))`,
  so the module that defined `add` could not be imported; SmolLM2's `area.py` ended with
  `area_width_height = area_width_height()`. Such statements are left out, and so is a
  top-level function or class defined a second time: the model going round with
  variations (Gemma added `sub(a, b)` to `calc.py`, then `def add(a, b): return a - b`,
  which replaced the file's `add`). The first definition stays (an append adds to a file;
  it does not replace what is there).

`pruned` reads names the way Python binds them at module level, in order (assignments,
imports, `def` and `class`, `for`/`with`/`except` targets; a name declared `global` in a
function counts as bound from the start, and a compound statement's own names as bound in
all of it, to be safe), and looks only at what runs when the module does: not into
function or lambda bodies (they run when called, if ever), class bodies (their names are
their own), or annotations of variables (evaluated lazily, or not at all, depending on the
Python version). Where it cannot be sure it leaves the code as it is: a `*` import, a `try`
statement (it may catch the NameError), a decorated definition or one named `_` defined
again (`@overload`, `@f.register`), a statement that shares a line with another. Lines are
counted as Python's parser counts them, so a form feed in a file does not shift them.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Iterator

from offline_agent.tools.syntax import compiles, parse_python

MODULE_NAMES = frozenset(dir(builtins)) | {
    "__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__",
    "__builtins__", "__annotations__", "__path__", "__cached__",
}  # fmt: skip
"""Names every module has without binding them."""

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_LAZY = tuple(getattr(ast, name) for name in ("TypeAlias",) if hasattr(ast, name))
"""Statements whose value Python evaluates only when it is asked for."""
_GUARDED = (ast.Try, getattr(ast, "TryStar", ast.Try))
"""Statements that may catch the NameError their own code raises: left as they are."""
_COMPOUND = (
    ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Match, *_SCOPES
)  # fmt: skip
"""Statements whose parts run in turn: a name they bind counts as bound for all their code
(`for x in xs: print(x)`), to be safe. A simple statement reads before it binds (`a = a()`)."""


def trimmed(code: str, name: str, opening: str = "") -> str:
    """`code` without the last lines that keep it from compiling (Python cut off mid-line);
    as it was when nothing compiles beyond its forced `opening`."""
    lines = code.split("\n")
    for end in range(len(lines), 0, -1):
        kept = "\n".join(lines[:end]).rstrip("\n") + "\n"
        if not kept.startswith(opening) or not kept[len(opening) :].strip():
            break  # nothing of the model's is left
        if compiles(kept, name):
            return kept
    return code


def kept_compiling(code: str, name: str, opening: str) -> str:
    """An append's document (`opening`, the file's text, then what the model added) cut
    back so that a file that compiled still compiles: the added lines go from the end until
    it does, all of them if need be. As it is when the opening does not compile."""
    if compiles(code, name) or not compiles(opening, name):
        return code
    cut = trimmed(code, name, opening)
    return cut if compiles(cut, name) else opening


def pruned(code: str, opening: str = "") -> str:
    """`code` without the top-level functions and classes it defines a second time, and
    without its top-level statements that read a name nothing bound before them, looking only
    past its `opening` (a prefix of whole lines, which stays as it is, and whose names count as
    bound); as it is when it does not parse, or where a statement shares a line with
    another."""
    try:
        module = parse_python(code)
    except (SyntaxError, ValueError):
        return code
    if any(
        isinstance(node, ast.ImportFrom) and node.names[0].name == "*" for node in ast.walk(module)
    ):
        return code  # binds names no one can see here
    first = len(_split(opening)) + 1  # the first line that may go
    body: list[ast.stmt] = []
    defined: set[str] = set()
    for node in module.body:
        if isinstance(node, _DEFINITIONS) and not node.decorator_list and node.name != "_":
            if node.name in defined and node.lineno >= first:
                continue  # defined again: the model going round with variations
            defined.add(node.name)
        body.append(node)
    declared = {n for node in body for sub in ast.walk(node) if isinstance(sub, ast.Global)
                for n in sub.names}  # fmt: skip
    bound = MODULE_NAMES | declared  # what the statements so far have bound
    kept_body: list[ast.stmt] = []
    for node in body:
        own = _binds(node)
        if (
            node.lineno >= first
            and not isinstance(node, _GUARDED)
            and _loads(node) - bound - (own if isinstance(node, _COMPOUND) else _inner(node))
        ):
            continue  # a NameError when it runs; what it would have bound is not bound
        kept_body.append(node)
        bound |= own
    body = kept_body
    if len(body) == len(module.body):
        return code
    kept = {n for node in body for n in _lines(node)}
    drop = {n for node in module.body if node not in body for n in _lines(node)}
    if kept & drop:
        return code  # a statement shares a line with one that stays
    return "".join(line for n, line in enumerate(_split(code)) if n not in drop)


def _split(code: str) -> list[str]:
    """The lines of `code` with their ends, as Python's parser counts them (only `\n`,
    `\r\n` and `\r` end a line; `str.splitlines` also ends one at a form feed)."""
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", code)


def _lines(node: ast.stmt) -> range:
    """The lines of the statement, counted from 0, its decorators' included."""
    decorators: list[ast.expr] = getattr(node, "decorator_list", [])
    start = min([node.lineno, *(d.lineno for d in decorators)]) - 1
    return range(start, node.end_lineno or node.lineno)


def _runs(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of `node` that run when it does: not the bodies of functions, lambdas and
    classes inside it (their decorators, defaults and bases do run), nor a variable's
    annotation or a `type` alias's value (evaluated lazily, or not at all, depending on the
    Python version and `from __future__ import annotations`: not counted, to be safe).
    Iterative: a long expression nests deeper than Python's recursion limit."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, _SCOPES):
            parts: list[ast.AST] = list(getattr(current, "decorator_list", []))
            if isinstance(current, ast.ClassDef):
                parts += [*current.bases, *current.keywords]
            else:
                args = current.args
                parts += [d for d in (*args.defaults, *args.kw_defaults) if d is not None]
            stack.extend(parts)
        elif isinstance(current, ast.AnnAssign):
            stack.extend(part for part in (current.target, current.value) if part is not None)
        elif not isinstance(current, _LAZY):
            stack.extend(ast.iter_child_nodes(current))


def _binds(node: ast.stmt) -> set[str]:
    """The module-level names `node` binds when it runs (names a function declares global
    are bound from the start: `pruned` counts them apart)."""
    names: set[str] = set()
    for sub in _runs(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(sub.name)
        elif isinstance(sub, ast.Name) and not isinstance(sub.ctx, ast.Load):
            names.add(sub.id)  # a comprehension's own names too: counted as bound, to be safe
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in sub.names}
        elif isinstance(sub, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and sub.name:
            names.add(sub.name)
        elif isinstance(sub, ast.MatchMapping) and sub.rest:
            names.add(sub.rest)
        if isinstance(sub, _LAZY):  # `type Pair = ...` (Python 3.12) binds Pair
            names.add(sub.name.id)
        names |= {getattr(p, "name", "") for p in getattr(sub, "type_params", [])}
    return names


def _inner(node: ast.stmt) -> set[str]:
    """The names a simple statement binds before it is done reading: a comprehension's own
    and `:=` targets (counted as bound for the whole statement, to be safe)."""
    names: set[str] = set()
    for sub in _runs(node):
        targets = [g.target for g in getattr(sub, "generators", [])]
        if isinstance(sub, ast.NamedExpr):
            targets.append(sub.target)
        names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _loads(node: ast.stmt) -> set[str]:
    """The names `node` reads when it runs (`x += 1` reads x)."""
    names = {
        sub.id for sub in _runs(node) if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)
    }
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        names.add(node.target.id)
    return names
