"""Camera faults that become tickets of their own: the camera is offline, moved, or tampered with.

They are not zone rules: they concern the whole picture, so their tickets name the pseudo-zone
``_camera``. Their case classes default to the table below and are overridable in edge.toml under
``[categories.<fault>]`` like the rules'.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from agent.fault_kinds import DEFAULT_CATEGORIES, Fault  # noqa: F401 - re-exported; there so config skips OpenCV
from agent.files import write_atomically
from agent.logs import log_event
from agent.tamper import TamperMonitor, TamperParams, Verdict, ViewReference
from agent.types import EventKind, RuleEvent
from agent.zones import Zone

log = logging.getLogger("agent.faults")

CAMERA_ZONE = "_camera"
REFERENCE_DIR = "reference"  # in storage: the view references the agent saved
# Covers any picture: the outline lies outside the frame, only the label shows.
WHOLE_PICTURE = Zone(CAMERA_ZONE, np.array([[0, 0], [100_000, 0], [100_000, 100_000], [0, 100_000]], np.float32))


def fault_of(verdict: Verdict) -> Fault:
    """The fault ticket a bad view check opens."""
    return Fault.VIEW_SHIFTED if verdict is Verdict.SHIFTED else Fault.TAMPERED


def fault_event(fault: Fault, kind: EventKind, ts: float, since: float, facts: dict) -> RuleEvent:
    return RuleEvent(kind=kind, rule=fault.value, zone=CAMERA_ZONE, ts=ts, first_seen=since, last_seen=ts,
                     label=fault.value, confidence=1.0, boxes=np.zeros((0, 4), np.float32), facts=facts)


def saved_reference(reference_dir: Path, camera_id: str) -> Path:
    """The view reference the agent keeps for a camera without a configured ``reference_image``."""
    return reference_dir / f"{camera_id}.jpg"


def save_reference(path: Path, image: np.ndarray) -> None:
    """Write a reference frame whole or not at all (temp file, fsync, rename): a half-written
    reference would read as a moved view."""
    ok, buf = cv2.imencode(path.suffix or ".jpg", image)
    if not ok:
        raise ValueError(f"cannot encode a reference frame as {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buf.tobytes())


class ViewGuard:
    """Watches one camera's view against its calibration reference and says when to suspend.

    The reference is the technician's calibration frame when configured, else the first frame the
    agent sees, saved beside the outbox so a restart compares with the same picture (replace the
    file to re-calibrate: ``edge-agent calibrate`` does, with the frame it calibrated on).
    """

    def __init__(self, camera_id: str, params: TamperParams, configured: Path | None, saved: Path):
        self.camera_id, self.params, self.saved = camera_id, params, saved
        self.configured = configured
        self.monitor: TamperMonitor | None = None
        self.fault: Fault | None = None
        self.since = 0.0

    def _reference(self, image: np.ndarray) -> ViewReference:
        for path in (self.configured, self.saved):
            if path is not None and path.is_file():
                reference = cv2.imread(str(path))
                if reference is not None and reference.shape == image.shape:
                    return ViewReference.from_frame(reference, self.params)
                log_event(log, "view_reference_unusable", level=logging.WARNING, camera=self.camera_id, path=path,
                          reason="unreadable or of another size than the stream")
        save_reference(self.saved, image)
        log_event(log, "view_reference_saved", camera=self.camera_id, path=self.saved)
        return ViewReference.from_frame(image, self.params)

    def update(self, ts: float, image: np.ndarray) -> list[RuleEvent]:
        """Fault events this frame causes: opened when the view goes bad, cleared when it is back."""
        if self.monitor is None:
            try:
                self.monitor = TamperMonitor(self._reference(image))
            except ValueError as exc:  # a uniform first frame (lens cap on at start): try the next one
                log_event(log, "view_reference_unusable", level=logging.WARNING, camera=self.camera_id,
                          reason=str(exc))
                return []
        state = self.monitor.update(ts, image)
        if state is None:
            return []
        check = state.check
        facts = {"verdict": state.verdict.value, "shift_px": _round(check.shift_px),
                 "rotation_deg": _round(check.rotation_deg), "sharpness_ratio": _round(check.sharpness_ratio),
                 "blind_fraction": _round(check.blind_fraction)}
        log_event(log, "view_changed", level=logging.WARNING if state.tampered else logging.INFO,
                  camera=self.camera_id, **facts)
        events = []
        if self.fault is not None:
            events.append(fault_event(self.fault, EventKind.CLEARED, ts, self.since, facts))
            self.fault = None
        if state.tampered:
            self.fault, self.since = fault_of(state.verdict), state.since
            events.append(fault_event(self.fault, EventKind.OPENED, ts, state.since, facts))
        return events

    @property
    def suspended(self) -> str | None:
        return self.fault.value if self.fault is not None else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


class OfflineWatch:
    """Opens ``camera_offline`` when a live camera has delivered no frame for ``grace_s`` and clears
    it when frames flow again. The reconnecting itself is the camera worker's job."""

    def __init__(self, grace_s: float, started: float):
        self.grace_s, self.started = grace_s, started
        self.offline_since: float | None = None

    def update(self, now: float, last_frame_at: float | None, last_error: str) -> list[RuleEvent]:
        """``last_error`` as CameraHealth keeps it: redacted (it goes into the ticket's facts)."""
        seen = last_frame_at if last_frame_at is not None else self.started
        silent = now - seen
        if self.offline_since is None and silent >= self.grace_s:
            self.offline_since = seen
            return [fault_event(Fault.OFFLINE, EventKind.OPENED, now, seen,
                                {"silent_s": round(silent, 1), "last_error": last_error})]
        if self.offline_since is not None and silent < self.grace_s:
            since, self.offline_since = self.offline_since, None
            return [fault_event(Fault.OFFLINE, EventKind.CLEARED, now, since,
                                {"offline_s": round(now - since, 1)})]
        return []
