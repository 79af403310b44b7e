"""Static blobs: class-agnostic new objects that stay still, against a learned background
(agent/scene.py), in the part of the picture around the zones whose rules need them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from agent.analysers import register_analyser
from agent.scene import SceneModel
from agent.types import MOVER_CLASSES, Detections, Frame, Need, StaticBlob
from agent.zones import Zone

if TYPE_CHECKING:
    from agent.config import CameraConfig

MOVERS = frozenset(MOVER_CLASSES)
# The scene model's crop reaches this far past the zones (and four times as far up, where an
# object standing in the zone rises): a blob is tested by its bottom centre only.
ZONE_MARGIN_PX = 16


@register_analyser(Need.STATIC_BLOBS)
class StaticBlobAnalyser:
    def __init__(self, camera: CameraConfig, zones: list[Zone]):
        self.region = _joint_bounds(zones)  # x0, y0, x1, y1: the part of the picture the scene model watches
        self.scene = SceneModel(camera.scene, region=self.region)

    def update(self, frame: Frame, detections: Detections) -> tuple[StaticBlob, ...]:
        # People and vehicles are the detector's and tracker's business: the scene model must
        # neither report them nor learn them into its background.
        movers = detections[detections.of_classes(MOVERS)].xyxy
        return tuple(self.scene.update(frame.ts, frame.image, movers))


def _joint_bounds(zones: list[Zone]) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 around every zone, grown by a margin: a blob's box may reach beyond the
    polygon (only its bottom centre must lie inside), and the scene model works on this part of
    the frame only."""
    rects = np.array([zone.bounds() for zone in zones], np.int64)
    x0, y0 = rects[:, 0].min(), rects[:, 1].min()
    x1, y1 = (rects[:, 0] + rects[:, 2]).max(), (rects[:, 1] + rects[:, 3]).max()
    margin = ZONE_MARGIN_PX
    return int(x0 - margin), int(y0 - 4 * margin), int(x1 + margin), int(y1 + margin)
