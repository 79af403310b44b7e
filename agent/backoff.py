"""Capped exponential backoff with jitter: how long to wait before trying a lost connection again.

The delay doubles after each failure up to a cap and goes back to the first after a success (as
paho does for the broker, :mod:`agent.transport`). Each wait is drawn from the upper half of the
current delay ("equal jitter"), so boxes, or cameras of one box, that lost their peer at the same
moment do not all come back at the same instant, and no wait exceeds the cap.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first_s: float, max_s: float, rng: random.Random | None = None):
        if not 0 < first_s <= max_s:
            raise ValueError(f"backoff needs 0 < first_s <= max_s, got {first_s} and {max_s}")
        self.first_s, self.max_s = first_s, max_s
        self._rng = rng or random.Random()
        self._delay = first_s

    def next_wait(self) -> float:
        """The wait before the next try, in [delay / 2, delay]; doubles the delay for the one after."""
        wait = self._delay * self._rng.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, self.max_s)
        return wait

    def reset(self) -> None:
        """A try succeeded: the next failure waits the shortest again."""
        self._delay = self.first_s
