"""Measure the recall threshold on real embeddings of real steps.

Long-term memory stores each step as "Assistant reply: ...\\nResult: ..." and recalls the
memories most similar to the latest exchange. Every such text shares its format, so
memories of unrelated goals score high too. This script takes the run records of a
benchmark (`offline-agent bench --out DIR`), embeds every step's exchange with the real
embedder, and for each step compares it, as the query, with the steps of other runs:

    same goal     steps of other attempts at the same challenge (relevant memories)
    other goal    steps of attempts at other challenges (what must not leak in)

It prints the distribution of both and the share of each kept at candidate thresholds;
`AgentConfig.recall_threshold` is set from it (docs/memory.md, "Recall threshold").

Usage: python scripts/bench_recall.py RESULTS_DIR [RESULTS_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from offline_agent.memory import SentenceTransformerEmbedder

THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


def exchanges(results: Path) -> list[tuple[str, str]]:
    """(challenge, exchange text) for every step with a reply and a result, as the agent
    remembers it."""
    found = []
    for line in (results / "results.jsonl").read_text().splitlines():
        attempt = json.loads(line)
        steps = results / "runs" / attempt["run_id"] / "steps.jsonl"
        if not steps.exists():
            continue
        for entry in map(json.loads, steps.read_text().splitlines()):
            history = entry.get("step", {}).get("history", []) if entry["type"] == "step" else []
            if len(history) >= 3:  # request, reply, result
                text = f"Assistant reply: {history[1]['content']}\nResult: {history[2]['content']}"
                found.append((attempt["challenge"], text))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args()
    rows = [row for folder in args.results for row in exchanges(folder)]
    goals = np.array([goal for goal, _ in rows])
    vectors = SentenceTransformerEmbedder().embed([text for _, text in rows])
    similarity = vectors @ vectors.T
    same = goals[:, None] == goals[None, :]
    off_diagonal = ~np.eye(len(rows), dtype=bool)
    groups = {"same goal": similarity[same & off_diagonal], "other goal": similarity[~same]}
    print(f"{len(rows)} steps of {len(set(goals))} goals")
    print("| pairs | n | p10 | median | p90 | p99 |")
    print("|---|---|---|---|---|---|")
    for name, values in groups.items():
        p10, p50, p90, p99 = np.percentile(values, [10, 50, 90, 99])
        print(f"| {name} | {len(values):,} | {p10:.2f} | {p50:.2f} | {p90:.2f} | {p99:.2f} |")
    print("\n| threshold | same goal kept | other goal kept |")
    print("|---|---|---|")
    for threshold in THRESHOLDS:
        kept = [float(np.mean(values >= threshold)) for values in groups.values()]
        print(f"| {threshold:.2f} | {kept[0]:.0%} | {kept[1]:.1%} |")


if __name__ == "__main__":
    main()
