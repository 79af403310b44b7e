"""``edge-agent replay`` as a technician uses it: every ticket message printed, a per-zone account
of what the rules saw, progress, and the analysed frames written as a video."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import av
import numpy as np

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


def test_replay_accounts_for_each_zone_shows_progress_and_writes_the_annotated_frames(tmp_path, footage):
    """A zone whose min_score no person reaches: no ticket, and the account says why."""
    cam = write_camera(tmp_path, "cam1", str(footage["vtest.mp4"]), dwell=2)
    cam.write_text(cam.read_text().replace("min_dwell_s = 2", "min_dwell_s = 2\nmin_score = 0.95", 1))
    annotated = tmp_path / "annotated.mp4"
    out = replay(tmp_path, footage["vtest.mp4"], cam, "cam1", "--annotate", str(annotated))
    assert out.stdout == ""
    err = out.stderr.splitlines()
    assert [line for line in err if line.startswith("replay: ") and "%" in line][:3] == [
        line for line in err if re.match(r"replay: (10|20|30)% \(\d+ of 80 s\), \d+ frames analysed", line)]
    summary = next(i for i, line in enumerate(err) if line.startswith("zone plaza (object_dwell): 159 frames watched"))
    assert "candidates in" in err[summary] and "rule events: none" in err[summary]
    blocked = err[summary + 1]
    assert blocked.startswith("  blocked: score under min_score 0.95 in ") and "dwell short" in blocked, blocked

    with av.open(str(annotated)) as video:
        stream = video.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 768, 576)
        frames = [f.to_ndarray(format="bgr24") for f in video.decode(video=0)]
    assert len(frames) == 159
    # The zone is drawn in: its outline in amber along the top edge of the strip (y 250).
    edge_row = frames[20][250, 100:700].astype(int)
    assert (np.abs(edge_row - np.array([0, 200, 255])).max(axis=1) < 60).mean() > 0.5


def test_run_print_tickets_prints_every_stored_message_too(tmp_path, footage):
    """``run --print-tickets`` over a file camera that does not loop: the agent stops at its end."""
    cam = write_camera(tmp_path, "cam1", str(footage["vtest.mp4"]), dwell=2)
    edge = write_edge(tmp_path, [cam])
    out = subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), "run", "--print-tickets"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    stored = stored_ticket_messages(tmp_path / "var")
    assert printed and [(d["ticket_id"], d["seq"]) for d in printed] == [(d["ticket_id"], d["seq"]) for d in stored]
