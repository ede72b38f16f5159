"""One time budget per recipient: made once, shared by every lookup and probe under it."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Deadline:
    """An instant on the monotonic clock (asyncio's ``loop.time()`` is the same clock).

    ``seconds`` is the budget it was made with, for messages and logs.
    """

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float, now: float | None = None) -> Deadline:
        start = time.monotonic() if now is None else now
        return cls(start + seconds, seconds)

    def remaining(self, now: float | None = None) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - (time.monotonic() if now is None else now))

    def expired(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0.0

    def sooner(self, seconds: float, now: float | None = None) -> Deadline:
        """This deadline or ``seconds`` from now, whichever comes first."""
        start = time.monotonic() if now is None else now
        return self if self.at <= start + seconds else Deadline(start + seconds, seconds)

    def earlier(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` before this one: for work whose result must still be
        used before this one passes."""
        return Deadline(self.at - seconds, max(0.0, self.seconds - seconds))
