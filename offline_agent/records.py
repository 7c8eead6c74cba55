"""What we record: plain dataclasses for completions, replies, tool results and steps.

What we *send* to a model are OpenAI-shaped message dicts (`Message`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Profile:
    """Who the agent is and what it pursues (Auto-GPT's ai_name, ai_role, ai_goals)."""

    name: str
    role: str
    goals: tuple[str, ...]


Message = dict[str, str]
"""An OpenAI-shaped chat message: {"role": "system"|"user"|"assistant", "content": str}."""

FinishReason = Literal["stop", "length"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
"""The tags of a reasoning model's think block (Qwen3, DeepSeek-R1 and their distills, QwQ,
SmolLM3, Phi-4-reasoning, Nemotron)."""


def split_thinking(text: str) -> tuple[str, str]:
    """A reply's think block and its answer: `("", text)` when it opens with no think block.

    The block may lack its opening tag (the prompt opened it, as DeepSeek-R1 distills'
    templates do) and ends at its first closing tag; a reply cut off inside it is all
    thinking and no answer.
    """
    head = text.lstrip()
    if head.startswith("{"):
        return "", text
    thinking, closed, answer = head.partition(THINK_CLOSE)
    if closed:
        return thinking.removeprefix(THINK_OPEN).strip(), answer.lstrip()
    if head.startswith(THINK_OPEN):
        return head.removeprefix(THINK_OPEN).strip(), ""
    return "", text


@dataclass
class Usage:
    """Token counts of one completion; `cached_tokens` were served from the KV cache."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class Completion:
    """One model answer: raw text, why it stopped, token usage and timings in seconds."""

    text: str
    finish_reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    prompt_seconds: float = 0.0
    total_seconds: float = 0.0
    constrained: bool = False
    logprob: float | None = None
    """Mean log-probability of the tokens the model chose, where the backend reports it
    (in-process with llguidance): what `--samples` ranks candidates by."""

    @property
    def thinking(self) -> str:
        """The think block the text opens with ("" for none): kept in the record only."""
        return split_thinking(self.text)[0]

    @property
    def answer(self) -> str:
        """The text after any think block: what is parsed, and what the history keeps."""
        return split_thinking(self.text)[1]

    @property
    def decode_tokens_per_second(self) -> float:
        """Completion tokens per second of decoding (prompt evaluation excluded)."""
        decode = self.total_seconds - self.prompt_seconds
        return self.usage.completion_tokens / decode if decode > 0 else 0.0


@dataclass
class Thoughts:
    """The model's reasoning, shown to the user each step."""

    text: str = ""
    reasoning: str = ""
    plan: str = ""
    criticism: str = ""


@dataclass
class CommandCall:
    """The command the model chose and its arguments."""

    name: str
    args: dict[str, Any]


@dataclass
class Reply:
    """A validated model reply."""

    thoughts: Thoughts
    command: CommandCall


@dataclass
class ToolResult:
    """What running a command produced; `ok` is False when it failed."""

    output: str
    ok: bool = True


StepStatus = Literal[
    "ok", "format_error", "truncated", "rejected", "finished", "interrupted", "error"
]
"""How a step ended: `ok` when its command ran (whatever it returned); `rejected` when the
user refused it (with feedback, or stopping the run); `error` when the run broke off before
any command (a backend or context error)."""


@dataclass
class Step:
    """Everything about one cycle of the loop, as written to the run record."""

    index: int
    messages: list[Message] = field(default_factory=list)
    completion: Completion | None = None
    reply: Reply | None = None
    error: str | None = None
    result: ToolResult | None = None
    human_feedback: str | None = None
    history: list[Message] = field(default_factory=list)
    """The messages this step added to the agent's history (what `resume` rebuilds from)."""
    status: StepStatus = "ok"
    seconds: float = 0.0
    subagents: dict[str, Any] | None = None
    """The sub-agents after this step, when this step changed them (what resume reloads)."""
    grammar_sha256: str = ""
    """Digest of the reply schema the step was decoded under (it changes with the state),
    so an audit can tell which constraint produced each reply."""
    left_out: dict[str, str] = field(default_factory=dict)
    """Commands this step's grammar left out → the rule that did it and why."""
    candidates: list[dict[str, Any]] = field(default_factory=list)
    """With `--samples`: every candidate reply (text, mean log-probability, what the checks
    found wrong); `completion` is the one kept."""
    code: Completion | None = None
    """With rule `code_turn`: the answer of the turn that wrote the command's code."""
    snapshot: dict[str, Any] | None = None
    """The workspace this step's plan saw (`state.Snapshot`), for `runs resume`; None in
    a workspace too big to record."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the run record."""
        return asdict(self)


RunStatus = Literal[
    "finished", "step_limit", "time_limit", "format_errors", "stopped_by_user", "loop", "error"
]


@dataclass
class RunResult:
    """How a run ended."""

    status: RunStatus
    steps: int
    reason: str = ""
