"""Tamper checks on real footage: vtest.avi (fixed elevated camera, people walking) and bikes.mp4
(scene cuts). Moved, blurred and covered views are made from real frames with OpenCV, as a knock,
a focus ring or a hand would make them; the numbers in comments are what this box measured.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.tamper import TamperMonitor, TamperParams, Verdict, ViewReference, check_view

VTEST_FRAMES = (0, 100, 300, 600)
BIKES_FRAMES = (25, 35, 60, 130, 136, 140, 160)  # cuts at 30, 76 and 137


def read_frames(path, wanted) -> dict[int, np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = {}
    try:
        for index in range(max(wanted) + 1):
            if not capture.grab():
                raise AssertionError(f"{path} ended before frame {index}")
            if index in wanted:
                frames[index] = capture.retrieve()[1]
    finally:
        capture.release()
    return frames


@pytest.fixture(scope="module")
def vtest(footage) -> dict[int, np.ndarray]:
    return read_frames(footage["vtest.avi"], VTEST_FRAMES)


@pytest.fixture(scope="module")
def reference(vtest) -> ViewReference:
    return ViewReference.from_frame(vtest[0])


def translated(frame, dx, dy):
    height, width = frame.shape[:2]
    return cv2.warpAffine(frame, np.float32([[1, 0, dx], [0, 1, dy]]), (width, height),
                          borderMode=cv2.BORDER_REPLICATE)


def turned(frame, degrees=0.0, zoom=1.0):
    """Rolled about the centre (counter-clockwise on screen for positive degrees) and zoomed."""
    height, width = frame.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, zoom)
    return cv2.warpAffine(frame, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def hand_over_lens(frame, covered=0.95, seed=0):
    """A dark, slightly noisy cover over the bottom ``covered`` of the frame, as from a hand."""
    out = frame.copy()
    rows = round(frame.shape[0] * covered)
    noise = np.random.default_rng(seed).normal(12, 5, (rows, frame.shape[1], 3))
    out[-rows:] = np.clip(noise, 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- check_view


@pytest.mark.parametrize("index", [100, 300, 600])
def test_unchanged_camera_is_ok_while_people_walk(reference, vtest, index):
    check = check_view(reference, vtest[index])
    # measured: shift 0.1 px, inlier ratio 0.96-0.98 of 310-389 matches, sharpness 1.02-1.06
    assert check.verdict is Verdict.OK
    assert check.shift_px < 1
    assert check.inlier_ratio > 0.9
    assert 0.8 < check.sharpness_ratio < 1.25


@pytest.mark.parametrize("index, dx, dy", [(100, 40, 0), (300, 0, -40), (600, -28, 28)])
def test_translated_view_is_shifted_by_the_translation(reference, vtest, index, dx, dy):
    check = check_view(reference, translated(vtest[index], dx, dy))
    # measured: 39.8-40.0 px, inlier ratio 0.92-0.97
    assert check.verdict is Verdict.SHIFTED
    assert check.shift_px == pytest.approx(np.hypot(dx, dy), abs=8)
    assert check.inlier_ratio > 0.8


@pytest.mark.parametrize("index", [100, 300, 600])
@pytest.mark.parametrize("degrees", [3, -3])
def test_rolled_view_is_shifted_though_the_median_feature_moves_little(reference, vtest, index, degrees):
    check = check_view(reference, turned(vtest[index], degrees))
    # measured: median displacement 10-12.5 px (under max_shift_px), roll 2.9-3.1 degrees
    assert check.verdict is Verdict.SHIFTED
    assert check.rotation_deg == pytest.approx(degrees, abs=0.5)


def test_zoomed_view_is_shifted(reference, vtest):
    check = check_view(reference, turned(vtest[300], zoom=1.1))
    # measured: zoom 1.103, median displacement 13.9 px
    assert check.verdict is Verdict.SHIFTED
    assert check.zoom == pytest.approx(1.1, abs=0.02)


def test_shift_under_the_threshold_is_measured_and_tolerated(reference, vtest):
    check = check_view(reference, translated(vtest[300], 15, 0))
    assert check.verdict is Verdict.OK
    assert check.shift_px == pytest.approx(15, abs=3)


@pytest.mark.parametrize("index", [100, 300, 600])
def test_out_of_focus_view_is_blurred(reference, vtest, index):
    check = check_view(reference, cv2.GaussianBlur(vtest[index], (0, 0), 4))
    # measured: sharpness ratio 0.008-0.009; the homography still finds the view unmoved
    assert check.verdict is Verdict.BLURRED
    assert check.sharpness_ratio < 0.05


@pytest.mark.parametrize("index", [100, 300, 600])
def test_blacked_out_and_hand_covered_views_are_covered(reference, vtest, index):
    black = check_view(reference, np.zeros_like(vtest[index]))
    assert black.verdict is Verdict.COVERED
    assert black.blind_fraction == 1.0
    hand = check_view(reference, hand_over_lens(vtest[index]))
    # measured: blind fraction 0.88 though the open strip keeps the frame's std at ~29
    assert hand.verdict is Verdict.COVERED
    assert hand.contrast > 20


@pytest.mark.parametrize("index", [100, 300, 600])
def test_dusk_is_ok(reference, vtest, index):
    dusk = (vtest[index] * 0.7).astype(np.uint8)
    check = check_view(reference, dusk)
    # measured: shift 0.0-0.1 px, sharpness 1.03-1.06 (gain-normalised), blind fraction 0.18-0.21
    assert check.verdict is Verdict.OK
    assert check.brightness < 0.75 * reference.brightness
    assert check.blind_fraction < 0.5


def test_scene_cut_is_not_ok(footage):
    bikes = read_frames(footage["bikes.mp4"], BIKES_FRAMES)
    street = ViewReference.from_frame(bikes[130])
    # Same shot, hand-held: still OK. After the cut at 137 nothing matches (<= 5 inliers).
    assert check_view(street, bikes[136]).verdict is Verdict.OK
    for index in (140, 160):
        check = check_view(street, bikes[index])
        assert check.verdict is Verdict.SHIFTED
        assert check.shift_px is None
    # The opening shot is a bare road: ~35 keypoints, too few to judge anything against.
    road = ViewReference.from_frame(bikes[25])
    for index in (35, 60):
        assert check_view(road, bikes[index]).verdict is Verdict.UNKNOWN


def test_frames_of_another_size_and_uniform_references_are_refused(reference, vtest):
    with pytest.raises(ValueError, match="768x576"):
        check_view(reference, vtest[100][:, :640])
    with pytest.raises(ValueError, match="uniform"):
        ViewReference.from_frame(np.full_like(vtest[0], 90))


# --------------------------------------------------------------------------- TamperMonitor


@pytest.fixture(scope="module")
def views(vtest) -> dict[str, np.ndarray]:
    return {"ok": vtest[300], "other ok": vtest[600], "shifted": translated(vtest[100], 40, 0),
            "black": np.zeros_like(vtest[0])}


def run(monitor, timeline):
    """timeline: [(ts, frame)] -> [(ts, since, verdict)] of the state changes."""
    changes = []
    for ts, frame in timeline:
        state = monitor.update(ts, frame)
        if state is not None:
            changes.append((state.ts, state.since, state.verdict))
    return changes


def monitor(vtest):
    return TamperMonitor(ViewReference.from_frame(vtest[0], TamperParams(interval_s=1.0, confirm_checks=3)))


def test_one_bad_check_changes_nothing(vtest, views):
    names = ["ok", "other ok", "shifted", "ok", "other ok", "shifted", "shifted", "ok"]
    assert run(monitor(vtest), [(ts, views[name]) for ts, name in enumerate(names)]) == []


def test_a_run_of_bad_checks_suspends_once_and_recovers_once(vtest, views):
    names = ["ok", "ok"] + ["shifted"] * 5 + ["other ok"] * 5
    watcher = monitor(vtest)
    changes = run(watcher, [(ts, views[name]) for ts, name in enumerate(names)])
    assert changes == [(4, 2, Verdict.SHIFTED), (9, 7, Verdict.OK)]
    assert not watcher.tampered


def test_frames_between_checks_are_not_looked_at(vtest, views):
    # Checks at whole seconds see the camera as it is; the black frames in between would make a
    # run of COVERED if they were checked.
    timeline = [(i / 4, views["ok"] if i % 4 == 0 else views["black"]) for i in range(40)]
    assert run(monitor(vtest), timeline) == []
