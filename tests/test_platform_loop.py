"""发现—立案—派遣—处置—核查—结案 end to end, on real parts: a real-footage composite (plastic
dropped on vtest's lawn, then taken away) served by the loopback RTSP server, the agent as its own
process, a real mosquitto, and the reference platform driving the loop over MQTT 5."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import av

from agent import schemas
from tests.helpers import COMMAND_KEY, REPO, write_edge
from tests.test_whole_loop import wait_for
from tools.ref_platform import RefPlatform
from tools.scenario_kit import ensure_built, load_recipe

RECIPE = REPO / "scenarios" / "litter_platform_loop.toml"
PRE_S, POST_S = 3.0, 3.0


def test_litter_ticket_goes_round_the_whole_loop(tmp_path, footage, mosquitto, rtsp_server):
    composite = ensure_built(load_recipe(RECIPE), REPO / ".cache" / "scenarios")
    server = rtsp_server({"/lawn": composite.video})
    camera = tmp_path / "lawn-cam.toml"
    camera.write_text(re.sub(r'(?m)^url = ".*"$', f'url = "{server.urls["/lawn"]}"',
                             composite.camera_file.read_text()))
    assert server.urls["/lawn"] in camera.read_text(), "the camera must read the RTSP stream"
    edge = write_edge(tmp_path, [camera], mqtt_port=mosquitto.port)
    edge.write_text(edge.read_text() + f"\n[tickets]\nclip_pre_s = {PRE_S}\nclip_post_s = {POST_S}\n")

    # Enrolment as an installer does it: the box prints its public key, the platform stores it.
    public = subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), "key"], capture_output=True,
                            check=True, cwd=REPO).stdout
    platform = RefPlatform("127.0.0.1", mosquitto.port, tmp_path / "platform.sqlite",
                           evidence_dir=tmp_path / "platform-evidence", command_keys={"test-box": COMMAND_KEY},
                           device_keys={"test-box": public}).start()
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - the agent writes to it until the finally
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "run"], stdout=log,
                             stderr=subprocess.STDOUT, cwd=REPO)
    started = time.monotonic()
    try:
        # 发现: the camera opens a litter ticket with a snapshot, then its clip.
        wait_for(lambda: platform.summary()["tickets"].get("open"), 40, "a litter ticket at the platform", agent)
        (ticket_id,) = [row[0] for row in _rows(tmp_path / "platform.sqlite", "SELECT ticket_id FROM tickets WHERE rule = 'litter'")]
        opened_after = time.monotonic() - started

        # 立案, 派遣, 处置 while the plastic still lies there: 核查 answers still_present.
        assert platform.ack(ticket_id, case_id="SH-2026-000123").result == "recorded"
        assert platform.dispatched(ticket_id).result == "recorded"
        handled = platform.handled(ticket_id)
        assert handled.ok and handled.result == "still_present", handled
        assert platform.ticket(ticket_id)["status"] == "open"

        # The plastic is taken away at 28 s of the stream; ask again once it is gone.
        wait_for(lambda: time.monotonic() - started > 28 + 3 + 4, 60, "the plastic to be gone", agent)
        verified = platform.verify(ticket_id)
        assert verified.ok and verified.result == "verified_cleared", verified
        wait_for(lambda: platform.ticket(ticket_id)["status"] == "closed", 20, "the closed message", agent)
        wait_for(lambda: platform.summary()["evidence"]["pending"] == 0, 20, "all evidence matched", agent)
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
        log.close()
        summary = platform.summary()
        violations = platform.violation_list()
        platform.stop()
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]

    # Both sides agree the ticket ended closed, and every message and evidence item checked out.
    assert violations == [], violations
    assert summary["rejected"] == 0, "every ticket message verified against the enrolled key"
    assert summary["evidence"]["unverified"] == 0 and summary["evidence"]["verified"] >= 4
    docs = [json.loads(doc) for (doc,) in _rows(tmp_path / "platform.sqlite", "SELECT doc FROM messages WHERE ticket_id = ? ORDER BY seq",
                                                 ticket_id)]
    for doc in docs:
        schemas.validator("ticket").validate(doc)
    events = [d["event"] for d in docs]
    assert events[0] == "opened" and events[-1] == "closed", events
    assert "updated" in events  # the clip, and the still_present verification
    last = docs[-1]
    assert last["status"] == "closed" and last["platform_state"] == "handled"
    assert last["verification"]["result"] == "verified_cleared"
    assert last["category"] == {"major": "市容环境", "minor": "暴露垃圾", "code": "01-02"}
    kinds = {e["kind"] for e in last["evidence"]}
    assert {"snapshot", "clip", "snapshot_verify"} <= kinds, kinds
    print(f"ticket opened {opened_after:.1f} s after the stream started")

    # The clip plays: H.264 in MP4, about pre + post roll long (a remux starts at a keyframe,
    # up to one 2 s GOP early).
    (clip_path,) = [p for p in (tmp_path / "platform-evidence").rglob("*") if p.is_file() and _is_clip(p)]
    with av.open(str(clip_path)) as clip:
        stream = clip.streams.video[0]
        frames = sum(1 for _ in clip.decode(stream))
        duration = float(stream.duration * stream.time_base) if stream.duration else frames / 10
    assert stream.codec_context.name == "h264"
    assert PRE_S + POST_S - 0.5 <= duration <= PRE_S + POST_S + 2.5, duration
    assert frames >= 10 * (PRE_S + POST_S) - 5


def _rows(db_path, sql, *params):
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def _is_clip(path):
    with open(path, "rb") as f:
        return f.read(12)[4:8] == b"ftyp"
