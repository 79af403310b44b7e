"""Evidence: annotated snapshots written to the evidence folder before any message names them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.zones import Zone

ZONE_COLOUR = (0, 200, 255)  # BGR amber
BOX_COLOUR = (0, 0, 255)  # BGR red


@dataclass(frozen=True)
class Evidence:
    kind: str  # "snapshot", "snapshot_after", ...
    path: Path
    sha256: str
    size: int
    content_type: str

    def describe(self, topic: str) -> dict:
        """How a ticket names this item."""
        return {"kind": self.kind, "content_type": self.content_type, "sha256": self.sha256,
                "size": self.size, "topic": topic}


def annotate(image: np.ndarray, zone: Zone, boxes: np.ndarray, labels: list[str]) -> np.ndarray:
    """A copy of ``image`` with the zone outline and the boxes that made the event."""
    out = image.copy()
    overlay = out.copy()
    polygon = zone.polygon.astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(overlay, [polygon], ZONE_COLOUR)
    cv2.addWeighted(overlay, 0.15, out, 0.85, 0, dst=out)
    cv2.polylines(out, [polygon], True, ZONE_COLOUR, 2, cv2.LINE_AA)
    x, y, _, _ = zone.bounds()
    cv2.putText(out, zone.id, (x + 4, y + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, ZONE_COLOUR, 2, cv2.LINE_AA)
    for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, 2)
        cv2.putText(out, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, BOX_COLOUR, 1, cv2.LINE_AA)
    return out


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

    def save(self, ticket_id: str, filename: str, kind: str, data: bytes, content_type: str) -> Evidence:
        """Write ``data`` durably: temp file, fsync, rename, so a crash never leaves half a file."""
        folder = self.root / ticket_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / filename
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return Evidence(kind, path, hashlib.sha256(data).hexdigest(), len(data), content_type)
