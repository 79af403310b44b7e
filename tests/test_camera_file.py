"""agent/camera_file.py: a camera file is replaced only by one the loader accepts, atomically, with
the old one kept as .bak and its mode (it may hold a password) carried over."""

from __future__ import annotations

import stat
import tomllib

import pytest

from agent import camera_file
from agent.config import ConfigError, load_config
from tests.helpers import REPO, write_camera, write_edge


@pytest.fixture
def box(tmp_path, footage):
    cam = write_camera(tmp_path, "cam-a", str(footage["vtest.mp4"]))
    return write_edge(tmp_path, [cam], command_key=False), cam


def test_the_text_reads_back_as_the_same_document():
    doc = tomllib.loads((REPO / "camera_config" / "demo-vtest.toml").read_text())
    doc["frame_size"] = [768, 576]
    doc["zones"]["odd key"] = {"polygon": [[0.5, 1], [2, 3], [4, 5.25]], "rule": {"type": "object_dwell",
                               "classes": ["person"], "note": "quote \" and 中文"},
                               "schedule": [{"start": "08:00", "end": "20:00"}, {"start": "22:00", "end": "23:00"}]}
    assert tomllib.loads(camera_file.dumps(doc)) == doc


def test_save_validates_then_replaces_keeping_a_backup_and_the_mode(box):
    edge, cam = box
    cam.chmod(0o600)
    old = cam.read_text()
    doc = tomllib.loads(old)
    doc["zones"]["plaza"]["rule"]["min_dwell_s"] = 7
    camera = camera_file.save(cam, doc, edge)
    assert camera.source_file == cam and camera.zones[0].params.min_dwell_s == 7
    assert cam.with_name("cam-a.toml.bak").read_text() == old
    assert stat.S_IMODE(cam.stat().st_mode) == 0o600
    assert load_config(edge).camera("cam-a").zones[0].params.min_dwell_s == 7
    assert not list(cam.parent.glob(".*.new"))


def test_a_refused_document_leaves_the_file_untouched(box):
    edge, cam = box
    old = cam.read_bytes()
    doc = tomllib.loads(old.decode())
    doc["zones"]["plaza"]["polygon"] = [[0, 0], [1, 1]]
    with pytest.raises(ConfigError) as caught:
        camera_file.save(cam, doc, edge)
    assert caught.value.source == str(cam) and caught.value.key == "zones.plaza.polygon"
    assert cam.read_bytes() == old
    assert not cam.with_name("cam-a.toml.bak").exists() and not list(cam.parent.glob(".*.new"))


def test_the_header_comment_is_kept():
    text = "# Camera over the market\n# second line\nid = \"x\"\n"
    assert camera_file.dumps({"id": "x"}, camera_file.header_comments(text)).startswith(
        "# Camera over the market\n# second line\nid = ")
