"""The ticket book: turns rule events into versioned ticket documents with evidence.

One ticket id lives from ``opened`` to ``cleared``; every message carries the agent-wide monotonic
``seq`` and repeats all the fields a consumer needs, so a consumer that missed a message is never
confused. The document's shape is ``agent/schemas/ticket.schema.json``.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from agent.config import CameraConfig
from agent.evidence import EvidenceStore, annotate
from agent.logs import log_event
from agent.outbox import OutMessage, Outbox
from agent.topics import Topics
from agent.types import EventKind, Frame, RuleEvent
from agent.zones import Zone

SCHEMA_ID = "edge-agent/ticket"
SCHEMA_VERSION = "1.0"
TICKET_SEQ = "ticket_seq"

log = logging.getLogger("agent.tickets")


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    sha256: str


class TicketBook:
    """Tickets of one camera. Called from that camera's worker thread only."""

    def __init__(self, agent_id: str, camera: CameraConfig, model: ModelInfo, topics: Topics,
                 outbox: Outbox, evidence: EvidenceStore):
        self.agent_id, self.camera, self.model = agent_id, camera, model
        self.topics, self.outbox, self.evidence = topics, outbox, evidence
        self._open: dict[tuple[str, str], str] = {}  # (zone, rule) -> ticket id

    def handle(self, event: RuleEvent, frame: Frame, zone: Zone) -> dict | None:
        key = (event.zone, event.rule)
        if event.kind is EventKind.OPENED:
            ticket_id = self._open[key] = uuid.uuid4().hex
            snapshot_kind = "snapshot"
        elif key in self._open:
            ticket_id = self._open[key]
            snapshot_kind = "snapshot_after" if event.kind is EventKind.CLEARED else "snapshot"
            if event.kind is EventKind.CLEARED:
                del self._open[key]
        else:
            return None  # an update or clear for a ticket opened before a restart: nothing to say

        # An "after" snapshot marks where the object was last seen, so the reviewer knows where to look.
        label = f"{event.label} (last seen)" if event.kind is EventKind.CLEARED else event.label
        labels = [label] * len(event.boxes)
        snapshot = self.evidence.save_jpeg(ticket_id, snapshot_kind, annotate(frame.image, zone, event.boxes, labels))
        evidence_topic = self.topics.evidence(self.camera.id, ticket_id, snapshot_kind)
        height, width = frame.image.shape[:2]
        with self.outbox.transaction(frame.ts) as tx:
            seq = tx.next_counter(TICKET_SEQ)
            doc = self._document(ticket_id, seq, event, (width, height), [snapshot.describe(evidence_topic)])
            tx.add(OutMessage(self.topics.tickets(self.camera.id), "ticket", "application/json", ticket_id,
                              payload=json.dumps(doc, ensure_ascii=False).encode()))
            tx.add(OutMessage(evidence_topic, "evidence", snapshot.content_type, ticket_id,
                              payload_path=str(snapshot.path)))
        log_event(log, f"ticket_{event.kind.value}", camera=self.camera.id, zone=event.zone, rule=event.rule,
                  ticket=ticket_id, seq=seq, label=event.label, confidence=round(event.confidence, 3),
                  snapshot=snapshot.path)
        return doc

    def _document(self, ticket_id: str, seq: int, event: RuleEvent, frame_size: tuple[int, int],
                  evidence: list[dict]) -> dict:
        cam = self.camera
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "ticket_id": ticket_id,
            "seq": seq,
            "event": event.kind.value,
            "event_time": iso_utc(event.ts),
            "agent_id": self.agent_id,
            "camera_id": cam.id,
            "camera_name": cam.name,
            "zone_id": event.zone,
            "rule": event.rule,
            "class": event.label,
            "confidence": round(event.confidence, 4),
            "first_seen": iso_utc(event.first_seen),
            "last_seen": iso_utc(event.last_seen),
            "frame_size": list(frame_size),
            "boxes": [[round(float(v), 1) for v in box] for box in event.boxes],
            "facts": event.facts,
            "location": {"lat": cam.lat, "lon": cam.lon, "grid_code": cam.grid_code},
            "model": {"name": self.model.name, "sha256": self.model.sha256},
            "evidence": evidence,
        }
