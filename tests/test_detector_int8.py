"""The int8 NanoDet (tools/quantize_model.py) against the fp32 original it was derived from, on real
vtest frames that calibration never saw (index % 40 == 0; calibration takes 12 + 25k)."""

from __future__ import annotations

import platform

import av
import cv2
import numpy as np
import pytest

from agent.detect import load_detector
from agent.detect.manifest import cpu_flags, int8_risk, load_manifest
from agent.track import box_iou
from tests.helpers import NANODET_MANIFEST

INT8_MANIFEST = NANODET_MANIFEST.with_name("nanodet-g-416-int8.toml")


@pytest.fixture(scope="module")
def frames(footage) -> list[np.ndarray]:
    with av.open(str(footage["vtest.avi"])) as container:
        return [f.to_ndarray(format="bgr24") for i, f in enumerate(container.decode(video=0)) if i % 40 == 0]


def people(manifest, frames) -> list[np.ndarray]:
    detector = load_detector(manifest, threads=2, min_score=0.35)
    return [d[d.of_classes({"person"})].xyxy.astype(np.float64) for d in map(detector.detect, frames)]


def test_int8_finds_the_same_people_in_the_same_boxes(frames):
    """Measured (20 frames) on a CPU with VNNI: fp32 136 people, int8 136, 134 of fp32's matched
    at IoU >= 0.5, median IoU 0.98; on a Xeon without VNNI (2026-12-08, where the agent warns
    ``model_may_be_inaccurate_here``): int8 140, 133 matched, median IoU 0.96 -- the same people,
    plus a few more boxes. Stated tolerance: counts within 2% of fp32's (4% without VNNI),
    >= 95% of fp32's people matched, median IoU >= 0.9."""
    fp32, int8 = people(NANODET_MANIFEST, frames), people(INT8_MANIFEST, frames)
    total = sum(map(len, fp32))
    assert total >= 100, total  # the frames have people, or the comparison means nothing
    risky = int8_risk(load_manifest(INT8_MANIFEST), platform.machine(), cpu_flags()) is not None
    assert abs(sum(map(len, int8)) - total) <= (0.04 if risky else 0.02) * total, (sum(map(len, int8)), total)
    best = [box_iou(a, b).max(axis=1) for a, b in zip(fp32, int8) if len(a) and len(b)]
    ious = np.concatenate(best)
    assert (ious >= 0.5).sum() >= 0.95 * total, ((ious >= 0.5).sum(), total)
    assert np.median(ious) >= 0.9, np.median(ious)


def test_int8_still_sees_a_bicycle_above_the_rules_thresholds(footage):
    """vtest has no bicycle; calibrated on it alone, int8 scored dog.jpg's bicycle 0.14 (fp32
    0.68), and the bikes scenario and the lift's COCO path missed. dog.jpg is not among the
    calibration pictures. Measured: fp32 0.68 full size and 0.77 at 0.35x, int8 0.45 and 0.45.
    Stated tolerance: at least the lift rule's min_score, 0.4, the highest a bicycle must clear."""
    photo = cv2.imread(str(footage["dog.jpg"]))
    small = cv2.resize(photo, None, fx=0.35, fy=0.35, interpolation=cv2.INTER_AREA)
    for manifest, floor in ((NANODET_MANIFEST, 0.6), (INT8_MANIFEST, 0.4)):
        detector = load_detector(manifest, threads=2, min_score=0.1)
        for picture in (photo, small):
            found = detector.detect(picture)
            bikes = found[found.of_classes({"bicycle"})]
            assert len(bikes) and bikes.score.max() >= floor, (manifest.name, bikes.score)
