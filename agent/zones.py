"""Zones: polygons in pixel coordinates of one camera's picture.

A camera file's polygons are pixels of the picture they were drawn on (its ``frame_size``); the
pipeline scales them to the stream's real picture (:meth:`Zone.scaled`) when frames arrive, so a
camera switched to its sub-stream keeps its zones where they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# cv2 is imported inside the methods that use it: agent.config makes zones, and reading the config
# must not load OpenCV (tests/test_config.py).


@dataclass(frozen=True, eq=False)
class Zone:
    id: str
    polygon: np.ndarray  # (K, 2) float32, K >= 3, pixel coordinates
    # Stream pixels per pixel of the picture the polygon was drawn on (x, y): what a rule whose
    # parameters are in drawn pixels (the crowd rule's px_per_m2) divides by.
    scale: tuple[float, float] = (1.0, 1.0)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of the (N, 2) ``points`` that lie inside or on the polygon."""
        import cv2

        contour = self.polygon.reshape(-1, 1, 2)
        return np.array(
            [cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0 for x, y in points], dtype=bool
        )

    def bounds(self) -> tuple[int, int, int, int]:
        """x, y, w, h of the polygon's bounding rectangle."""
        import cv2

        x, y, w, h = cv2.boundingRect(self.polygon.astype(np.int32))
        return x, y, w, h

    def scaled(self, sx: float, sy: float) -> Zone:
        """This zone drawn on a picture ``sx`` times as wide and ``sy`` times as tall."""
        polygon = (self.polygon * np.array([sx, sy], np.float32)).astype(np.float32)
        return Zone(self.id, polygon, (self.scale[0] * sx, self.scale[1] * sy))

    def covers_any(self, width: int, height: int) -> bool:
        """Whether the polygon covers at least one pixel of a ``width`` x ``height`` picture: a
        zone that does not can never see anything."""
        return bool(self.mask(width, height).any())

    def mask(self, width: int, height: int) -> np.ndarray:
        """The polygon rasterised on a ``width`` x ``height`` picture: uint8, 1 inside."""
        import cv2

        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(self.polygon).astype(np.int32).reshape(-1, 1, 2)], 1)
        return mask
