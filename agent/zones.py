"""Zones: polygons in pixel coordinates of one camera's picture."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, eq=False)
class Zone:
    id: str
    polygon: np.ndarray  # (K, 2) float32, K >= 3, pixel coordinates

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of the (N, 2) ``points`` that lie inside or on the polygon."""
        contour = self.polygon.reshape(-1, 1, 2)
        return np.array(
            [cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0 for x, y in points], dtype=bool
        )

    def bounds(self) -> tuple[int, int, int, int]:
        """x, y, w, h of the polygon's bounding rectangle."""
        return cv2.boundingRect(self.polygon.astype(np.int32))
