"""The calibration page's live preview of a camera, annotated with what the agent sees.

It reads the camera with the agent's own reader (:class:`agent.ingest.CameraReader`, PyAV), so
the page shows the picture the agent analyses, at the size it analyses it, and runs the
camera's own :class:`agent.pipeline.CameraPipeline` (detector, tracker, scene model, zone rules)
on the frames in the page's process and draws what it found; its rules' events go nowhere (no
ticket book): a technician trying a zone must not send tickets.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from agent.clock import SystemClock
from agent.config import CameraConfig
from agent.detect import Detector
from agent.health import CameraHealth
from agent.ingest import CameraReader
from agent.logs import log_event
from agent.pipeline import CameraPipeline
from agent.types import Observation

log = logging.getLogger("agent.preview")

# The preview stops reading the camera this long after the page last asked for a picture: a
# closed browser tab must not keep a detector busy.
IDLE_STOP_S = 20.0
ZONE_COLOUR, BOX_COLOUR, TRACK_COLOUR, BLOB_COLOUR = (0, 215, 255), (80, 220, 80), (255, 160, 40), (255, 0, 200)


def state_text(rule, obs: Observation) -> str:
    """A rule's own account of what it waits for, or, for a rule without one, whether the
    condition is visible now (its ``present``)."""
    if hasattr(rule, "state_text"):
        return rule.state_text(obs)
    boxes = rule.present(obs)
    return "nothing seen" if boxes is None else f"condition visible ({len(boxes)})"


@dataclasses.dataclass(frozen=True)
class PreviewFrame:
    jpeg: bytes
    ts: float
    states: dict[str, str]  # zone id -> the rule's state text


class Preview(threading.Thread):
    """Reads one camera and analyses it with its pipeline until stopped or left idle."""

    def __init__(self, camera: CameraConfig, detector: Detector, work_dir: Path):
        super().__init__(name=f"preview-{camera.id}", daemon=True)
        # Files loop so the preview never runs dry; the view check is the agent's business.
        self.camera = dataclasses.replace(camera, loop=camera.is_file, view_check=False)
        self.pipeline = CameraPipeline(self.camera, detector, tickets=None, health=CameraHealth(camera.id),
                                       reference_dir=work_dir)
        self.stop = threading.Event()
        self._latest: PreviewFrame | None = None
        self._lock = threading.Lock()
        self._asked = time.monotonic()
        self.error: str | None = None

    def latest(self) -> PreviewFrame | None:
        self._asked = time.monotonic()
        with self._lock:
            return self._latest

    def run(self) -> None:
        reader = CameraReader(self.camera, SystemClock(), self.pipeline.health)
        try:
            for frame in reader.frames(self.stop):
                if time.monotonic() - self._asked > IDLE_STOP_S:
                    break
                obs = self.pipeline.observe(frame)
                states = {}
                for zr in self.pipeline.zone_rules:
                    zr.rule.update(obs)  # events dropped: see the module docstring
                    states[zr.config.zone.id] = state_text(zr.rule, obs)
                ok, jpeg = cv2.imencode(".jpg", self.annotate(obs, states), [cv2.IMWRITE_JPEG_QUALITY, 80])
                with self._lock:
                    self._latest = PreviewFrame(jpeg.tobytes(), obs.ts, states)
        except Exception as exc:  # the page says why; the server goes on
            self.error = f"{type(exc).__name__}: {exc}"
            log_event(log, "preview_failed", level=logging.WARNING, camera=self.camera.id, reason=self.error)
        finally:
            self.stop.set()

    def annotate(self, obs: Observation, states: dict[str, str]) -> np.ndarray:
        """The frame with zones and their rule states, detections, tracks and static blobs."""
        image = obs.image.copy()
        if obs.static_blobs:
            overlay = image.copy()
            for blob in obs.static_blobs:
                x0, y0, x1, y1 = blob.xyxy.astype(int)
                cv2.rectangle(overlay, (x0, y0), (x1, y1), BLOB_COLOUR, -1)
            cv2.addWeighted(overlay, 0.35, image, 0.65, 0, dst=image)
        region = self.pipeline.scene.region if self.pipeline.scene is not None else None
        if region is not None:  # the part of the picture the scene model watches for new objects
            cv2.rectangle(image, region[:2], region[2:], BLOB_COLOUR, 1)
        for box, name, score in zip(obs.detections.xyxy.astype(int), obs.detections.names(), obs.detections.score):
            cv2.rectangle(image, tuple(box[:2]), tuple(box[2:]), BOX_COLOUR, 1)
            _label(image, f"{name} {score:.2f}", (box[0], box[1] - 3), BOX_COLOUR)
        if obs.tracks is not None:
            for track_id, box in zip(obs.tracks.ids, obs.tracks.xyxy.astype(int)):
                _label(image, f"#{track_id}", (box[0], box[3] + 12), TRACK_COLOUR)
        for zr in self.pipeline.zone_rules:
            polygon = zr.config.zone.polygon.astype(np.int32)
            cv2.polylines(image, [polygon], True, ZONE_COLOUR, 2)
            x, y = polygon[:, 0].min(), polygon[:, 1].min()
            _label(image, f"{zr.config.zone.id}: {states.get(zr.config.zone.id, '')}", (x + 4, y + 16), ZONE_COLOUR)
        return image


def _label(image: np.ndarray, text: str, at: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """``text`` on a black box, legible on any street. (An outline drawn with a thicker stroke
    drifts: OpenCV advances glyphs by their stroke width.)"""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    (w, h), base = cv2.getTextSize(text, font, scale, 1)
    x, y = int(at[0]), max(int(at[1]), h + 2)
    cv2.rectangle(image, (x - 2, y - h - 2), (x + w + 2, y + base), (0, 0, 0), -1)
    cv2.putText(image, text, (x, y), font, scale, colour, 1, cv2.LINE_AA)
