"""Progress lines of long steps: how far, how long it took, and how long is left."""

from __future__ import annotations

import time
from collections.abc import Callable


def format_seconds(seconds: float) -> str:
    """'45 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLine:
    """Turns (done, total) updates into a line about every ``every`` of the way.

    The time left assumes the remaining units cost what the finished ones did on average
    (units of a step are alike: prompts, answers, batches); it is printed once at least one
    unit is done.
    """

    def __init__(
        self, what: str, *, every: float = 0.1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what, self.every, self.clock = what, every, clock
        self.started = clock()
        self._next = 0.0

    def update(self, done: int, total: int) -> str | None:
        """The line to log for this update, or None when it is not time for one yet."""
        fraction = done / total if total else 1.0
        if fraction < self._next and done != total:
            return None
        self._next = fraction + self.every
        elapsed = self.clock() - self.started
        line = f"{self.what}: {done}/{total} ({fraction:.0%}) in {format_seconds(elapsed)}"
        if 0 < done < total:
            line += f", about {format_seconds(elapsed / done * (total - done))} left"
        return line
