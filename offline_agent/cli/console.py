"""What a person at the terminal sees and types during a run."""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time

import click

from offline_agent.agent import Approval
from offline_agent.records import Step

SPINNER = "|/-\\"


class Spinner:
    """A 'thinking' line that turns while the model decodes (only on a terminal)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, label: str) -> None:
        """Show `label` with a turning bar until `stop()`."""
        if not sys.stderr.isatty():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._spin, args=(label,), daemon=True)
        self._thread.start()

    def _spin(self, label: str) -> None:
        start = time.perf_counter()
        for char in itertools.cycle(SPINNER):
            if self._stop.wait(0.1):
                break
            sys.stderr.write(f"\r{char} {label} {time.perf_counter() - start:.1f}s")
            sys.stderr.flush()
        sys.stderr.write("\r\033[K")

    def stop(self) -> None:
        """Erase the spinner line."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class ConsoleEvents:
    """Prints each step the way Auto-GPT did: thoughts, plan, criticism, command, result."""

    def __init__(self, name: str, result_chars: int = 400) -> None:
        self.name = name
        self.result_chars = result_chars
        self.spinner = Spinner()

    def thinking(self, index: int) -> None:
        """Start the spinner for step `index`."""
        click.secho(f"\n── step {index} ", fg="blue", bold=True, nl=False)
        click.secho("─" * 40, fg="blue")
        self.spinner.start(f"{self.name} is thinking…")

    def replied(self, step: Step) -> None:
        """Print the reply (or why it was rejected) and the model's speed."""
        self.spinner.stop()
        if step.completion is not None and step.completion.thinking:
            click.secho(f"THINKING: {step.completion.thinking}", dim=True)
        if step.reply is None:
            click.secho(f"INVALID REPLY: {step.error}", fg="red")
        else:
            t = step.reply.thoughts
            for label, text, colour in (
                ("THOUGHTS", t.text, "yellow"),
                ("REASONING", t.reasoning, "yellow"),
                ("PLAN", t.plan, "yellow"),
                ("CRITICISM", t.criticism, "yellow"),
            ):
                if text:
                    click.echo(click.style(f"{label}: ", fg=colour, bold=True) + text)
            args = json.dumps(step.reply.command.args, ensure_ascii=False)
            click.echo(
                click.style("NEXT ACTION: ", fg="cyan", bold=True)
                + f"COMMAND = {step.reply.command.name}  ARGUMENTS = {args}"
            )
        for label, c in (("", step.completion), ("code turn: ", step.code)):
            if c is not None:
                click.secho(
                    f"({label}{c.total_seconds:.1f} s, {c.usage.completion_tokens} tokens at "
                    f"{c.decode_tokens_per_second:.0f} tok/s, prompt {c.usage.prompt_tokens} "
                    f"tokens of which {c.usage.cached_tokens} cached)",
                    dim=True,
                )

    def executed(self, step: Step) -> None:
        """Print a short form of the command's result."""
        if step.result is None:
            return
        output = step.result.output
        if len(output) > self.result_chars:
            output = output[: self.result_chars] + f"… ({len(step.result.output)} characters)"
        colour = "green" if step.result.ok else "red"
        click.echo(click.style("SYSTEM: ", fg=colour, bold=True) + output)

    def notice(self, line: str) -> None:
        """Print `line` on stderr, on a line of its own."""
        click.echo(line, err=True)


def ask_user(step: Step) -> Approval:
    """Auto-GPT's prompt: y, y -N, n, or feedback for the model."""
    try:
        answer = click.prompt(
            "Enter 'y' to authorise the command, 'y -N' to run N commands without asking, "
            "'n' to stop, or type feedback for the agent",
            default="y",
            show_default=False,
            err=True,
        ).strip()
    except click.Abort:  # end of input or Ctrl-C at the prompt
        return Approval("stop")
    lowered = answer.lower()
    if lowered in ("y", "yes", ""):
        return Approval("yes")
    if lowered.startswith("y -"):
        count = lowered.removeprefix("y -").strip()
        if count.isdigit() and int(count) > 0:
            return Approval("yes", count=int(count))
        click.secho("Invalid input: use 'y -N' with a positive whole number.", fg="red", err=True)
        return ask_user(step)
    if lowered in ("n", "no", "exit"):
        return Approval("stop")
    return Approval("feedback", feedback=answer)


def ask_after_interrupt() -> str | None:
    """After Ctrl-C: None to stop the run, or feedback to send to the agent."""
    try:
        answer = click.prompt(
            "\nInterrupted. Press Enter (or type 'n') to stop the run, or type feedback for "
            "the agent to continue",
            default="",
            show_default=False,
            err=True,
        ).strip()
    except click.Abort:
        return None
    return None if answer.lower() in ("", "n", "no", "stop", "exit") else answer
