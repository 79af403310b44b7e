"""One camera's analysis: frame -> detections (-> analysers: tracks, static blobs, ...) -> zone rules -> tickets."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from agent.analysers import Analyser, analyser_types
from agent.change_gate import ChangeGate
from agent.config import CameraConfig, ZoneConfig
from agent.detect import Detector
from agent.faults import ViewGuard, saved_reference
from agent.health import CameraHealth
from agent.logs import log_event
from agent.privacy import PeopleTrail
from agent.rules import Need, Rule, build_rule, rule_types
from agent.tickets import TicketBook
from agent.tiling import Tiler
from agent.types import Detections, EventKind, Frame, Observation, RuleEvent, RuleOutput
from agent.zone_account import ZoneAccount

log = logging.getLogger("agent.pipeline")


@dataclass
class ZoneRule:
    config: ZoneConfig  # its zone scaled to the stream's picture
    rule: Rule
    inactive: str | None = None  # why the zone is not watched now: a camera fault, outside_schedule, muted
    telemetry_at: float = float("-inf")
    outside: bool = False  # the zone covers no pixel of the stream's picture: refused, never watched


class CameraPipeline:
    def __init__(self, camera: CameraConfig, detector: Detector, tickets: TicketBook, health: CameraHealth,
                 reference_dir: Path, on_ticket: Callable[[dict], None] | None = None,
                 trail: PeopleTrail | None = None):
        self.camera, self.detector, self.tickets, self.health = camera, detector, tickets, health
        self.on_ticket, self.trail = on_ticket, trail
        self.view = (ViewGuard(camera.id, camera.tamper, camera.reference_image,
                               saved_reference(reference_dir, camera.id))
                     if camera.view_check else None)
        self._latest: Observation | None = None
        self._latest_lock = threading.Lock()
        # A model update swaps detector and tiler from the command thread: a frame takes both
        # from one side of the swap.
        self._detector_lock = threading.Lock()
        self._first_use: Callable[[Detector, Exception | None], None] | None = None
        types = rule_types()
        # Per zone and rule, kept across picture-size changes: what `replay` sums up at the end.
        self.accounts = {(zc.zone.id, zc.rule_type): ZoneAccount.for_rule(
            zc.zone.id, zc.rule_type, zc.params, Need.STATIC_BLOBS in types[zc.rule_type].needs)
            for zc in camera.zones}
        # Told each analysed frame once the rules have seen it (replay's --annotate and progress).
        self.on_analysed: Callable[[Observation], None] | None = None
        self._build(None)

    def _build(self, size: tuple[int, int] | None) -> None:
        """Everything that depends on where the zones are, for a picture ``size`` (width, height)
        of the stream; None before the first frame (polygons as drawn). The one place where the
        camera file's polygons become pixels of the real picture: rules, the scene model's
        region, the zone crops and the ticket pictures all take the zones from here. A new size
        (a camera switched to its sub-stream) starts the rules afresh: their state is in the old
        picture's pixels."""
        self.size = size
        drawn = self.camera.frame_size
        configs = scaled_zones(self.camera, size)
        self.zone_rules = [ZoneRule(zc, build_rule(zc.rule_type, zc.zone, zc.params),
                                    outside=size is not None and not zc.zone.covers_any(*size)) for zc in configs]
        refused = [zr.config.zone.id for zr in self.zone_rules if zr.outside]
        for zone_id in refused:
            assert size is not None  # only a real picture's size refuses a zone
            polygon = next(zc.zone.polygon for zc in self.camera.zones if zc.zone.id == zone_id)
            (x0, y0), (x1, y1) = polygon.min(axis=0), polygon.max(axis=0)
            log_event(log, "zone_outside_picture", level=logging.ERROR, camera=self.camera.id, zone=zone_id,
                      polygon_extent=f"{x0:g},{y0:g}-{x1:g},{y1:g}",
                      drawn_on=f"{drawn[0]}x{drawn[1]}" if drawn else "no_frame_size",
                      picture=f"{size[0]}x{size[1]}", action="refused: the zone is not watched")
        if size is not None:
            self.health.zones_outside(refused)
        watched = [zr.config for zr in self.zone_rules if not zr.outside]
        self.analysers = camera_analysers(self.camera, watched)
        with self._detector_lock:
            self.tiler = camera_tiler(self.camera, self.detector, watched)
        self.gate = (ChangeGate(self.camera.change_gate, [zc.zone for zc in watched], size)
                     if size is not None and watched and self.camera.change_gate.enabled else None)
        self._detections = Detections.empty()
        self.tickets.use_zones([zc.zone for zc in configs])

    @property
    def latest(self) -> Observation | None:
        """The last analysed observation: what ``verify`` and ``snapshot`` look at."""
        with self._latest_lock:
            return self._latest

    def rule_for(self, zone_id: str, rule_type: str) -> Rule | None:
        for zr in self.zone_rules:
            if zr.config.zone.id == zone_id and zr.config.rule_type == rule_type:
                return zr.rule
        return None

    def use_detector(self, detector: Detector,
                     first_use: Callable[[Detector, Exception | None], None] | None = None) -> None:
        """Analyse the next frames with ``detector`` (a model update): rules, tracks and the scene
        model go on; only the detection step, whose crops depend on the model's input size, is new.
        ``first_use`` is told how the detector did on the next frame (None: it worked)."""
        watched = [zr.config for zr in self.zone_rules if not zr.outside]
        tiler = camera_tiler(self.camera, detector, watched)
        with self._detector_lock:
            self.detector, self.tiler, self._first_use = detector, tiler, first_use
        if self.gate is not None:
            self.gate.rescan()  # or an unchanged scene would keep the old model's detections

    def _detect(self, frame: Frame) -> Detections:
        with self._detector_lock:
            detector, tiler, first_use = self.detector, self.tiler, self._first_use
            self._first_use = None
        try:
            detections = tiler.detect(detector, frame.image, frame.ts)
        except Exception as exc:
            if first_use is not None:
                first_use(detector, exc)
            raise
        if first_use is not None:
            first_use(detector, None)
        return detections

    def observe(self, frame: Frame) -> Observation:
        if self.gate is None or self.gate.needs_detection(frame.ts, frame.image):
            # Timed on the performance counter, not the agent's clock: a replay's manual clock
            # stands still while the detector runs.
            started = time.perf_counter()
            detections = self._detections = self._detect(frame)
            self.health.inference_took(time.perf_counter() - started)
        else:
            detections = self._detections  # nothing changed in the zones: what was there still is
            self.health.detection_skipped()
        inputs = {name: analyser.update(frame, detections) for name, analyser in self.analysers.items()}
        # Read-only: every rule of the camera reads the same inputs.
        return Observation(frame.camera, frame.ts, frame.image, detections, MappingProxyType(inputs))

    def on_frame(self, frame: Frame) -> None:
        try:
            height, width = frame.image.shape[:2]
            if (width, height) != self.size:
                self._build((width, height))
            obs = self.observe(frame)
            with self._latest_lock:
                self._latest = obs
            if self.trail is not None:
                self.trail.add(obs.ts, obs.detections)
            if self.view is not None:
                self._guard_view(obs)
            for zr in self.zone_rules:
                self._feed(zr, obs)
            if self.on_analysed is not None:
                self.on_analysed(obs)
        except Exception as exc:
            # One bad frame or a bug in one rule must not stop the camera: count it, say it, go on.
            self.health.analysis_failed(f"{type(exc).__name__}: {exc}")
            log.exception("analysis_failed", extra={"fields": {"camera": self.camera.id}})
            return
        self.health.frame_analysed(time.monotonic())

    @property
    def suspended(self) -> str | None:
        """Why the camera's zones are not watched at all (the view moved or was covered)."""
        return self.view.suspended if self.view is not None else None

    def _guard_view(self, obs: Observation) -> None:
        assert self.view is not None  # on_frame guards only cameras with a view check
        for event in self.view.update(obs.ts, obs.image):
            self.ticket(event, obs.image, obs.detections)

    def ticket(self, event: RuleEvent, image: np.ndarray, detections: Detections,
               pictures: dict | None = None) -> dict | None:
        """Hand an event (a rule's or a camera fault's) to the ticket book and the ticket hook."""
        doc = self.tickets.on_rule_event(event, image, detections, pictures)
        if doc is not None and self.on_ticket is not None:
            self.on_ticket(doc)
        return doc

    def _feed(self, zr: ZoneRule, obs: Observation) -> None:
        zone_id, schedule = zr.config.zone.id, zr.config.schedule
        if zr.outside:
            inactive = "outside_picture"
        elif self.suspended is not None:
            inactive = self.suspended  # its tickets would be about the wrong pixels
        elif schedule is not None and not schedule.active(obs.ts):
            inactive = "outside_schedule"
        elif self.tickets.muted_until(zone_id, zr.config.rule_type, obs.ts) is not None:
            inactive = "muted"
        else:
            inactive = None
        if inactive != zr.inactive:
            log_event(log, "zone_active" if inactive is None else "zone_inactive", camera=self.camera.id,
                      zone=zone_id, reason=inactive or zr.inactive)
            zr.inactive = inactive
            if inactive is not None:
                # Dwell must not carry over from yesterday's business hours or from before a mute:
                # the rule starts afresh when the zone is watched again.
                zr.rule.reset()
        account = self.accounts[(zone_id, zr.config.rule_type)]
        if inactive is not None:
            account.record(zr.config.zone, obs, inactive)
            return
        output = zr.rule.update(obs)
        account.record(zr.config.zone, obs, None, zr.rule, output.events)
        self._deliver(zr, obs, output)

    def _deliver(self, zr: ZoneRule, obs: Observation, output: RuleOutput) -> None:
        """A rule's output for one frame: tickets with the rule's pictures, the local alarms of
        those that open, and now and then its telemetry."""
        for event in output.events:
            pictures = dict(output.pictures) if event.kind is not EventKind.CLEARED else None
            doc = self.ticket(event, obs.image, obs.detections, pictures)
            topic = output.alarm_topic(event)
            if doc is not None and doc["event"] in ("opened", "reopened") and topic is not None:
                self.tickets.send_alarm(doc, event.ts, topic)
        interval = self.camera.telemetry_interval_s
        if output.telemetry is not None and obs.ts - zr.telemetry_at >= interval:
            zr.telemetry_at = obs.ts
            if output.telemetry:
                self.tickets.send_telemetry(zr.config.zone.id, zr.config.rule_type, obs.ts, dict(output.telemetry),
                                            expiry_s=int(3 * interval))


def scaled_zones(camera: CameraConfig, size: tuple[int, int] | None) -> list[ZoneConfig]:
    """The camera's zones in pixels of a picture ``size`` (width, height) of its stream: the
    polygons are drawn on ``frame_size``; without it, or before the first frame (None), as drawn."""
    drawn = camera.frame_size
    if size is None or drawn is None or tuple(size) == tuple(drawn):
        return list(camera.zones)
    sx, sy = size[0] / drawn[0], size[1] / drawn[1]
    return [dataclasses.replace(zc, zone=zc.zone.scaled(sx, sy)) for zc in camera.zones]


def camera_tiler(camera: CameraConfig, detector: Detector, zones: list[ZoneConfig]) -> Tiler:
    """The camera's detection step: the full frame, plus crops around those of ``zones`` (scaled
    to the picture) whose rules look for small objects, and grid tiles when configured."""
    types = rule_types()
    crop_zones = [zc.zone for zc in zones if Need.SMALL_OBJECTS in types[zc.rule_type].needs]
    return Tiler(camera.tiling, camera.zone_crops, crop_zones, detector.manifest.input_size)


def camera_analysers(camera: CameraConfig, zones: list[ZoneConfig]) -> dict[str, Analyser]:
    """By name, the analysers some rule of ``zones`` (scaled to the picture) needs, each built
    from the camera and the zones whose rules need it. Config loading has checked that every need
    is an analyser or SMALL_OBJECTS (the detection step's)."""
    types, analysers = rule_types(), analyser_types()
    users: dict[str, list] = {}
    for zc in zones:
        for need in types[zc.rule_type].needs:
            if need in analysers:
                users.setdefault(need, []).append(zc.zone)
    return {name: analysers[name].build(camera, need_zones) for name, need_zones in users.items()}
