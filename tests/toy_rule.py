"""A sixth scenario from outside the agent's tree, as a plug-in author writes one: one analyser and
one rule in one module that edge.toml's ``plugins = ["tests.toy_rule"]`` imports at start.

The analyser, ``zone_luma``, measures how bright each zone it serves is (a stand-in for a water
mask or a bin's fill level); the rule, ``toy_bright_zone``, opens a ticket once its zone has stayed
at ``min_luma`` or brighter for ``min_dwell_s``. Its output uses every part of a RuleOutput: the
event, a picture of the zone's brightness, telemetry every frame and a local alarm.

Only tests/test_sixth_rule.py's subprocesses import it: registered in the pytest process, the toy
would join rule_types() for every later test.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.analysers import register_analyser
from agent.rules import Category, RuleOutput, register
from agent.typedtoml import setting
from agent.types import Alarm, Detections, EventKind, Frame, Observation, RuleEvent
from agent.zones import Zone

LUMA = "zone_luma"


@register_analyser(LUMA)
class ZoneLuma:
    """Per zone id, the mean grey level (0-255) of the zone's pixels."""

    def __init__(self, camera, zones: list[Zone]):
        self.zones = zones
        self._masks: dict[str, np.ndarray] = {}  # per zone, made at the first frame's size

    def update(self, frame: Frame, detections: Detections) -> dict[str, float]:
        grey = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
        height, width = grey.shape
        means = {}
        for zone in self.zones:
            mask = self._masks.get(zone.id)
            if mask is None or mask.shape != grey.shape:
                mask = self._masks[zone.id] = zone.mask(width, height).astype(bool)
            means[zone.id] = float(grey[mask].mean())
        return means


@dataclass(frozen=True)
class Params:
    min_luma: float = setting(100.0, ge=0, le=255, help="Mean grey level of the zone that counts as bright")
    min_dwell_s: float = setting(2.0, ge=0, help="Seconds the zone must stay bright before a ticket opens")
    alarm_topic: str = setting("site/toy/alarm", help="Where the opening rings the local alarm")


@register("toy_bright_zone", Params, Category("市容环境", "其他", "01-99"), needs=frozenset({LUMA}))
class BrightZoneRule:
    def __init__(self, zone: Zone, params: Params):
        self.zone, self.params = zone, params
        self.reset()

    def reset(self) -> None:
        self._bright_since: float | None = None
        self._last_ts: float | None = None
        self._open = False

    def _box(self) -> np.ndarray:
        x, y, w, h = self.zone.bounds()
        return np.array([[x, y, x + w, y + h]], np.float32)

    def present(self, obs: Observation) -> np.ndarray | None:
        return self._box() if obs.inputs[LUMA][self.zone.id] >= self.params.min_luma else None

    def dwell(self) -> float | None:
        return None if self._bright_since is None else self._last_ts - self._bright_since

    def update(self, obs: Observation) -> RuleOutput:
        luma = obs.inputs[LUMA][self.zone.id]
        telemetry = {"luma": round(luma, 1)}
        self._last_ts = obs.ts
        if luma < self.params.min_luma:
            self._bright_since = None
            return RuleOutput(telemetry=telemetry)
        if self._bright_since is None:
            self._bright_since = obs.ts
        if self._open or obs.ts - self._bright_since < self.params.min_dwell_s:
            return RuleOutput(telemetry=telemetry)
        self._open = True
        event = RuleEvent(EventKind.OPENED, self.name, self.zone.id, obs.ts, self._bright_since, obs.ts,
                          "bright_zone", 1.0, self._box(), {"luma": round(luma, 1)})
        grey = cv2.cvtColor(cv2.cvtColor(obs.image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        return RuleOutput([event], pictures={"luma": grey}, telemetry=telemetry,
                          alarms=[Alarm(event, self.params.alarm_topic)])
