"""The benchmark report: Markdown and an HTML page with charts, rebuilt from saved results.

Everything here reads `results.jsonl` and `bench.json` only, so a report can be made again
(or made from results copied off another machine) without running anything.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_agent.bench.runner import Attempt, read_results, read_settings
from offline_agent.bench.scoreboard import ModelScore, challenge_order, score
from offline_agent.errors import ConfigError, StorageError
from offline_agent.runs import write_text_atomic
from offline_agent.state import Rules

CHARTS = {
    "success_by_model": "Success rate by model (95% interval)",
    "time_by_model": "Wall time per attempt by model",
    "success_by_challenge": "Success rate by challenge",
}
"""Chart file stem → title; the images are written to `charts/<stem>.png`."""

ENDINGS = ("finished", "step_limit", "time_limit", "format_errors", "loop", "error")


@dataclass(frozen=True)
class Report:
    """What `write_report` produced."""

    markdown: Path
    html: Path
    charts: list[Path]
    attempts: int


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _cell(passed: int, attempts: int) -> str:
    mark = "✅" if passed == attempts else "❌" if passed == 0 else "⚠️"
    return f"{mark} {passed}/{attempts}"


def _endings(row: ModelScore) -> str:
    return ", ".join(f"{name} {count}" for name, count in row.endings.items())


def scoreboard_rows(rows: list[ModelScore]) -> list[list[str]]:
    """The scoreboard as table cells, a header row first."""
    table = [
        [
            "model",
            "success",
            "95% interval",
            "by repeat",
            "steps",
            "prompt tokens",
            "completion tokens",
            "cached",
            "decode tok/s",
            "s/attempt (mean / median)",
            "peak MiB",
            "valid replies",
            "cut off at the token limit",
            "invalid though constrained",
            "destroyed an input",
            "how runs ended",
        ]
    ]
    for r in rows:
        table.append(
            [
                r.model,
                f"{_pct(r.rate)} ({r.passed}/{r.attempts})",
                f"{_pct(r.ci[0])}–{_pct(r.ci[1])}",
                " ".join(_pct(x) for x in r.repeat_rates),
                f"{r.steps:.1f}",
                f"{r.prompt_tokens:,.0f}",
                f"{r.completion_tokens:,.0f}",
                _pct(r.cached_share),
                f"{r.tokens_per_second:.1f}",
                f"{r.wall_mean:.1f} / {r.wall_median:.1f}",
                f"{r.peak_rss_mb:,.0f}",
                f"{_pct(r.valid_share)} of {r.replies}",
                str(r.truncated),
                str(r.invalid_constrained),
                str(r.destroyed),
                _endings(r),
            ]
        )
    return table


def challenge_rows(attempts: list[Attempt], rows: list[ModelScore]) -> list[list[str]]:
    """Pass counts per challenge and model, a header row first."""
    table = [["challenge", "difficulty", *(r.model for r in rows)]]
    for name, difficulty in challenge_order(attempts):
        cells = [_cell(*r.per_challenge[name]) if name in r.per_challenge else "–" for r in rows]
        table.append([name, difficulty, *cells])
    return table


def markdown_table(table: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table[1:]
    ]
    return "\n".join(lines)


def html_table(table: list[list[str]]) -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rules(saved: dict[str, Any] | None, own: dict[str, Any] | None = None) -> str:
    """The step rules of a benchmark, as the changes from the defaults, and those of each
    model with rules of its own in the registry."""
    if saved is None:
        return "made before step rules existed"
    changed = Rules.from_json(saved).changed()
    text = f"rules {', '.join(changed)}" if changed else "default rules"
    for model, rules in (own or {}).items():
        changed = Rules.from_json(rules).changed()
        text += f" ({model}: {', '.join(changed) if changed else 'the defaults'})"
    return text


def _samples(samples: int) -> str:
    if samples <= 1:
        return ""
    return f", {samples} candidate replies a step (the likeliest sound one kept)"


def describe(meta: dict[str, Any]) -> str:
    """One paragraph: the settings and the machine the results come from."""
    s, m = meta["settings"], meta.get("machine", {})
    engine = "a server" if s.get("base_url") else f"in-process, {s.get('grammar_engine')}"
    last = s["seed"] + s["repeats"] - 1
    repeats = (
        f"1 repeat (seed {last})" if s["repeats"] == 1
        else f"{s['repeats']} repeats (seeds {s['seed']}–{last})"
    )  # fmt: skip
    return (
        f"Suite `{s['suite']}`, {repeats}, temperature {s['temperature']}"
        f"{_samples(s.get('samples', 1))}, at most "
        f"{s['max_steps']} steps and the challenge's cutoff per attempt, context {s['n_ctx']}, "
        f"{engine}, long-term memory {'on' if s.get('memory') else 'off'}, "
        f"{_rules(s.get('rules'), s.get('model_rules'))}. "
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('memory_gib', '?')} GiB; llama-cpp-python {m.get('llama-cpp-python')}, "
        f"Python {m.get('python')}. Last invocation started {meta.get('updated', '?')}."
    )


def markdown(meta: dict[str, Any], attempts: list[Attempt], charts: str = "charts") -> str:
    """The report body in Markdown; `charts` is the image folder relative to the document."""
    rows = score(attempts)
    parts = [
        describe(meta),
        "### Scoreboard",
        markdown_table(scoreboard_rows(rows)),
        "Success is the share of attempts the judge passed. Tokens, steps and time are per "
        "attempt; decode tok/s excludes prompt evaluation; peak memory is the agent "
        "process's (model included) during an attempt.",
        "### By challenge",
        markdown_table(challenge_rows(attempts, rows)),
        "### Charts",
        *(f"![{title}]({charts}/{stem}.png)" for stem, title in CHARTS.items()),
    ]
    return "\n\n".join(parts) + "\n"


def html_page(meta: dict[str, Any], attempts: list[Attempt]) -> str:
    """A self-standing HTML page of the report; the charts are files beside it."""
    rows = score(attempts)
    images = "".join(
        f'<figure><img src="charts/{stem}.png" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for stem, title in CHARTS.items()
    )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:110em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>offline-agent benchmark</title><style>{style}</style></head><body>"
        "<h1>offline-agent benchmark</h1>"
        f"<p>{html.escape(describe(meta))}</p>"
        f"<h2>Scoreboard</h2>{html_table(scoreboard_rows(rows))}"
        f"<h2>Charts</h2>{images}"
        f"<h2>By challenge</h2>{html_table(challenge_rows(attempts, rows))}"
        "</body></html>\n"
    )


def draw_charts(attempts: list[Attempt], folder: Path) -> list[Path]:
    """The three charts as PNG files in `folder`."""
    # matplotlib takes a second to import: only `bench report` pays for it, not every command.
    # Figure without pyplot: no global state, no GUI backend, nothing to close.
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = score(attempts)
    models = [r.model for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    fig = Figure(figsize=(max(4, 1.6 * len(rows) + 2), 3.5))
    ax = fig.subplots()
    rates = [100 * r.rate for r in rows]
    errors = [
        [100 * (r.rate - r.ci[0]) for r in rows],
        [100 * (r.ci[1] - r.rate) for r in rows],
    ]
    ax.bar(models, rates, yerr=errors, capsize=6, color="#4c78a8")
    ax.set_ylim(0, 100)
    ax.set_ylabel("attempts passed (%)")
    ax.set_title(CHARTS["success_by_model"])
    paths.append(_save(fig, folder / "success_by_model.png"))

    fig = Figure(figsize=(max(4, 1.6 * len(rows) + 2), 3.5))
    ax = fig.subplots()
    ax.boxplot([r.walls for r in rows], tick_labels=models)
    ax.set_ylabel("seconds per attempt")
    ax.set_title(CHARTS["time_by_model"])
    paths.append(_save(fig, folder / "time_by_model.png"))

    names = [name for name, _ in challenge_order(attempts)]
    fig = Figure(figsize=(8, 0.25 * len(names) * (1 + 0.3 * len(rows)) + 1.5))
    ax = fig.subplots()
    height = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        values = [
            100 * r.per_challenge[n][0] / r.per_challenge[n][1] if n in r.per_challenge else 0
            for n in names
        ]
        ax.barh([y + i * height for y in range(len(names))], values, height, label=r.model)
    ax.set_yticks([y + height * (len(rows) - 1) / 2 for y in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("attempts passed (%)")
    ax.set_title(CHARTS["success_by_challenge"])
    ax.legend(loc="lower right")
    paths.append(_save(fig, folder / "success_by_challenge.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_report(out: Path) -> Report:
    """Rebuild report.md, report.html and charts/ in the results folder `out`."""
    meta = read_settings(out)
    attempts = read_results(out)
    if not attempts:
        raise ConfigError(f"{out} holds no finished attempts yet")
    try:
        charts = draw_charts(attempts, out / "charts")
        md, page = out / "report.md", out / "report.html"
        write_text_atomic(md, "# offline-agent benchmark\n\n" + markdown(meta, attempts))
        write_text_atomic(page, html_page(meta, attempts))
    except OSError as err:
        raise StorageError(f"cannot write the report in {out}: {err.strerror or err}") from None
    return Report(md, page, charts, len(attempts))
