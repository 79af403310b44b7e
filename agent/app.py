"""The agent: wires config into outbox, detectors, camera workers, commands and MQTT."""

from __future__ import annotations

import dataclasses
import logging
import platform
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent import __version__
from agent.camera_set import CameraParts, CameraSet
from agent.checkup import Checkup
from agent.clipper import Clipper
from agent.clips import PacketRing
from agent.clock import Clock, SystemClock
from agent.command_auth import CONFIG_APPLY_TIMEOUT_S, CommandAuth
from agent.commands import CommandHandler
from agent.config import BoxConfig, CameraConfig
from agent.config_check import checked_detectors, load_detectors
from agent.detect import Detector
from agent.detect.manifest import cpu_flags, int8_risk
from agent.evidence import EvidenceStore
from agent.faults import REFERENCE_DIR, OfflineWatch
from agent.health import CameraHealth
from agent.ingest import CameraWorker
from agent.logs import log_event
from agent.metrics import AgentCollector, agent_registry, serve_metrics
from agent.model_update import MODELS_DIR, ModelUpdater
from agent.outbox import Outbox
from agent.pipeline import CameraPipeline
from agent.privacy import PeopleTrail
from agent.remote_config import STAGING_DIR, RemoteConfig
from agent.rules import Cadence
from agent.scheduler import AnalysisScheduler
from agent.sdnotify import ServiceNotifier
from agent.storage import StorageJanitor
from agent.ticket_signing import KEY_FILE, DeviceKey
from agent.tickets import ModelInfo, TicketBook, iso_utc
from agent.topics import Topics
from agent.transport import MqttTransport, Request
from agent.types import Detections

log = logging.getLogger("agent.app")

DEFAULT_PREFIX = "cityops"
DEFAULT_CHUNK_BYTES = 256 * 1024
JANITOR_INTERVAL_S = 30.0
NOT_A_SERVICE = ServiceNotifier()  # replay, tests: nobody to tell


def precision_risks(detectors: dict[str, Detector]) -> dict[str, str]:
    """Per model name, why it may detect worse on this CPU than it was measured to (int8 on x86
    without VNNI, :func:`agent.detect.manifest.int8_risk`); models without a risk are left out."""
    flags, machine = cpu_flags(), platform.machine()
    return {name: risk for name, detector in detectors.items()
            if (risk := int8_risk(detector.manifest, machine, flags))}


class Agent:
    def __init__(self, config: BoxConfig, clock: Clock | None = None,
                 on_ticket: Callable[[dict], None] | None = None, storage_dir: Path | None = None):
        """``on_ticket`` is told every ticket message the outbox stores, in order: openings and
        clears, and the ``updated`` ones a clip or a command adds later."""
        self.config = config  # as the agent started: the cameras running now are self.cameras.configs()
        self.clock = clock or SystemClock()
        storage = storage_dir or config.storage.dir
        self.outbox = Outbox(storage / "outbox.sqlite")
        self.evidence = EvidenceStore(storage / "evidence", config.storage.jpeg_quality)
        self.device_key = DeviceKey.load_or_create(storage / KEY_FILE)
        self.janitor = StorageJanitor(self.outbox, self.evidence.root, config.storage.limits)
        self.checkup = Checkup(self.outbox, self.janitor, self.clock, config.tickets.offline_grace_s,
                               delivers=config.mqtt is not None)
        self.topics = Topics(config.mqtt.prefix if config.mqtt else DEFAULT_PREFIX, config.agent.id)
        chunk_bytes = config.mqtt.chunk_bytes if config.mqtt else DEFAULT_CHUNK_BYTES
        self.detectors = checked_detectors(config, storage / MODELS_DIR)
        for name, risk in precision_risks(self.detectors).items():
            log_event(log, "model_may_be_inaccurate_here", level=logging.WARNING, model=name, reason=risk)
        settings = config.tickets
        self._storage, self._on_ticket = storage, on_ticket
        self._chunk_bytes = chunk_bytes
        # The ring keeps the pre-roll plus two GOPs of margin, so a clip can start at a keyframe.
        self._keep_s = settings.clip_pre_s + settings.clip_post_s + 10.0
        self.scheduler = AnalysisScheduler()
        self.cameras = CameraSet(self._camera_parts, self._camera_worker, self.scheduler.remove)
        self.health, self.rings, self.trails = self.cameras.health, self.cameras.rings, self.cameras.trails
        self.books, self.pipelines = self.cameras.books, self.cameras.pipelines
        self.clipper = Clipper(self.rings, self.trails, self.books, self.clock, settings.clip_pre_s,
                               settings.clip_post_s)
        for cam in config.cameras:
            self.cameras.add(cam)
        # Without [commands] no command gets as far as the config verb: the default timeout is moot.
        apply_timeout_s = config.commands.config_apply_timeout_s if config.commands else CONFIG_APPLY_TIMEOUT_S
        remote_config = RemoteConfig(config.source_file, self.cameras, storage / STAGING_DIR, storage / MODELS_DIR,
                                     apply_timeout_s)
        self.models = ModelUpdater(config, storage / MODELS_DIR, self.detectors, self.pipelines, self.books,
                                   self.cameras.configs)
        self.commands = CommandHandler(config.agent.id, self.topics, self.outbox, self.evidence, self.clock,
                                       self.books, self.pipelines, chunk_bytes, self._command_auth(), self.models,
                                       remote_config)
        self._requests: queue.Queue[Request | None] = queue.Queue(maxsize=1000)
        self.transport = transport = (MqttTransport(config.mqtt, self.topics, self.outbox, self.clock,
                                                    on_command=self._enqueue_command, status=self.status,
                                                    password=config.mqtt_password)
                                      if config.mqtt else None)
        broker_connected = (lambda: transport.connected) if transport else None
        self.metrics_registry = agent_registry(AgentCollector(
            config.agent.id, self.health, self.outbox, self.janitor, self.clock, self.health_summary, broker_connected))

    def _camera_parts(self, cam: CameraConfig) -> CameraParts:
        """What one camera is analysed with, built from its config; the detector is the box's,
        loaded now if no camera used its model so far (a remote config may switch models)."""
        if cam.model not in self.detectors:
            one_camera = dataclasses.replace(self.config, cameras=(cam,))
            self.detectors |= load_detectors(one_camera, self._storage / MODELS_DIR)
        detector = self.detectors[cam.model]
        clips = self.config.tickets.clips
        health = CameraHealth(cam.id, cam.model)
        ring = PacketRing(keep_s=self._keep_s) if clips else None
        # Where people were in the ring's span, to hide them in clips: a picture further than 1.5
        # analysis intervals from an analysed frame is hidden whole (agent/privacy.py).
        trail = PeopleTrail(self._keep_s, max_gap_s=1.5 / cam.analysis_fps) if clips else None
        book = TicketBook(self.config.agent.id, cam, ModelInfo(detector.name, detector.sha256), self.topics,
                          self.outbox, self.evidence, self.config.tickets, self._chunk_bytes,
                          self.config.fault_categories, self.device_key)
        book.on_message = self._on_ticket
        pipeline = CameraPipeline(cam, detector, book, health, self._storage / REFERENCE_DIR,
                                  self.clipper.on_ticket if clips else None, trail)
        return CameraParts(cam, health, book, pipeline, ring, trail)

    def _camera_worker(self, parts: CameraParts, stop: threading.Event) -> CameraWorker:
        """The thread that reads one camera until ``stop`` and offers its frames to the scheduler,
        the camera's slot there made anew for these parts (a swap brings new ones)."""
        cam = parts.camera
        self.scheduler.add(cam.id, live=cam.cadence is Cadence.LIVE, fps=cam.analysis_fps,
                           analyse=parts.pipeline.on_frame, health=parts.health,
                           wait_for_room=cam.is_file and not cam.realtime)
        return CameraWorker(cam, self.clock, parts.health, self.scheduler.offer, stop, parts.ring)

    def _command_auth(self) -> CommandAuth | None:
        if self.config.command_key is None:
            if self.config.mqtt:
                log_event(log, "commands_refused", level=logging.WARNING,
                          reason="no [commands] key_file: every command from the platform will be refused")
            return None
        assert self.config.commands is not None  # the key is read from [commands] key_file
        return CommandAuth(self.config.command_key, self.config.commands.max_skew_s, self.outbox)

    def status(self) -> dict:
        """What the retained status topic says about the box and each camera."""
        now = self.clock.now()
        cameras = []
        for cam in self.cameras.configs():
            entry = self.health[cam.id].snapshot(now)
            muted = self.books[cam.id].muted_until("*", "*", now)
            entry["muted_until"] = iso_utc(muted) if muted else None
            entry["suspended"] = self.pipelines[cam.id].suspended
            entry["model_sha256"] = self.pipelines[cam.id].detector.sha256
            cameras.append(entry)
        storage = self.janitor.last.as_dict() if self.janitor.last is not None else None
        return {"version": __version__, "outbox": self.outbox.counts(), "storage": storage,
                "device_key": self.device_key.describe(), "cameras": cameras,
                "health": self.checkup.summary(cameras)}

    def health_summary(self) -> dict:
        """What /healthz serves: the status's health summary, the broker link judged as well."""
        return self.checkup.summary(self.status()["cameras"], self.transport.connected if self.transport else None)

    def _enqueue_command(self, request: Request) -> None:
        # Called on paho's network thread: hand over and return, never block it.
        try:
            self._requests.put_nowait(request)
        except queue.Full:
            log_event(log, "command_dropped", level=logging.ERROR, topic=request.topic, reason="queue full")

    def _command_loop(self) -> None:
        while (request := self._requests.get()) is not None:
            self.commands.handle(request)

    def _watch_offline(self, watches: dict[str, OfflineWatch]) -> None:
        """``watches``: per stream camera (a file has no offline), made when the camera is first seen."""
        now = self.clock.now()
        for cam in self.cameras.configs():
            if cam.is_file:
                continue
            watch = watches.setdefault(cam.id, OfflineWatch(self.config.tickets.offline_grace_s, now))
            health, pipeline = self.health[cam.id], self.pipelines[cam.id]
            for event in watch.update(now, health.last_frame_at, health.last_error):
                latest = pipeline.latest
                # The last picture the camera gave, so the platform sees what went dark.
                if latest is not None:
                    pipeline.ticket(event, latest.image, latest.detections)
                else:
                    pipeline.ticket(event, np.zeros((576, 768, 3), np.uint8), Detections.empty())

    def _tidy_storage(self) -> None:
        try:
            self.janitor.run(self.clock.now())
        except (OSError, sqlite3.Error) as exc:  # a full disk must not stop the agent
            log_event(log, "storage_tidy_failed", level=logging.ERROR, reason=str(exc))

    def service_status(self) -> str:
        """The one line ``systemctl status`` shows."""
        counts = self.outbox.counts()
        return f"{len(self.cameras.configs())} cameras, outbox {counts['pending']} pending of {counts['stored']}"

    def run(self, stop: threading.Event, service: ServiceNotifier = NOT_A_SERVICE) -> None:
        """Run until ``stop`` is set or every camera has ended (files that do not loop); tell
        ``service`` (systemd) when it is ready, and ping its watchdog from the loop below."""
        command_thread = threading.Thread(target=self._command_loop, name="commands", daemon=True)
        command_thread.start()
        clipper_stop = threading.Event()
        clipper_thread = threading.Thread(target=self.clipper.run, args=(clipper_stop,), name="clipper", daemon=True)
        clipper_thread.start()
        metrics_server = serve_metrics(self.config.metrics, self.metrics_registry, self.health_summary)
        if self.transport:
            self.transport.start()
        else:
            log_event(log, "store_only", reason="no [mqtt] in config", outbox=self.outbox.path)
        analysis_stop = threading.Event()
        analysers = [threading.Thread(target=self.scheduler.work, args=(analysis_stop,), name=f"analysis-{i}",
                                      daemon=True) for i in range(self.config.inference.workers)]
        for thread in analysers:
            thread.start()
        for cam in self.cameras.configs():
            self.cameras.start(cam.id)
        service.ready(self.service_status())
        watches: dict[str, OfflineWatch] = {}
        next_janitor = 0.0
        while not stop.is_set() and self.cameras.any_running():
            stop.wait(0.5)
            service.watchdog()
            self._watch_offline(watches)
            if time.monotonic() >= next_janitor:
                self._tidy_storage()
                service.status(self.service_status())
                next_janitor = time.monotonic() + JANITOR_INTERVAL_S
        stop.set()
        self.cameras.stop_all()
        # The last frames of files that ended are still waiting: analyse them before stopping.
        if not self.scheduler.drain(timeout=60):
            log_event(log, "analysis_unfinished", level=logging.WARNING, reason="frames still waiting after 60 s")
        analysis_stop.set()
        for thread in analysers:
            thread.join(timeout=10)
        self._requests.put(None)
        command_thread.join(timeout=10)
        clipper_stop.set()
        clipper_thread.join(timeout=30)
        if self.transport:
            self.transport.stop()
        if metrics_server:
            metrics_server.stop()
        log_event(log, "agent_stopped", **self.outbox.counts())
        self.outbox.close()
