"""The agent: wires config into outbox, detectors, camera workers and the MQTT sender."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from agent.clock import Clock, SystemClock
from agent.config import BoxConfig
from agent.detect import Detector, load_detector
from agent.evidence import EvidenceStore
from agent.health import CameraHealth
from agent.ingest import CameraWorker
from agent.logs import log_event
from agent.outbox import Outbox
from agent.pipeline import CameraPipeline
from agent.tickets import ModelInfo, TicketBook
from agent.topics import Topics
from agent.transport import MqttSender

log = logging.getLogger("agent.app")

DEFAULT_PREFIX = "cityops"


def load_detectors(config: BoxConfig) -> dict[str, Detector]:
    """The models the cameras use, each loaded once and shared (sha256 checked at load)."""
    used = {cam.model for cam in config.cameras}
    return {
        name: load_detector(m.manifest, m.threads, m.min_score, m.nms_iou)
        for name, m in config.models.items() if name in used
    }


class Agent:
    def __init__(self, config: BoxConfig, clock: Clock | None = None,
                 on_ticket: Callable[[dict], None] | None = None, storage_dir: Path | None = None):
        self.config = config
        self.clock = clock or SystemClock()
        storage = storage_dir or config.storage.dir
        self.outbox = Outbox(storage / "outbox.sqlite")
        self.evidence = EvidenceStore(storage / "evidence", config.storage.jpeg_quality)
        self.topics = Topics(config.mqtt.prefix if config.mqtt else DEFAULT_PREFIX, config.agent.id)
        self.detectors = load_detectors(config)
        self.health = {cam.id: CameraHealth(cam.id, cam.model) for cam in config.cameras}
        self.pipelines = {}
        for cam in config.cameras:
            detector = self.detectors[cam.model]
            book = TicketBook(config.agent.id, cam, ModelInfo(detector.name, detector.sha256), self.topics,
                              self.outbox, self.evidence)
            self.pipelines[cam.id] = CameraPipeline(cam, detector, book, self.health[cam.id], on_ticket)
        self.sender = MqttSender(config.mqtt, self.topics, self.outbox, self.clock) if config.mqtt else None

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set or every camera has ended (files that do not loop)."""
        if self.sender:
            self.sender.start()
        else:
            log_event(log, "store_only", reason="no [mqtt] in config", outbox=self.outbox.path)
        workers = [CameraWorker(cam, self.clock, self.health[cam.id], self.pipelines[cam.id].on_frame, stop)
                   for cam in self.config.cameras]
        for worker in workers:
            worker.start()
        while not stop.is_set() and any(w.is_alive() for w in workers):
            stop.wait(0.5)
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
        if self.sender:
            self.sender.stop()
        log_event(log, "agent_stopped", **self.outbox.counts())
        self.outbox.close()
