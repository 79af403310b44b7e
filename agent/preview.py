"""The calibration page's live preview of a camera: what the agent sees, annotated.

The preview is the agent's own wiring (:class:`agent.app.Agent`) for the one camera: its
:class:`agent.pipeline.CameraPipeline` with detector, tracker, scene model, zone rules, schedules
and ticket book, fed by the agent's reader (PyAV) at the camera's analysis rate. So the states it
shows are exactly what ``run`` would have. Nothing leaves it: the box config it is built from has
no ``[mqtt]``, its outbox and evidence live in a folder of the page's that is removed when the
page stops, and the view check is off (the page must not replace the camera's reference).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from pathlib import Path

import cv2

from agent.annotated_video import annotate_frame, zone_states
from agent.app import Agent
from agent.clock import SystemClock
from agent.config import BoxConfig, CameraConfig
from agent.ingest import CameraReader
from agent.logs import log_event
from agent.types import Observation

log = logging.getLogger("agent.preview")

# The preview stops reading the camera this long after the page last asked for a picture: a
# closed browser tab must not keep a detector busy.
IDLE_STOP_S = 20.0


@dataclasses.dataclass(frozen=True)
class PreviewFrame:
    jpeg: bytes
    ts: float
    states: dict[str, str]  # zone id -> the rule's state


class Preview(threading.Thread):
    """Reads one camera and analyses it as the agent would until stopped or left idle."""

    def __init__(self, config: BoxConfig, camera: CameraConfig, work_dir: Path):
        super().__init__(name=f"preview-{camera.id}", daemon=True)
        # Files loop so the preview never runs dry; clips need the agent's clipper, not run here.
        camera = dataclasses.replace(camera, loop=camera.is_file, view_check=False)
        box = dataclasses.replace(config, cameras=(camera,), mqtt=None,
                                  tickets=dataclasses.replace(config.tickets, clips=False))
        self.work_dir = work_dir
        self.agent = Agent(box, storage_dir=work_dir)
        self.pipeline = self.agent.pipelines[camera.id]
        self.pipeline.on_analysed = self._analysed
        self.stop = threading.Event()
        self._latest: PreviewFrame | None = None
        self._lock = threading.Lock()
        self._asked = time.monotonic()
        self.error: str | None = None

    def latest(self) -> PreviewFrame | None:
        self._asked = time.monotonic()
        with self._lock:
            return self._latest

    def _analysed(self, obs: Observation) -> None:
        _ok, jpeg = cv2.imencode(".jpg", annotate_frame(obs, self.pipeline), [cv2.IMWRITE_JPEG_QUALITY, 80])
        with self._lock:
            self._latest = PreviewFrame(jpeg.tobytes(), obs.ts, zone_states(self.pipeline))

    def run(self) -> None:
        camera = self.pipeline.camera
        # Paced like a live camera, also for a file: dwell times must pass as they would on site.
        reader = CameraReader(camera, SystemClock(), self.pipeline.health, realtime=True)
        try:
            for frame in reader.frames(self.stop):
                if time.monotonic() - self._asked > IDLE_STOP_S:
                    break
                self.pipeline.on_frame(frame)
        except Exception as exc:  # noqa: BLE001 - the page says why; the server goes on
            self.error = f"{type(exc).__name__}: {exc}"
            log_event(log, "preview_failed", level=logging.WARNING, camera=camera.id, reason=self.error)
        finally:
            self.stop.set()
            self.agent.outbox.close()
            shutil.rmtree(self.work_dir, ignore_errors=True)
