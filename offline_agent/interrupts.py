"""Ctrl-C held back across a few lines that must not be cut in two.

Python raises KeyboardInterrupt between any two bytecodes of the main thread. Where that
would leave things half done (a run record's line on disk but its hash not yet the one the
next line chains to; a child started but not yet known to the code that kills it), the
Ctrl-C is held and delivered right after, where the caller can handle it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class HeldInterrupt:
    """Ctrl-C held back from construction until `release()`, and then delivered.

    Python runs signal handlers in the main thread only, so only there is anything held.
    """

    def __init__(self) -> None:
        self.held = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._hold)

    def _hold(self, signum: int, frame: object) -> None:
        self.held = True

    def release(self) -> None:
        """Put the previous handler back and give it the Ctrl-C held, if one came."""
        previous, self._previous = self._previous, None
        if previous is None:
            return
        signal.signal(signal.SIGINT, previous)
        if self.held and callable(previous):
            previous(signal.SIGINT, None)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Run the block whole: a Ctrl-C that comes during it is delivered when it ends."""
    held = HeldInterrupt()
    try:
        yield
    finally:
        held.release()
