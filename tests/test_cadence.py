"""Decode per cadence (keyframes only for static cameras whose GOP fits) and change gating."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from agent.change_gate import ChangeGate, ChangeGateParams
from agent.clock import SystemClock
from agent.config import DecodeMode, load_config
from agent.health import CameraHealth
from agent.ingest import CameraReader, DecodePlan, StreamEnded
from agent.zones import Zone
from tests.helpers import write_camera, write_edge


def keyframes_only(plan: DecodePlan, keyframe_times: list[float]) -> list[bool]:
    return [plan.at_keyframe(t) for t in keyframe_times]


def test_a_static_camera_whose_gop_fits_its_period_goes_to_keyframes_after_two_gops():
    plan = DecodePlan(DecodeMode.AUTO, period_s=2.0, live=False)
    assert keyframes_only(plan, [0.0, 2.0, 4.0, 6.0]) == [False, False, True, True]


def test_a_gop_too_long_for_the_cadence_keeps_every_frame_and_a_growing_one_goes_back():
    assert keyframes_only(DecodePlan(DecodeMode.AUTO, 2.0, live=False), [0, 4, 8, 12]) == [False] * 4
    plan = DecodePlan(DecodeMode.AUTO, period_s=2.0, live=False)
    # The camera's GOP is raised from 2 s to 4 s (a new encoder profile): back to every frame.
    assert keyframes_only(plan, [0, 2, 4, 6, 10]) == [False, False, True, True, False]


def test_live_cameras_and_forced_modes():
    assert keyframes_only(DecodePlan(DecodeMode.AUTO, 0.2, live=True), [0, 0.2, 0.4, 0.6]) == [False] * 4
    assert keyframes_only(DecodePlan(DecodeMode.KEYFRAMES, 0.2, live=True), [0, 10]) == [True, True]
    assert keyframes_only(DecodePlan(DecodeMode.ALL, 10.0, live=False), [0, 1, 2, 3]) == [False] * 4


def read_all(tmp_path, footage, decode: DecodeMode, name: str) -> tuple[list[float], CameraHealth]:
    cam_file = write_camera(tmp_path, name, str(footage["vtest.mp4"]), fps=0.5)
    camera = dataclasses.replace(load_config(write_edge(tmp_path, [cam_file])).cameras[0], decode=decode)
    health = CameraHealth(camera.id)
    times: list[float] = []
    try:
        for frame in CameraReader(camera, SystemClock(), health, realtime=False).frames(threading.Event()):
            times.append(frame.ts)
    except StreamEnded:
        pass
    return times, health


def test_keyframe_decoding_gives_the_same_cadence_for_a_tenth_of_the_decoded_frames(tmp_path, footage):
    """vtest.mp4: 10 fps, a keyframe every 2 s; analysed at 0.5 fps."""
    auto_times, auto = read_all(tmp_path, footage, DecodeMode.AUTO, "auto")
    all_times, every = read_all(tmp_path, footage, DecodeMode.ALL, "every")
    assert auto.decode == "keyframes" and auto.keyframe_interval_s == 2.0 and every.decode == "all"
    assert abs(len(auto_times) - len(all_times)) <= 1 and len(all_times) >= 35
    gaps = np.diff(auto_times[3:])
    assert np.all(np.abs(gaps - 2.0) < 0.15), gaps  # one frame per period, none skipped
    assert every.frames_decoded >= 790 and auto.frames_decoded <= 0.15 * every.frames_decoded


ZONE = Zone("z", np.float32([[0, 540], [1920, 540], [1920, 1080], [0, 1080]]))  # the lower half


def street(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((1080, 1920, 3), 110, np.uint8)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)  # sensor noise


def test_the_gate_skips_unchanged_frames_and_runs_on_a_change_in_a_zone():
    gate = ChangeGate(ChangeGateParams(rescan_s=10.0), [ZONE], (1920, 1080))
    assert gate.needs_detection(0.0, street(0))  # the first frame always
    assert not gate.needs_detection(2.0, street(1))  # noise only
    above = street(2)
    above[100:300, 800:900] = 20  # a pedestrian outside every zone
    assert not gate.needs_detection(4.0, above)
    walker = street(3)
    walker[700:820, 900:940] = 20  # 120 x 40 px inside the zone
    assert gate.needs_detection(6.0, walker)
    assert not gate.needs_detection(8.0, walker.copy())  # it stands still: compared with the last run


def test_the_gate_rescans_at_its_minimum_rate_and_a_slow_change_adds_up():
    gate = ChangeGate(ChangeGateParams(rescan_s=10.0), [ZONE], (1920, 1080))
    frame = street(0)
    assert gate.needs_detection(0.0, frame)
    assert [gate.needs_detection(t, frame) for t in (2.0, 4.0, 6.0, 8.0, 10.0)] == [False] * 4 + [True]
    gate = ChangeGate(ChangeGateParams(rescan_s=100.0), [ZONE], (1920, 1080))
    assert gate.needs_detection(0.0, frame)
    runs = []
    for step in range(1, 8):  # a bin pushed in 4 px a frame: no frame differs much from the last
        moved = frame.copy()
        moved[700:800, 1000:1000 + 4 * step] = 30
        runs.append(gate.needs_detection(2.0 * step, moved))
    assert any(runs) and not all(runs)


def test_a_new_model_makes_the_gate_run_the_detector_on_an_unchanged_frame():
    gate = ChangeGate(ChangeGateParams(rescan_s=100.0), [ZONE], (1920, 1080))
    frame = street(0)
    assert gate.needs_detection(0.0, frame) and not gate.needs_detection(2.0, frame)
    gate.rescan()
    assert gate.needs_detection(4.0, frame) and not gate.needs_detection(6.0, frame)
