"""Detection on crops of the frame, for small objects: zone crops and a per-camera grid.

A 416x416 detector input shrinks a 1280x720 frame about 3 times: a parked bicycle 60 px tall
becomes 20 px and disappears. Running the detector on crops of the frame, their boxes shifted back
to frame coordinates and merged with the full-frame pass by NMS (the SAHI recipe), shows such
objects to it larger. How much larger matters: NanoDet-g 416 finds a bicycle only once it is about
100 px tall in its input; a 60 px bike on a real background gets nothing at native resolution
(crops of 416 frame pixels) and 0.33-0.5 magnified 2x (crops of 208), so zone crops default to
half the input side. Two ways to choose the crops, one merge:

- **Zone crops** (``[zone_crops]``, on by default): only around the zones of rules that declare
  ``Need.SMALL_OBJECTS`` (parked bikes), once a second: often enough for the tracker to keep a
  parked bike's track (it holds a track unmatched for ``lost_s``, 2 s). A zone that fits in one
  crop costs one extra inference; a large zone is covered by overlapping crops.
- **Grid** (``[tiling]``, off by default): the whole frame cut into columns x rows overlapping
  tiles, for wide views where small objects can be anywhere. Measured with NanoDet-g on real
  webcam frames: 2x2 tiles plus the full frame raised people found from 28 to 44 of 80 and parked
  bicycles in dense rows from 0 to 14, at ~5x the cost; so every few seconds (``every_s``), not
  every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.detect import Detector, nms
from agent.typedtoml import setting
from agent.types import Detections
from agent.zones import Zone

Rect = tuple[int, int, int, int]  # x, y, w, h in frame pixels

# A crop's box within this many pixels of a crop edge inside the frame is a cut-off piece of an
# object that reaches beyond the crop (the detector clips boxes to its input): the full-frame pass
# or the neighbouring crop sees that object whole, so the piece is dropped rather than merged.
EDGE_PX = 2


@dataclass(frozen=True)
class TilingParams:
    columns: int = setting(2, ge=1, le=8)
    rows: int = setting(2, ge=1, le=8)
    overlap: float = setting(0.2, ge=0, le=0.5, help="Fraction of a tile shared with its neighbour")
    full_frame: bool = setting(True, help="Also run on the whole frame, for objects larger than a tile")
    every_s: float = setting(5.0, ge=0, help="Tiled detection at most this often; plain detection in between")


@dataclass(frozen=True)
class ZoneCropParams:
    enabled: bool = setting(
        True, help="Also detect on crops around the zones of rules that look for small objects "
                   "(misparked_bikes): one extra inference per crop")
    every_s: float = setting(
        1.0, ge=0,
        help="Zone crops at most this often (0: every analysed frame). 1 s is every other frame at "
             "2 fps, within the tracker's lost_s, so a parked bike keeps its track: measured, 6 of "
             "36 parked 60-80 px bikes became stationary tracks against 7 of 36 every frame, at "
             "half the cost")
    scale: float = setting(
        0.5, ge=0.25, le=4,
        help="Crop side as a multiple of the model's input side, in frame pixels. 0.5 shows the "
             "model the zone magnified 2x: NanoDet-g 416 finds a bike only when it is about 100 px "
             "tall in its input (a 60 px bike: nothing at 1x, 0.33-0.5 at 2x); 1 costs a quarter "
             "of the crops")
    margin_px: int = setting(
        64, ge=0, le=1000,
        help="The zone's bounding box grows by this up and sideways (and a quarter of it down) "
             "before it is covered: an object with its bottom centre in the zone rises above it "
             "and hangs over its sides, and a crop keeps only objects it holds whole")
    overlap: float = setting(
        0.2, ge=0, le=0.5, help="Least fraction of a crop shared with its neighbour when a zone needs several")


def tile_rects(width: int, height: int, params: TilingParams) -> list[Rect]:
    """x, y, w, h of each grid tile; neighbours overlap by ``overlap`` of a tile."""
    tile_w = width / (params.columns - (params.columns - 1) * params.overlap)
    tile_h = height / (params.rows - (params.rows - 1) * params.overlap)
    rects = []
    for row in range(params.rows):
        for col in range(params.columns):
            x = round(col * tile_w * (1 - params.overlap))
            y = round(row * tile_h * (1 - params.overlap))
            rects.append((x, y, min(round(tile_w), width - x), min(round(tile_h), height - y)))
    return rects


def _starts(lo: float, hi: float, size: int, limit: int, overlap: float) -> list[int]:
    """Starts of windows ``size`` long inside [0, limit) that cover [lo, hi), neighbours sharing
    at least ``overlap`` of a window; one window centred on the span when it fits in one."""
    span = hi - lo
    if span <= size:
        return [min(max(round((lo + hi - size) / 2), 0), limit - size)]
    count = math.ceil((span - size * overlap) / (size * (1 - overlap)))
    step = (span - size) / (count - 1)
    return [min(max(round(lo + i * step), 0), limit - size) for i in range(count)]


def zone_crop_rects(width: int, height: int, zones: list[Zone], input_size: tuple[int, int],
                    params: ZoneCropParams) -> list[Rect]:
    """x, y, w, h of the crops covering each zone (grown by ``margin_px``), inside the frame.

    Empty when the frame is no larger than a crop: the full-frame pass already runs at native
    resolution or finer.
    """
    crop_w = min(round(input_size[0] * params.scale), width)
    crop_h = min(round(input_size[1] * params.scale), height)
    if crop_w == width and crop_h == height:
        return []
    rects: list[Rect] = []
    for zone in zones:
        x, y, w, h = zone.bounds()
        grow = params.margin_px
        x0, x1 = max(x - grow, 0), min(x + w + grow, width)
        y0, y1 = max(y - grow, 0), min(y + h + grow / 4, height)
        for top in _starts(y0, y1, crop_h, height, params.overlap):
            for left in _starts(x0, x1, crop_w, width, params.overlap):
                rect = (left, top, crop_w, crop_h)
                if rect not in rects:  # zones close together share crops
                    rects.append(rect)
    return rects


def detect_regions(detector: Detector, image: np.ndarray, rects: list[Rect], full_frame: bool = True) -> Detections:
    """The detector on each rect (and on the whole frame), boxes in frame coordinates, merged by NMS."""
    height, width = image.shape[:2]
    parts = [detector.detect(image)] if full_frame else []
    for x, y, w, h in rects:
        found = detector.detect(image[y:y + h, x:x + w])
        xyxy = found.xyxy
        if full_frame:
            inner = np.array([x > 0, y > 0, x + w < width, y + h < height])
            cut = ((xyxy[:, :2] <= EDGE_PX) & inner[:2]) | ((xyxy[:, 2:] >= [w - EDGE_PX, h - EDGE_PX]) & inner[2:])
            found = found[~cut.any(axis=1)]
        offset = np.array([x, y, x, y], np.float32)
        parts.append(Detections(found.xyxy + offset, found.score, found.class_id, detector.class_names))
    xyxy = np.concatenate([p.xyxy for p in parts])
    score = np.concatenate([p.score for p in parts])
    class_id = np.concatenate([p.class_id for p in parts])
    keep = nms(xyxy, score, class_id, detector.min_score, detector.nms_iou)
    return Detections(xyxy[keep], score[keep], class_id[keep], detector.class_names)


def detect_tiled(detector: Detector, image: np.ndarray, params: TilingParams) -> Detections:
    height, width = image.shape[:2]
    return detect_regions(detector, image, tile_rects(width, height, params), params.full_frame)


class Tiler:
    """One camera's detection step: the full frame, plus zone crops and grid tiles when due."""

    def __init__(self, grid: TilingParams | None, crops: ZoneCropParams | None, crop_zones: list[Zone],
                 input_size: tuple[int, int]):
        self.grid = grid
        self.crops = crops if crops is not None and crops.enabled and crop_zones else None
        self.crop_zones, self.input_size = crop_zones, input_size
        self._grid_at = self._crops_at = float("-inf")
        self._crop_rects: dict[tuple[int, int], list[Rect]] = {}  # by frame size, known at the first frame

    def crop_rects(self, width: int, height: int) -> list[Rect]:
        if self.crops is None:
            return []
        if (width, height) not in self._crop_rects:
            self._crop_rects[(width, height)] = zone_crop_rects(width, height, self.crop_zones,
                                                                self.input_size, self.crops)
        return self._crop_rects[(width, height)]

    def detect(self, detector: Detector, image: np.ndarray, ts: float) -> Detections:
        height, width = image.shape[:2]
        rects: list[Rect] = []
        full_frame = True
        if self.grid is not None and ts - self._grid_at >= self.grid.every_s:
            self._grid_at = ts
            rects += tile_rects(width, height, self.grid)
            full_frame = self.grid.full_frame
        if self.crops is not None and ts - self._crops_at >= self.crops.every_s:
            self._crops_at = ts
            crops = self.crop_rects(width, height)
            rects += crops
            full_frame = full_frame or bool(crops)  # crops drop cut-off pieces: the whole frame has them
        if not rects:
            return detector.detect(image)
        return detect_regions(detector, image, rects, full_frame)
