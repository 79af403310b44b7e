"""One camera's analysis: frame -> detections -> rules -> tickets."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.detect import Detector
from agent.health import CameraHealth
from agent.logs import log_event
from agent.rules import build_rule
from agent.tickets import TicketBook
from agent.config import CameraConfig
from agent.types import Frame

log = logging.getLogger("agent.pipeline")


class CameraPipeline:
    def __init__(self, camera: CameraConfig, detector: Detector, tickets: TicketBook, health: CameraHealth,
                 on_ticket: Callable[[dict], None] | None = None):
        self.camera, self.detector, self.tickets, self.health = camera, detector, tickets, health
        self.on_ticket = on_ticket
        self.rules = [(zc.zone, build_rule(zc.rule_type, zc.zone, zc.params)) for zc in camera.zones]

    def on_frame(self, frame: Frame) -> None:
        try:
            detections = self.detector.detect(frame.image)
            for zone, rule in self.rules:
                for event in rule.update(frame.ts, detections):
                    doc = self.tickets.handle(event, frame, zone)
                    if doc is not None and self.on_ticket is not None:
                        self.on_ticket(doc)
        except Exception as exc:
            # One bad frame or a bug in one rule must not stop the camera: count it, say it, go on.
            self.health.analysis_failed(f"{type(exc).__name__}: {exc}")
            log.exception("analysis_failed", extra={"fields": {"camera": self.camera.id}})
            return
        self.health.frame_analysed()
