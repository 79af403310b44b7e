"""Zones drawn on one picture size keep their place on another: a camera file drawn on vtest's
768x576 picture, run on a 384x288 copy of vtest (a sub-stream), still opens its ticket where the
zone is; a zone lying outside the picture is reported, not silently watched."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest

from agent.zones import Zone
from tests.helpers import REPO, write_camera, write_edge

DRAWN = (768, 576)
# The lawn strip at the bottom of vtest, where people stand for seconds (drawn on 768x576).
STRIP = np.array([[0, 330], [768, 330], [768, 576], [0, 576]], np.float32)


@pytest.fixture(scope="module")
def half_size_vtest(footage, tmp_path_factory):
    """The first 40 s of vtest at half size, H.264: what the camera's sub-stream would send."""
    out_path = tmp_path_factory.mktemp("substream") / "vtest-384x288.mp4"
    with av.open(str(footage["vtest.mp4"])) as src, av.open(str(out_path), "w") as out:
        stream = out.add_stream("libx264", rate=10, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 384, 288, "yuv420p"
        for frame in src.decode(video=0):
            if frame.time > 40:
                break
            small = cv2.resize(frame.to_ndarray(format="bgr24"), (384, 288), interpolation=cv2.INTER_AREA)
            for packet in stream.encode(av.VideoFrame.from_ndarray(small, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return out_path


def _camera(tmp_path, video, polygon: np.ndarray, frame_size: tuple[int, int] | None):
    cam = write_camera(tmp_path, "cam1", str(video), dwell=2, polygon=json.dumps(polygon.tolist()))
    if frame_size is not None:
        text = cam.read_text().replace("[location]", f"frame_size = {list(frame_size)}\n\n[location]", 1)
        cam.write_text(text)
    return write_edge(tmp_path, [cam])


def _replay(edge, video, tmp_path):
    out = subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), "replay", str(video),
                          "--camera", "cam1", "--store", str(tmp_path / "store")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()], out.stderr


def test_zones_drawn_on_768x576_open_their_ticket_in_place_on_a_384x288_stream(tmp_path, half_size_vtest):
    edge = _camera(tmp_path, half_size_vtest, STRIP, DRAWN)
    tickets, log = _replay(edge, half_size_vtest, tmp_path)
    opened = [t for t in tickets if t["event"] == "opened"]
    assert opened, log
    assert "zone_outside_picture" not in log
    # The ticket's boxes are pixels of the 384x288 picture, their feet inside the zone as it was
    # drawn once scaled back up: the zone followed the picture.
    zone = Zone("strip", STRIP)
    for doc in opened:
        boxes = np.array(doc["boxes"], np.float32)
        assert boxes[:, 2].max() <= 384 and boxes[:, 3].max() <= 288, boxes
        feet = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]], axis=1) * 2
        assert zone.contains(feet).all(), (feet, doc["boxes"])


def test_without_frame_size_a_zone_beyond_the_smaller_picture_is_reported_and_refused(tmp_path, half_size_vtest):
    # Drawn on 768x576 in stream pixels, no frame_size: on the 384x288 stream this strip lies
    # entirely below the picture.
    low_strip = np.array([[0, 400], [768, 400], [768, 576], [0, 576]], np.float32)
    edge = _camera(tmp_path, half_size_vtest, low_strip, None)
    tickets, log = _replay(edge, half_size_vtest, tmp_path)
    assert tickets == []
    line = next(line for line in log.splitlines() if "event=zone_outside_picture" in line)
    for part in ("camera=cam1", "zone=plaza", "picture=384x288", "polygon_extent=0,400-768,576", "drawn_on=no_frame_size"):
        assert part in line, line
    assert "reason=outside_picture" in log


def test_check_warns_without_frame_size_and_names_the_size_with_it(tmp_path, capsys):
    from agent.cli import main
    edge = _camera(tmp_path, "/nonexistent.mp4", STRIP, None)
    assert main(["-c", str(edge), "check"]) == 0
    assert "warning: no frame_size" in capsys.readouterr().out
    edge = _camera(tmp_path, "/nonexistent.mp4", STRIP, DRAWN)
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert "zones drawn on 768x576" in out and "no frame_size" not in out


def test_a_refused_zone_is_in_the_cameras_status(tmp_path, half_size_vtest):
    import threading

    import jsonschema

    from agent.app import Agent
    from agent.config import load_config

    low_strip = np.array([[0, 400], [768, 400], [768, 576], [0, 576]], np.float32)
    config = load_config(_camera(tmp_path, half_size_vtest, low_strip, None))
    agent = Agent(config, storage_dir=tmp_path / "store")
    agent.run(threading.Event())
    # What the retained status carries per camera (agent.status() also reads the outbox, closed by now).
    camera = agent.health["cam1"].snapshot(0.0)
    assert camera["zones_outside_picture"] == ["plaza"] and camera["size"] == "384x288"
    schema = json.loads((REPO / "agent" / "schemas" / "status.schema.json").read_text())
    jsonschema.validate(camera, schema["properties"]["cameras"]["items"])


def test_scaling_keeps_the_crowd_rules_ground_area():
    """px_per_m2 is per pixel of the picture the zone was drawn on: the half-size stream's zone
    has a quarter of the pixels and the same square metres."""
    from agent.rules.crowd import CrowdRule, Params

    drawn = Zone("plaza", STRIP)
    half = drawn.scaled(0.5, 0.5)
    assert half.scale == (0.5, 0.5) and half.polygon.max(axis=0).tolist() == [384, 288]
    params = Params(px_per_m2=400.0)
    assert CrowdRule(half, params).area_m2 == pytest.approx(CrowdRule(drawn, params).area_m2)
    assert half.covers_any(384, 288) and not Zone("off", STRIP + [0, 300]).covers_any(768, 576)
