"""The text progress bar of a data-set run."""
from __future__ import annotations

import sys


class ProgressBar:
    """A one-line text bar on stderr (no dependency), redrawn at most ~10 times a second."""

    def __init__(self, total: int | None, stream=None):
        self.total, self.stream, self.last = total, stream or sys.stderr, -1.0
        self.open = False  # a line is drawn and not ended

    def line(self, done: int, samples: int, seconds: float) -> str:
        rate = samples / seconds if seconds > 0 else 0.0
        if self.total:
            filled = min(20, 20 * done // self.total)
            head = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} batches"
        else:
            head = f"{done} batches"
        return f"\r{head}, {samples} images, {seconds:.1f} s, {rate:.1f} images/s"

    def update(self, done: int, samples: int, seconds: float) -> None:
        if seconds - self.last >= 0.1:
            self.last = seconds
            self.stream.write(self.line(done, samples, seconds))
            self.stream.flush()
            self.open = True

    def close(self, done: int, samples: int, seconds: float) -> None:
        """The last line, with the run's final counts, ended."""
        self.stream.write(self.line(done, samples, seconds) + "\n")
        self.stream.flush()
        self.open = False

    def end_line(self) -> None:
        """End the line a run stopped on (Ctrl-C, an error), so that what is printed next starts
        on a line of its own; nothing if the bar has not drawn or :meth:`close` ended it."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


__all__ = ["ProgressBar"]
