"""When a zone is watched: weekly windows in the box's local time (e.g. a shop's business hours)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_hhmm(text: str) -> time:
    """``"08:30"`` -> time(8, 30); ``"24:00"`` means the end of the day."""
    hours, sep, minutes = text.partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(f"expected HH:MM, got {text!r}")
    h, m = int(hours), int(minutes)
    if (h, m) == (24, 0):
        return time.max
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"expected HH:MM within a day, got {text!r}")
    return time(h, m)


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time  # end <= start: the window runs past midnight into the next day

    def contains(self, moment: datetime) -> bool:
        now, day = moment.time(), moment.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= now < self.end
        # Overnight: the evening part belongs to the listed day, the small hours to the day after.
        return (day in self.days and now >= self.start) or ((day - 1) % 7 in self.days and now < self.end)


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...]
    tz: ZoneInfo

    def active(self, ts: float) -> bool:
        moment = datetime.fromtimestamp(ts, self.tz)
        return any(w.contains(moment) for w in self.windows)
