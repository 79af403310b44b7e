"""Shared analysis for all the box's cameras: one scheduler, a few workers, no queue that grows.

Each camera's reader offers its sampled frames here. A frame not yet analysed when the camera's
next one comes is replaced (counted as superseded): a box short of CPU analyses fewer frames per
camera, never stale ones, and holds at most one waiting frame per camera. The workers
(``[inference] workers``, each running a camera's whole pipeline: detector, tracker, rules) take
the waiting frame of

1. a LIVE camera (a lift: the e-bike is gone in seconds) before any STATIC one;
2. among equals, the camera whose frame is due soonest (offered at + its period: earliest
   deadline first), so static cameras share what is left in proportion to what they asked and
   none starves.

A camera is analysed by one worker at a time: its pipeline keeps state from frame to frame.
A file read faster than real time (replay, soak: ``realtime = false``) must lose no frame: its
offer waits for its slot to be free instead of replacing the frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.health import CameraHealth
from agent.logs import log_event
from agent.threads import name_native_thread
from agent.types import Frame

log = logging.getLogger("agent.scheduler")

# Of a camera's last 20 sampled frames, more than this many replaced unanalysed: its cadence is
# degraded, which the status and the log say.
DEGRADED_SUPERSEDED = 4


@dataclass(eq=False)
class CameraSlot:
    camera: str
    live: bool
    period_s: float
    analyse: Callable[[Frame], None]
    health: CameraHealth
    wait_for_room: bool
    pending: Frame | None = None
    due: float = 0.0  # scheduler time by which the pending frame should be analysed
    busy: bool = False
    offered: int = 0
    superseded: int = 0
    analysed: int = 0
    degraded: bool = False
    _recent: deque = field(default_factory=lambda: deque(maxlen=20))  # True: a frame superseded

    def note(self, superseded: bool) -> bool:
        """Record a sampled frame's fate; True when the camera's degraded state changes."""
        self._recent.append(superseded)
        degraded = sum(self._recent) > DEGRADED_SUPERSEDED
        changed, self.degraded = degraded != self.degraded, degraded
        return changed


class AnalysisScheduler:
    def __init__(self, now: Callable[[], float] = time.monotonic):
        self._now = now
        self._cond = threading.Condition()
        self._slots: dict[str, CameraSlot] = {}
        self._closed = False

    def add(self, camera: str, *, live: bool, fps: float, analyse: Callable[[Frame], None],
            health: CameraHealth, wait_for_room: bool = False) -> CameraSlot:
        slot = CameraSlot(camera, live, 1.0 / fps, analyse, health, wait_for_room)
        with self._cond:
            self._slots[camera] = slot
        return slot

    def remove(self, camera: str) -> None:
        """Forget a camera (its frame waiting, if any, is dropped)."""
        with self._cond:
            self._slots.pop(camera, None)
            self._cond.notify_all()

    def slot(self, camera: str) -> CameraSlot:
        return self._slots[camera]

    def offer(self, frame: Frame) -> None:
        """Called by the camera's reader thread with each sampled frame."""
        with self._cond:
            slot = self._slots.get(frame.camera)
            if slot is None or self._closed:
                return
            while slot.wait_for_room and slot.pending is not None and not self._closed:
                self._cond.wait(0.5)
            slot.offered += 1
            if slot.pending is not None:
                slot.superseded += 1
                slot.health.frame_superseded()
                self._note(slot, superseded=True)
            else:
                # A replaced frame keeps its predecessor's deadline: the camera has waited since
                # then, and moving it back at every new frame would starve it.
                slot.due = self._now() + slot.period_s
            slot.pending = frame
            self._cond.notify_all()

    def take(self, timeout: float) -> tuple[CameraSlot, Frame] | None:
        """The next frame to analyse and its camera's slot (now busy: hand it back with
        :meth:`done`), or None if none came within ``timeout`` seconds."""
        with self._cond:
            slot = self._next()
            if slot is None and timeout > 0 and not self._closed:
                self._cond.wait(timeout)
                slot = self._next()
            if slot is None:
                return None
            frame, slot.pending, slot.busy = slot.pending, None, True
            assert frame is not None  # _next() picks only slots with a frame pending
            self._note(slot, superseded=False)
            self._cond.notify_all()  # a reader waiting for room may go on
            return slot, frame

    def done(self, slot: CameraSlot) -> None:
        with self._cond:
            slot.busy = False
            slot.analysed += 1
            self._cond.notify_all()

    def _next(self) -> CameraSlot | None:
        ready = [s for s in self._slots.values() if s.pending is not None and not s.busy]
        return min(ready, key=lambda s: (not s.live, s.due), default=None)

    def _note(self, slot: CameraSlot, superseded: bool) -> None:
        if slot.note(superseded):
            slot.health.cadence_degraded(slot.degraded)
            log_event(log, "analysis_degraded" if slot.degraded else "analysis_restored",
                      level=logging.WARNING if slot.degraded else logging.INFO, camera=slot.camera,
                      asked_fps=round(1.0 / slot.period_s, 2), superseded=slot.superseded, offered=slot.offered)

    def work(self, stop: threading.Event) -> None:
        """One worker's loop, until ``stop`` is set."""
        name_native_thread()
        while not stop.is_set():
            job = self.take(timeout=0.5)
            if job is None:
                continue
            slot, frame = job
            try:
                slot.analyse(frame)  # CameraPipeline.on_frame: it counts and logs its own failures
            finally:
                self.done(slot)

    def drain(self, timeout: float) -> bool:
        """Wait until no frame waits and none is being analysed (the readers have stopped), then
        refuse further offers; False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(s.pending is not None or s.busy for s in self._slots.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            self._closed = True
            self._cond.notify_all()
            return not any(s.pending is not None or s.busy for s in self._slots.values())
