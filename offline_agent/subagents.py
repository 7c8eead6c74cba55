"""Sub-agents: plain chat threads on the already-loaded model, each with its own history."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from offline_agent.errors import ToolError
from offline_agent.llm.base import ChatModel
from offline_agent.records import Message


@dataclass
class SubAgent:
    """One sub-agent's identity and conversation."""

    name: str
    task: str
    messages: list[Message] = field(default_factory=list)


class SubAgents:
    """Implements `tools.base.SubAgentsLike` on a `ChatModel`; answers are free text."""

    def __init__(self, model: ChatModel, answer_tokens: int = 256, max_agents: int = 8) -> None:
        self.model = model
        self.answer_tokens = answer_tokens
        self.max_agents = max_agents
        self._agents: dict[int, SubAgent] = {}
        self._next_key = 1
        self.version = 0
        """Bumped on every change, so the run record stores a snapshot only when needed."""

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON of every sub-agent and its conversation (for the run record)."""
        agents = {str(key): asdict(agent) for key, agent in self._agents.items()}
        return {"next_key": self._next_key, "agents": agents}

    def load(self, snapshot: dict[str, Any]) -> None:
        """Bring back the sub-agents of a `snapshot` (when a run is resumed)."""
        self._next_key = int(snapshot["next_key"])
        self._agents = {int(k): SubAgent(**v) for k, v in snapshot["agents"].items()}
        self.version += 1

    def start(self, name: str, task: str, prompt: str) -> tuple[int, str]:
        """Create a sub-agent and send it its first message."""
        if len(self._agents) >= self.max_agents:
            raise ToolError(f"at most {self.max_agents} sub-agents; delete one first")
        system = f"You are {name}. Your task: {task}. Answer briefly and precisely."
        key, self._next_key = self._next_key, self._next_key + 1
        self._agents[key] = SubAgent(name, task, [Message(role="system", content=system)])
        self.version += 1
        return key, self.message(key, prompt)

    def message(self, key: int, message: str) -> str:
        """Send `message` to sub-agent `key` and return its answer."""
        agent = self._get(key)
        agent.messages.append(Message(role="user", content=message))
        budget = self.model.context_length - self.answer_tokens
        while len(agent.messages) > 2 and self.model.count_tokens(agent.messages) > budget:
            del agent.messages[1:3]  # oldest exchange; the system message stays
        completion = self.model.complete(agent.messages, schema=None, max_tokens=self.answer_tokens)
        text = completion.answer.strip()  # a reasoning model's think block is not kept
        agent.messages.append(Message(role="assistant", content=text))
        self.version += 1
        return text

    def list(self) -> list[tuple[int, str, str]]:
        """All sub-agents as (key, name, task)."""
        return [(key, a.name, a.task) for key, a in self._agents.items()]

    def delete(self, key: int) -> None:
        """Forget sub-agent `key`."""
        self._get(key)
        del self._agents[key]
        self.version += 1

    def _get(self, key: int) -> SubAgent:
        try:
            return self._agents[key]
        except KeyError:
            known = ", ".join(map(str, self._agents)) or "none"
            raise ToolError(f"no sub-agent with key {key}; keys: {known}") from None
