"""Counters and gauges per camera, read by the status topic and ``edge-agent check``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def connected(self, codec: str, width: int, height: int) -> None:
        with self._lock:
            self.connected_now, self.codec, self.size = True, codec, f"{width}x{height}"

    def disconnected(self, reason: str) -> None:
        with self._lock:
            self.connected_now = False
            self.disconnects += 1
            self.last_error = reason

    def frame_decoded(self, now: float) -> None:
        with self._lock:
            self.frames_decoded += 1
            self.last_frame_at = now

    def decode_failed(self, reason: str) -> None:
        with self._lock:
            self.decode_errors += 1
            self.last_error = reason

    def frame_analysed(self) -> None:
        with self._lock:
            self.frames_analysed += 1

    def analysis_failed(self, reason: str) -> None:
        with self._lock:
            self.analysis_errors += 1
            self.last_error = reason

    def snapshot(self, now: float) -> dict:
        with self._lock:
            return {
                "camera_id": self.camera,
                "model": self.model,
                "connected": self.connected_now,
                "codec": self.codec,
                "size": self.size,
                "frames_decoded": self.frames_decoded,
                "frames_analysed": self.frames_analysed,
                "analysis_errors": self.analysis_errors,
                "decode_errors": self.decode_errors,
                "disconnects": self.disconnects,
                "last_frame_age_s": None if self.last_frame_at is None else round(now - self.last_frame_at, 3),
                "last_error": self.last_error,
            }
