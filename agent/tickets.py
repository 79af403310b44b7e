"""The ticket book: rule events and platform commands in, versioned ticket messages out.

One ticket id lives from ``opened`` to its end (``closed`` or ``rejected``); every message carries
the agent-wide monotonic ``seq`` and repeats all fields, so a consumer that missed one is never
confused. A ticket's state and the message reporting a change of it are committed in one SQLite
transaction, after the evidence files are on disk: a crash leaves both or neither.

Lifecycle (docs/messages.md)::

    opened -> updated* -> cleared -> reopened -> ... -> closed (verified gone)
    any state but closed -> rejected (the platform found a false positive)

The document's shape is ``agent/schemas/ticket.schema.json``. Each message is signed with the
box's device key as it is stored for sending (:mod:`agent.ticket_signing`); the evidence items it
names carry the sha256 of their files, so the signature covers the evidence too.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from agent.calibration import CalibrationError, GroundCalibration
from agent.config import CameraConfig, TicketsSection
from agent.evidence import Evidence, EvidenceStore, annotate
from agent.faults import CAMERA_ZONE, WHOLE_PICTURE, Fault
from agent.logs import log_event
from agent.outbox import MessageProps, Outbox, OutMessage
from agent.privacy import anonymise, obscure, regions
from agent.rules import Category
from agent.ticket_signing import DeviceKey
from agent.ticket_store import ANY, ENDED, Status, Ticket, TicketStore
from agent.topics import Topics
from agent.types import Detections, EventKind, RuleEvent, bottom_centres
from agent.zones import Zone

SCHEMA_ID = "edge-agent/ticket"
SCHEMA_VERSION = "1.1"  # 1.1 added reasons, location.datum, gb28181 and the alarm schema
TICKET_SEQ = "ticket_seq"

# Its tables (tickets, mutes) are read and written by agent/ticket_store.py, and made, and changed
# between versions, by agent/migrations.py.

log = logging.getLogger("agent.tickets")


PLATFORM_STEPS = ("new", "acked", "dispatched", "handled")


class TicketError(Exception):
    """A command about a ticket that cannot be carried out; ``code`` goes into the reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    sha256: str


class TicketBook:
    """Tickets of one camera. Rule events come from the camera's thread, commands from the command
    thread: one lock orders them."""

    def __init__(self, agent_id: str, camera: CameraConfig, model: ModelInfo, topics: Topics,
                 outbox: Outbox, evidence: EvidenceStore, settings: TicketsSection, chunk_bytes: int,
                 fault_categories: dict[Fault, Category], signer: DeviceKey):
        self.agent_id, self.camera, self.model, self.signer = agent_id, camera, model, signer
        self.topics, self.outbox, self.evidence = topics, outbox, evidence
        self.store = TicketStore(outbox)
        self.settings, self.chunk_bytes = settings, chunk_bytes
        self.zones = {z.zone.id: z.zone for z in camera.zones} | {CAMERA_ZONE: WHOLE_PICTURE}
        self.categories = ({(z.zone.id, z.rule_type): z.category for z in camera.zones}
                           | {(CAMERA_ZONE, f.value): c for f, c in fault_categories.items()})
        self._lock = threading.RLock()
        self._mutes = self._load_mutes()
        self._ground: dict[tuple[int, int], GroundCalibration | None] = {}  # the calibration per picture size
        # Told every ticket message as it is stored, whichever thread stores it (rule events,
        # clips attached later, commands): what `replay` and `run --print-tickets` print.
        self.on_message: Callable[[dict], None] | None = None

    def use_zones(self, zones: list[Zone]) -> None:
        """The zones as the pipeline scaled them to the stream's picture, drawn on ticket pictures."""
        self.zones = {z.id: z for z in zones} | {CAMERA_ZONE: WHOLE_PICTURE}

    # --- reading ------------------------------------------------------------------------------
    def get(self, ticket_id: str) -> Ticket:
        ticket = self.store.get(ticket_id)
        if ticket is None or ticket.camera != self.camera.id:
            raise TicketError("unknown_ticket", f"no ticket {ticket_id} on camera {self.camera.id}")
        return ticket

    def latest(self, zone: str, rule: str) -> Ticket | None:
        """The most recently created ticket of a zone's rule, whatever its status."""
        return self.store.latest(self.camera.id, zone, rule)

    def muted_until(self, zone: str, rule: str, now: float) -> float | None:
        """Asked for every zone on every analysed frame, so it reads a copy of the mutes table that
        is reloaded only when a command changes it, not the database."""
        untils = [until for (z, r), until in self._mutes.items()
                  if z in (zone, ANY) and r in (rule, ANY) and until > now]
        return max(untils, default=None)

    def _load_mutes(self) -> dict[tuple[str, str], float]:
        return self.store.mutes(self.camera.id)

    # --- rule events --------------------------------------------------------------------------
    def on_rule_event(self, event: RuleEvent, image: np.ndarray, detections: Detections,
                      pictures: dict[str, np.ndarray] | None = None) -> dict | None:
        """Turn a rule's event into a ticket message; None when it says nothing new.

        ``detections``: the frame's, whose people are hidden in every picture that is sent
        (agent/privacy.py, as the zone's privacy says). ``pictures``: extra evidence a rule
        renders from the frame for its opened/updated messages, by kind (the crowd rule's heat
        map), the frame's size: the same regions are hidden in them.
        """
        privacy = self.camera.privacy_for(event.zone)
        hidden = regions(detections, privacy, image.shape)

        # Hidden only for the messages that send pictures: an update (a crowd's count) sends the
        # frame not at all, and a rule may say something the book ignores.
        def public_pictures() -> dict[str, np.ndarray]:
            return {kind: obscure(_frame_sized(kind, picture, image), hidden, privacy)
                    for kind, picture in (pictures or {}).items()}

        with self._lock:
            latest = self.latest(event.zone, event.rule)
            if event.kind is EventKind.OPENED:
                return self._opened(event, image, obscure(image, hidden, privacy), latest, public_pictures())
            if latest is None or latest.status is not Status.OPEN:
                return None  # closed or rejected meanwhile, or opened before a restart and cleared since
            if event.kind is EventKind.UPDATED:
                changed = sorted(k for k, v in event.facts.items() if latest.doc["facts"].get(k) != v)
                return self._send(latest, "updated", Status.OPEN, event.ts, facts=event,
                                  evidence=self._pictures(latest.id, public_pictures()),
                                  reasons=changed or ["update"])
            public = obscure(image, hidden, privacy)
            snapshot = self._snapshot(latest.id, "snapshot_after", public, event, "(last seen)")
            return self._send(latest, "cleared", Status.CLEARED, event.ts, facts=event, evidence=[snapshot])

    def _pictures(self, ticket_id: str, pictures: dict[str, np.ndarray]) -> list[Evidence]:
        return [self.evidence.save_jpeg(ticket_id, kind, picture) for kind, picture in pictures.items()]

    def _opened(self, event: RuleEvent, image: np.ndarray, public: np.ndarray, latest: Ticket | None,
                pictures: dict[str, np.ndarray]) -> dict | None:
        if latest is not None and latest.status is Status.OPEN:
            return None  # opened before a restart: the same condition, still the same ticket
        if (latest is not None and latest.status is Status.CLEARED
                and event.ts - latest.changed_at <= self.settings.reopen_window_s):
            snapshot = self._snapshot(latest.id, "snapshot", public, event)
            return self._send(latest, "reopened", Status.OPEN, event.ts, facts=event,
                              evidence=[snapshot, *self._pictures(latest.id, pictures)], reasons=["returned"])
        ticket_id = uuid.uuid4().hex
        # The raw frame stays on the box (never published): if the platform rejects the ticket it
        # becomes a hard negative for training.
        self.evidence.save_jpeg(ticket_id, "frame", image)
        snapshot = self._snapshot(ticket_id, "snapshot", public, event)
        doc = self._first_document(ticket_id, event, image.shape)
        return self._send(Ticket(ticket_id, self.camera.id, event.zone, event.rule, Status.OPEN, event.ts, doc), "opened",
                          Status.OPEN, event.ts, evidence=[snapshot, *self._pictures(ticket_id, pictures)])

    def _snapshot(self, ticket_id: str, kind: str, image: np.ndarray, event: RuleEvent, note: str = "") -> Evidence:
        label = f"{event.label} {note}".strip()
        picture = annotate(image, self.zones[event.zone], event.boxes, [label] * len(event.boxes))
        return self.evidence.save_jpeg(ticket_id, kind, picture)

    # --- evidence that comes later ------------------------------------------------------------
    def attach(self, ticket_id: str, item: Evidence, ts: float) -> dict | None:
        """Add evidence to a ticket (e.g. the clip once its post-roll is recorded): ``updated``."""
        with self._lock:
            ticket = self.get(ticket_id)
            if ticket.status in ENDED:
                return None
            return self._send(ticket, "updated", ticket.status, ts, evidence=[item], reasons=["evidence"])

    # --- platform commands --------------------------------------------------------------------
    def record_step(self, ticket_id: str, step: str, ts: float, case_id: str | None = None) -> Ticket:
        """ack / dispatched / handled: remembered on the ticket; no message (the platform knows)."""
        with self._lock:
            ticket = self.get(ticket_id)
            if ticket.status in ENDED:
                raise TicketError("not_allowed", f"ticket {ticket_id} is {ticket.status.value}")
            doc = dict(ticket.doc)
            if PLATFORM_STEPS.index(step) > PLATFORM_STEPS.index(doc["platform_state"]):
                doc["platform_state"] = step
            if case_id:
                doc.setdefault("facts", {})["case_id"] = case_id
            with self.outbox.transaction(ts) as tx:
                self.store.save(tx, ticket, ticket.status, ts, doc)
            return self.get(ticket_id)

    def verify(self, ticket_id: str, ts: float, image: np.ndarray, detections: Detections,
               boxes: np.ndarray | None) -> tuple[str, dict]:
        """The platform's 核查: ``boxes`` is what the zone's rule sees now (None: nothing) in
        ``image``, whose ``detections`` say where the people to hide are."""
        with self._lock:
            ticket = self.get(ticket_id)
            if ticket.status in ENDED:
                raise TicketError("not_allowed", f"ticket {ticket_id} is {ticket.status.value}")
            result = "verified_cleared" if boxes is None else "still_present"
            shown = np.zeros((0, 4), np.float32) if boxes is None else boxes
            public = anonymise(image, detections, self.camera.privacy_for(ticket.zone))
            picture = annotate(public, self.zones[ticket.zone], shown, [ticket.doc["class"]] * len(shown))
            snapshot = self.evidence.save_jpeg(ticket_id, "snapshot_verify", picture)
            verification = {"result": result, "time": iso_utc(ts)}
            if result == "verified_cleared":
                doc = self._send(ticket, "closed", Status.CLOSED, ts, evidence=[snapshot], reasons=["verify"],
                                 verification=verification)
            else:
                doc = self._send(ticket, "updated", ticket.status, ts, evidence=[snapshot], reasons=["verify"],
                                 verification=verification)
            return result, doc

    def reject(self, ticket_id: str, ts: float, mute_s: float | None) -> dict:
        """二次甄别 said false positive: close as rejected, mute similar tickets, keep a hard negative."""
        with self._lock:
            ticket = self.get(ticket_id)
            if ticket.status in ENDED:
                raise TicketError("not_allowed", f"ticket {ticket_id} is {ticket.status.value}")
            duration = self.settings.reject_mute_s if mute_s is None else mute_s
            doc = self._send(ticket, "rejected", Status.REJECTED, ts, reasons=["platform_rejected"],
                             mute=(ticket.zone, ticket.rule, ts + duration))
            self._keep_hard_negative(ticket)
            return doc

    def mute(self, zone: str | None, until: float, ts: float) -> None:
        self._check_zone(zone)
        with self.outbox.transaction(ts) as tx:
            self.store.set_mute(tx, self.camera.id, zone or ANY, ANY, until)
        self._mutes = self._load_mutes()

    def unmute(self, zone: str | None, ts: float) -> None:
        self._check_zone(zone)
        with self.outbox.transaction(ts) as tx:
            self.store.unmute(tx, self.camera.id, zone)
        self._mutes = self._load_mutes()

    def _check_zone(self, zone: str | None) -> None:
        if zone is not None and (zone not in self.zones or zone == CAMERA_ZONE):
            raise TicketError("unknown_zone", f"camera {self.camera.id} has no zone {zone!r}")

    def _keep_hard_negative(self, ticket: Ticket) -> None:
        folder = self.evidence.root.parent / "hard_negatives" / ticket.id
        folder.mkdir(parents=True, exist_ok=True)
        frame = self.evidence.folder(ticket.id) / "frame.jpg"
        if frame.is_file():
            (folder / "frame.jpg").write_bytes(frame.read_bytes())
        (folder / "boxes.json").write_text(json.dumps(
            {"camera": self.camera.id, "zone": ticket.zone, "rule": ticket.rule, "class": ticket.doc["class"],
             "boxes": ticket.doc["boxes"], "frame_size": ticket.doc["frame_size"]}, ensure_ascii=False))
        log_event(log, "hard_negative_saved", camera=self.camera.id, ticket=ticket.id, folder=folder)

    # --- messages that are not tickets -------------------------------------------------------
    def send_telemetry(self, zone: str, rule: str, ts: float, values: dict, expiry_s: int) -> None:
        """Periodic numbers (crowd counts): stored like everything else, but dropped unsent once
        older than ``expiry_s`` (the sender checks), so an outage does not end in a flood of stale
        counts."""
        doc = {"schema": "edge-agent/telemetry", "schema_version": SCHEMA_VERSION, "agent_id": self.agent_id,
               "camera_id": self.camera.id, "zone_id": zone, "rule": rule, "time": iso_utc(ts), **values}
        with self.outbox.transaction(ts) as tx:
            tx.add(OutMessage(self.topics.telemetry(self.camera.id, rule), "telemetry", "application/json",
                              payload=json.dumps(doc, ensure_ascii=False).encode(),
                              props=MessageProps(expiry_s=expiry_s)))

    def send_alarm(self, ticket: dict, ts: float, topic: str | None = None) -> None:
        """A local alarm for devices on site (a lift's speaker, a barrier): the ticket, on its own topic."""
        alarm = {"schema": "edge-agent/alarm", "schema_version": SCHEMA_VERSION, "ticket_id": ticket["ticket_id"],
                 "agent_id": self.agent_id, "camera_id": self.camera.id, "zone_id": ticket["zone_id"],
                 "rule": ticket["rule"], "time": ticket["event_time"], "class": ticket["class"]}
        with self.outbox.transaction(ts) as tx:
            tx.add(OutMessage(topic or self.topics.alarm(self.camera.id), "alarm", "application/json", ticket["ticket_id"],
                              payload=json.dumps(alarm, ensure_ascii=False).encode()))

    # --- messages -----------------------------------------------------------------------------
    def _first_document(self, ticket_id: str, event: RuleEvent, shape: tuple) -> dict:
        cam = self.camera
        doc = {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "ticket_id": ticket_id,
            "seq": 0,
            "event": "opened",
            "status": Status.OPEN.value,
            "platform_state": "new",
            "event_time": iso_utc(event.ts),
            "agent_id": self.agent_id,
            "camera_id": cam.id,
            "camera_name": cam.name,
            "zone_id": event.zone,
            "rule": event.rule,
            "category": self.categories[(event.zone, event.rule)].as_dict(),
            "class": event.label,
            "confidence": round(event.confidence, 4),
            "first_seen": iso_utc(event.first_seen),
            "last_seen": iso_utc(event.last_seen),
            "frame_size": [int(shape[1]), int(shape[0])],
            "boxes": _boxes(event.boxes),
            "facts": dict(event.facts),
            "location": self._location(event, shape),
            "model": {"name": self.model.name, "sha256": self.model.sha256},
            "evidence": [],
        }
        if cam.gb28181 is not None:  # where the platform pulls the camera's live picture
            doc["gb28181"] = cam.gb28181.as_dict()
        return doc

    def _location(self, event: RuleEvent, shape: tuple) -> dict:
        """Where the ticket is: the camera's configured lat/lon; on a calibrated camera the ground
        under the event's one box (its bottom centre, where it stands) or, for events of several
        boxes or none (a crowd, a row of bikes), the zone's centroid on the ground, with the
        camera's own position and the calibration kept beside it (docs/messages.md)."""
        cam = self.camera
        location = {"lat": cam.lat, "lon": cam.lon, "grid_code": cam.grid_code}
        if cam.datum is not None:
            location["datum"] = cam.datum.value
        if cam.calibration is None:
            return location
        location |= {"position": "camera", "camera": {"lat": cam.lat, "lon": cam.lon},
                     "calibration": {"version": cam.calibration.version, "rms_px": round(cam.calibration.rms_px, 2)}}
        ground = self._ground_for(cam.calibration, (int(shape[1]), int(shape[0])))
        if ground is None or event.zone == CAMERA_ZONE:
            return location  # a camera fault is about the camera
        try:
            if len(event.boxes) == 1:
                (x, y), = bottom_centres(event.boxes)
                position, (lat, lon) = "object", ground.to_lat_lon(float(x), float(y))
            else:
                position, (lat, lon) = "zone", ground.frame.to_lat_lon(*ground.centroid_m(self.zones[event.zone].polygon))
        except CalibrationError as exc:  # a box or zone reaching above the horizon
            log_event(log, "ground_position_unknown", level=logging.WARNING, camera=cam.id, zone=event.zone,
                      reason=str(exc))
            return location
        return location | {"lat": round(lat, 7), "lon": round(lon, 7), "position": position}

    def _ground_for(self, calibration: GroundCalibration, size: tuple[int, int]) -> GroundCalibration | None:
        """The calibration scaled to the stream's picture size, worked out once per size; None
        (and said once) when it cannot be: tickets then carry the camera's position."""
        if size not in self._ground:
            try:
                self._ground[size] = calibration.for_frame_size(size)
            except CalibrationError as exc:
                log_event(log, "calibration_unusable", level=logging.WARNING, camera=self.camera.id,
                          reason=str(exc))
                self._ground[size] = None
        return self._ground[size]

    def _send(self, ticket: Ticket, event: str, status: Status, ts: float, *, facts: RuleEvent | None = None,
              evidence: Sequence[Evidence] = (), reasons: Sequence[str] = (), verification: dict | None = None,
              mute: tuple[str, str, float] | None = None) -> dict:
        """Store the next message about ``ticket`` (state change, message, evidence rows) atomically."""
        doc = dict(ticket.doc)
        doc.update(event=event, status=status.value, event_time=iso_utc(ts))
        doc.pop("reason", None)
        doc.pop("reasons", None)
        if reasons:
            # The joined string is what 1.0 consumers read; the list is the same, unparsed.
            doc.update(reason=",".join(reasons), reasons=list(reasons))
        if facts is not None:
            doc.update(last_seen=iso_utc(facts.last_seen), facts={**doc["facts"], **facts.facts})
            if len(facts.boxes):
                doc.update(boxes=_boxes(facts.boxes), confidence=round(facts.confidence, 4), **{"class": facts.label})
        if verification:
            doc["verification"] = verification
        topics = {item.kind: self.topics.evidence(self.camera.id, ticket.id, item.kind) for item in evidence}
        named = {e["kind"]: e for e in doc["evidence"]}
        named.update({item.kind: item.describe(topics[item.kind], self.chunk_bytes) for item in evidence})
        doc["evidence"] = list(named.values())
        with self.outbox.transaction(ts) as tx:
            doc["seq"] = tx.next_counter(TICKET_SEQ)
            self.store.save(tx, ticket, status, ts, doc)
            # Signed as sent; the stored doc stays unsigned, it is the base of the next message.
            tx.add(OutMessage(self.topics.tickets(self.camera.id), "ticket", "application/json", ticket.id,
                              payload=json.dumps(self.signer.sign(doc), ensure_ascii=False).encode()))
            for item in evidence:
                for message in item.messages(topics[item.kind], ticket.id, self.chunk_bytes):
                    tx.add(message)
            if mute is not None:
                self.store.set_mute(tx, self.camera.id, *mute)
        if mute is not None:
            self._mutes = self._load_mutes()
        log_event(log, f"ticket_{event}", camera=self.camera.id, zone=ticket.zone, rule=ticket.rule,
                  ticket=ticket.id, seq=doc["seq"], status=status.value, label=doc["class"],
                  confidence=doc["confidence"], evidence=",".join(str(item.path) for item in evidence) or "-")
        if self.on_message is not None:
            self.on_message(doc)
        return doc


def _frame_sized(kind: str, picture: np.ndarray, frame: np.ndarray) -> np.ndarray:
    # The people's boxes are in frame pixels: a picture of another size could not be anonymised.
    if picture.shape[:2] != frame.shape[:2]:
        raise ValueError(f"picture {kind!r} is {picture.shape[1]}x{picture.shape[0]}, "
                         f"the frame {frame.shape[1]}x{frame.shape[0]}: its people cannot be hidden")
    return picture


def _boxes(boxes: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 1) for v in box] for box in boxes]
