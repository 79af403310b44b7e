"""How the box is doing, in one word per camera and one for the box: ok, degraded or failing.

The same summary is served on ``/healthz`` (agent/metrics.py) and carried in the retained status
message, so a person, a load balancer's probe and the platform read one judgement with its
reasons. The judgement is made from the status's own camera entries, so the two cannot disagree.

- A camera is **failing** when it has given no frame for ``offline_grace_s`` (the same span that
  opens a ``camera_offline`` ticket), counting from the agent's start if it never gave one.
- It is **degraded** while it reconnects or waits for its first frame within that span, while
  its view check suspends its zones (moved or covered), when a zone covers no pixel of its
  picture, or when frames arrive but analysis keeps failing.
- The box is **failing** when every camera is; **degraded** when any camera is not ok, the disk
  is under pressure, or (with a broker) the broker link is down or a message has waited longer
  than ``OUTBOX_STALE_S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from agent.clock import Clock
from agent.outbox import Outbox
from agent.storage import StorageJanitor

# With a broker, a message still undelivered after this long means delivery is stuck (a broker
# that accepts the connection and never acknowledges, or a message it refuses).
OUTBOX_STALE_S = 600.0


class State(str, Enum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"


@dataclass(frozen=True)
class Verdict:
    state: State
    reasons: tuple[str, ...] = ()


def camera_verdict(entry: dict, grace_s: float, running_s: float) -> Verdict:
    """``entry`` is the camera's status entry (:meth:`agent.app.Agent.status`); ``running_s``
    how long the agent has run."""
    age = entry["last_frame_age_s"]
    if age is None and running_s > grace_s:
        return Verdict(State.FAILING, (f"no frame since the agent started {running_s:.0f} s ago",))
    if age is not None and age > grace_s:
        return Verdict(State.FAILING, (f"no frame for {age:.0f} s",))
    reasons = []
    if age is None:
        reasons.append("waiting for the first frame")
    elif not entry["connected"]:
        reasons.append("reconnecting")
    if entry["suspended"]:
        reasons.append(f"zones suspended: {entry['suspended']}")
    if entry["zones_outside_picture"]:
        reasons.append(f"zones outside the picture: {', '.join(entry['zones_outside_picture'])}")
    if age is not None and entry["analysis_errors"] and not entry["analysis_fps"]:
        reasons.append(f"frames arrive but analysis fails: {entry['last_error']}")
    return Verdict(State.DEGRADED if reasons else State.OK, tuple(reasons))


class Checkup:
    def __init__(self, outbox: Outbox, janitor: StorageJanitor, clock: Clock, grace_s: float, delivers: bool):
        """``delivers``: the outbox is sent to a broker (store-only boxes keep every message pending)."""
        self.outbox, self.janitor, self.clock = outbox, janitor, clock
        self.grace_s, self.delivers = grace_s, delivers
        self.started_at = clock.now()

    def summary(self, cameras: list[dict], broker_connected: bool | None = None) -> dict:
        """The verdicts on ``cameras`` (status entries) and the box. ``broker_connected`` None
        leaves the broker link out: the status message judges without it, its arrival shows the link."""
        now = self.clock.now()
        verdicts = {entry["camera_id"]: camera_verdict(entry, self.grace_s, now - self.started_at)
                    for entry in cameras}
        reasons = [f"camera {camera}: {reason}" for camera, verdict in verdicts.items() for reason in verdict.reasons]
        reasons += self._box_reasons(now, broker_connected)
        if verdicts and all(v.state is State.FAILING for v in verdicts.values()):
            state = State.FAILING
        else:
            state = State.DEGRADED if reasons else State.OK
        return {"state": state.value, "reasons": reasons,
                "cameras": [{"camera_id": camera, "state": v.state.value, "reasons": list(v.reasons)}
                            for camera, v in verdicts.items()]}

    def _box_reasons(self, now: float, broker_connected: bool | None) -> list[str]:
        reasons = []
        report = self.janitor.last
        if report is not None and report.pressure:
            reasons.append(f"storage: {report.pressure}")
        if self.delivers:
            if broker_connected is False:
                reasons.append("broker: not connected")
            oldest = self.outbox.oldest_pending_at()
            if oldest is not None and now - oldest > OUTBOX_STALE_S:
                reasons.append(f"outbox: a message has waited {now - oldest:.0f} s for delivery")
        return reasons
