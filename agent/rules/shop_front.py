"""Business outside the shop (店外经营): goods, tables and stands put out on the pavement in front
of a shop, covering a share of it for minutes.

The zone is drawn on the pavement outside one shop's door line, and the ticket names the shop
(``shop_name``, ``shop_id`` in its facts) so the platform can message the owner. What counts as
goods is what stays still: the scene model's static blobs (anything new that stopped changing,
whatever its class: crates, racks, a rolled-out stand) and detections of goods classes whose
tracks have been stationary for ``min_still_s`` (the detector knows chairs, tables and potted
plants; the tracker says they stay). Goods count where they **stand**: their box's bottom
centre, where they meet the ground, lies in the zone; and then with their whole picture, since
goods set out against the door line rise above the zone's far edge (on the harder set a rack 62
px tall had 8 px inside the zone, and three goods standing there covered 0.03 of it). The
**occupancy** is the union of their boxes over the zone's area (at most 1), rasterised on a grid
of 4-pixel cells, with people and vehicles cut out: the box of anyone standing there now, and
every cell that movers covered for most of the last ``mover_memory_s``
(:class:`agent.rules.litter.RecentMovers`: a chatting shopkeeper whom the detector misses now
and then is still not goods).

A ticket opens once the occupancy has been at least ``min_fraction`` for ``min_dwell_s`` and
clears once it has been below for ``clear_after_s``. Dips shorter than ``clear_after_s`` (a
pedestrian or a van passing in front of the goods) neither clear a ticket nor restart the dwell,
and a dwell that ends during one opens the ticket with the goods last seen. On the composite of
``scenarios/shop_front_goods.toml`` people walking past the goods cut them out for a frame or two
at a time (the share fell from 0.26 to 0.05-0.14), and the detector took the pasted rack for a
dog in a few frames, which cuts it out too: both are such dips. Opening only in a frame at or
above ``min_fraction`` made the ticket 2 s late there; as it is, it opens ``min_dwell_s`` after
the goods came to rest (10.5 s after they appeared, with ``min_dwell_s = 10``). No updates are
sent while a ticket is open: the share wobbles with every passer-by, and the shop, not its share,
is the case.

**The dwell is dated back** to when the goods now in the zone came to rest: the scene model
reports a blob after its own ``min_static_s`` and the tracker calls a track stationary after its
``stationary_after_s``, and counting from those reports would add them to every ticket. When the
occupancy first reaches ``min_fraction``, the rule takes the goods in the order they came to rest
and dates the occupancy from the moment enough of them to cover ``min_fraction`` were there; never from
before the zone came under watch, so goods put out before opening hours count from the start of
the zone's ``schedule`` (outside it the pipeline resets the rule and does not feed it).

Limits: boxes overstate a thin object's footprint (a parasol's box covers the pavement under its
canopy, a rack's the gaps between its shelves), so ``min_fraction`` is a share of boxes, not of
goods; goods whose foot is hidden (behind a parked car) stand where their box ends; goods as
flat and grey as the pavement, or in the shade of an awning, are not seen by the scene model;
anything new and still in the zone counts, a parked delivery cart included (bicycles, motorcycles
and cars are detected and cut out). Goods seen only by the detector count only while it keeps
finding them. A crowd that stands in front of the goods for longer than ``clear_after_s`` clears
the ticket; when it leaves, the same goods open it again at once (their dwell is dated back), which
the ticket book sends as ``reopened``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from agent.rules import Category, Need, RuleOutput, register
from agent.rules.litter import BLOB_CONFIDENCE, RecentMovers, box_mask
from agent.typedtoml import setting
from agent.types import MOVER_CLASSES, EventKind, Observation, RuleEvent, bottom_centres
from agent.zones import Zone

GOODS_CLASSES = ("backpack", "bench", "bottle", "chair", "cup", "dining table", "handbag", "potted plant", "suitcase",
                 "umbrella", "vase")
CELL = 4  # frame pixels per cell of the occupancy raster: a 768x576 picture is 192x144 cells


@dataclass(frozen=True)
class Params:
    shop_name: str = setting(help="The shop's name, as the platform knows it; goes into the ticket's facts")
    shop_id: str = setting(help="The shop's id on the platform (e.g. its licence number); goes into the facts")
    min_fraction: float = setting(
        0.05, gt=0, le=1,
        help="How much of the zone's picture the goods standing in it must cover (the union of "
             "their whole boxes, over the zone's area) for a ticket. Goods a shop sets out are "
             "small against the pavement in front of it: a rack and two cartons, about 1 m2 on "
             "a 3 x 6 m strip, are 0.05-0.1 of it, a cup or a bag of litter far less; three goods "
             "on the harder set's pavement covered 0.13-0.31 of their zones")
    min_dwell_s: float = setting(
        10.0, ge=0,
        help="Seconds the share must stay at least min_fraction, counted from when the goods came "
             "to rest. Short, so a ticket opens while the goods are out; raise it to minutes where "
             "deliveries stand on the pavement for a while")
    clear_after_s: float = setting(
        15.0, gt=0, help="Seconds below min_fraction before an open ticket clears; shorter dips are ignored")
    goods_classes: tuple[str, ...] = setting(
        GOODS_CLASSES, help="Detector classes that are goods when their track is stationary")
    min_still_s: float = setting(
        5.0, ge=0, help="Seconds a goods-class track must have been stationary to count")
    mover_classes: tuple[str, ...] = setting(
        MOVER_CLASSES, help="Detector classes that are never goods: their boxes are cut out of the occupancy")
    mover_memory_s: float = setting(
        5.0, gt=0, help="Cells these classes covered for most of this many seconds are cut out too")

    def __post_init__(self):
        for key in ("shop_name", "shop_id"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key}: must not be empty")
        both = sorted(set(self.goods_classes) & set(self.mover_classes))
        if both:
            raise ValueError(f"goods_classes: {both} are mover_classes too")


@dataclass(frozen=True)
class Occupancy:
    """The goods in the zone in one frame."""

    fraction: float  # the goods' picture over the zone's, movers cut out, at most 1
    boxes: np.ndarray  # (N, 4) the goods standing in the zone
    rested_since: np.ndarray  # (N,) when each came to rest
    blocked: np.ndarray  # (h, w) bool cells of the picture that movers cover


# The platform's case class for business outside the shop. The code is this project's default,
# not an official one: the operator must check it against the city's own class table and override
# it per zone or per rule type (category = {...}) where it differs.
@register("out_of_shop", Params, Category("街面秩序", "店外经营", "05-04"),
          needs=frozenset({Need.STATIC_BLOBS, Need.TRACKS}))
class ShopFrontRule:
    name: ClassVar[str]  # set by register

    def __init__(self, zone: Zone, params: Params):
        self.zone, self.params = zone, params
        self._movers = RecentMovers(params.mover_classes, params.mover_memory_s)
        self._goods_classes = frozenset(params.goods_classes)
        self._zone_cells: np.ndarray | None = None  # bool (h, w): the zone on the grid of cells
        self._zone_shape: tuple[int, ...] | None = None  # of the picture it was made for
        self.reset()

    def reset(self) -> None:
        self._movers.reset()
        self._watching_since: float | None = None  # first frame fed since the last reset
        self._occupied_since: float | None = None  # the dated-back start of the current occupancy
        self._below_since: float | None = None  # start of the current dip below min_fraction
        self._open = False
        self._last_seen = 0.0
        self._last_boxes = np.zeros((0, 4), np.float32)  # the last goods seen, which events report
        self._last_fraction = 0.0  # their share of the zone

    def _zone_mask(self, image_shape: tuple[int, ...]) -> np.ndarray:
        """The zone on the grid of CELL-pixel cells: the cells whose centre lies in the polygon."""
        if self._zone_cells is None or self._zone_shape != image_shape[:2]:
            picture = np.zeros(image_shape[:2], np.uint8)
            cv2.fillPoly(picture, [np.round(self.zone.polygon).astype(np.int32)], 1)
            self._zone_cells = picture[CELL // 2::CELL, CELL // 2::CELL].astype(bool)
            self._zone_shape = image_shape[:2]
        return self._zone_cells

    def _occupancy(self, obs: Observation) -> Occupancy:
        zone = self._zone_mask(obs.image.shape)
        boxes = [b.xyxy for b in obs.static_blobs]
        rested = [b.static_since for b in obs.static_blobs]
        if obs.tracks is not None and len(obs.tracks):
            goods = obs.tracks[obs.tracks.as_detections().of_classes(self._goods_classes)
                               & ~np.isnan(obs.tracks.stationary_since)
                               & (obs.tracks.stationary_for(obs.ts) >= self.params.min_still_s)]
            boxes += list(goods.xyxy)
            rested += list(goods.stationary_since)
        blocked = box_mask(self._movers.boxes(obs.detections), zone.shape, CELL)
        recent = self._movers.covered()
        if recent is not None:  # RecentMovers' cells are whole multiples of ours
            scale = RecentMovers.CELL // CELL
            blocked |= np.repeat(np.repeat(recent, scale, axis=0), scale, axis=1)[:zone.shape[0], :zone.shape[1]]
        standing = self.zone.contains(bottom_centres(np.array(boxes, np.float32)))
        counted = [i for i, box in enumerate(boxes)
                   if standing[i] and (box_mask(box, zone.shape, CELL) & ~blocked).any()]
        kept = np.array([boxes[i] for i in counted], np.float32).reshape(-1, 4)
        covered = box_mask(kept, zone.shape, CELL) & ~blocked
        return Occupancy(min(1.0, covered.sum() / max(1, zone.sum())), kept,
                         np.array([rested[i] for i in counted], np.float64), blocked)

    def _rested_enough_since(self, occupancy: Occupancy, zone: np.ndarray) -> float:
        """When the goods now there, taken in the order they came to rest, first covered
        ``min_fraction`` of the zone (movers cut out as they are now). Called only while they
        cover it, so at the latest the last of them does."""
        covered = np.zeros_like(zone)
        for i in np.argsort(occupancy.rested_since, kind="stable"):
            covered |= box_mask(occupancy.boxes[i], zone.shape, CELL)
            if min(1.0, (covered & ~occupancy.blocked).sum() / max(1, zone.sum())) >= self.params.min_fraction:
                break
        return float(occupancy.rested_since[i])

    def present(self, obs: Observation) -> np.ndarray | None:
        occupancy = self._occupancy(obs)
        return occupancy.boxes if occupancy.fraction >= self.params.min_fraction else None

    def dwell(self) -> float | None:
        """Seconds the current candidate has held towards ``min_dwell_s`` (None: no candidate)."""
        return None if self._occupied_since is None else self._last_seen - self._occupied_since

    def update(self, obs: Observation) -> RuleOutput:
        p, ts = self.params, obs.ts
        if self._watching_since is None:
            self._watching_since = ts
        self._movers.update(ts, obs.image.shape, obs.detections)
        occupancy = self._occupancy(obs)

        if occupancy.fraction >= p.min_fraction:
            self._below_since = None
            self._last_seen, self._last_boxes, self._last_fraction = ts, occupancy.boxes, occupancy.fraction
            if self._occupied_since is None:
                since = self._rested_enough_since(occupancy, self._zone_mask(obs.image.shape))
                self._occupied_since = max(since, self._watching_since)
        elif self._occupied_since is None:
            return RuleOutput()
        else:  # a dip: someone in front of the goods, or the goods taken in
            if self._below_since is None:
                self._below_since = ts
            if ts - self._below_since >= p.clear_after_s:
                events = [self._event(EventKind.CLEARED, ts, occupancy.fraction)] if self._open else []
                self._open = False
                self._occupied_since = self._below_since = None
                return RuleOutput(events)

        if not self._open and ts - self._occupied_since >= p.min_dwell_s:
            self._open = True
            return RuleOutput([self._event(EventKind.OPENED, ts, self._last_fraction)])
        return RuleOutput()

    def _event(self, kind: EventKind, ts: float, fraction: float) -> RuleEvent:
        """An event about the last goods seen; an opening reports their share of the zone then, a
        clear the share now."""
        p = self.params
        assert self._occupied_since is not None  # events are made only while the zone is occupied
        return RuleEvent(kind=kind, rule=self.name, zone=self.zone.id, ts=ts, first_seen=self._occupied_since,
                         last_seen=self._last_seen, label="goods", confidence=BLOB_CONFIDENCE,
                         boxes=self._last_boxes.copy(),
                         facts={"shop_name": p.shop_name, "shop_id": p.shop_id,
                                "fraction": round(float(fraction), 3)})
