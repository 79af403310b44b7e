"""Counters and gauges per camera, read by the status topic, ``edge-agent replay`` and the
Prometheus endpoint (agent/metrics.py).

Error reasons are stored redacted: they come from FFmpeg and quote the camera URL, password and
all, and from here they go to the retained status and the ``camera_offline`` ticket."""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from agent.redact import redact

# Upper bounds (s) of the inference latency histogram: a small model on a fast core takes ~5 ms,
# tiles and zone crops on a slow ARM board reach a second or two.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)


@dataclass
class LatencyHistogram:
    """Durations counted into ``LATENCY_BUCKETS_S`` (plus one bucket past the last), with their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total_s: float = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1  # bounds are inclusive (le)
        self.total_s += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, count of durations up to it) per bucket, ending with ("+Inf", all): the
        shape Prometheus histograms take."""
        return list(zip([repr(b) for b in LATENCY_BUCKETS_S] + ["+Inf"], itertools.accumulate(self.counts)))


@dataclass
class CameraHealth:
    camera: str
    model: str = ""
    connected_now: bool = False
    codec: str = ""
    size: str = ""
    frames_decoded: int = 0
    frames_analysed: int = 0
    analysis_errors: int = 0
    decode_errors: int = 0
    disconnects: int = 0
    last_frame_at: float | None = None
    last_error: str = ""
    decode: str = "all"  # "keyframes" while the decoder skips the frames between keyframes
    keyframe_interval_s: float | None = None
    frames_superseded: int = 0  # sampled frames replaced by a newer one before analysis (box busy)
    detections_skipped: int = 0  # analysed frames whose detections were reused: nothing changed
    degraded: bool = False  # the box is short of CPU: many of this camera's frames are superseded
    outside: tuple[str, ...] = ()  # zones covering no pixel of the stream's picture, refused
    inference: LatencyHistogram = field(default_factory=LatencyHistogram, repr=False)  # detector calls
    _analysed_at: deque = field(default_factory=lambda: deque(maxlen=20), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def connected(self, codec: str, width: int, height: int) -> None:
        with self._lock:
            self.connected_now, self.codec, self.size = True, codec, f"{width}x{height}"

    def decoding(self, mode: str, keyframe_interval_s: float | None) -> None:
        with self._lock:
            self.decode, self.keyframe_interval_s = mode, keyframe_interval_s

    def frame_superseded(self) -> None:
        with self._lock:
            self.frames_superseded += 1

    def cadence_degraded(self, degraded: bool) -> None:
        with self._lock:
            self.degraded = degraded

    def detection_skipped(self) -> None:
        with self._lock:
            self.detections_skipped += 1

    def zones_outside(self, zone_ids: list[str]) -> None:
        with self._lock:
            self.outside = tuple(zone_ids)

    def disconnected(self, reason: str) -> None:
        with self._lock:
            self.connected_now = False
            self.disconnects += 1
            self.last_error = redact(reason)

    def frame_decoded(self, now: float) -> None:
        with self._lock:
            self.frames_decoded += 1
            self.last_frame_at = now

    def decode_failed(self, reason: str) -> None:
        with self._lock:
            self.decode_errors += 1
            self.last_error = redact(reason)

    def frame_analysed(self, now: float) -> None:
        with self._lock:
            self.frames_analysed += 1
            self._analysed_at.append(now)

    def _analysis_fps(self, now: float) -> float:
        """Analysed frames per second over the last 20, 0 when the last one is older than that span."""
        times = self._analysed_at
        if len(times) < 2 or now - times[-1] > times[-1] - times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def inference_took(self, seconds: float) -> None:
        with self._lock:
            self.inference.add(seconds)

    def inference_latency(self) -> tuple[list[tuple[str, int]], float]:
        """The detector's latency histogram: cumulative buckets and the sum of seconds."""
        with self._lock:
            return self.inference.cumulative(), self.inference.total_s

    def analysis_failed(self, reason: str) -> None:
        with self._lock:
            self.analysis_errors += 1
            self.last_error = redact(reason)

    def snapshot(self, now: float, monotonic_now: float | None = None) -> dict:
        """``now`` on the agent's clock (frame ages); ``monotonic_now`` for the analysis rate."""
        monotonic_now = time.monotonic() if monotonic_now is None else monotonic_now
        with self._lock:
            return {
                "camera_id": self.camera,
                "model": self.model,
                "connected": self.connected_now,
                "codec": self.codec,
                "size": self.size,
                "frames_decoded": self.frames_decoded,
                "frames_analysed": self.frames_analysed,
                "analysis_fps": round(self._analysis_fps(monotonic_now), 2),
                "analysis_errors": self.analysis_errors,
                "decode_errors": self.decode_errors,
                "decode": self.decode,
                "keyframe_interval_s": (None if self.keyframe_interval_s is None
                                        else round(self.keyframe_interval_s, 2)),
                "frames_superseded": self.frames_superseded,
                "detections_skipped": self.detections_skipped,
                "cadence_degraded": self.degraded,
                "disconnects": self.disconnects,
                "last_frame_age_s": None if self.last_frame_at is None else round(now - self.last_frame_at, 3),
                "last_error": self.last_error,
                "zones_outside_picture": list(self.outside),
            }
