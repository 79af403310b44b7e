"""Evidence: annotated snapshots written to the evidence folder before any message names them."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.files import write_atomically
from agent.outbox import MessageProps, OutMessage
from agent.privacy import PrivacyParams, anonymise
from agent.zones import Zone

ZONE_COLOUR = (0, 200, 255)  # BGR amber
BOX_COLOUR = (0, 0, 255)  # BGR red


@dataclass(frozen=True)
class Evidence:
    kind: str  # "snapshot", "snapshot_after", "clip", ...
    path: Path
    sha256: str
    size: int
    content_type: str
    duration_s: float | None = None  # clips

    def chunks(self, chunk_bytes: int) -> int:
        return max(1, math.ceil(self.size / chunk_bytes))

    def describe(self, topic: str, chunk_bytes: int) -> dict:
        """How a ticket or reply names this item."""
        item = {"kind": self.kind, "content_type": self.content_type, "sha256": self.sha256,
                "size": self.size, "topic": topic}
        if self.chunks(chunk_bytes) > 1:
            item["chunks"] = self.chunks(chunk_bytes)
        if self.duration_s is not None:
            item["duration_s"] = round(self.duration_s, 3)
        return item

    def messages(self, topic: str, ticket_id: str | None, chunk_bytes: int) -> list[OutMessage]:
        """Outbox rows that carry this item: one, or one per chunk, each a slice of the file."""
        count = self.chunks(chunk_bytes)
        if count == 1:
            # The hash rides along as a user property on every item, chunked or not, so a consumer
            # can dedupe and match evidence before parsing anything.
            return [OutMessage(topic, "evidence", self.content_type, ticket_id, payload_path=str(self.path),
                               props=MessageProps(user=(("sha256", self.sha256),)))]
        return [
            OutMessage(topic, "evidence", self.content_type, ticket_id, payload_path=str(self.path),
                       payload_offset=i * chunk_bytes, payload_length=chunk_bytes,
                       props=MessageProps(user=(("chunk", f"{i + 1}/{count}"), ("sha256", self.sha256))))
            for i in range(count)
        ]


def annotate(image: np.ndarray, zone: Zone, boxes: np.ndarray, labels: list[str]) -> np.ndarray:
    """A copy of ``image`` with the zone outline and the boxes that made the event."""
    return annotate_zones(image, [zone], boxes, labels)


def annotate_detections(image: np.ndarray, zones: list[Zone], detections) -> np.ndarray:
    """A spot-check picture: the zone outlines and everything the detector sees now."""
    labels = [f"{name} {score:.2f}" for name, score in zip(detections.names(), detections.score)]
    return annotate_zones(image, zones, detections.xyxy, labels)


def spot_check(image: np.ndarray, zones: list[Zone], detections, privacy: PrivacyParams) -> np.ndarray:
    """A spot-check picture as it may leave the box: people hidden as the camera's ``privacy``
    says (a spot check is no enforcement evidence: never a zone's override), then the zone
    outlines and everything the detector sees."""
    return annotate_detections(anonymise(image, detections, privacy), zones, detections)


def annotate_zones(image: np.ndarray, zones: list[Zone], boxes: np.ndarray, labels: list[str]) -> np.ndarray:
    out = image.copy()
    for zone in zones:
        _draw_zone(out, zone)
    for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, 2)
        cv2.putText(out, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, BOX_COLOUR, 1, cv2.LINE_AA)
    return out


def _draw_zone(out: np.ndarray, zone: Zone) -> None:
    overlay = out.copy()
    polygon = zone.polygon.astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(overlay, [polygon], ZONE_COLOUR)
    cv2.addWeighted(overlay, 0.15, out, 0.85, 0, dst=out)
    cv2.polylines(out, [polygon], True, ZONE_COLOUR, 2, cv2.LINE_AA)
    x, y, _, _ = zone.bounds()
    cv2.putText(out, zone.id, (x + 4, y + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, ZONE_COLOUR, 2, cv2.LINE_AA)


class EvidenceStore:
    def __init__(self, root: Path, jpeg_quality: int = 85):
        self.root = root
        self.jpeg_quality = jpeg_quality
        root.mkdir(parents=True, exist_ok=True)

    def save_jpeg(self, ticket_id: str, kind: str, image: np.ndarray) -> Evidence:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {ticket_id}/{kind}")
        return self.save(ticket_id, f"{kind}.jpg", kind, buf.tobytes(), "image/jpeg")

    def save(self, ticket_id: str, filename: str, kind: str, data: bytes, content_type: str,
             duration_s: float | None = None) -> Evidence:
        """Write ``data`` durably: temp file, fsync, rename, so a crash never leaves half a file."""
        folder = self.root / ticket_id
        folder.mkdir(parents=True, exist_ok=True)
        path = _unused(folder / filename)
        write_atomically(path, data)
        return Evidence(kind, path, hashlib.sha256(data).hexdigest(), len(data), content_type, duration_s)

    def folder(self, ticket_id: str) -> Path:
        return self.root / ticket_id


def _unused(path: Path) -> Path:
    """Evidence files are never overwritten: a stored message may still name the first one (a
    reopened ticket's second snapshot becomes snapshot-2.jpg)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
