"""Static new objects on a fixed camera, whatever their class: dumped rubbish, an abandoned bag, a
stall set up on the pavement. The detector knows 80 COCO classes; this finds anything that was not
there before and has stopped moving. People and vehicles are the tracker's business: their boxes
are passed in and masked here.

Two running-average backgrounds of a downscaled colour picture (``cv2.accumulateWeighted``, with
learning rates from time constants in seconds, so they behave the same at any analysis rate):

- the **fast** one follows the picture within a second or two, so a pixel that matches it is not
  changing right now;
- the **slow** one adapts over minutes, and only where the picture is still and no box covers
  it (``accumulateWeighted``'s mask): a person waiting at a crossing is never learned into it,
  and neither is a reported static object.

A pixel that differs from the slow background but matches the fast one is a static-new candidate.
A counter image holds seconds per pixel: up while the pixel is a candidate, down while it is
foreground but changing (someone walking past the object costs it the seconds it was hidden, not
its whole count), and reset as soon as the pixel matches the slow background again, which is how
a removed object clears: on the first frame without it. Under the (grown) ``mask_boxes`` the
counters keep their value. Pixels counted for ``min_static_s`` form connected components, which
become :class:`StaticBlob` with ids kept across frames by IoU with the previous frame's blobs.

Choices and their costs:

- **Two running averages, not two MOG2.** ``accumulateWeighted`` takes a mask, MOG2's ``apply``
  does not, and not learning under people and under reported objects is the point. One mean per
  pixel suits a fixed street camera; swaying trees and water are where MOG2's mixture would do
  better, and where false blobs will come from (keep them out with zones).
- **Colour, not grey:** a green bin on a red-brick pavement has about the brick's brightness.
  The difference is the largest over B, G and R.
- **A global gain instead of a faster slow model.** Auto exposure or a cloud changes every pixel
  by about the same factor within seconds, far faster than the slow model follows. The slow
  model is compared after scaling it by the per-channel median ratio of picture to background,
  so a +-20% brightness ramp over a minute gives no blob. Local light changes (a shadow moving
  in, a street lamp switching on) still do, until ``absorb_after_s``.
- **Per-pixel warm-up.** The slow model starts from the first picture, which has people in it.
  Every pixel is copied from the picture until it has been seen still and uncovered for
  ``warmup_s``, so places people walk away from are learned as they are revealed, and a car
  parked (and detected) at start-up leaves no ghost when it drives off. Objects already there
  during a pixel's warm-up are background.
- **Ghosts of removed objects.** When something the slow model holds goes away (an undetected
  object present at start-up, the hem of a coat learned at the edge of a person's box, tape
  moved by the wind), the uncovered ground differs from the slow background and is still. Its
  outline is then an edge of the background, not of the picture, which is how it is told from
  a new object and learned at once (``ghost_edge_ratio``). Ghosts whose outline runs along
  strong texture in both can still pass for objects until ``absorb_after_s``.
- **Light and ground that changes.** A blob is dropped, and its stillness restarted, when it is
  a change of light (its ring lit alike, see ``light_change``; near-white that stays white),
  coloured ground that kept its hue (trampled or wet grass, ``same_ground_hue_deg``), or a thing
  of the background that answers the light its own way but keeps its pattern (a white plastic
  sheet near the sensor's clipping point, ``relit_correlation``). Restarted, because one frame
  judged wrongly must not report a blob with all the seconds it was still. The cost of the last:
  litter dropped onto such a thing merges with its blob while the light differs, and waits.
- **Masked pixels are frozen, not reset:** a parked car that the detector misses in one frame
  out of ten would accumulate static seconds in those frames, and after about ten times
  ``min_static_s`` become a blob. Rules should ignore blobs under stationary vehicle tracks.
- **Blob boxes are pixel extents** at the working resolution (one working pixel is 2.4 frame
  pixels at 768x576) after a 3x3 closing, so they are up to a few pixels larger than the object,
  and include its shadow when it casts one (a pasted object in the tests has none).

Cost, measured on this project's 2-core x86_64 box (2026-12-02, load about 1): a median of 14 ms
of CPU per vtest frame for the ground below y 150 at full resolution (327 000 px), 18 ms for the
whole 768x576 frame; at 2 analysed frames a second about 3-4% of a core per camera. (The old
320-px downscale took 5-7 ms, and lost every object under about 20 px.)
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from agent.analysis_params import SceneParams  # lives there: config loads without OpenCV
from agent.track import box_iou, greedy_match
from agent.types import StaticBlob


class SceneModel:
    """The dual-rate background of one fixed camera; feed it every analysed frame in time order.

    Blob ids count up from ``first_id`` per instance. A change of picture size (the camera was
    reconfigured) starts the model afresh, ids going on counting so they stay unique for whoever
    remembers the old ones.
    """

    def __init__(self, params: SceneParams = SceneParams(), first_id: int = 1,
                 region: tuple[int, int, int, int] | None = None):
        """``region`` (x0, y0, x1, y1) in frame pixels: the part of the frame to model, e.g. the
        zones' joint bounding rectangle; None for the whole frame. Clipped to the frame."""
        self.params, self.first_id, self.region = params, first_id, region
        self.reset()

    def reset(self) -> None:
        """Forget the background, every counter and every blob; ids start again."""
        self._frame_size: tuple[int, int] | None = None  # (w, h) of the full frame
        self._crop = (0, 0, 0, 0)  # x0, y0, x1, y1 of the modelled part, clipped to the frame
        # The working-size images stay empty until _start() sizes them to the first frame (update()
        # calls nothing else before). float32 (h, w, 3): the fast and slow backgrounds, the picture.
        self._fast = self._slow = self._picture = _UNSIZED
        # float32 (h, w): seconds seen still and uncovered (capped at warmup_s); seconds foreground
        # against the slow model, and static, each -inf while the pixel is not so.
        self._known_s = self._foreground_s = self._static_s = _UNSIZED
        self._labels = _UNSIZED  # int32 (h, w), components of the last update
        self._expected = _UNSIZED  # float32 (h, w, 3): the slow background at this frame's gain
        self._blobs: dict[int, tuple[StaticBlob, int]] = {}  # id -> (blob, label in _labels)
        self._gain = np.ones(3, np.float32)
        self._last_ts = 0.0
        self._next_id = self.first_id

    def update(self, ts: float, image_bgr: np.ndarray, mask_boxes: np.ndarray | None = None
               ) -> list[StaticBlob]:
        """Feed one frame; return the static blobs in it.

        ``mask_boxes`` (N, 4) xyxy in frame pixels: the people and vehicles the detector sees.
        Under them the slow background learns nothing and no pixel is counted.
        """
        p = self.params
        frame_h, frame_w = image_bgr.shape[:2]
        if self._frame_size != (frame_w, frame_h):
            self._start(ts, image_bgr)
            return []
        picture = self._downscale(image_bgr)
        dt = max(0.0, ts - self._last_ts)
        self._last_ts, self._picture = ts, picture
        covered = self._raster(mask_boxes)
        known = self._known_s >= p.warmup_s

        # Compare with both models as they were before this frame, then let them learn.
        still = _difference(picture, self._fast) < p.still_level
        sample = (~covered & known)[::8, ::8]  # 1200 pixels at width 320: plenty for a median
        if sample.any():
            ratio = picture[::8, ::8][sample] / np.maximum(self._slow[::8, ::8][sample], 1.0)
            self._gain = np.median(ratio, axis=0).astype(np.float32)
        expected = cv2.multiply(self._slow, (*self._gain.tolist(), 0.0))
        np.minimum(expected, 255, out=expected)  # a brightened background saturates as the camera does
        foreground = (_difference(picture, expected) > p.foreground_level) & known
        self._expected = expected
        cv2.accumulateWeighted(picture, self._fast, _rate(dt, p.fast_tau_s))

        # Counters of seconds in a state, -inf when not in it, so that a pixel entering the state
        # reads 0 (first_seen is the frame it was first seen in). The static counter runs up while
        # the pixel is static, down while it is foreground but changing (someone walks past: the
        # object loses the seconds it was hidden, not its whole count), and is reset once the
        # pixel is background again. Under a box both keep their value.
        seen = ~covered
        counted = np.maximum(self._static_s + dt, 0)
        _assign(counted, np.maximum(self._static_s - dt, np.minimum(self._static_s, 0)), ~still)
        _assign(counted, _NOT, ~foreground)
        _assign(self._static_s, counted, seen)
        counted = np.maximum(self._foreground_s + dt, 0)
        _assign(counted, _NOT, ~foreground)
        _assign(self._foreground_s, counted, seen)

        self._find_blobs(ts)
        for blob_id, (blob, _) in list(self._blobs.items()):
            if blob.static_for(ts) >= p.absorb_after_s:
                self.absorb(blob_id)
        learn = seen & still
        if self._blobs:  # a reported object stays out of the slow background
            learn &= ~self._reported_pixels()

        _assign(self._slow, cv2.multiply(picture, (*(1 / self._gain).tolist(), 0.0)), learn & ~known)
        cv2.accumulateWeighted(picture, self._slow, _rate(dt, p.slow_tau_s), (learn & known).view(np.uint8))
        _assign(self._known_s, np.minimum(self._known_s + dt, p.warmup_s), learn)
        return [blob for blob, _ in self._blobs.values()]

    def absorb(self, blob_id: int) -> None:
        """Learn a blob of the last update into the background now; it is not reported again.

        For an operator who has seen it and decided it belongs there (a new bench). What is
        learned is every foreground pixel connected to the blob, not only those already static
        for ``min_static_s``, or the rest of the object would become a blob of its own moments
        later. An id no longer known is ignored: the blob has gone since.
        """
        if blob_id not in self._blobs:
            return
        _, label = self._blobs.pop(blob_id)
        self._learn(self._labels == label)

    def _learn(self, blob: np.ndarray) -> None:
        """Take ``blob`` (a working-size mask) and the foreground connected to it into the
        slow background as the picture shows it now, and stop counting them."""
        _, connected = cv2.connectedComponents((np.isfinite(self._foreground_s) | blob).view(np.uint8))
        region = np.isin(connected, np.unique(connected[blob]))
        self._slow[region] = self._picture[region] / self._gain
        self._static_s[region] = _NOT
        self._foreground_s[region] = _NOT

    def _start(self, ts: float, image_bgr: np.ndarray) -> None:
        next_id = self._next_id
        self.reset()
        self._next_id = next_id
        frame_h, frame_w = image_bgr.shape[:2]
        self._frame_size = (frame_w, frame_h)
        x0, y0, x1, y1 = self.region if self.region is not None else (0, 0, frame_w, frame_h)
        x0, y0 = min(max(int(x0), 0), frame_w - 1), min(max(int(y0), 0), frame_h - 1)
        self._crop = (x0, y0, max(min(int(np.ceil(x1)), frame_w), x0 + 1), max(min(int(np.ceil(y1)), frame_h), y0 + 1))
        picture = self._downscale(image_bgr)
        h, w = picture.shape[:2]
        self._fast, self._slow, self._picture = picture.copy(), picture.copy(), picture
        self._known_s = np.zeros((h, w), np.float32)
        self._foreground_s = np.full((h, w), _NOT, np.float32)
        self._static_s = np.full((h, w), _NOT, np.float32)
        self._labels = np.zeros((h, w), np.int32)
        self._last_ts = ts

    def _downscale(self, image_bgr: np.ndarray) -> np.ndarray:
        """The modelled part of the frame at working size, float32."""
        x0, y0, x1, y1 = self._crop
        picture = image_bgr[y0:y1, x0:x1]
        crop_w, crop_h = x1 - x0, y1 - y0
        scale = min(1.0, math.sqrt(self.params.max_pixels / (crop_w * crop_h)))
        if scale == 1.0:
            return picture.astype(np.float32)
        w, h = max(1, round(crop_w * scale)), max(1, round(crop_h * scale))
        # INTER_AREA is fast only for whole factors (768->384: 0.8 ms, 768->320: 7 ms here), so
        # halve by averaging while that stays above the target, and interpolate the rest.
        while picture.shape[1] >= 2 * w:
            picture = cv2.resize(picture, (picture.shape[1] // 2, picture.shape[0] // 2),
                                 interpolation=cv2.INTER_AREA)
        return cv2.resize(picture, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)

    def _frame_area(self) -> int:
        """Pixels of the full frame, whose size _start() set before any update reads this."""
        assert self._frame_size is not None
        width, height = self._frame_size
        return width * height

    def _scale(self) -> tuple[float, float]:
        """Frame pixels per working pixel, in x and y."""
        h, w = self._static_s.shape
        x0, y0, x1, y1 = self._crop
        return (x1 - x0) / w, (y1 - y0) / h

    def _raster(self, boxes: np.ndarray | None) -> np.ndarray:
        """Working-size mask of the grown boxes."""
        covered = np.zeros(self._static_s.shape, np.bool_)
        if boxes is None or len(boxes) == 0:
            return covered
        sx, sy = self._scale()
        x0, y0 = self._crop[:2]
        boxes = (np.asarray(boxes, np.float64).reshape(-1, 4) - [x0, y0, x0, y0]) / [sx, sy, sx, sy]
        grow = self.params.mask_margin * (boxes[:, 2:] - boxes[:, :2]) + 1.0
        top_left = np.floor(boxes[:, :2] - grow).clip(0).astype(int)
        bottom_right = np.ceil(boxes[:, 2:] + grow).clip(0).astype(int)  # boxes left of or above the crop cover nothing
        for (left, top), (right, bottom) in zip(top_left, bottom_right):
            covered[top:bottom, left:right] = True
        return covered

    def _is_light(self, label: int, x: int, y: int, w: int, h: int, inside: np.ndarray) -> bool:
        """Whether blob ``label`` (bounding box x, y, w, h in working pixels, ``inside`` its pixels
        in that box) is a change of light
        on the ground rather than an object: its ring is lit differently from the background,
        the blob's colour ratios match the ring's (see ``light_match``) and it keeps the
        ground's texture; or it is white ground that stays white."""
        p = self.params
        # Near the camera's clipping point a change of light does not scale the channels: white
        # that stays white (vtest's plastic in the sun) is light, and the texture test below
        # means nothing on a white background.
        white_ground = self._slow[y:y + h, x:x + w][inside].max(axis=1) >= NEAR_WHITE_LEVEL
        if (white_ground & (self._picture[y:y + h, x:x + w][inside].max(axis=1) >= NEAR_WHITE_LEVEL)).mean() > 0.5:
            return True
        ring_px = max(2, round(p.light_ring_px / self._scale()[0]))
        rows, cols = self._labels.shape
        x0, y0 = max(x - ring_px, 0), max(y - ring_px, 0)
        x1, y1 = min(x + w + ring_px, cols), min(y + h + ring_px, rows)
        blob = (self._labels[y0:y1, x0:x1] == label).view(np.uint8)
        grown = cv2.dilate(blob, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1,) * 2))
        ring = (grown > blob) & (self._labels[y0:y1, x0:x1] == 0)
        if ring.sum() < 8:  # walled in by other blobs: no ground to compare with
            return False
        expected = self._expected[y0:y1, x0:x1]
        # A dark channel's ratio is noise (grass has little blue: 15 levels, +-3 of it noise).
        bright = np.median(expected[ring], axis=0) >= LIGHT_MIN_LEVEL
        if not bright.any():
            return False
        ratio = (self._picture[y0:y1, x0:x1] / np.maximum(expected, 1.0))[..., bright]
        ring_ratio, blob_ratio = np.median(ratio[ring], axis=0), np.median(ratio[blob.view(bool)], axis=0)
        ring_light, blob_light = float(ring_ratio.mean()), float(blob_ratio.mean())
        lit = min(p.light_change, p.light_soft_edge * abs(blob_light - 1.0))
        if (abs(ring_light - 1.0) < lit or (ring_light > 1.0) != (blob_light > 1.0)
                or blob_light <= 0.0):  # a black blob (clipped to 0) is no light
            return False
        # Colour, not brightness: a soft-edged shadow or lamp is stronger at the blob than in its
        # ring, but it scales B, G and R alike in both.
        if not (np.abs(blob_ratio / blob_light - ring_ratio / ring_light) <= p.light_match).all():
            return False
        return white_ground.mean() > 0.5 or self._keeps_texture(self._picture[y0:y1, x0:x1][blob.view(bool)],
                                                                expected[blob.view(bool)])

    def _keeps_texture(self, picture: np.ndarray, expected: np.ndarray) -> bool:
        """Whether a blob's (N, 3) pixels are its (N, 3) background scaled by one ratio per
        channel, give or take noise (``light_texture_level``): light keeps the ground's texture,
        while a grey or black object, which scales the colours alike too, brings its own folds
        and edges."""
        scaled = expected * np.median(picture / np.maximum(expected, 1.0), axis=0)
        return float(np.median(np.abs(picture - scaled).max(axis=1))) <= self.params.light_texture_level

    def _is_same_ground(self, x: int, y: int, w: int, h: int, inside: np.ndarray) -> bool:
        """Whether the blob in box x, y, w, h (``inside``: its pixels there) is the coloured ground
        itself, lighter or darker (grass trampled by walkers, wetted or dried, in sun or shade),
        not an object on it: the picture keeps the background's hue, most of its saturation and
        most of its brightness (``SAME_GROUND_*``).
        Grey ground (tarmac, paving) has no hue to compare and is never judged so
        (``same_ground_hue_deg``)."""

        def hue_saturation_value(image: np.ndarray) -> tuple[float, float, float]:
            hsv = cv2.cvtColor(np.ascontiguousarray(image[y:y + h, x:x + w]) / 255.0, cv2.COLOR_BGR2HSV)
            hue = np.deg2rad(hsv[..., 0][inside])
            mean_hue = math.degrees(math.atan2(np.sin(hue).mean(), np.cos(hue).mean()))
            return mean_hue, float(np.median(hsv[..., 1][inside])), float(np.median(hsv[..., 2][inside]))

        ground_hue, ground_saturation, ground_value = hue_saturation_value(self._expected)
        if ground_saturation < SAME_GROUND_MIN_SATURATION:
            return False
        hue, saturation, value = hue_saturation_value(self._picture)
        turned = abs((hue - ground_hue + 180.0) % 360.0 - 180.0)
        return (turned < self.params.same_ground_hue_deg and value >= SAME_GROUND_VALUE_SHARE * ground_value
                and saturation >= SAME_GROUND_SATURATION_SHARE * ground_saturation)

    def _is_relit(self, x: int, y: int, w: int, h: int) -> bool:
        """Whether the blob in box x, y, w, h is something the background already holds, lit
        differently: around it the picture is the background's pattern, scaled and shifted per
        channel (``relit_correlation``), not a new one laid over it."""
        if self.params.relit_correlation <= 0:
            return False
        rows, cols = self._labels.shape
        window = np.s_[max(y - 2, 0):min(y + h + 2, rows), max(x - 2, 0):min(x + w + 2, cols)]
        picture, expected = self._picture[window].reshape(-1, 3), self._expected[window].reshape(-1, 3)
        spread = expected.std(axis=0)
        if spread.min() < RELIT_MIN_CONTRAST:  # flat ground: nothing to recognise
            return False
        correlation = ((picture - picture.mean(axis=0)) * (expected - expected.mean(axis=0))).mean(axis=0) / (
            np.maximum(picture.std(axis=0), 1e-3) * spread)
        return bool((correlation >= self.params.relit_correlation).all())

    def _is_ghost(self, label: int, x: int, y: int, w: int, h: int) -> bool:
        """Whether blob ``label`` is the ghost of something gone rather than something new: its
        outline is an edge of the background, not of the picture. A new object has its own edge
        where it meets the ground; where an object left, the ground is seamless and the edge is
        in the background that still holds the object (the classic edge test for ghosts)."""
        rows, cols = self._labels.shape
        x0, y0, x1, y1 = max(x - 2, 0), max(y - 2, 0), min(x + w + 2, cols), min(y + h + 2, rows)
        blob = (self._labels[y0:y1, x0:x1] == label).view(np.uint8)
        cross = np.ones((3, 3), np.uint8)
        outline = (cv2.dilate(blob, cross) > cv2.erode(blob, cross))
        if outline.sum() < 8:
            return False

        def edges(image: np.ndarray) -> float:
            grey = image[y0:y1, x0:x1].max(axis=2)
            gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
            return float(np.mean(np.hypot(gx, gy)[outline]))

        return edges(self._expected) > self.params.ghost_edge_ratio * edges(self._picture)

    def _reported_pixels(self) -> np.ndarray:
        """Working-size mask of the blobs reported by the last update."""
        is_reported = np.zeros(self._labels.max() + 1, np.bool_)
        is_reported[[label for _, label in self._blobs.values()]] = True
        return is_reported[self._labels]

    def _find_blobs(self, ts: float) -> None:
        """Components of long-static pixels -> ``self._blobs``, ids kept by IoU."""
        p = self.params
        # A reported object's pixels stay its own, however often it was walked over since.
        reported = self._reported_pixels() if self._blobs else None
        static: np.ndarray = (self._static_s >= p.min_static_s).view(np.uint8)
        if not static.any():  # the usual case: skip the component analysis
            self._labels[:] = 0
            self._blobs = {}
            return
        # Closing joins an object's pixels split by a stripe of texture that matches the background.
        static = cv2.morphologyEx(static, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        count, self._labels, stats, _ = cv2.connectedComponentsWithStats(static, connectivity=8)
        sx, sy = self._scale()
        x0, y0 = self._crop[:2]
        max_area = p.max_area_frac * self._frame_area()
        found: list[tuple[StaticBlob, int]] = []
        for label in range(1, count):
            x, y, w, h, area = stats[label]
            area_px = float(area) * sx * sy
            if not p.min_area_px <= area_px <= max_area:
                continue
            inside = self._labels[y:y + h, x:x + w] == label
            if (self._is_light(label, x, y, w, h, inside) or self._is_same_ground(x, y, w, h, inside)
                    or self._is_relit(x, y, w, h)):
                # Its stillness starts anew: a light change judged an object in one frame out of
                # twenty would otherwise be reported with the seconds it had been still all
                # along, and open a ticket at once.
                self._static_s[y:y + h, x:x + w][inside] = 0.0
                continue
            if (reported is None or not reported[y:y + h, x:x + w][inside].any()) and self._is_ghost(
                    label, x, y, w, h):
                # Something the background held has gone (a person standing at the edge of their
                # box, an object there since start-up): the ground it uncovered is background.
                self._learn(self._labels == label)
                continue
            # The median, not the oldest: pixels of a speck too small to be judged keep counting,
            # and joined to a light change in the one frame it was misjudged, they dated the
            # whole blob back by their seconds (three false litter tickets on vtest's plastic).
            counted = self._static_s[y:y + h, x:x + w][inside]
            static_for = float(np.median(counted[counted >= p.min_static_s]))
            foreground_for = float(self._foreground_s[y:y + h, x:x + w][inside].max())
            xyxy = np.array([x0 + x * sx, y0 + y * sy, x0 + (x + w) * sx, y0 + (y + h) * sy], np.float32)
            found.append((StaticBlob(-1, xyxy, area_px, ts - foreground_for, ts - static_for), label))

        previous = list(self._blobs.values())
        iou = box_iou(np.array([b.xyxy for b, _ in previous], np.float64).reshape(-1, 4),
                      np.array([b.xyxy for b, _ in found], np.float64).reshape(-1, 4))
        pairs = {c: r for r, c in greedy_match(iou, p.match_iou)}
        self._blobs = {}
        for i, (blob, label) in enumerate(found):
            if i in pairs:
                # The same object: keep its id and its clock, which an occlusion may have set back.
                old = previous[pairs[i]][0]
                blob = StaticBlob(old.id, blob.xyxy, blob.area_px, min(old.first_seen, blob.first_seen),
                                  min(old.static_since, blob.static_since))
            else:
                blob = StaticBlob(self._next_id, blob.xyxy, blob.area_px, blob.first_seen, blob.static_since)
                self._next_id += 1
            self._blobs[blob.id] = (blob, label)


# Ground with less saturation (0..1) than this is grey (tarmac, paving): no hue to compare.
SAME_GROUND_MIN_SATURATION = 0.35
# ... and coloured ground lit or worn differently keeps at least this share of its saturation.
SAME_GROUND_SATURATION_SHARE = 0.6
# ... and of its brightness (HSV value), after the frame's gain: a black rubbish bag on vtest's
# lawn keeps the grass's hue and saturation (the codec bleeds green into it) but reads 0.42-0.59
# of the grass's brightness (0.54-0.59 for a 15 px bag through JPEG at 60-78), and was taken for
# grass in shade every few frames, so it never stayed still long enough for a ticket (6 of the
# harder set's 14 items of 12 px and more missed; 0 with this at 0.6, 2 at 0.55). A cloud's
# shadow (0.6-0.85 on the harder set) is the light test's, not this one's.
SAME_GROUND_VALUE_SHARE = 0.6
# Grey levels: a pixel this bright in some channel is near the camera's clipping point. Measured
# on vtest's white plastic under a +10% light ramp: background BGR (212, 242, 239), picture
# (244, 254, 253), which the per-channel gain did not predict.
NEAR_WHITE_LEVEL = 235.0
# Grey levels: background with less spread than this in some channel around a blob (grass, paving)
# has no pattern of its own for the relit test to recognise; vtest's plastic on the lawn has 60-95.
RELIT_MIN_CONTRAST = 25.0
LIGHT_MIN_LEVEL = 40.0  # grey levels: darker background channels take no part in the light test
_NOT = np.float32(-np.inf)  # a counter's value while the pixel is not in its state
_UNSIZED: np.ndarray = np.empty((0, 0), np.float32)  # a working-size image before the first frame (never written)


def _assign(target: np.ndarray, value: np.ndarray | np.float32, where: np.ndarray) -> None:
    """``target[where] = value`` for a boolean image ``where``, in place. cv2.copyTo costs about
    a plain copy whatever the mask; numpy's masked assignment and np.where branch per pixel and
    cost 5-20x more on the ragged masks of a real picture."""
    source = np.full_like(target, value) if np.ndim(value) == 0 else np.asarray(value)
    cv2.copyTo(source, where.view(np.uint8), target)


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel, the largest absolute difference over the three channels."""
    d = cv2.absdiff(a, b)
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])  # 100x faster than .max(axis=2)


def _rate(dt: float, tau_s: float) -> float:
    """Learning rate of a running average with time constant ``tau_s`` over a step of ``dt``."""
    return 1.0 - math.exp(-dt / tau_s)
