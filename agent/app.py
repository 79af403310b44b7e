"""The agent: wires config into outbox, detectors, camera workers, commands and MQTT."""

from __future__ import annotations

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
from agent.checkup import Checkup
from agent.clipper import Clipper
from agent.clips import PacketRing
from agent.clock import Clock, SystemClock
from agent.command_auth import CommandAuth
from agent.commands import CommandHandler
from agent.config import BoxConfig, CameraConfig, ConfigError
from agent.detect import Detector
from agent.detect.manifest import cpu_flags, int8_risk
from agent.evidence import EvidenceStore
from agent.faults import REFERENCE_DIR, OfflineWatch
from agent.health import CameraHealth
from agent.ingest import CameraWorker
from agent.logs import log_event
from agent.metrics import AgentCollector, agent_registry, serve_metrics
from agent.model_update import MODELS_DIR, ActiveModels, ModelUpdater, load_model
from agent.outbox import Outbox
from agent.pipeline import CameraPipeline
from agent.privacy import PEOPLE, PeopleTrail
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


def load_detectors(config: BoxConfig, models_dir: Path | None = None) -> dict[str, Detector]:
    """The models the cameras use, each loaded once and shared (sha256 checked at load): those
    model commands installed in ``models_dir`` where they did, else edge.toml's."""
    used = {cam.model for cam in config.cameras}
    active = ActiveModels(models_dir) if models_dir is not None else None
    detectors = {name: load_model(name, m, active) for name, m in config.models.items() if name in used}
    for name, detector in detectors.items():
        if detector.missing_providers:
            log_event(log, "model_provider_missing", level=logging.WARNING, model=name,
                      missing=",".join(detector.missing_providers), running_on=detector.providers[0])
    return detectors


def precision_risks(detectors: dict[str, Detector]) -> dict[str, str]:
    """Per model name, why it may detect worse on this CPU than it was measured to (int8 on x86
    without VNNI, :func:`agent.detect.manifest.int8_risk`); models without a risk are left out."""
    flags, machine = cpu_flags(), platform.machine()
    return {name: risk for name, detector in detectors.items()
            if (risk := int8_risk(detector.manifest, machine, flags))}


def check_privacy(camera: CameraConfig, detector: Detector) -> None:
    """A camera that hides people needs a model that finds them: otherwise nobody would be hidden,
    silently. Class names are known only once the model is loaded (they may be in its metadata)."""
    if camera.hides_people and not PEOPLE & set(detector.class_names):
        raise ConfigError(camera.source_file, "privacy",
                          f"model {detector.name!r} has no class {'/'.join(sorted(PEOPLE))}: nobody could be "
                          f"hidden (set mode = \"off\" to send people as seen)")


class Agent:
    def __init__(self, config: BoxConfig, clock: Clock | None = None,
                 on_ticket: Callable[[dict], None] | None = None, storage_dir: Path | None = None):
        """``on_ticket`` is told every ticket message the outbox stores, in order: openings and
        clears, and the ``updated`` ones a clip or a command adds later."""
        self.config = config
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
        self.detectors = load_detectors(config, storage / MODELS_DIR)
        for cam in config.cameras:
            check_privacy(cam, self.detectors[cam.model])
        for name, risk in precision_risks(self.detectors).items():
            log_event(log, "model_may_be_inaccurate_here", level=logging.WARNING, model=name, reason=risk)
        self.health = {cam.id: CameraHealth(cam.id, cam.model) for cam in config.cameras}
        settings = config.tickets
        # The ring keeps the pre-roll plus two GOPs of margin, so a clip can start at a keyframe.
        keep_s = settings.clip_pre_s + settings.clip_post_s + 10.0
        self.rings = {cam.id: PacketRing(keep_s=keep_s) for cam in config.cameras} if settings.clips else {}
        # Where people were in the ring's span, to hide them in clips: a picture further than 1.5
        # analysis intervals from an analysed frame is hidden whole (agent/privacy.py).
        self.trails = ({cam.id: PeopleTrail(keep_s, max_gap_s=1.5 / cam.analysis_fps) for cam in config.cameras}
                       if settings.clips else {})
        self.books: dict[str, TicketBook] = {}
        self.pipelines: dict[str, CameraPipeline] = {}
        self.clipper = Clipper(self.rings, self.trails, self.books, self.clock, settings.clip_pre_s,
                               settings.clip_post_s)
        ticket_hook = self.clipper.on_ticket if settings.clips else None
        for cam in config.cameras:
            detector = self.detectors[cam.model]
            self.books[cam.id] = TicketBook(config.agent.id, cam, ModelInfo(detector.name, detector.sha256),
                                            self.topics, self.outbox, self.evidence, config.tickets, chunk_bytes,
                                            config.fault_categories, self.device_key)
            self.books[cam.id].on_message = on_ticket
            self.pipelines[cam.id] = CameraPipeline(cam, detector, self.books[cam.id], self.health[cam.id],
                                                    storage / REFERENCE_DIR, ticket_hook, self.trails.get(cam.id))
        self.scheduler = AnalysisScheduler()
        for cam in config.cameras:
            self.scheduler.add(cam.id, live=cam.cadence is Cadence.LIVE, fps=cam.analysis_fps,
                               analyse=self.pipelines[cam.id].on_frame, health=self.health[cam.id],
                               wait_for_room=cam.is_file and not cam.realtime)
        self.models = ModelUpdater(config, storage / MODELS_DIR, self.detectors, self.pipelines, self.books)
        self.commands = CommandHandler(config.agent.id, self.topics, self.outbox, self.evidence, self.clock,
                                       self.books, self.pipelines, chunk_bytes, self._command_auth(), self.models)
        self._requests: queue.Queue[Request | None] = queue.Queue(maxsize=1000)
        self.transport = (MqttTransport(config.mqtt, self.topics, self.outbox, self.clock,
                                        on_command=self._enqueue_command, status=self.status,
                                        password=config.mqtt_password)
                          if config.mqtt else None)
        broker_connected = (lambda: self.transport.connected) if self.transport else None
        self.metrics_registry = agent_registry(AgentCollector(
            config.agent.id, self.health, self.outbox, self.janitor, self.clock, self.health_summary, broker_connected))

    def _command_auth(self) -> CommandAuth | None:
        if self.config.command_key is None:
            if self.config.mqtt:
                log_event(log, "commands_refused", level=logging.WARNING,
                          reason="no [commands] key_file: every command from the platform will be refused")
            return None
        return CommandAuth(self.config.command_key, self.config.commands.max_skew_s, self.outbox)

    def status(self) -> dict:
        """What the retained status topic says about the box and each camera."""
        now = self.clock.now()
        cameras = []
        for cam in self.config.cameras:
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
        now = self.clock.now()
        for camera, watch in watches.items():
            health = self.health[camera]
            for event in watch.update(now, health.last_frame_at, health.last_error):
                latest = self.pipelines[camera].latest
                # The last picture the camera gave, so the platform sees what went dark.
                if latest is not None:
                    self.pipelines[camera].ticket(event, latest.image, latest.detections)
                else:
                    self.pipelines[camera].ticket(event, np.zeros((576, 768, 3), np.uint8), Detections.empty())

    def _tidy_storage(self) -> None:
        try:
            self.janitor.run(self.clock.now())
        except (OSError, sqlite3.Error) as exc:  # a full disk must not stop the agent
            log_event(log, "storage_tidy_failed", level=logging.ERROR, reason=str(exc))

    def service_status(self) -> str:
        """The one line ``systemctl status`` shows."""
        counts = self.outbox.counts()
        return f"{len(self.config.cameras)} cameras, outbox {counts['pending']} pending of {counts['stored']}"

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
        workers = [CameraWorker(cam, self.clock, self.health[cam.id], self.scheduler.offer, stop,
                                self.rings.get(cam.id)) for cam in self.config.cameras]
        for thread in analysers + workers:
            thread.start()
        service.ready(self.service_status())
        watches = {cam.id: OfflineWatch(self.config.tickets.offline_grace_s, self.clock.now())
                   for cam in self.config.cameras if not cam.is_file}
        next_janitor = 0.0
        while not stop.is_set() and any(w.is_alive() for w in workers):
            stop.wait(0.5)
            service.watchdog()
            self._watch_offline(watches)
            if time.monotonic() >= next_janitor:
                self._tidy_storage()
                service.status(self.service_status())
                next_janitor = time.monotonic() + JANITOR_INTERVAL_S
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
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
