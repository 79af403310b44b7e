"""The cameras an agent runs: per camera, the parts it is analysed with and its worker thread.

The one place where a camera starts, stops or is swapped for another config. Each worker has its
own stop event, so one camera can be stopped and started again while the others keep running
(a remote ``config`` command, :mod:`agent.remote_config`). The parts live in dicts keyed by camera
id that the clipper, the command handler, the offline watch and the metrics hold by reference: a
swap replaces the entries in place, never the dicts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from agent.clips import PacketRing
from agent.config import CameraConfig
from agent.health import CameraHealth
from agent.logs import log_event
from agent.pipeline import CameraPipeline
from agent.privacy import PeopleTrail
from agent.tickets import TicketBook

log = logging.getLogger("agent.camera_set")

WORKER_JOIN_S = 10.0
POLL_S = 0.1


@dataclass(frozen=True)
class CameraParts:
    camera: CameraConfig
    health: CameraHealth
    book: TicketBook
    pipeline: CameraPipeline
    ring: PacketRing | None  # None: the box cuts no clips
    trail: PeopleTrail | None


class CameraSet:
    def __init__(self, make_parts: Callable[[CameraConfig], CameraParts],
                 make_worker: Callable[[CameraParts, threading.Event], threading.Thread],
                 forget: Callable[[str], None]):
        """``make_worker`` builds a camera's (unstarted) worker thread, to stop on the event;
        ``forget`` is told a camera id that is removed, for what ``make_worker`` set up beside it."""
        self.make_parts, self.make_worker, self.forget = make_parts, make_worker, forget
        self.health: dict[str, CameraHealth] = {}
        self.books: dict[str, TicketBook] = {}
        self.pipelines: dict[str, CameraPipeline] = {}
        self.rings: dict[str, PacketRing] = {}
        self.trails: dict[str, PeopleTrail] = {}
        self._parts: dict[str, CameraParts] = {}
        self._workers: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._lock = threading.RLock()
        self._swapping = 0  # swaps under way: a camera between its old worker and its new one
        self._closed = False  # the agent is stopping: no worker starts again (a rollback under way)

    # --- what runs ----------------------------------------------------------------------------
    def configs(self) -> tuple[CameraConfig, ...]:
        """The cameras' configs in the order they were added (a swapped camera keeps its place)."""
        with self._lock:
            return tuple(parts.camera for parts in self._parts.values())

    def parts(self, camera_id: str) -> CameraParts | None:
        with self._lock:
            return self._parts.get(camera_id)

    def worker(self, camera_id: str) -> threading.Thread | None:
        with self._lock:
            entry = self._workers.get(camera_id)
            return entry[0] if entry else None

    def any_running(self) -> bool:
        """A worker is alive, or a camera is being swapped (its new worker is about to start)."""
        with self._lock:
            return self._swapping > 0 or any(w.is_alive() for w, _ in self._workers.values())

    # --- lifecycle ----------------------------------------------------------------------------
    def add(self, camera: CameraConfig) -> None:
        self._put(self.make_parts(camera))

    def start(self, camera_id: str) -> None:
        with self._lock:
            if self._closed:
                return
            stop = threading.Event()
            worker = self.make_worker(self._parts[camera_id], stop)
            self._workers[camera_id] = (worker, stop)
        worker.start()

    def stop(self, camera_id: str) -> None:
        """Stop the camera's worker and wait for it (a file camera ends at once; RTSP within a read)."""
        with self._lock:
            entry = self._workers.pop(camera_id, None)
        if entry is None:
            return
        worker, stop = entry
        stop.set()
        worker.join(timeout=WORKER_JOIN_S)
        if worker.is_alive():
            log_event(log, "camera_worker_stuck", level=logging.WARNING, camera=camera_id,
                      waited_s=WORKER_JOIN_S)

    def stop_all(self) -> None:
        """Stop every worker, for good: the agent is stopping."""
        with self._lock:
            self._closed = True
            entries = list(self._workers.values())
            self._workers.clear()
        for _, stop in entries:
            stop.set()
        for worker, _ in entries:
            worker.join(timeout=WORKER_JOIN_S)

    @contextmanager
    def swapping(self):
        """While a camera is swapped, the agent does not take a moment without workers for the end."""
        with self._lock:
            self._swapping += 1
        try:
            yield
        finally:
            with self._lock:
                self._swapping -= 1

    def swap(self, camera: CameraConfig) -> CameraParts | None:
        """Run ``camera`` in place of the camera with its id (or as a new camera): its worker is
        stopped, new parts are built and its worker started; the other cameras go on. Returns
        the parts it had, to :meth:`restore` them; None for a new camera."""
        with self.swapping():
            old = self.parts(camera.id)
            self.stop(camera.id)
            try:
                self._put(self.make_parts(camera))
            except Exception:
                self.restore(camera.id, old)
                raise
            self.start(camera.id)
        log_event(log, "camera_swapped", camera=camera.id, new=old is None)
        return old

    def restore(self, camera_id: str, old: CameraParts | None) -> None:
        """Back to the parts :meth:`swap` returned, the camera's worker running on them again; a
        camera that was new is removed."""
        with self.swapping():
            self.stop(camera_id)
            if old is None:
                self._drop(camera_id)
                return
            self._put(old)
            self.start(camera_id)

    def wait_analysed(self, camera_id: str, timeout_s: float) -> str | None:
        """None once the camera has analysed a frame; else, after ``timeout_s`` or when its worker
        ended, why not (its health's last error, e.g. the url that does not open)."""
        parts, worker = self.parts(camera_id), self.worker(camera_id)
        if parts is None:
            return f"camera {camera_id} is not running"
        deadline = time.monotonic() + timeout_s
        while parts.health.frames_analysed == 0:
            if worker is None or not worker.is_alive():
                return f"camera {camera_id} ended before analysing a frame: {_last_error(parts.health)}"
            if time.monotonic() >= deadline:
                return f"camera {camera_id} analysed no frame within {timeout_s:g} s: {_last_error(parts.health)}"
            time.sleep(POLL_S)
        return None

    def _put(self, parts: CameraParts) -> None:
        camera = parts.camera.id
        with self._lock:
            self._parts[camera] = parts
            self.health[camera], self.books[camera], self.pipelines[camera] = parts.health, parts.book, parts.pipeline
            if parts.ring is not None:
                self.rings[camera] = parts.ring
            if parts.trail is not None:
                self.trails[camera] = parts.trail

    def _drop(self, camera_id: str) -> None:
        with self._lock:
            self._parts.pop(camera_id, None)
            for table in (self.health, self.books, self.pipelines, self.rings, self.trails):
                table.pop(camera_id, None)
        self.forget(camera_id)


def _last_error(health: CameraHealth) -> str:
    if health.last_error:
        return f"last error: {health.last_error}"
    return "connected, but no frame analysed" if health.connected_now else "no error reported and no frame"
