"""A plain-text progress bar for the command line (stderr, no dependencies)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Report ``done/total`` items on a stream.

    On a terminal the bar redraws one line (carriage return); elsewhere (logs, pipes) it prints a line
    at most every ``interval`` seconds, and always the last one.

    Parameters
    ----------
    total : int
        The number of items.
    label : str
        What is counted, e.g. ``"inputs"``.
    enabled : bool or None
        ``True``: always report; ``False``: never; ``None``: only on a terminal, and only once
        the run has taken longer than ``delay`` seconds (short runs stay quiet).
    stream : file or None
        Where to write (standard error by default).
    """

    width = 30

    def __init__(
        self,
        total: int,
        label: str = "inputs",
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        delay: float = 1.0,
        interval: float = 0.25,
    ) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = self.tty if enabled is None else enabled
        self.delay = delay if enabled is None else 0.0
        self.interval = interval if self.tty else max(interval, 5.0)
        self.start = time.perf_counter()
        self.done = 0
        self._last = -float("inf")
        self._drawn = False

    def line(self, elapsed: float) -> str:
        """Return the text for the current state, e.g. ``[#####-----]  6/12 inputs  50%  1.2 s``."""
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(fraction * self.width))
        digits = len(str(self.total))
        return (
            f"[{'#' * filled}{'-' * (self.width - filled)}] {self.done:>{digits}}/{self.total} {self.label} "
            f"{fraction:4.0%} {elapsed:6.1f} s"
        )

    def update(self, count: int = 1) -> None:
        """Count ``count`` more items done, and redraw if it is time."""
        self.done = min(self.done + count, self.total)
        now = time.perf_counter()
        if not self.enabled or now - self.start < self.delay:
            return
        if self.done < self.total and now - self._last < self.interval:
            return
        self._last = now
        self._draw(now - self.start)

    def _draw(self, elapsed: float) -> None:
        text = self.line(elapsed)
        if self.tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line (on a terminal), if anything was drawn."""
        if self._drawn and self.tty:
            self.stream.write("\n")
            self.stream.flush()


__all__ = ("ProgressBar",)
