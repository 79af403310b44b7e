"""Tiled detection: crop geometry (pure), small people on a real frame found again by grid tiles,
and a real small parked bike found by zone crops where the full-frame pass misses it."""

from __future__ import annotations

import itertools

import av
import cv2
import numpy as np

from agent.detect import load_detector
from agent.tiling import Tiler, TilingParams, ZoneCropParams, detect_tiled, tile_rects, zone_crop_rects
from agent.track import box_iou
from agent.zones import Zone
from tests.helpers import NANODET_MANIFEST

INPUT = (416, 416)


def rect_zone(x0, y0, x1, y1) -> Zone:
    return Zone("z", np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32))


def covered(rects, width, height) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    for x, y, w, h in rects:
        mask[y:y + h, x:x + w] = True
    return mask


def test_tiles_cover_the_frame_with_the_asked_overlap():
    rects = tile_rects(1920, 1080, TilingParams(columns=3, rows=2, overlap=0.25))
    assert len(rects) == 6
    assert covered(rects, 1920, 1080).all()
    (x0, _, w0, _), (x1, _, _, _) = rects[0], rects[1]
    assert abs((x0 + w0 - x1) / w0 - 0.25) < 0.01


def test_a_small_zone_gets_one_crop_centred_on_it():
    params = ZoneCropParams(scale=0.5, margin_px=20)
    [(x, y, w, h)] = zone_crop_rects(1280, 720, [rect_zone(600, 300, 700, 350)], INPUT, params)
    assert (w, h) == (208, 208)
    # The zone's box (cv2 bounds: x 600-701, y 300-351) grown by 20 up and sideways, 5 down.
    assert abs(x + w / 2 - 650.5) <= 1 and abs(y + h / 2 - 318) <= 1


def test_zone_crops_near_the_frame_edge_stay_inside_and_cover_the_zone():
    params = ZoneCropParams(scale=0.5, margin_px=64, overlap=0.2)
    for zone in (rect_zone(1000, 600, 1279, 719), rect_zone(0, 0, 150, 80), rect_zone(0, 500, 1279, 719)):
        rects = zone_crop_rects(1280, 720, [zone], INPUT, params)
        x, y, w, h = zone.bounds()
        assert all(0 <= rx and 0 <= ry and rx + rw <= 1280 and ry + rh <= 720 and (rw, rh) == (208, 208)
                   for rx, ry, rw, rh in rects)
        assert covered(rects, 1280, 720)[max(y - 64, 0):y + h, max(x - 64, 0):x + w].all()
    # A zone across the frame's bottom: overlapping crops, neighbours sharing >= 20%.
    lefts = sorted({rx for rx, _, _, _ in zone_crop_rects(1280, 720, [rect_zone(0, 500, 1279, 719)], INPUT, params)})
    assert lefts[0] == 0 and lefts[-1] == 1280 - 208
    assert all(208 - (b - a) >= 0.2 * 208 for a, b in itertools.pairwise(lefts))


def test_no_zone_crops_when_the_frame_is_no_larger_than_a_crop():
    assert zone_crop_rects(200, 150, [rect_zone(10, 10, 100, 100)], INPUT, ZoneCropParams(scale=0.5)) == []


def test_tiles_find_people_the_shrunken_full_frame_misses(footage):
    """vtest's people, made small: the frame is placed on a 4x larger canvas of itself (as if seen
    by a wide 4K camera), where the full-frame pass barely sees anyone."""
    with av.open(str(footage["vtest.avi"])) as container:
        frame = next(f for i, f in enumerate(container.decode(video=0)) if i == 200).to_ndarray(format="bgr24")
    wide = np.tile(frame, (2, 2, 1))  # 1536x1152, four copies
    detector = load_detector(NANODET_MANIFEST, min_score=0.35)
    plain = detector.detect(wide)
    tiled = detect_tiled(detector, wide, TilingParams(columns=2, rows=2, overlap=0.1))
    plain_people = int(plain.of_classes({"person"}).sum())
    tiled_people = int(tiled.of_classes({"person"}).sum())
    # Measured: 20 people full-frame, 37 with tiles (four copies of frame 200's ~10 detections).
    assert tiled_people >= plain_people + 10, (plain_people, tiled_people)
    assert (tiled.xyxy[:, 2] <= 1536).all() and (tiled.xyxy[:, 3] <= 1152).all()


def test_zone_crops_find_a_small_parked_bike_the_full_frame_misses(footage):
    """The bicycle parked against a wall in bikes.mp4 (frame 220, with its wall), 60 px tall on a
    vtest frame upscaled to a 1280x720 webcam picture, inside a bike zone."""
    with av.open(str(footage["bikes.mp4"])) as container:
        source = next(f for i, f in enumerate(container.decode(video=0)) if i == 220).to_ndarray(format="bgr24")
    with av.open(str(footage["vtest.avi"])) as container:
        background = next(container.decode(video=0)).to_ndarray(format="bgr24")
    frame = cv2.resize(background, (1280, 960), interpolation=cv2.INTER_CUBIC)[240:]
    bike = cv2.resize(source[8:212, 262:592], None, fx=60 / 204, fy=60 / 204, interpolation=cv2.INTER_AREA)
    h, w = bike.shape[:2]
    left, top = 1000 - w // 2, 600 - h
    frame[top:top + h, left:left + w] = bike
    truth = np.array([[left, top, left + w, top + h]], np.float64)
    detector = load_detector(NANODET_MANIFEST, min_score=0.35)
    tiler = Tiler(None, ZoneCropParams(), [rect_zone(850, 540, 1150, 640)], INPUT)

    def bikes(found):
        found = found[found.of_classes({"bicycle", "motorcycle"})]
        return found[box_iou(found.xyxy.astype(np.float64), truth)[:, 0] >= 0.5]

    assert len(bikes(detector.detect(frame))) == 0
    found = bikes(tiler.detect(detector, frame, 0.0))
    # Measured: full frame no bike box on it; zone crops one bicycle at 0.43 (and a
    # 0.35 motorcycle on it, which NMS keeps: another class), boxes within 3 px of the pasted one.
    assert len(found) >= 1 and found.score.max() >= 0.4, found
