"""Privacy by default: people in evidence pictures are pixelated (or blurred) before they are stored
for sending, so what leaves the box shows where a person was, not who.

Applied to the raw frame before annotation is drawn, so the boxes and labels on top stay readable.
The regions are the detector's person boxes of that frame, grown by a margin: a person the detector
missed is not hidden (docs/security.md gives the measured miss rate).

Faces alone are not detected: opencv-python-headless 5.x ships neither ``CascadeClassifier`` nor
the Haar cascade files, so a face is hidden only as part of its person's box.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque

import cv2
import numpy as np

from agent.analysis_params import PrivacyMode, PrivacyParams  # lives there: config loads without OpenCV
from agent.types import Detections

PEOPLE = frozenset({"person"})
# A block edge of at least 1/8 of the box's shorter side: a face in a 40-px-wide person box becomes
# a couple of flat squares whatever block_px says, and no sharpening brings the detail back.
MIN_BLOCKS_ACROSS = 8


def regions(detections: Detections, params: PrivacyParams, shape: tuple[int, ...]) -> np.ndarray:
    """(N, 4) int pixel boxes to hide in a frame of ``shape``: the person boxes grown by the margin,
    clipped to the frame. Empty when privacy is off."""
    if not params.active or not len(detections):
        return np.zeros((0, 4), np.int32)
    boxes = detections.xyxy[detections.of_classes(PEOPLE)].astype(np.float32)
    return grow(boxes, params.margin, shape)


def grow(boxes: np.ndarray, margin: float, shape: tuple[int, ...]) -> np.ndarray:
    """Boxes grown by ``margin`` of their size on every side, rounded outwards to whole pixels and
    clipped to a frame of ``shape``; boxes left empty are dropped."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    grown = boxes + np.stack([-w, -h, w, h], axis=1) * margin
    out = np.concatenate([np.floor(grown[:, :2]), np.ceil(grown[:, 2:])], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, shape[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, shape[0])
    out = out.astype(np.int32)
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def obscure(image: np.ndarray, boxes: np.ndarray, params: PrivacyParams) -> np.ndarray:
    """A copy of ``image`` with every box pixelated or blurred; ``image`` itself when there is
    nothing to hide (the caller must not modify the result in place then)."""
    if not params.active or not len(boxes):
        return image
    out = image.copy()
    for x1, y1, x2, y2 in boxes:
        patch = out[y1:y2, x1:x2]
        size = max(params.block_px, math.ceil(min(patch.shape[:2]) / MIN_BLOCKS_ACROSS))
        if params.mode is PrivacyMode.PIXELATE:
            out[y1:y2, x1:x2] = _pixelate(patch, size)
        else:
            # Sigma of a block edge: detail finer than a block is gone, as with pixelation.
            out[y1:y2, x1:x2] = cv2.GaussianBlur(patch, (0, 0), sigmaX=size, borderType=cv2.BORDER_REPLICATE)
    return out


def anonymise(image: np.ndarray, detections: Detections, params: PrivacyParams) -> np.ndarray:
    """The picture that may leave the box: ``image`` with the frame's people hidden."""
    return obscure(image, regions(detections, params, image.shape), params)


class PeopleTrail:
    """Where the detector saw people in one camera's recent analysed frames: what a clip, cut from
    the compressed packets with many pictures between two analysed frames, needs to hide them.

    A picture between two analysed frames hides the person boxes of both (a person moving at
    constant speed stays inside the two boxes as long as they overlap); one further than
    ``max_gap_s`` from any analysed frame is not known to be free of people: ``boxes_at`` says
    None, and the whole picture is hidden. The camera thread adds, the clipper reads.
    """

    def __init__(self, keep_s: float, max_gap_s: float):
        self.keep_s, self.max_gap_s = keep_s, max_gap_s
        self._lock = threading.Lock()
        self._ts: deque[float] = deque()
        self._boxes: deque[np.ndarray] = deque()

    def add(self, ts: float, detections: Detections) -> None:
        with self._lock:
            self._ts.append(ts)
            self._boxes.append(detections.xyxy[detections.of_classes(PEOPLE)].astype(np.float32))
            while self._ts and self._ts[0] < ts - self.keep_s:
                self._ts.popleft()
                self._boxes.popleft()

    @property
    def newest_ts(self) -> float | None:
        with self._lock:
            return self._ts[-1] if self._ts else None

    def boxes_at(self, ts: float) -> np.ndarray | None:
        """Person boxes (N, 4) to hide in the picture shown at ``ts``; None: unknown."""
        with self._lock:
            i = bisect.bisect_right(self._ts, ts)  # analysed frames [0, i) are at or before ts
            near = [j for j in (i - 1, i) if 0 <= j < len(self._ts) and abs(self._ts[j] - ts) <= self.max_gap_s]
            if not near:
                return None
            return np.concatenate([self._boxes[j] for j in near]).reshape(-1, 4)


def clip_filter(trail: PeopleTrail, params: PrivacyParams):
    """The picture filter (agent/clips.py) that hides people in a clip's pictures."""
    def hide(picture: np.ndarray, ts: float) -> np.ndarray:
        boxes = trail.boxes_at(ts)
        if boxes is None:
            h, w = picture.shape[:2]
            boxes = np.array([[0, 0, w, h]], np.float32)
        return obscure(picture, grow(boxes, params.margin, picture.shape), params)
    return hide


def _pixelate(patch: np.ndarray, block: int) -> np.ndarray:
    """Each ``block`` x ``block`` square becomes its mean colour (INTER_AREA averages, NEAREST
    paints the squares back)."""
    h, w = patch.shape[:2]
    small = cv2.resize(patch, (max(1, round(w / block)), max(1, round(h / block))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
