"""Ingest: sampling cadence (pure logic) and a camera worker riding out a real RTSP server restart."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading

from agent.clock import SystemClock
from agent.config import load_config
from agent.health import CameraHealth
from agent.ingest import CameraWorker, Sampler
from tests.helpers import write_camera, write_edge
from tests.test_whole_loop import wait_for


def test_sampler_takes_one_frame_per_period_of_media_time():
    sampler = Sampler(fps=2.0)
    times = [i / 25 for i in range(250)]  # 10 s of a 25 fps stream
    taken = [t for t in times if sampler.take(t)]
    assert len(taken) == 20
    assert all(0.48 <= b - a <= 0.52 for a, b in itertools.pairwise(taken))


def test_sampler_does_not_burst_after_a_stall():
    sampler = Sampler(fps=2.0)
    assert sampler.take(0.0)
    assert sampler.take(10.0)  # 10 s gap: one frame, then the normal cadence again
    assert not sampler.take(10.1)
    assert sampler.take(10.5)


def test_worker_reports_drop_and_reconnects_when_the_rtsp_server_restarts(tmp_path, footage, rtsp_server,
                                                                         caplog):
    server = rtsp_server({"/cam": footage["vtest.mp4"]})
    cam_file = write_camera(tmp_path, "cam-rtsp", server.urls["/cam"], fps=2.0)
    camera = load_config(write_edge(tmp_path, [cam_file])).cameras[0]
    camera = dataclasses.replace(camera, read_timeout_s=2.0)
    health = CameraHealth(camera.id)
    frames: list[float] = []
    stop = threading.Event()
    worker = CameraWorker(camera, SystemClock(), health, lambda f: frames.append(f.ts), stop)
    caplog.set_level(logging.INFO, logger="agent.ingest")
    worker.start()
    try:
        wait_for(lambda: len(frames) >= 3, 30, "first frames over RTSP")
        server.stop()
        wait_for(lambda: health.disconnects >= 1, 15, "the drop to be noticed")
        assert not health.connected_now
        before = len(frames)
        server.start()
        wait_for(lambda: len(frames) >= before + 3, 60, "frames again after the server came back")
    finally:
        stop.set()
        worker.join(timeout=15)
    assert not worker.is_alive()
    events = [r.getMessage() for r in caplog.records if r.name == "agent.ingest"]
    assert events.count("camera_connected") >= 2
    assert "camera_dropped" in events and "camera_reconnecting" in events


def test_a_url_that_is_not_video_is_reported_and_retried_without_crashing(tmp_path, caplog):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is a text file, not a video\n" * 100)
    cam_file = write_camera(tmp_path, "cam-bad", str(not_video))
    camera = load_config(write_edge(tmp_path, [cam_file])).cameras[0]
    health = CameraHealth(camera.id)
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="agent.ingest")
    worker = CameraWorker(camera, SystemClock(), health, lambda f: None, stop)
    worker.start()
    try:
        wait_for(lambda: health.disconnects >= 2, 15, "two failed attempts")
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive() and health.frames_decoded == 0
    assert "InvalidDataError" in health.last_error
    dropped = [r for r in caplog.records if r.getMessage() == "camera_dropped"]
    assert dropped and dropped[0].fields["camera"] == "cam-bad" and "Invalid data" in dropped[0].fields["reason"]
