"""Privacy by default: people hidden in every picture and clip that leaves the box.

Pure unit tests of the pixelation first; then the real agent core (real detector, ticket book,
evidence store, command handler) on real vtest footage, measuring in the stored evidence that the
pixels of the people changed beyond recovery and the rest of the picture did not.
"""

from __future__ import annotations

import json
import threading
import time

import av
import cv2
import numpy as np
import pytest

from agent.app import Agent
from agent.clock import ManualClock
from agent.config import ConfigError, load_config
from agent.evidence import annotate, annotate_detections
from agent.privacy import PeopleTrail, PrivacyMode, PrivacyParams, anonymise, clip_filter, grow, regions
from agent.transport import Request
from agent.types import Detections, Frame
from tests.helpers import write_camera, write_edge

START = 1_800_000_000.0
NAMES = ("person", "bicycle")


def noise(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def dets(boxes, classes=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    ids = np.zeros(len(boxes), np.int32) if classes is None else np.asarray(classes, np.int32)
    return Detections(boxes, np.ones(len(boxes), np.float32), ids, NAMES)


def high_pass(image):
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return gray - cv2.GaussianBlur(gray, (0, 0), 1.5)


def detail_kept(picture, reference, box):
    """Correlation of the fine detail (high-pass) of two pictures inside ``box``: ~1 kept, ~0 gone."""
    x1, y1, x2, y2 = box
    a, b = high_pass(picture)[y1:y2, x1:x2].ravel(), high_pass(reference)[y1:y2, x1:x2].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def mad(a, b, mask=None):
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2)
    return float(diff[mask].mean() if mask is not None else diff.mean())


# --------------------------------------------------------------------------- pure pixelation

def test_pixelation_flattens_person_boxes_and_leaves_the_rest_alone():
    image = noise()
    params = PrivacyParams(margin=0)
    out = anonymise(image, dets([[16, 24, 64, 104]]), params)
    inside = out[24:104, 16:64]
    assert mad(inside, image[24:104, 16:64]) > 50  # noise against its block means
    assert detail_kept(out, image, (16, 24, 64, 104)) < 0.1
    # Blocks of block_px (12 here: 1/8 of the 48-px side is 6): each one flat.
    assert len(np.unique(inside[:12, :12].reshape(-1, 3), axis=0)) == 1
    outside = np.ones(image.shape[:2], bool)
    outside[24:104, 16:64] = False
    assert np.array_equal(out[outside], image[outside])
    assert out is not image and np.array_equal(image, noise()), "the raw frame is never changed"


def test_blocks_grow_with_the_box_so_large_people_stay_unrecognisable():
    image = noise(400, 400)
    out = anonymise(image, dets([[0, 0, 320, 400]]), PrivacyParams(margin=0, block_px=8))
    assert len(np.unique(out[:40, :40].reshape(-1, 3), axis=0)) == 1  # 320 / 8 = 40-px blocks


def test_blur_removes_the_detail_too():
    image = noise()
    out = anonymise(image, dets([[16, 24, 64, 104]]), PrivacyParams(mode=PrivacyMode.BLUR, margin=0))
    assert detail_kept(out, image, (20, 28, 60, 100)) < 0.1
    assert high_pass(out)[28:100, 20:60].std() < 0.1 * high_pass(image)[28:100, 20:60].std()


def test_off_no_people_and_other_classes_keep_the_picture():
    image = noise()
    person_and_bike = dets([[10, 10, 50, 50], [60, 60, 120, 110]], [0, 1])
    assert anonymise(image, person_and_bike, PrivacyParams(mode=PrivacyMode.OFF)) is image
    assert anonymise(image, person_and_bike, PrivacyParams(people=False)) is image
    out = anonymise(image, person_and_bike, PrivacyParams(margin=0))
    assert np.array_equal(out[60:110, 60:120], image[60:110, 60:120]), "a bicycle is no person"
    assert anonymise(image, Detections.empty(NAMES), PrivacyParams()) is image


def test_regions_grow_by_the_margin_and_stay_inside_the_frame():
    grown = regions(dets([[10, 20, 50, 100], [150, 100, 170, 130]]), PrivacyParams(margin=0.25), (120, 160, 3))
    assert grown.tolist() == [[0, 0, 60, 120], [145, 92, 160, 120]]
    assert grow(np.array([[200, 200, 210, 210]]), 0.1, (120, 160, 3)).shape == (0, 4)  # off the frame


def test_a_clip_picture_between_analysed_frames_hides_the_boxes_of_both():
    trail = PeopleTrail(keep_s=10, max_gap_s=0.75)
    trail.add(100.0, dets([[0, 0, 20, 40]]))
    trail.add(100.5, dets([[30, 0, 50, 40]]))
    assert trail.boxes_at(100.25).tolist() == [[0, 0, 20, 40], [30, 0, 50, 40]]
    assert trail.boxes_at(100.5).tolist() == [[30, 0, 50, 40]]
    assert trail.boxes_at(102.0) is None, "no analysed frame near: unknown"
    picture = noise()
    hide = clip_filter(trail, PrivacyParams(margin=0))
    assert detail_kept(hide(picture, 100.25), picture, (30, 0, 50, 40)) < 0.1
    assert np.array_equal(hide(picture, 100.25)[:, 60:], picture[:, 60:])
    assert detail_kept(hide(picture, 102.0), picture, (0, 0, 160, 120)) < 0.1, "unknown: all hidden"
    trail.add(111.0, Detections.empty(NAMES))
    assert trail.boxes_at(100.0) is None, "older than keep_s: forgotten"


def test_privacy_tables_are_validated_at_load(tmp_path):
    cam = write_camera(tmp_path, "cam1", "/nonexistent.mp4")
    cam.write_text(cam.read_text() + '\n[zones.plaza.privacy]\nmode = "off"\n\n[privacy]\nblock_px = 16\n')
    config = load_config(write_edge(tmp_path, [cam])).camera("cam1")
    assert config.privacy == PrivacyParams(block_px=16)
    assert config.privacy_for("plaza").mode is PrivacyMode.OFF
    assert config.privacy_for(None) == config.privacy
    for extra, error in (('[zones.plaza.privacy]\nmode = "smudge"\n', r"zones\.plaza\.privacy\.mode: must be one of"),
                         ("[privacy]\nblock_px = 4\n", r"privacy\.block_px: must be >= 8"),
                         ("[privacy]\nfaces = true\n", r"privacy\.faces: unknown key")):
        bad = write_camera(tmp_path, "cam2", "/nonexistent.mp4")
        bad.write_text(bad.read_text() + "\n" + extra)
        with pytest.raises(ConfigError, match=error):
            load_config(write_edge(tmp_path, [bad]))
