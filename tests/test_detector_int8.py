"""The int8 NanoDet (tools/quantize_model.py) against the fp32 original it was derived from, on real
vtest frames that calibration never saw (index % 40 == 0; calibration takes 12 + 25k)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from agent.detect import load_detector
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
    """Measured (20 frames): fp32 136 people, int8 138, 134 of fp32's matched at IoU >= 0.5,
    median IoU 0.98. Stated tolerance: counts within 2% of fp32's, >= 95% of fp32's people
    matched, median IoU >= 0.9."""
    fp32, int8 = people(NANODET_MANIFEST, frames), people(INT8_MANIFEST, frames)
    total = sum(map(len, fp32))
    assert total >= 100, total  # the frames have people, or the comparison means nothing
    assert abs(sum(map(len, int8)) - total) <= 0.02 * total, (sum(map(len, int8)), total)
    best = [box_iou(a, b).max(axis=1) for a, b in zip(fp32, int8) if len(a) and len(b)]
    ious = np.concatenate(best)
    assert (ious >= 0.5).sum() >= 0.95 * total, ((ious >= 0.5).sum(), total)
    assert np.median(ious) >= 0.9, np.median(ious)
