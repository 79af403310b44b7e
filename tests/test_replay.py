"""``edge-agent replay`` as a technician uses it: every ticket message printed, a per-zone account
of what the rules saw, progress, and the analysed frames written as a video."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from tests.helpers import REPO, write_camera, write_edge


def replay(tmp_path, video, camera_file, camera_id, *extra) -> subprocess.CompletedProcess:
    edge = write_edge(tmp_path, [camera_file])
    out = subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), "replay", str(video),
                          "--camera", camera_id, "--store", str(tmp_path / "store"), *extra],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out


def stored_ticket_messages(store) -> list[dict]:
    db = sqlite3.connect(store / "outbox.sqlite")
    return [json.loads(payload) for (payload,) in
            db.execute("SELECT payload FROM messages WHERE kind = 'ticket' ORDER BY id")]


def test_replay_prints_every_ticket_message_the_outbox_stores_clip_updates_too(tmp_path, footage):
    cam = write_camera(tmp_path, "cam1", str(footage["vtest.mp4"]), dwell=2)
    out = replay(tmp_path, footage["vtest.mp4"], cam, "cam1")
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    stored = stored_ticket_messages(tmp_path / "store")
    assert any(doc["event"] == "updated" and doc.get("reason") == "evidence" for doc in printed), \
        "the clip's updated message is missing from stdout"
    assert [(d["ticket_id"], d["seq"], d["event"]) for d in printed] == \
        [(d["ticket_id"], d["seq"], d["event"]) for d in stored]
    assert f"{len(stored)} ticket messages" in out.stderr
