"""Bicycles and motorcycles parked where they must not be, or more of them than a parking area holds.

COCO models see an e-bike as a bicycle or a motorcycle, so both count by default. A bike counts as
parked when its track has stood still in the zone (box bottom centre inside) for ``min_dwell_s``.
Mode ``no_parking`` (a blind lane, fire lane, road) opens a ticket for the first parked bike;
mode ``overflow`` (a designated parking area) opens one when more than ``max_count`` are parked.

The rule never relies on track ids surviving. A parked bike is hidden by a passing bus, a person
stands in front of it, the detector misses it for a while: the tracker then drops the track and
later starts a new one with a new id and a fresh stationary clock. So the rule keeps **parking
spots** of its own: a stationary bike's box is matched by overlap to the spots it remembers, and a
match continues the spot, whose dwell dates from the earliest stillness any track there reported.
A spot not confirmed by a stationary bike for ``clear_after_s`` is forgotten (the bike left).
The cost: a different bike put on the very place within ``clear_after_s`` inherits the first
one's dwell, which for a parking rule is the right answer anyway (the place stayed occupied).

One ticket per zone: it opens when the parked count first exceeds the limit (0 in no_parking
mode), stays open while it does, sends ``updated`` with the new ``count`` when the count changes,
and clears when it is back at or below the limit. The count changes only when a bike has been
parked for ``min_dwell_s`` or gone for ``clear_after_s``, never on one missed detection, so
``updated`` messages are material by construction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum

import numpy as np

from agent.rules import Category, Need, register
from agent.track import Tracks, box_iou, greedy_match
from agent.typedtoml import setting
from agent.types import Detections, EventKind, Observation, RuleEvent
from agent.zones import Zone

# The detector suppresses overlapping boxes only within a class, so one e-bike can come as both a
# bicycle and a motorcycle box; across classes the rule suppresses at the detector's own NMS IoU.
DUPLICATE_IOU = 0.5


class Mode(str, Enum):
    NO_PARKING = "no_parking"
    OVERFLOW = "overflow"


@dataclass(frozen=True)
class Params:
    mode: Mode = setting(
        Mode.NO_PARKING,
        help="no_parking: any parked bike is a ticket (blind lane, fire lane, road); overflow: a "
             "designated parking area, ticket when more than max_count bikes are parked")
    max_count: int = setting(
        0, ge=0, help="overflow only: how many bikes the parking area holds (at least 1)")
    classes: tuple[str, ...] = setting(
        ("bicycle", "motorcycle"),
        help="Detector classes that are bikes; COCO models see e-bikes as either")
    min_score: float = setting(0.35, ge=0, le=1, help="Bike tracks below this confidence are ignored")
    min_dwell_s: float = setting(
        10.0, ge=0,
        help="Seconds a bike must stand still in the zone before it counts as parked, counted from "
             "when its track became stationary (the tracker's stationary_after_s comes first). "
             "Short, so a ticket opens while the evidence is there; raise it where riders wait "
             "(crossings, shop fronts) or where short stops are allowed")
    clear_after_s: float = setting(
        15.0, gt=0,
        help="A parked bike not seen standing there for this long is gone: the count drops, and the "
             "ticket clears once the count is back within the limit. Longer bridges occlusions by "
             "passing traffic; shorter clears sooner")
    same_place_iou: float = setting(
        0.3, gt=0, le=1,
        help="Least box overlap (IoU) for a stationary bike to continue a remembered parking spot, "
             "whatever its track id")

    def __post_init__(self):
        if not self.classes:
            raise ValueError("classes: must name at least one class")
        if self.mode is Mode.OVERFLOW and self.max_count < 1:
            raise ValueError("max_count: mode = \"overflow\" needs max_count >= 1")
        if self.mode is Mode.NO_PARKING and self.max_count != 0:
            raise ValueError("max_count: only for mode = \"overflow\"")


@dataclass
class _Spot:
    """A place in the zone where a bike stands still."""

    box: np.ndarray  # (4,) the latest box seen there
    since: float  # when the bike there stopped moving: the earliest any track there reported
    last_seen: float
    label: str
    score: float


# 05-06 and the class names follow common 城市管理 event catalogues; every city's platform has
# its own codes, so operators must check them (edge.toml [categories.misparked_bikes]).
@register("misparked_bikes", Params, Category("街面秩序", "非机动车乱停放", "05-06"),
          needs=frozenset({Need.TRACKS, Need.SMALL_OBJECTS}))
class MisparkedBikesRule:
    name = "misparked_bikes"

    def __init__(self, zone: Zone, params: Params):
        self.zone, self.params = zone, params
        self.classes = frozenset(params.classes)
        self.limit = params.max_count  # 0 in no_parking mode: one parked bike is too many
        self.reset()

    def reset(self) -> None:
        self._spots: list[_Spot] = []
        self._reported: int | None = None  # the count the open ticket last reported; None: no ticket
        self._last_boxes = np.zeros((0, 4), np.float32)

    def _bikes(self, found: Detections) -> np.ndarray:
        """Boolean mask of rows of ``found`` that are bikes with their bottom centre in the zone."""
        wanted = found.of_classes(self.classes) & (found.score >= self.params.min_score)
        inside = np.zeros(len(found), bool)
        inside[wanted] = self.zone.contains(found[wanted].bottom_centres())
        return inside

    def present(self, obs: Observation) -> np.ndarray | None:
        """More bikes than the limit in the zone now, moving or not: their boxes."""
        bikes = obs.detections[self._bikes(obs.detections)]
        return bikes.xyxy if len(bikes) > self.limit else None

    def update(self, obs: Observation) -> list[RuleEvent]:
        ts = obs.ts
        tracks = obs.tracks if obs.tracks is not None else Tracks.empty(obs.detections.class_names)
        still = tracks[self._bikes(tracks.as_detections()) & ~np.isnan(tracks.stationary_since)]
        self._remember(ts, _without_duplicates(still))
        parked = [s for s in self._spots if ts - s.since >= self.params.min_dwell_s]

        if len(parked) > self.limit:
            if self._reported is None:
                kind = EventKind.OPENED
            elif len(parked) != self._reported:
                kind = EventKind.UPDATED
            else:
                return []
            self._reported = len(parked)
            return [self._event(kind, ts, parked)]
        if self._reported is not None:
            self._reported = None
            return [self._event(EventKind.CLEARED, ts, parked)]
        return []

    def _remember(self, ts: float, still: Tracks) -> None:
        """Continue the spots that stationary bikes stand on, start new ones, forget stale ones."""
        old = np.array([s.box for s in self._spots], np.float64).reshape(-1, 4)
        pairs = greedy_match(box_iou(old, still.xyxy.astype(np.float64)), self.params.same_place_iou)
        matched = {column: row for row, column in pairs}
        names = still.as_detections().names()
        for i in range(len(still)):
            box, since, score = still.xyxy[i].copy(), float(still.stationary_since[i]), float(still.score[i])
            if i in matched:
                spot = self._spots[matched[i]]
                spot.box, spot.last_seen, spot.label, spot.score = box, ts, names[i], score
                spot.since = min(spot.since, since)
            else:
                self._spots.append(_Spot(box, since, ts, names[i], score))
        self._spots = [s for s in self._spots if ts - s.last_seen < self.params.clear_after_s]

    def _event(self, kind: EventKind, ts: float, parked: list[_Spot]) -> RuleEvent:
        """An event about the parked bikes; a clear with none left shows the last ones reported."""
        if parked:
            self._last_boxes = np.array([s.box for s in parked], np.float32)
        label = Counter(s.label for s in parked).most_common(1)[0][0] if parked else self.params.classes[0]
        facts = {"count": len(parked)}
        if self.params.mode is Mode.OVERFLOW:
            facts["max_count"] = self.limit
        return RuleEvent(
            kind=kind,
            rule=self.name,
            zone=self.zone.id,
            ts=ts,
            first_seen=min((s.since for s in parked), default=ts),
            last_seen=max((s.last_seen for s in parked), default=ts),
            label=label,
            confidence=max((s.score for s in parked), default=0.0),
            boxes=self._last_boxes.copy(),
            facts=facts,
        )


def _without_duplicates(tracks: Tracks) -> Tracks:
    """Tracks minus those overlapping a higher-scored one by DUPLICATE_IOU or more, whatever the class."""
    order = np.argsort(-tracks.score, kind="stable")
    iou = box_iou(tracks.xyxy.astype(np.float64), tracks.xyxy.astype(np.float64))
    kept: list[int] = []
    for i in order.tolist():
        if all(iou[i, k] < DUPLICATE_IOU for k in kept):
            kept.append(i)
    keep = np.zeros(len(tracks), bool)
    keep[kept] = True
    return tracks[keep]
