"""People per square metre in a zone, graded into alert levels 1-3, with a heat map of where they stand.

Each analysed frame the rule counts the people whose box bottom centre (their feet) is in the zone
and divides by the zone's ground area in m²: ``area_m2`` when it is known (given, or from the
camera's ground calibration, agent/calibration.py, which fills it in), or the zone's pixel area
over ``px_per_m2`` until then (one scale for the whole zone, which is only fair
for a zone shallow in depth; a zone reaching far from the camera needs ``area_m2``).

**Levels and why they do not flap.** ``levels`` are three densities in people per m² (not
counts). The detector's count changes from frame to frame (a person hidden for a frame, a
passer-by for two), so a level is judged over a window of frames, not frame by frame:

- the zone rises to a level once, of the frames of the last ``min_dwell_s``, three quarters had a
  density at or above it (a clean rise is therefore reported after 3/4 of ``min_dwell_s``; a
  person missed in one frame of four does not hold it back, a spike of a frame or two does not
  count);
- it leaves a level once three quarters of the frames of the last ``clear_after_s`` were below
  ``hysteresis`` x the level.

A crowd hovering at a threshold thus changes level at most once per window and usually not at
all, and a level left is not re-entered until the crowd is back at the level itself. The cost is
latency, 3/4 of a window each way, and a history of densities over the longer window (a few
dozen numbers at 2 analysed frames a second).

One ticket per crowding: ``opened`` when the level first reaches 1 or more, ``updated`` on every
level change (facts ``level``, ``people``, ``density``), ``cleared`` when the level is back to 0.

**Heat map.** A coarse grid (``heat_cell_px`` frame pixels a cell) counts the feet of the people in
the zone, every cell decaying with time constant ``heat_window_s``, so it shows where people stood
over about the last ``heat_window_s``. ``heatmap(obs)`` renders it over the frame
(``cv2.applyColorMap``, JET: blue little, red much) with the zone outlined; opened and updated
crowd tickets carry it as ``heatmap`` evidence. Every output's telemetry gives the frame's count,
density and level, for periodic telemetry messages rather than tickets.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from agent.rules import Category, RuleOutput, register
from agent.typedtoml import setting
from agent.types import Detections, EventKind, Observation, RuleEvent
from agent.zones import Zone

HEAT_OPACITY = 0.6  # of the colour map where the heat is highest; cold cells show the frame
WINDOW_SHARE = 0.75  # of a window's frames that must agree before the level changes


@dataclass(frozen=True)
class Params:
    levels: tuple[float, float, float] = setting(
        (0.5, 1.0, 2.0),
        help="Densities in people per m² (not counts) at which levels 1, 2 and 3 begin; increasing")
    area_m2: float | None = setting(
        None, gt=0, help="The zone's ground area in m², from calibration; give this or px_per_m2")
    px_per_m2: float | None = setting(
        None, gt=0,
        help="Until calibrated: frame pixels per m² of ground in the zone, so area = polygon pixels / "
             "px_per_m2; give this or area_m2")
    classes: tuple[str, ...] = setting(("person",), help="Detector classes that are people")
    min_score: float = setting(0.4, ge=0, le=1, help="Detections below this confidence are not counted")
    hysteresis: float = setting(
        0.8, gt=0, le=1,
        help="A level is left only below this fraction of its density; 1 disables the hysteresis")
    min_dwell_s: float = setting(
        10.0, ge=0,
        help="Window, in seconds, three quarters of whose frames must be at or above a level before "
             "the zone rises to it (the ticket opens at level 1)")
    clear_after_s: float = setting(
        30.0, ge=0,
        help="Window, in seconds, three quarters of whose frames must be below hysteresis x a level "
             "before the zone leaves it (the ticket clears below level 1)")
    heat_window_s: float = setting(
        300.0, gt=0, help="Time constant, in seconds, over which the heat map forgets")
    heat_cell_px: int = setting(16, ge=1, help="Heat map cell size in frame pixels")

    # A calibrated camera's config fills area_m2 from the zone's polygon on the ground when the zone
    # leaves it out; the flat-ground px_per_m2 then gives way (agent/config.py).
    GROUND_AREA: ClassVar[str] = "area_m2"
    GROUND_AREA_REPLACES: ClassVar[tuple[str, ...]] = ("px_per_m2",)

    def __post_init__(self):
        if not 0 < self.levels[0] < self.levels[1] < self.levels[2]:
            raise ValueError(f"levels: need 0 < level 1 < level 2 < level 3, got {list(self.levels)}")
        if (self.area_m2 is None) == (self.px_per_m2 is None):
            raise ValueError("give exactly one of area_m2 and px_per_m2 (or calibrate the camera: its "
                             "calibration gives area_m2)")
        if not self.classes:
            raise ValueError("classes: must name at least one class")


# 04-05 and the class names follow common 城市管理 event catalogues; every city's platform has
# its own codes, so operators must check them (edge.toml [categories.crowd]).
@register("crowd", Params, Category("突发事件", "人群聚集", "04-05"))
class CrowdRule:
    name: ClassVar[str]  # set by register

    def __init__(self, zone: Zone, params: Params):
        self.zone, self.params = zone, params
        self.classes = frozenset(params.classes)
        # px_per_m2 was measured on the picture the zone was drawn on, not on the stream's.
        pixels = cv2.contourArea(zone.polygon.reshape(-1, 1, 2).astype(np.float32)) / (zone.scale[0] * zone.scale[1])
        if params.area_m2 is not None:
            self.area_m2 = params.area_m2
        else:
            assert params.px_per_m2 is not None  # Params takes one of the two
            self.area_m2 = pixels / params.px_per_m2
        self.reset()

    def reset(self) -> None:
        self._history: deque[tuple[float, float]] = deque()  # (ts, density) over the longer window
        self._watching_since: float | None = None
        self._level = 0
        self._level_since = float("-inf")  # when the zone reached its current level
        self._crowd_since: float | None = None  # first frame at level 1's density of the open ticket
        self._last_crowded: float | None = None  # last frame at or above level 1's leaving density
        self._last_boxes = np.zeros((0, 4), np.float32)
        self._heat: np.ndarray | None = None  # (rows, cols) float32, made at the first frame's size
        self._heat_ts = 0.0  # set with _heat

    def _people(self, obs: Observation) -> Detections:
        found = obs.detections
        found = found[found.of_classes(self.classes) & (found.score >= self.params.min_score)]
        return found[self.zone.contains(found.bottom_centres())]

    def present(self, obs: Observation) -> np.ndarray | None:
        """People in the zone now, if they are at least as dense as level 1 is left at."""
        people = self._people(obs)
        leave = self.params.hysteresis * self.params.levels[0]
        return people.xyxy if len(people) / self.area_m2 >= leave else None

    def dwell(self) -> float | None:
        """Seconds the zone has lately been at level 1's density, frame after frame, towards
        ``min_dwell_s`` (None: not at it in the last frame). The rule itself asks for three
        quarters of its window's frames, so it may open a little before this reaches min_dwell_s."""
        run = None
        for t, density in reversed(self._history):
            if density < self.params.levels[0]:
                break
            run = t
        return None if run is None else self._history[-1][0] - run

    def update(self, obs: Observation) -> RuleOutput:
        p, ts = self.params, obs.ts
        people = self._people(obs)
        density = len(people) / self.area_m2
        self._accumulate_heat(ts, obs.image.shape, people.bottom_centres())
        self._remember(ts, density)
        level = self._judge(ts)
        # The frame's ``ts``, ``people``, ``density`` (per m²), ``level`` and ``area_m2``.
        telemetry = {"ts": ts, "people": len(people), "density": density, "level": level, "area_m2": self.area_m2}
        if len(people) and density >= p.hysteresis * p.levels[0]:
            self._last_crowded, self._last_boxes = ts, people.xyxy.copy()

        if level == self._level:
            return RuleOutput(telemetry=telemetry)
        self._level_since = ts
        if self._level == 0:
            kind = EventKind.OPENED
            self._crowd_since = next(t for t, d in self._history
                                     if t >= ts - p.min_dwell_s and d >= p.levels[0])
        else:
            kind = EventKind.CLEARED if level == 0 else EventKind.UPDATED
        self._level = level
        assert self._crowd_since is not None  # set when the ticket opened
        event = RuleEvent(
            kind=kind,
            rule=self.name,
            zone=self.zone.id,
            ts=ts,
            first_seen=self._crowd_since,
            last_seen=self._last_crowded if self._last_crowded is not None else ts,
            label=p.classes[0],
            confidence=float(people.score.max()) if len(people) else 0.0,
            boxes=people.xyxy.copy() if kind is not EventKind.CLEARED else self._last_boxes.copy(),
            facts={"level": level, "people": len(people), "density": round(density, 3)},
        )
        # Opened and updated crowd tickets carry the heat map as evidence.
        pictures = {"heatmap": self.heatmap(obs)} if kind is not EventKind.CLEARED else {}
        return RuleOutput([event], pictures=pictures, telemetry=telemetry)

    def _remember(self, ts: float, density: float) -> None:
        if self._watching_since is None:
            self._watching_since = ts
        self._history.append((ts, density))
        longest = max(self.params.min_dwell_s, self.params.clear_after_s)
        while self._history[0][0] < ts - longest:
            self._history.popleft()

    def _judge(self, ts: float) -> int:
        """The zone's level now: risen to what the last min_dwell_s held; else lowered by what the
        last clear_after_s left, once the current level has lasted that long (frames from before
        it was reached say nothing about leaving it)."""
        p = self.params
        levels = np.array(p.levels)
        up = self._window(ts, p.min_dwell_s)
        if up is not None:
            held = (up[:, None] >= levels).mean(axis=0) >= WINDOW_SHARE
            reached = int(np.cumprod(held).sum())
            if reached > self._level:
                return reached
        if self._level and ts - self._level_since >= p.clear_after_s:
            down = self._window(ts, p.clear_after_s)
            assert down is not None  # the level was held since _level_since, watched since before
            left = (down[:, None] < p.hysteresis * levels).mean(axis=0) >= WINDOW_SHARE
            return min(self._level, int(np.argmax(left)) if left.any() else len(levels))
        return self._level

    def _window(self, ts: float, seconds: float) -> np.ndarray | None:
        """Densities of the frames of the last ``seconds``; None until watched that long."""
        assert self._watching_since is not None  # update() sets it at the first frame
        if ts - self._watching_since < seconds:
            return None
        return np.array([d for t, d in self._history if t >= ts - seconds])

    def _accumulate_heat(self, ts: float, shape: tuple, feet: np.ndarray) -> None:
        cell = self.params.heat_cell_px
        rows, cols = math.ceil(shape[0] / cell), math.ceil(shape[1] / cell)
        if self._heat is None or self._heat.shape != (rows, cols):
            self._heat, self._heat_ts = np.zeros((rows, cols), np.float32), ts
        self._heat *= math.exp(-max(ts - self._heat_ts, 0.0) / self.params.heat_window_s)
        self._heat_ts = ts
        if len(feet):
            r = np.clip((feet[:, 1] // cell).astype(int), 0, rows - 1)
            c = np.clip((feet[:, 0] // cell).astype(int), 0, cols - 1)
            np.add.at(self._heat, (r, c), 1.0)

    def heatmap(self, obs: Observation) -> np.ndarray:
        """``obs.image`` (BGR) with the heat over it, scaled to its own maximum, and the zone outlined.

        Scaled to the maximum so that a quiet hour still shows where people went; the numbers are
        in the ticket's facts. Before any person was seen it is the frame with the outline.
        """
        h, w = obs.image.shape[:2]
        picture = obs.image.copy()
        if self._heat is not None and self._heat.max() > 0:
            cell = self.params.heat_cell_px
            heat = self._heat / self._heat.max()
            # Each cell covers heat_cell_px frame pixels; the resize interpolates between cell centres.
            heat = cv2.resize(heat, (self._heat.shape[1] * cell, self._heat.shape[0] * cell),
                              interpolation=cv2.INTER_LINEAR)[:h, :w]
            colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
            alpha = (HEAT_OPACITY * heat)[..., None]
            picture = (picture * (1 - alpha) + colours * alpha + 0.5).astype(np.uint8)
        cv2.polylines(picture, [self.zone.polygon.astype(np.int32).reshape(-1, 1, 2)], True, (255, 255, 255), 2)
        return picture
