"""Which JSON-schema features of MCP tools each grammar engine holds exactly.

    .venv/bin/python scripts/bench_mcp_schemas.py [--write]

For each feature found in published MCP servers' tool schemas (what pydantic and zod
emit: `$ref`/`$defs`, `anyOf` for optional values, `oneOf`, `enum`, formats, patterns,
nested objects and arrays, bounds, `not`), compile a reply schema whose command's
arguments use it (references inlined, as `--mcp` does) with llguidance (what `--mcp`
checks at start) and with llama.cpp's GBNF converter (the `--grammar-engine llama` path),
and say whether each accepted it. `--write` puts the table in docs/tools.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
from typing import Any

from benchlib import write_doc_block

from offline_agent.tools.mcp_servers import _schema_problem, inline_refs, reply_schema_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "tools.md"


def obj(properties: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), **more}


FEATURES: dict[str, dict[str, Any]] = {
    "plain types": obj({"q": {"type": "string"}, "n": {"type": "integer"}}),
    "enum": obj({"unit": {"type": "string", "enum": ["c", "f"]}}),
    "optional (anyOf with null)": obj({"v": {"anyOf": [{"type": "string"}, {"type": "null"}]}}),
    "oneOf": obj({"v": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}),
    "$ref / $defs": obj(
        {"p": {"$ref": "#/$defs/P"}}, **{"$defs": {"P": obj({"x": {"type": "number"}})}}
    ),
    "nested objects and arrays": obj(
        {"rows": {"type": "array", "items": obj({"k": {"type": "string"}})}}
    ),
    "format: date-time": obj({"t": {"type": "string", "format": "date-time"}}),
    "format: uri": obj({"u": {"type": "string", "format": "uri"}}),
    "pattern (no look-around)": obj({"id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}}),
    "pattern with look-ahead": obj({"id": {"type": "string", "pattern": "^(?!x)"}}),
    "numeric bounds": obj({"n": {"type": "integer", "minimum": 1, "maximum": 10}}),
    "string length bounds": obj({"s": {"type": "string", "minLength": 1, "maxLength": 40}}),
    "additionalProperties: object": obj(
        {"m": {"type": "object", "additionalProperties": {"type": "integer"}}}
    ),
    "not": obj({"s": {"not": {"const": "none"}}}),
    "if / then": obj(
        {"s": {"type": "string"}}, **{"if": {"required": ["s"]}, "then": {"required": ["s"]}}
    ),
}


def llama_problem(schema: dict[str, Any]) -> str | None:
    """Why llama.cpp's converter cannot hold `schema` (None when it can)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: PLC0415

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            json_schema_to_gbnf(json.dumps(schema))
    except Exception as err:  # the converter raises what it raises
        return f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/tools.md")
    args = parser.parse_args()
    rows = [
        "| schema feature | llguidance (`--mcp` checks this) | llama.cpp GBNF converter |",
        "|---|---|---|",
    ]
    for name, schema in FEATURES.items():
        # As `--mcp` does: references inlined, then the schema nested in a reply schema.
        nested = reply_schema_for(inline_refs(schema))
        guided, llama = _schema_problem(nested), llama_problem(nested)
        rows.append(
            f"| {name} | {'yes' if guided is None else 'no: ' + guided} | "
            f"{'yes' if llama is None else 'no: ' + llama} |"
        )
    table = "\n".join(rows)
    print(table)
    if args.write:
        write_doc_block(DOC, "mcp-schemas", table, "Tools", "Which schemas the grammar holds")


if __name__ == "__main__":
    main()
