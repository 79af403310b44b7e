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

**Bikes the detector does not see.** COCO detectors find a parked bicycle well only from about
80-100 px tall in their input; street cameras see most of them at 40-80 px, and the bundled
NanoDet found 6 of 60 such bikes even on zone crops. So with ``fallback`` (the default) a new
object of a bike's size that stays still in the zone also counts: the scene model's static
blobs (grouped, since a bike's wheels and frame come apart against the ground seen through
them), ``fallback_min_height_px`` to ``fallback_max_height_px`` tall, that no person or vehicle
covers now or covered for most of the last ``mover_memory_s``. Its spot starts with the label
``"bike_sized_object"`` and confidence ``FALLBACK_CONFIDENCE``, and takes the detector's label and
score once a detection stands on it. The cost: anything else that size left in a no-parking
zone (a cart, a pile of crates) opens the same ticket, which on a fire lane is seldom wrong.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import numpy as np

from agent.rules import Category, Need, RuleOutput, register
from agent.rules.litter import RecentMovers
from agent.track import Tracks, box_iou, greedy_match
from agent.typedtoml import setting
from agent.types import MOVER_CLASSES, Detections, EventKind, Observation, RuleEvent, StaticBlob
from agent.zones import Zone

# The detector suppresses overlapping boxes only within a class, so one e-bike can come as both a
# bicycle and a motorcycle box; across classes the rule suppresses at the detector's own NMS IoU.
DUPLICATE_IOU = 0.5
# A spot seen only as a bike-sized static object: less sure than a detection at min_score.
FALLBACK_CONFIDENCE = 0.3
FALLBACK_LABEL = "bike_sized_object"
# People and vehicles standing in the zone are not parked bikes; a dog beside a bike does not
# make it one less.
FALLBACK_VETO = ("bus", "car", "person", "truck")
# What can stand still in front of a parked bike, and how much of the bike's box it must cover
# for the bike to count as hidden rather than gone.
HIDERS = MOVER_CLASSES
HIDDEN_SHARE = 0.3
# Static blobs closer than this share of the taller one's height are parts of one object.
GROUP_GAP = 0.3


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
    fallback: bool = setting(
        True,
        help="Also count a new, still object of a bike's size (the scene model's static blobs) as a "
             "parked bike: the detector misses most parked bikes under about 80 px tall. Anything "
             "else that size left in the zone counts too")
    fallback_min_height_px: float = setting(
        20.0, gt=0,
        help="fallback: least height, in frame pixels, of a still object that counts as a bike. A "
             "1 m bike is 40-80 px tall on street cameras, and at 40 px its blob may be little more "
             "than the wheels (about 26 px, two thirds of its height): the bars and saddle are a pixel "
             "thin. Litter lies flatter")
    fallback_max_height_px: float = setting(
        250.0, gt=0, help="fallback: greatest height, in frame pixels, of a still object that counts as a bike")
    mover_memory_s: float = setting(
        5.0, gt=0,
        help="fallback: a still object that people or vehicles covered for most of this many seconds "
             "is ignored (a person standing still whom the detector misses now and then)")

    def __post_init__(self):
        if not self.classes:
            raise ValueError("classes: must name at least one class")
        if self.mode is Mode.OVERFLOW and self.max_count < 1:
            raise ValueError("max_count: mode = \"overflow\" needs max_count >= 1")
        if self.mode is Mode.NO_PARKING and self.max_count != 0:
            raise ValueError("max_count: only for mode = \"overflow\"")
        if self.fallback_min_height_px >= self.fallback_max_height_px:
            raise ValueError("fallback_min_height_px: must be below fallback_max_height_px")


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
          needs=frozenset({Need.TRACKS, Need.SMALL_OBJECTS, Need.STATIC_BLOBS}))
class MisparkedBikesRule:
    name: ClassVar[str]  # set by register

    def __init__(self, zone: Zone, params: Params):
        self.zone, self.params = zone, params
        self.classes = frozenset(params.classes)
        self.limit = params.max_count  # 0 in no_parking mode: one parked bike is too many
        self._movers = RecentMovers(FALLBACK_VETO, params.mover_memory_s)
        self.reset()

    def reset(self) -> None:
        self._movers.reset()
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
        """More bikes than the limit in the zone now, moving or not, bike-sized still objects
        included with ``fallback``: their boxes."""
        boxes = obs.detections[self._bikes(obs.detections)].xyxy
        if self.params.fallback:
            unseen = self._bike_sized(obs)[0]
            if len(boxes) and len(unseen):  # a detected bike is not counted twice
                overlap = box_iou(unseen.astype(np.float64), boxes.astype(np.float64))
                unseen = unseen[(overlap < self.params.same_place_iou).all(axis=1)]
            boxes = np.concatenate([boxes.reshape(-1, 4), unseen]).astype(np.float32)
        return boxes if len(boxes) > self.limit else None

    def dwell(self) -> float | None:
        """Seconds the longest-parked spot has held towards ``min_dwell_s`` (None: no candidate)."""
        return max((s.last_seen - s.since for s in self._spots), default=None)

    def update(self, obs: Observation) -> RuleOutput:
        ts = obs.ts
        tracks = obs.tracks if obs.tracks is not None else Tracks.empty(obs.detections.class_names)
        self._keep_hidden(ts, tracks)
        still = _without_duplicates(tracks[self._bikes(tracks.as_detections()) & ~np.isnan(tracks.stationary_since)])
        self._remember(ts, still.xyxy, still.stationary_since, still.score, still.as_detections().names())
        if self.params.fallback:
            self._movers.update(ts, obs.image.shape, obs.detections)
            boxes, since = self._bike_sized(obs)
            self._remember(ts, boxes, since, np.full(len(boxes), FALLBACK_CONFIDENCE), [FALLBACK_LABEL] * len(boxes),
                           relabel=False)
        # Parked once seen standing there at the end of its dwell, not merely remembered: a spot
        # glimpsed once with a rest time 6 s back (a light change passing for an object for three
        # frames) would otherwise open 4 s later without being seen again.
        parked = [s for s in self._spots if s.last_seen - s.since >= self.params.min_dwell_s]

        if len(parked) > self.limit:
            if self._reported is None:
                kind = EventKind.OPENED
            elif len(parked) != self._reported:
                kind = EventKind.UPDATED
            else:
                return RuleOutput()
            self._reported = len(parked)
            return RuleOutput([self._event(kind, ts, parked)])
        if self._reported is not None:
            self._reported = None
            return RuleOutput([self._event(EventKind.CLEARED, ts, parked)])
        return RuleOutput()

    def _keep_hidden(self, ts: float, tracks: Tracks) -> None:
        """A spot mostly hidden behind a person, a vehicle or a dog standing still there is not
        gone: neither the detector nor the scene model sees a bike behind them, and clearing
        then would tell the platform that the problem went away. People walking past hide it for
        less than ``clear_after_s``, which bridges them without this."""
        standing = tracks.as_detections().of_classes(HIDERS) & ~np.isnan(tracks.stationary_since)
        hiders = tracks.xyxy[standing].astype(np.float64)
        if not len(hiders) or not self._spots:
            return
        for spot in self._spots:
            box = spot.box.astype(np.float64)
            left, top = np.maximum(box[:2], hiders[:, :2]).T
            right, bottom = np.minimum(box[2:], hiders[:, 2:]).T
            hidden = (np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)).max()
            if hidden >= HIDDEN_SHARE * (box[2] - box[0]) * (box[3] - box[1]):
                spot.last_seen = ts

    def _bike_sized(self, obs: Observation) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) and rest times (N,) of the still objects of a bike's size standing in the
        zone that no mover covers now or lately."""
        groups = _grouped(obs.static_blobs)
        if not groups:
            return np.zeros((0, 4), np.float32), np.zeros(0)
        boxes = np.array([box for box, _ in groups], np.float32)
        since = np.array([rested for _, rested in groups])
        tall = boxes[:, 3] - boxes[:, 1]
        keep = (tall >= self.params.fallback_min_height_px) & (tall <= self.params.fallback_max_height_px)
        keep &= self.zone.contains(np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]], axis=1))
        movers = self._movers.boxes(obs.detections)
        if len(movers):
            keep &= ~(box_iou(boxes.astype(np.float64), movers.astype(np.float64)) > 0).any(axis=1)
        covered = self._movers.covered()
        if covered is not None:
            cell = RecentMovers.CELL
            for i in np.flatnonzero(keep):
                x0, y0, x1, y1 = (boxes[i] / cell).astype(int)
                keep[i] = not covered[y0:y1 + 1, x0:x1 + 1].mean() > 0.5
        return boxes[keep], since[keep]

    def _remember(self, ts: float, boxes: np.ndarray, since: np.ndarray, scores: np.ndarray,
                  names: list[str], relabel: bool = True) -> None:
        """Continue the spots that still bikes stand on, start new ones, forget stale ones. A
        detection (``relabel``) names the spot; a bike-sized object only keeps it alive."""
        old = np.array([s.box for s in self._spots], np.float64).reshape(-1, 4)
        pairs = greedy_match(box_iou(old, np.asarray(boxes, np.float64).reshape(-1, 4)), self.params.same_place_iou)
        matched = {column: row for row, column in pairs}
        for i in range(len(boxes)):
            box, rested, score = np.array(boxes[i], np.float32), float(since[i]), float(scores[i])
            if i in matched:
                spot = self._spots[matched[i]]
                spot.box, spot.last_seen, spot.since = box, ts, min(spot.since, rested)
                if relabel or spot.label == FALLBACK_LABEL:
                    spot.label, spot.score = names[i], score
            else:
                self._spots.append(_Spot(box, rested, ts, names[i], score))
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


def _grouped(blobs: tuple[StaticBlob, ...]) -> list[tuple[np.ndarray, float]]:
    """Static blobs joined where they lie within GROUP_GAP of the taller one's height of each
    other (a bike's wheels and frame): (box, latest rest time) per group. A group is as old as its
    youngest part, so a bike is not dated back to a piece of old litter beside it."""
    groups = [(b.xyxy.astype(np.float64), b.static_since) for b in blobs]
    merged = True
    while merged and len(groups) > 1:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                a, b = groups[i][0], groups[j][0]
                gap = GROUP_GAP * max(a[3] - a[1], b[3] - b[1])
                if a[0] - gap <= b[2] and b[0] - gap <= a[2] and a[1] - gap <= b[3] and b[1] - gap <= a[3]:
                    box = np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
                    groups[i] = (box, max(groups[i][1], groups[j][1]))
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    return groups
