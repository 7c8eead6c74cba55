"""From saved attempts to a scoreboard: per model, success with its uncertainty, cost, endings."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from offline_agent.bench.runner import Attempt

Z95 = 1.959964
"""The normal quantile of a two-sided 95% interval."""


def wilson(passed: int, attempts: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate: sound for small counts and 0% or 100%."""
    if attempts == 0:
        return (0.0, 1.0)
    p = passed / attempts
    centre = (p + z * z / (2 * attempts)) / (1 + z * z / attempts)
    half = (
        z * math.sqrt(p * (1 - p) / attempts + z * z / (4 * attempts**2)) / (1 + z * z / attempts)
    )
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class ModelScore:
    """One model's row of the scoreboard."""

    model: str
    attempts: int = 0
    passed: int = 0
    ci: tuple[float, float] = (0.0, 1.0)
    """95% interval of the success rate over all attempts (Wilson)."""
    repeat_rates: list[float] = field(default_factory=list)
    """Success rate of each repeat, in repeat order: the spread between repeats."""
    per_challenge: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Challenge name → (attempts passed, attempts)."""
    steps: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cached_share: float = 0.0
    tokens_per_second: float = 0.0
    """Completion tokens over decoding time, prompt evaluation excluded."""
    walls: list[float] = field(default_factory=list)
    """Wall seconds of each attempt."""
    peak_rss_mb: float = 0.0
    valid_share: float = 0.0
    replies: int = 0
    truncated: int = 0
    invalid_constrained: int = 0
    destroyed: int = 0
    """Attempts that deleted or wrongly changed an input file."""
    endings: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Share of attempts that passed."""
        return self.passed / self.attempts if self.attempts else 0.0

    @property
    def wall_mean(self) -> float:
        """Mean wall seconds per attempt."""
        return statistics.fmean(self.walls) if self.walls else 0.0

    @property
    def wall_median(self) -> float:
        """Median wall seconds per attempt."""
        return statistics.median(self.walls) if self.walls else 0.0


def score(attempts: list[Attempt]) -> list[ModelScore]:
    """One row per model, in the order the models first appear in `attempts`."""
    by_model: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_model.setdefault(attempt.model, []).append(attempt)
    return [_score_model(model, rows) for model, rows in by_model.items()]


def _score_model(model: str, rows: list[Attempt]) -> ModelScore:
    n = len(rows)
    passed = sum(a.passed for a in rows)
    per_challenge: dict[str, tuple[int, int]] = {}
    for a in rows:
        ok, seen = per_challenge.get(a.challenge, (0, 0))
        per_challenge[a.challenge] = (ok + a.passed, seen + 1)
    repeats: dict[int, list[bool]] = {}
    for a in rows:
        repeats.setdefault(a.repeat, []).append(a.passed)
    prompt = sum(a.prompt_tokens for a in rows)
    completion = sum(a.completion_tokens for a in rows)
    decode = sum(a.decode_seconds for a in rows)
    replies = sum(a.replies for a in rows)
    return ModelScore(
        model=model,
        attempts=n,
        passed=passed,
        ci=wilson(passed, n),
        repeat_rates=[sum(v) / len(v) for _, v in sorted(repeats.items())],
        per_challenge=per_challenge,
        steps=sum(a.steps for a in rows) / n,
        prompt_tokens=prompt / n,
        completion_tokens=completion / n,
        cached_share=sum(a.cached_tokens for a in rows) / prompt if prompt else 0.0,
        tokens_per_second=completion / decode if decode > 0 else 0.0,
        walls=[a.wall_seconds for a in rows],
        peak_rss_mb=max(a.peak_rss_mb for a in rows),
        valid_share=sum(a.valid_replies for a in rows) / replies if replies else 0.0,
        replies=replies,
        truncated=sum(a.truncated for a in rows),
        invalid_constrained=sum(a.invalid_constrained for a in rows),
        destroyed=sum(bool(a.destroyed) for a in rows),
        endings=dict(Counter(a.status for a in rows).most_common()),
    )


def challenge_order(attempts: list[Attempt]) -> list[tuple[str, str]]:
    """(challenge, difficulty) in the order the challenges first appear."""
    return list(dict.fromkeys((a.challenge, a.difficulty) for a in attempts))
