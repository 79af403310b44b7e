"""Exposed litter (暴露垃圾): a new object that stays on the ground in a no-litter zone.

The detector knows no "litter" class, so the rule works on the scene model's class-agnostic
static blobs (``agent/scene.py``): anything that was not there before and has stopped changing.
A blob is litter here when its bottom centre (where it meets the ground) lies in the zone, its
area is within bounds, and it is not a person or a vehicle.

**Dwell counts from the blob's ``static_since``**, not from the frame in which the rule first saw
the blob: the scene model reports a blob only after its pixels have been still for its own
``min_static_s``, and counting from the report would add that to every ticket. With the blob's
own clock a ticket opens ``min_dwell_s`` after the object came to rest. Measured on the composite
of ``scenarios/litter_lawn.toml`` (``min_dwell_s = 10``, the scene's ``min_static_s = 5``): the
plastic appears at 10 s, is still from 10.5 s, is reported as a blob from 16.5 s, and the ticket
opens at 20.5 s; taken away at 35 s, the blob is gone at once and the ticket clears at 40 s
(``clear_after_s = 5``). The clock is never dated back beyond the moment the zone came under watch
(start, end of a mute, start of its schedule): dwell does not carry over from hours the zone was
not watched.

**People and vehicles are not litter.** The scene model masks their boxes, but it freezes,
rather than resets, its counters under them, so a person standing still whom the detector misses
in one frame out of ten becomes a blob after ten times ``min_static_s``, and in the frames where
the person is missed no box covers it. A blob therefore does not count while a mover's box
overlaps it, nor while movers have covered it for most of the last ``mover_memory_s`` (an
exponential average per 8-pixel cell, :class:`RecentMovers`). A pedestrian walking past costs the
litter the frames it is hidden, not its dwell; a crowd that never leaves the litter's spot hides
it.
A person the detector never sees at all is told by shape: a blob that stands, much taller than
wide (``max_upright_ratio``), is not litter lying on the ground.

**Clearing is the camera's verification:** the ticket clears when the zone has held no litter for
``clear_after_s``. While a ticket is open a blob hidden behind a person still counts as there:
someone standing beside the litter has not removed it, and removing it (picking it up) leaves
background where it lay, which the scene model sees on the first frame without it.

The object count is the one fact that changes while a ticket is open. A new count is reported
(``updated``, or ``cleared`` for 0) once it has held for ``clear_after_s``, never per frame: a blob
that splits for a frame or two, or a passer-by hiding one item, changes nothing.

Limits: what the scene model cannot separate from the ground is not found (dark litter on dark
asphalt under ``foreground_level``, litter in deep shadow, a green bottle on grass, which the
scene model takes for the grass itself); a puddle, or a shadow with a sharp edge, that stays still
for ``min_dwell_s`` looks like litter (soft-edged light, trampled grass and the ghosts of things
taken away are kept out: see the scene model's docstring). ``px_per_m2`` is one number for the
whole zone, so with strong perspective the area bounds hold only near where it was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from agent.rules import Category, Need, RuleOutput, register
from agent.typedtoml import setting
from agent.types import MOVER_CLASSES, Detections, EventKind, Observation, RuleEvent, StaticBlob, bottom_centres
from agent.zones import Zone

# A static blob has no detector score: it is reported only after it has stayed still, and that
# dwell, not a number, is its certainty. Tickets need a confidence, so they carry this.
BLOB_CONFIDENCE = 1.0
# Frame pixels: below this height a blob's shape says nothing of whether it stands (a speck of
# 3 x 8 px is the codec's and the noise's as much as the object's); the largest litter the
# harder set pastes, a 0.5 m bag or carton, is under 20 px tall, a person there 100-140 px. On the
# harder set's no-litter clips an undetected man standing 20 s on the lawn (a 43 x 135 px blob)
# opened one of the two false litter tickets.
UPRIGHT_MIN_HEIGHT_PX = 24.0


@dataclass(frozen=True)
class Params:
    min_dwell_s: float = setting(
        10.0, ge=0,
        help="Seconds an object must have lain still before a ticket opens, counted from when it "
             "came to rest (the scene model's own min_static_s is included, not added). Short, "
             "because a ticket is evidence for a person to look at, not a fine; raise it where "
             "people set things down for a while (market streets, bus stops)")
    clear_after_s: float = setting(
        10.0, gt=0,
        help="Seconds without litter in the zone before an open ticket clears (the camera-side "
             "verification); also how long a new object count must hold before it is reported")
    min_area_px: float = setting(
        16.0, ge=0,
        help="Smallest object, in frame pixels of its static part: a palm-sized scrap of paper 10 m "
             "below a pole camera is 8-20 px across at 768x576, and of a 12 px one only 20-30 "
             "pixels stand out from the ground once its soft edge and the codec have blurred it")
    max_area_px: float = setting(
        50000.0, gt=0, help="Largest object, in frame pixels: larger blobs are light changes or parked things")
    px_per_m2: float | None = setting(
        None, gt=0,
        help="Frame pixels per square metre of ground in this zone (measure a known object); lets "
             "min_area_m2 and max_area_m2 give the bounds instead of min_area_px and max_area_px")
    min_area_m2: float | None = setting(None, ge=0, help="Smallest object in m2; needs px_per_m2")
    max_area_m2: float | None = setting(None, gt=0, help="Largest object in m2; needs px_per_m2")
    max_upright_ratio: float = setting(
        2.5, ge=0,
        help="A blob more than this many times as tall as it is wide, and at least 24 frame pixels "
             "tall, stands rather than lies: a person the detector missed, a bin, a post. Things "
             "lying on the ground are foreshortened by a camera looking down, not stretched "
             "(a full bag, a carton: 0.4-1.2); a man standing still is 3-3.5. 0 turns the test off")
    mover_classes: tuple[str, ...] = setting(
        MOVER_CLASSES, help="Detector classes that are never litter; blobs under their boxes are ignored")
    mover_memory_s: float = setting(
        5.0, gt=0,
        help="A blob that these classes covered for most of this many seconds is ignored: a person "
             "standing still whom the detector misses now and then is not litter")

    def __post_init__(self):
        if (self.min_area_m2 is not None or self.max_area_m2 is not None) and self.px_per_m2 is None:
            raise ValueError("min_area_m2, max_area_m2: need px_per_m2")
        low, high = self.area_range_px
        if low >= high:
            raise ValueError(f"the smallest area ({low:g} px) must be below the largest ({high:g} px)")

    @property
    def area_range_px(self) -> tuple[float, float]:
        """(smallest, largest) object area in frame pixels, from m2 where given."""
        px_per_m2 = self.px_per_m2 or 0.0  # set whenever an m2 area is (__post_init__)
        low = self.min_area_px if self.min_area_m2 is None else self.min_area_m2 * px_per_m2
        high = self.max_area_px if self.max_area_m2 is None else self.max_area_m2 * px_per_m2
        return low, high


def box_mask(boxes: np.ndarray, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Boolean (h, w) raster of cells of ``cell`` frame pixels: True where the cell's centre lies
    in any of the (N, 4) xyxy ``boxes``. Centres, not touching: a box covers as many cells as its
    area says, whatever its offset, so shares of a zone come out unbiased."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.rint(np.asarray(boxes, np.float64).reshape(-1, 4) / cell).astype(int).clip(0):
        mask[y0:y1, x0:x1] = True
    return mask


class RecentMovers:
    """Where people and vehicles have been lately: per cell of ``CELL`` frame pixels, an
    exponential average (time constant ``memory_s``, driven by ``ts``) of "a mover's box covers
    it". A cell under someone standing still reads near 1 even in a frame where the detector
    missed them; one a pedestrian crossed reads about 0.1 per frame they covered it, fading.
    State: one small float image per camera picture size."""

    CELL = 8  # frame pixels; a blob is at least 20x20, a person far more

    def __init__(self, classes: tuple[str, ...], memory_s: float):
        self.classes, self.memory_s = frozenset(classes), memory_s
        self.reset()

    def reset(self) -> None:
        self._share: np.ndarray | None = None  # float32 (h, w) in 0..1
        self._last_ts = 0.0

    def boxes(self, detections: Detections) -> np.ndarray:
        """(N, 4) boxes of the movers among ``detections``."""
        return detections[detections.of_classes(self.classes)].xyxy

    def update(self, ts: float, image_shape: tuple[int, ...], detections: Detections) -> None:
        shape = (-(-image_shape[0] // self.CELL), -(-image_shape[1] // self.CELL))
        covered = box_mask(self.boxes(detections), shape, self.CELL).astype(np.float32)
        if self._share is None or self._share.shape != shape:
            self._share, self._last_ts = np.zeros(shape, np.float32), ts
        rate = 1.0 - np.exp(-max(0.0, ts - self._last_ts) / self.memory_s)
        cv2.accumulateWeighted(covered, self._share, rate)
        self._last_ts = ts

    def covered(self) -> np.ndarray | None:
        """Per cell, whether movers covered it for most of the last ``memory_s``; None before any
        frame."""
        return None if self._share is None else self._share >= 0.5

    def hides(self, xyxy: np.ndarray, movers_now: np.ndarray) -> bool:
        """Whether a blob box belongs to a mover: a mover's box overlaps it now, or movers
        covered it for most of the recent past (the mean over its cells)."""
        x0, y0, x1, y1 = xyxy
        if any(mx0 < x1 and x0 < mx1 and my0 < y1 and y0 < my1 for mx0, my0, mx1, my1 in movers_now):
            return True
        if self._share is None:
            return False
        cells = self._share[int(y0) // self.CELL:int(np.ceil(y1 / self.CELL)),
                            int(x0) // self.CELL:int(np.ceil(x1 / self.CELL))]
        return cells.size > 0 and float(cells.mean()) >= 0.5


# The platform's case class for exposed litter. The code is this project's default, not an
# official one: the operator must check it against the city's own class table and override it
# per zone or per rule type (category = {...}) where it differs.
@register("litter", Params, Category("市容环境", "暴露垃圾", "01-02"), needs=frozenset({Need.STATIC_BLOBS}))
class LitterRule:
    name: ClassVar[str]  # set by register

    def __init__(self, zone: Zone, params: Params):
        self.zone, self.params = zone, params
        self._movers = RecentMovers(params.mover_classes, params.mover_memory_s)
        self.reset()

    def reset(self) -> None:
        self._movers.reset()
        self._watching_since: float | None = None  # first frame fed since the last reset
        self._open = False
        self._count = 0  # the count the open ticket last reported
        self._changed_count: int | None = None  # a different count, not yet held long enough
        self._changed_since = 0.0
        self._first_seen = 0.0
        self._last_seen = 0.0
        self._last_boxes = np.zeros((0, 4), np.float32)  # the last litter seen, which a clear reports
        self._dwell: float | None = None  # the longest rest of the visible litter in the last frame

    def _on_ground(self, blobs: tuple[StaticBlob, ...]) -> list[StaticBlob]:
        """Blobs whose bottom centre is in the zone, whose area is within bounds and that lie
        rather than stand."""
        low, high = self.params.area_range_px
        sized = [b for b in blobs if low <= b.area_px <= high and not self._stands(b)]
        if not sized:
            return []
        return [b for b, inside in zip(sized, self.zone.contains(bottom_centres(_boxes(sized)))) if inside]

    def _stands(self, blob: StaticBlob) -> bool:
        x0, y0, x1, y1 = blob.xyxy
        ratio = self.params.max_upright_ratio
        return ratio > 0 and y1 - y0 >= UPRIGHT_MIN_HEIGHT_PX and y1 - y0 > ratio * (x1 - x0)

    def _visible(self, blobs: list[StaticBlob], detections: Detections) -> list[StaticBlob]:
        """The blobs that no person or vehicle hides or is."""
        movers_now = self._movers.boxes(detections)
        return [b for b in blobs if not self._movers.hides(b.xyxy, movers_now)]

    def present(self, obs: Observation) -> np.ndarray | None:
        litter = self._visible(self._on_ground(obs.static_blobs), obs.detections)
        return _boxes(litter) if litter else None

    def dwell(self) -> float | None:
        """Seconds the longest-resting visible blob has held towards ``min_dwell_s`` (None: no candidate)."""
        return self._dwell

    def update(self, obs: Observation) -> RuleOutput:
        p, ts = self.params, obs.ts
        if self._watching_since is None:
            self._watching_since = ts
        self._movers.update(ts, obs.image.shape, obs.detections)
        on_ground = self._on_ground(obs.static_blobs)
        litter = self._visible(on_ground, obs.detections)
        self._dwell = max((ts - max(b.static_since, self._watching_since) for b in litter), default=None)

        if not self._open:
            rested = [b for b in litter if ts - max(b.static_since, self._watching_since) >= p.min_dwell_s]
            if not rested:
                return RuleOutput()
            self._open, self._count, self._changed_count = True, len(litter), None
            self._first_seen = min(max(b.first_seen, self._watching_since) for b in rested)
            self._last_seen, self._last_boxes = ts, _boxes(litter)
            return RuleOutput([self._event(EventKind.OPENED, ts, self._last_boxes, self._count)])

        # Open: hidden blobs count as still there (see the module docstring).
        if on_ground:
            self._last_seen, self._last_boxes = ts, _boxes(on_ground)
        count = len(on_ground)
        if count == self._count:
            self._changed_count = None
            return RuleOutput()
        if count != self._changed_count:
            self._changed_count, self._changed_since = count, ts
        if ts - self._changed_since < p.clear_after_s:
            return RuleOutput()
        self._count, self._changed_count = count, None
        if count:
            return RuleOutput([self._event(EventKind.UPDATED, ts, self._last_boxes, count)])
        self._open = False
        return RuleOutput([self._event(EventKind.CLEARED, ts, self._last_boxes, 0)])

    def _event(self, kind: EventKind, ts: float, boxes: np.ndarray, count: int) -> RuleEvent:
        return RuleEvent(kind=kind, rule=self.name, zone=self.zone.id, ts=ts, first_seen=self._first_seen,
                         last_seen=self._last_seen, label="litter", confidence=BLOB_CONFIDENCE,
                         boxes=boxes.copy(), facts={"count": count})


def _boxes(blobs: list[StaticBlob]) -> np.ndarray:
    return np.array([b.xyxy for b in blobs], np.float32).reshape(-1, 4)
