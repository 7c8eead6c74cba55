"""The rooted error tree: every error we raise on purpose derives from AgentError.

Each class carries an `exit_code`, so the CLI maps failures to distinct exit
statuses without a lookup table. Errors carry data and never log themselves.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error offline_agent raises on purpose."""

    exit_code = 1


class ConfigError(AgentError):
    """Bad settings: a malformed ai_settings.yaml, empty goals, bad option values."""

    exit_code = 2


class ChallengeError(ConfigError):
    """A benchmark challenge folder or its data.json is missing or malformed."""


class ModelError(AgentError):
    """A model file is missing, unknown, corrupt or does not match its checksum."""

    exit_code = 3


class ChecksumError(ModelError):
    """A model file's sha256 differs from the one recorded for it."""

    exit_code = 4


class BackendError(AgentError):
    """The model backend failed: a server down, a timeout, a load failure."""

    exit_code = 5


class ToolServerGone(BackendError):
    """A process that serves commands (an MCP server) stopped: the run cannot go on."""


class ContextOverflowError(AgentError):
    """The fixed part of the prompt alone does not fit in the context window."""

    exit_code = 6


class StorageError(AgentError):
    """A run record or memory folder cannot be written or read back intact."""

    exit_code = 7


class MemoryStoreError(StorageError):
    """The long-term memory store is unusable (wrong embedding model, corrupt files)."""

    exit_code = 8


class BundleError(AgentError):
    """An air-gap bundle cannot be written, or is not one (no manifest, a bad manifest)."""


class ReplayDivergedError(AgentError):
    """A replayed command gave another result than the recorded one."""

    exit_code = 9


# --- Errors the model sees as observations -------------------------------------------


class ToolError(AgentError):
    """A command failed; the message goes back to the model as the command's result."""


class CommandFailed(ToolError):
    """A command ran and failed (a program that crashed); its message is the whole result the
    model sees, with no "Error:" before it, and the command does not count as a success."""


class WorkspaceError(ToolError):
    """A path tried to leave the workspace jail, or the file operation failed."""


class FormatError(AgentError):
    """A reply was not valid JSON of our schema; the message is shown to the model."""


class TruncatedReplyError(FormatError):
    """The reply was cut off by the token limit before the JSON was complete."""


# --- Control flow (not failures) -----------------------------------------------------


class Finished(Exception):
    """Raised by the `finish` command: the model says its goals are done."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
