"""Durable delivery with a real broker: tickets stored while no broker is there arrive later,
in order, and are marked delivered only then."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from agent.clock import SystemClock
from agent.config import MqttSection
from agent.outbox import Outbox
from agent.topics import Topics
from agent.transport import MqttTransport
from tests.helpers import REPO, write_camera, write_edge
from tests.test_whole_loop import Subscriber, wait_for


def replay_into_store(tmp_path, footage) -> Outbox:
    """Run the demo-like camera over vtest with no broker configured: tickets are only stored."""
    cam = write_camera(tmp_path, "cam-file", str(footage["vtest.mp4"]), dwell=2)
    edge = write_edge(tmp_path, [cam])
    store = tmp_path / "store"
    out = subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), "replay", str(footage["vtest.mp4"]),
                          "--camera", "cam-file", "--store", str(store)],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    assert printed and printed[0]["event"] == "opened"
    return Outbox(store / "outbox.sqlite")


def test_no_broker_then_broker_down_then_up_delivers_everything_in_order(tmp_path, footage, mosquitto):
    outbox = replay_into_store(tmp_path, footage)
    stored = outbox.messages()
    assert stored and all(delivered is None for _, delivered in stored), "nothing may be delivered without a broker"
    for message, _ in stored:
        assert message.body()  # evidence files are on disk, tickets inline

    sub = Subscriber(mosquitto.port, "cityops/#", persistent_session=True)
    mosquitto.stop()
    cfg = MqttSection(host="127.0.0.1", port=mosquitto.port, reconnect_min_s=0.2, reconnect_max_s=1.0)
    sender = MqttTransport(cfg, Topics("cityops", "test-box"), outbox, SystemClock())
    sender.start()
    try:
        time.sleep(2)  # the sender retries against a dead port meanwhile
        assert outbox.counts()["pending"] == len(stored)

        mosquitto.start()  # restores the subscriber's session, which queues for it until it is back
        wait_for(lambda: outbox.counts()["pending"] == 0, 30, "every stored message delivered")
        wait_for(lambda: len([m for m in sub.messages if "/status" not in m.topic]) >= len(stored), 10,
                 "every message at the subscriber")
    finally:
        sender.stop()
    received = [m for m in sub.messages if "/status" not in m.topic]
    sub.close()
    expected_topics = [m.topic for m, _ in stored]
    # at-least-once: duplicates allowed, order of first arrival must be the stored order
    first_arrivals = list(dict.fromkeys((m.topic, bytes(m.payload)) for m in received))
    assert [topic for topic, _ in first_arrivals] == expected_topics
    seqs = [json.loads(p)["seq"] for t, p in first_arrivals if t.endswith("/tickets")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
