"""The ``config`` command against a running agent: two real cameras (looping video files), a real
detector, real files. A change is applied to one camera while the other keeps running, refused
when ``check`` would refuse it, and rolled back when the camera does not come up."""

from __future__ import annotations

import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import schemas
from agent.app import Agent
from agent.config import load_config
from agent.transport import Request
from tests.helpers import looping_camera, signed, write_edge

APPLY_TIMEOUT_S = 6
WAIT_S = 120  # a bound for the waits below, not a measurement: a stalled agent fails, a slow one does not


@dataclass
class Box:
    agent: Agent
    folder: Path
    edge: Path

    def camera_file(self, camera_id: str) -> Path:
        return self.folder / f"{camera_id}.toml"


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def box(tmp_path, footage) -> Iterator[Box]:
    cameras = [looping_camera(tmp_path, camera, footage["vtest.mp4"]) for camera in ("cam1", "cam2")]
    edge = write_edge(tmp_path, cameras, commands_extra=f"config_apply_timeout_s = {APPLY_TIMEOUT_S}\n")
    agent = Agent(load_config(edge))
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
    runner.start()
    wait_for(lambda: all(h.frames_analysed > 0 for h in list(agent.health.values())), "both cameras analyse")
    yield Box(agent, tmp_path, edge)
    stop.set()
    runner.join(timeout=60)


def send_config(agent: Agent, camera_id: str, text: str) -> dict:
    doc = {"schema": "edge-agent/command", "schema_version": "1.0", "command_id": f"cfg-{camera_id}",
           "verb": "config", "camera_id": camera_id, "camera_toml": text}
    topic = "cityops/test-box/cmd/config"
    reply = agent.commands.handle(Request(topic, signed(topic, doc, agent.clock.now()), "platform/replies", b"c"))
    schemas.validator("reply").validate(reply)
    stored, _ = agent.outbox.messages("reply")[-1]
    assert stored.topic == "platform/replies" and stored.props.correlation_data == b"c"
    return reply


def assert_keeps_running(agent: Agent, camera_id: str, worker: threading.Thread, analysed_before: int) -> None:
    """The camera was not restarted: the same worker thread, alive, its counter still rising."""
    assert agent.cameras.worker(camera_id) is worker and worker.is_alive()
    wait_for(lambda: agent.health[camera_id].frames_analysed > analysed_before, f"{camera_id} analyses on")


def zone_ids(agent: Agent, camera_id: str) -> list[str]:
    return [zr.config.zone.id for zr in agent.pipelines[camera_id].zone_rules]


def test_a_camera_change_is_applied_while_the_other_camera_runs_on(box):
    agent = box.agent
    cam1_worker, cam2_worker = agent.cameras.worker("cam1"), agent.cameras.worker("cam2")
    cam1_analysed = agent.health["cam1"].frames_analysed
    old_text = box.camera_file("cam2").read_text()
    new_text = old_text.replace("plaza", "bench").replace("min_dwell_s = 2", "min_dwell_s = 30")

    reply = send_config(agent, "cam2", new_text)

    assert reply["ok"] and reply["result"] == "applied" and reply["camera_id"] == "cam2", reply
    assert zone_ids(agent, "cam2") == ["bench"]
    assert agent.pipelines["cam2"].camera.zones[0].params.min_dwell_s == 30
    assert agent.cameras.worker("cam2") is not cam2_worker and agent.health["cam2"].frames_analysed > 0
    assert box.camera_file("cam2").read_text() == new_text
    assert box.camera_file("cam2").with_name("cam2.toml.previous").read_text() == old_text
    assert_keeps_running(agent, "cam1", cam1_worker, cam1_analysed)
    assert [c["camera_id"] for c in agent.status()["cameras"]] == ["cam1", "cam2"]
    assert not (box.folder / "var" / "config-staging").exists()


def test_a_new_camera_is_added_to_edge_toml_and_runs(box):
    agent = box.agent
    cam1_worker, cam1_analysed = agent.cameras.worker("cam1"), agent.health["cam1"].frames_analysed
    text = box.camera_file("cam2").read_text().replace('id = "cam2"', 'id = "cam3"')

    reply = send_config(agent, "cam3", text)

    assert reply["ok"] and reply["result"] == "applied", reply
    assert tomllib.loads(box.edge.read_text())["cameras"][-1] == "cam3.toml"
    assert [c.id for c in load_config(box.edge).cameras] == ["cam1", "cam2", "cam3"]
    assert agent.health["cam3"].frames_analysed > 0 and agent.cameras.worker("cam3").is_alive()
    assert [c["camera_id"] for c in agent.status()["cameras"]] == ["cam1", "cam2", "cam3"]
    assert_keeps_running(agent, "cam1", cam1_worker, cam1_analysed)


INVALID = [
    ("bad value", lambda t: t.replace("analysis_fps = 2.0", "analysis_fps = 0"), "analysis_fps"),
    ("unknown model", lambda t: t.replace('model = "default"', 'model = "huge"'), "model"),
    ("another camera's id", lambda t: t.replace('id = "cam2"', 'id = "cam1"'), "id"),
    ("not TOML", lambda t: t + "\n[zones\n", None),
]


@pytest.mark.parametrize("case, edit, key", INVALID, ids=[c[0] for c in INVALID])
def test_an_invalid_camera_file_is_refused_and_changes_nothing(box, case, edit, key):
    agent = box.agent
    workers = {c: agent.cameras.worker(c) for c in ("cam1", "cam2")}
    pipelines = dict(agent.pipelines)
    old_text, old_edge = box.camera_file("cam2").read_text(), box.edge.read_text()

    reply = send_config(agent, "cam2", edit(old_text))

    assert not reply["ok"] and reply["error"]["code"] == "invalid_config", reply
    assert reply["error"]["file"] == str(box.camera_file("cam2")) and reply["error"].get("key") == key
    assert "config-staging" not in reply["error"]["message"]
    assert box.camera_file("cam2").read_text() == old_text and box.edge.read_text() == old_edge
    assert not box.camera_file("cam2").with_name("cam2.toml.previous").exists()
    assert agent.pipelines == pipelines
    for camera, worker in workers.items():
        assert_keeps_running(agent, camera, worker, agent.health[camera].frames_analysed)


def test_a_camera_that_does_not_come_up_is_rolled_back(box):
    agent = box.agent
    cam1_worker, cam1_analysed = agent.cameras.worker("cam1"), agent.health["cam1"].frames_analysed
    old_pipeline, old_health = agent.pipelines["cam2"], agent.health["cam2"]
    old_text = box.camera_file("cam2").read_text()
    moved = box.folder / "gone" / "vtest.mp4"  # valid config, but no such video: the camera cannot open
    new_text = "\n".join(f'url = "{moved}"' if line.startswith("url =") else line for line in old_text.splitlines())

    reply = send_config(agent, "cam2", new_text)

    assert not reply["ok"] and reply["result"] == "rolled_back" and reply["camera_id"] == "cam2", reply
    message = reply["error"]["message"]
    assert reply["error"]["code"] == "camera_failed"
    assert f"analysed no frame within {APPLY_TIMEOUT_S} s" in message and "No such file" in message, message
    assert box.camera_file("cam2").read_text() == old_text
    # The previous camera is back: its own parts, its counter rising again on a new worker.
    assert agent.pipelines["cam2"] is old_pipeline and agent.health["cam2"] is old_health
    analysed = old_health.frames_analysed
    wait_for(lambda: old_health.frames_analysed > analysed, "the restored cam2 analyses again")
    assert_keeps_running(agent, "cam1", cam1_worker, cam1_analysed)


def test_a_new_camera_that_does_not_come_up_is_removed_again(box):
    agent = box.agent
    old_edge = box.edge.read_text()
    text = box.camera_file("cam2").read_text().replace('id = "cam2"', 'id = "cam3"').replace(
        "vtest.mp4", "missing.mp4")

    reply = send_config(agent, "cam3", text)

    assert reply["result"] == "rolled_back", reply
    assert box.edge.read_text() == old_edge and not box.camera_file("cam3").exists()
    assert "cam3" not in agent.health and "cam3" not in agent.pipelines and agent.cameras.worker("cam3") is None
    assert [c["camera_id"] for c in agent.status()["cameras"]] == ["cam1", "cam2"]


def test_a_camera_file_outside_the_config_folder_is_left_alone(tmp_path, footage):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "box").mkdir()
    camera_file = looping_camera(tmp_path / "elsewhere", "cam1", footage["vtest.mp4"])
    agent = Agent(load_config(write_edge(tmp_path / "box", [camera_file])))  # refused before any camera runs
    text = camera_file.read_text()

    reply = send_config(agent, "cam1", text.replace("plaza", "bench"))

    assert not reply["ok"] and reply["error"]["code"] == "config_not_writable", reply
    assert str(tmp_path / "box") in reply["error"]["message"]
    assert camera_file.read_text() == text and zone_ids(agent, "cam1") == ["plaza"]
