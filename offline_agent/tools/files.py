"""File commands: read, write, append, list and delete files inside the workspace."""

from __future__ import annotations

from offline_agent.errors import ToolError
from offline_agent.tools.base import (
    AppendedFile,
    ExistingFile,
    FileToRead,
    FolderToList,
    Text,
    Tool,
    ToolContext,
    WrittenFile,
    tool,
)
from offline_agent.tools.syntax import file_error
from offline_agent.workspace import MAX_LISTED


def refuse_broken(filename: str, text: str) -> None:
    """Raise ToolError when writing `text` would leave `filename` unparseable."""
    problem = file_error(filename, text)
    if problem is not None:
        raise ToolError(f"{filename} was left as it was: {problem}")


@tool
def read_file(ctx: ToolContext, filename: FileToRead) -> str:
    """Read a text file from the workspace.

    Args:
        filename: path of the file, relative to the workspace
    """
    limit = ctx.output_limit
    text = ctx.workspace.read_text(filename, max_chars=limit + 1)
    if not text:
        return f"{filename} is empty."
    if len(text) > limit:
        return f"{text[:limit]}\n[cut: only the first {limit} characters of {filename} are shown]"
    return text


@tool
def write_file(ctx: ToolContext, filename: WrittenFile, text: Text) -> str:
    """Write text to a file in the workspace, replacing what it held.

    Args:
        filename: path of the file, relative to the workspace
        text: the full new content of the file
    """
    if ctx.workspace.exists(filename) and ctx.workspace.read_text(filename) == text:
        return f"{filename} already holds exactly this text; nothing changed."
    if ctx.check_syntax:
        refuse_broken(filename, text)
    written = ctx.workspace.write_text(filename, text)
    return f"Wrote {written} characters to {filename}."


@tool
def append_file(ctx: ToolContext, filename: AppendedFile, text: Text) -> str:
    """Add text to the end of a file in the workspace, creating it if missing.

    Args:
        filename: path of the file, relative to the workspace
        text: the text to add
    """
    if ctx.check_syntax:
        before = ctx.workspace.read_text(filename) if ctx.workspace.exists(filename) else ""
        refuse_broken(filename, before + text)
    added = ctx.workspace.append_text(filename, text)
    return f"Appended {added} characters to {filename}."


@tool
def list_files(ctx: ToolContext, directory: FolderToList) -> str:
    """List the files in a folder of the workspace and its subfolders.

    Args:
        directory: folder to list, relative to the workspace; "." is the whole workspace
    """
    folder = directory.strip() or "."
    names = ctx.workspace.list_files(folder, limit=MAX_LISTED + 1)
    if not names:
        return "The workspace is empty." if folder in (".", "./") else f"{folder} has no files."
    shown: list[str] = []
    used = 0
    for name in names[:MAX_LISTED]:
        used += len(name) + 1
        if used > ctx.output_limit:
            break
        shown.append(name)
    listing = "\n".join(shown)
    hidden = len(names) - len(shown)
    if hidden:
        count = f"at least {hidden}" if len(names) > MAX_LISTED else str(hidden)
        listing += f"\n[{count} more files not shown; list a subfolder to see them]"
    return listing


@tool
def delete_file(ctx: ToolContext, filename: ExistingFile) -> str:
    """Delete a file from the workspace.

    Args:
        filename: path of the file, relative to the workspace
    """
    ctx.workspace.delete(filename)
    return f"Deleted {filename}."


FILE_TOOLS: tuple[Tool, ...] = (read_file, write_file, append_file, list_files, delete_file)
"""The file commands, in the order shown to the model."""
