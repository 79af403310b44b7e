"""Object of given classes inside a zone for at least a dwell time.

The zone's anchor for a box is its bottom centre, where the object meets the ground (as Frigate
does), so a tall person whose head crosses a line drawn on the pavement does not count. The rule
tracks zone occupancy, not object identities: it needs no tracker and survives id switches, and one
persisting object gives one ticket.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from agent.rules import Category, RuleOutput, register
from agent.typedtoml import setting
from agent.types import Detections, EventKind, Observation, RuleEvent
from agent.zones import Zone


@dataclass(frozen=True)
class Params:
    classes: frozenset[str] = setting(help="Detector class names that count, e.g. [\"person\"]")
    min_dwell_s: float = setting(5.0, ge=0, help="Seconds the zone must stay occupied before a ticket opens")
    min_score: float = setting(0.4, ge=0, le=1, help="Detections below this confidence are ignored")
    max_gap_s: float = setting(
        2.0, ge=0,
        help="Occupancy survives missed detections this long; larger absorbs detector flicker, "
             "smaller reacts faster to an object leaving")
    clear_after_s: float = setting(10.0, gt=0, help="Seconds empty before an open ticket clears")
    cooldown_s: float = setting(
        60.0, ge=0, help="After a ticket clears, the zone opens no new ticket for this long")

    def __post_init__(self):
        if not self.classes:
            raise ValueError("classes: must name at least one class")


# A generic rule: its tickets say "something stayed in a zone where it should not". Operators map it
# to their own class per zone (category = {...}); the default is a catch-all of 街面秩序.
@register("object_dwell", Params, Category("街面秩序", "其他", "05-99"))
class ObjectDwellRule:
    name: ClassVar[str]  # set by register

    def __init__(self, zone: Zone, params: Params):
        self.zone, self.params = zone, params
        self.reset()

    def reset(self) -> None:
        self._first_seen: float | None = None
        # Set together with _first_seen, read only while a candidate exists (_first_seen not None).
        self._last_seen = float("-inf")
        self._open = False
        self._quiet_until = float("-inf")
        self._last_inside = Detections.empty()  # the last sighting, which a clear reports

    def _inside(self, detections: Detections) -> Detections:
        p = self.params
        candidates = detections[detections.of_classes(p.classes) & (detections.score >= p.min_score)]
        return candidates[self.zone.contains(candidates.bottom_centres())]

    def present(self, obs: Observation) -> np.ndarray | None:
        inside = self._inside(obs.detections)
        return inside.xyxy if len(inside) else None

    def dwell(self) -> float | None:
        """Seconds the current candidate has held towards ``min_dwell_s`` (None: no candidate)."""
        return None if self._first_seen is None else self._last_seen - self._first_seen

    def update(self, obs: Observation) -> RuleOutput:
        p, ts = self.params, obs.ts
        inside = self._inside(obs.detections)

        if len(inside):
            # Before a ticket opens, a gap longer than max_gap_s restarts the dwell clock; once it
            # is open, the object may vanish for up to clear_after_s and still be the same ticket.
            if not self._open and (self._first_seen is None or ts - self._last_seen > p.max_gap_s):
                self._first_seen = ts
            self._last_seen = ts
            self._last_inside = inside
            assert self._first_seen is not None  # set above, or when the candidate began
            if not self._open and ts - self._first_seen >= p.min_dwell_s and ts >= self._quiet_until:
                self._open = True
                return RuleOutput([self._event(EventKind.OPENED, ts, inside)])
            return RuleOutput()

        if self._open and ts - self._last_seen >= p.clear_after_s:
            event = self._event(EventKind.CLEARED, ts, self._last_inside, count=0)
            self._quiet_until = ts + p.cooldown_s
            self._first_seen, self._last_seen = None, float("-inf")
            self._open = False
            return RuleOutput([event])
        return RuleOutput()

    def _event(self, kind: EventKind, ts: float, inside: Detections, count: int | None = None) -> RuleEvent:
        """An event about ``inside``; a clear reports the last sighting's boxes with a count of 0."""
        names = inside.names()
        label = Counter(names).most_common(1)[0][0] if names else ",".join(sorted(self.params.classes))
        return RuleEvent(
            kind=kind,
            rule=self.name,
            zone=self.zone.id,
            ts=ts,
            first_seen=self._first_seen if self._first_seen is not None else ts,
            last_seen=self._last_seen if self._first_seen is not None else ts,
            label=label,
            confidence=float(inside.score.max()) if len(inside) else 0.0,
            boxes=inside.xyxy.copy(),
            facts={"count": len(inside) if count is None else count},
        )
