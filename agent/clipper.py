"""Evidence clips for opened tickets: cut once the post-roll has arrived, then attached.

A ticket opens at once with its snapshot; its clip needs ``clip_post_s`` more seconds of stream.
The clipper keeps a small list of pending cuts and, on its own thread (a transcode of a non-H.264
source costs ~1 s of CPU, which must not stall a camera), cuts each from the camera's packet ring
when the ring has reached the end time, then the ticket book sends an ``updated`` message naming
the clip. A camera that stops delivering gets the clip it has after ``give_up_s``.

When the ticket's zone hides people (agent/privacy.py), the clip is transcoded with the people of
the camera's :class:`PeopleTrail` pixelated in every picture, not remuxed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from agent.clips import ClipUnavailable, PacketRing, cut_clip
from agent.clock import Clock
from agent.evidence import Evidence
from agent.logs import log_event
from agent.privacy import PeopleTrail, clip_filter
from agent.tickets import TicketBook

log = logging.getLogger("agent.clipper")


@dataclass(frozen=True)
class ClipJob:
    camera: str
    zone: str
    ticket_id: str
    start_ts: float
    end_ts: float
    requested_at: float  # agent clock, for giving up on a stalled camera


class Clipper:
    def __init__(self, rings: dict[str, PacketRing], trails: dict[str, PeopleTrail], books: dict[str, TicketBook],
                 clock: Clock, pre_s: float, post_s: float, give_up_s: float = 30.0):
        self.rings, self.trails, self.books, self.clock = rings, trails, books, clock
        self.pre_s, self.post_s, self.give_up_s = pre_s, post_s, give_up_s
        self._jobs: list[ClipJob] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def on_ticket(self, doc: dict) -> None:
        """Ticket hook: every newly opened ticket gets a clip around its opening."""
        if doc["event"] != "opened" or doc["camera_id"] not in self.rings:
            return
        ts = datetime.fromisoformat(doc["event_time"]).timestamp()
        with self._lock:
            self._jobs.append(ClipJob(doc["camera_id"], doc["zone_id"], doc["ticket_id"], ts - self.pre_s,
                                      ts + self.post_s, self.clock.now()))
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            self.cut_ready(final=False)
        self.cut_ready(final=True)  # at shutdown, cut with what there is: a short clip beats none

    def cut_ready(self, final: bool) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            ring = self.rings[job.camera]
            # The people to hide in the last pictures are known once a frame after them is analysed.
            ring_ts, trail_ts = ring.newest_ts, self.trails[job.camera].newest_ts
            arrived = ring_ts is not None and trail_ts is not None and min(ring_ts, trail_ts) >= job.end_ts
            waited = self.clock.now() - job.requested_at
            if not final and not arrived and waited < self.give_up_s:
                continue
            with self._lock:
                self._jobs.remove(job)
            self._cut(job, ring)

    def _cut(self, job: ClipJob, ring: PacketRing) -> None:
        book = self.books[job.camera]
        path = book.evidence.folder(job.ticket_id) / "clip.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        privacy = book.camera.privacy_for(job.zone)
        hide = clip_filter(self.trails[job.camera], privacy) if privacy.active else None
        try:
            info = cut_clip(ring, job.start_ts, job.end_ts, path, hide)
        except ClipUnavailable as exc:
            log_event(log, "clip_unavailable", level=logging.WARNING, camera=job.camera, ticket=job.ticket_id,
                      reason=str(exc))
            return
        item = Evidence("clip", info.path, info.sha256, info.size, "video/mp4", info.duration_s)
        # Stamped on the camera's own timeline (a replayed file runs ahead of the wall clock).
        book.attach(job.ticket_id, item, job.end_ts)
