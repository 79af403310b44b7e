"""Zero lost tickets: broker outages while tickets keep opening, and the agent SIGKILLed while the
broker is down. Real mosquitto, the agent as its own process, footage looping as fast as it decodes."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time

from tests.helpers import REPO, write_camera, write_edge
from tests.test_whole_loop import Subscriber, wait_for


def busy_box(tmp_path, footage, port):
    """A camera that opens and clears tickets every few seconds: vtest looping at full decode speed
    (about 10x real time), no cooldown, short dwell, on the strip people cross now and then."""
    cam = write_camera(tmp_path, "busy", str(footage["vtest.mp4"]), dwell=1,
                       polygon="[[0, 330], [768, 330], [768, 576], [0, 576]]")
    cam.write_text(cam.read_text().replace("cooldown_s = 600", "cooldown_s = 0").replace(
        "clear_after_s = 5", "clear_after_s = 1.5").replace("realtime = false", "realtime = false\nloop = true"))
    edge = write_edge(tmp_path, [cam], mqtt_port=port)
    edge.write_text(edge.read_text() + "\n[tickets]\nreopen_window_s = 0\nclips = true\nclip_pre_s = 1\n"
                                       "clip_post_s = 1\n")
    return edge


def start(edge, log):
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "run"], stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO)


def outbox_rows(tmp_path, sql: str) -> list[tuple]:
    """Rows of the agent's outbox, read beside the running agent; none until the agent has made
    its file and tables (the file appears a moment before the tables do)."""
    if not (tmp_path / "var" / "outbox.sqlite").exists():
        return []
    db = sqlite3.connect(tmp_path / "var" / "outbox.sqlite")
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        db.close()


def stored(tmp_path):
    return outbox_rows(tmp_path, "SELECT id, topic, kind, delivered_at FROM messages ORDER BY id")


def pending(tmp_path):
    return sum(1 for row in stored(tmp_path) if row[3] is None)


def ticket_messages(tmp_path):
    return [json.loads(p) for (p,) in outbox_rows(tmp_path, "SELECT payload FROM messages WHERE kind = 'ticket' ORDER BY id")]


def check_everything_arrived_in_order(tmp_path, sub):
    """Every stored ticket message arrived; after dedupe by (ticket id, seq) they are in seq order;
    every evidence item a ticket names arrived with its hash."""
    sent = ticket_messages(tmp_path)
    assert len(sent) >= 6, f"the test needs tickets opened around the outage, got {len(sent)}"
    with sub.lock:
        received = list(sub.messages)
    first_arrivals = {}
    for message in received:
        if message.topic.endswith("/tickets"):
            doc = json.loads(message.payload)
            first_arrivals.setdefault((doc["ticket_id"], doc["seq"]), doc)
    seqs = [seq for _, seq in first_arrivals]
    assert seqs == sorted(seqs), "ticket messages arrived out of sequence order"
    assert [(d["ticket_id"], d["seq"]) for d in sent] == list(first_arrivals), "a stored ticket message is missing"
    evidence = {(m.topic, hashlib.sha256(m.payload).hexdigest()) for m in received if "/evidence/" in m.topic}
    for doc in sent:
        for item in doc["evidence"]:
            if item.get("chunks", 1) == 1:
                assert (item["topic"], item["sha256"]) in evidence, f"{item['kind']} of {doc['ticket_id']} missing"


def test_broker_outage_while_tickets_keep_opening(tmp_path, footage, mosquitto):
    sub = Subscriber(mosquitto.port, "cityops/#", persistent_session=True)
    edge = busy_box(tmp_path, footage, mosquitto.port)
    with open(tmp_path / "agent.log", "wb") as log:
        agent = start(edge, log)
    try:
        wait_for(lambda: len(ticket_messages(tmp_path)) >= 2, 90, "tickets before the outage", agent)
        mosquitto.stop()
        before = len(ticket_messages(tmp_path))
        wait_for(lambda: len(ticket_messages(tmp_path)) >= before + 3, 90, "tickets during the outage", agent)
        assert pending(tmp_path) > 0
        mosquitto.start()
        wait_for(lambda: len(ticket_messages(tmp_path)) >= before + 5, 90, "tickets after the outage", agent)
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
    assert code == 0
    wait_for(lambda: pending(tmp_path) == 0, 1, "the outbox drained before exit")
    wait_for(lambda: len([m for m in sub.messages if m.topic.endswith("/tickets")]) >= len(ticket_messages(tmp_path)),
             20, "the subscriber to have everything")
    check_everything_arrived_in_order(tmp_path, sub)
    status = [m for m in sub.messages if m.topic.endswith("/status")]
    assert json.loads(status[-1].payload)["state"] == "offline"
    sub.close()


def test_agent_killed_while_broker_down_delivers_everything_after_restart(tmp_path, footage, mosquitto):
    sub = Subscriber(mosquitto.port, "cityops/#", persistent_session=True)
    edge = busy_box(tmp_path, footage, mosquitto.port)
    mosquitto.stop()
    with open(tmp_path / "agent.log", "wb") as log:
        agent = start(edge, log)
        try:
            wait_for(lambda: len(ticket_messages(tmp_path)) >= 6, 120, "tickets stored with no broker", agent)
        finally:
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=10)
        assert pending(tmp_path) == len(stored(tmp_path)), "nothing can have been delivered"
        killed_with = len(ticket_messages(tmp_path))

        mosquitto.start()
        agent = start(edge, log)
        try:
            wait_for(lambda: len(ticket_messages(tmp_path)) >= killed_with + 2, 120, "tickets after restart", agent)
            wait_for(lambda: all(row[3] is not None for row in stored(tmp_path)[:killed_with]), 60,
                     "the killed run's messages delivered", agent)
        finally:
            agent.send_signal(signal.SIGTERM)
            started_stop = time.monotonic()
            assert agent.wait(timeout=30) == 0
            stop_took = time.monotonic() - started_stop
    assert stop_took < 15, f"SIGTERM took {stop_took:.1f} s"
    wait_for(lambda: len([m for m in sub.messages if m.topic.endswith("/tickets")]) >= len(ticket_messages(tmp_path)),
             20, "the subscriber to have everything")
    check_everything_arrived_in_order(tmp_path, sub)
    seqs = [d["seq"] for d in ticket_messages(tmp_path)]
    assert seqs == list(range(1, len(seqs) + 1)), "seq must continue across the kill without gaps or repeats"
    sub.close()
