"""Injectable time. Rules never read the wall clock: they get ``ts`` with each frame."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""

    def sleep_until(self, ts: float, stop: threading.Event) -> None:
        """Wait until ``now() >= ts`` or ``stop`` is set."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep_until(self, ts: float, stop: threading.Event) -> None:
        delay = ts - time.time()
        if delay > 0:
            stop.wait(delay)


class ManualClock:
    """A clock that moves only when told to: for tests and as-fast-as-possible replays."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def sleep_until(self, ts: float, stop: threading.Event) -> None:
        self._now = max(self._now, ts)
