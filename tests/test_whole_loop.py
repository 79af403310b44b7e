"""The whole loop on real parts: a real RTSP server and a file as cameras, the bundled NanoDet
model, the agent as its own process, and a real mosquitto with a real subscriber."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import cv2
import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.tickets import SCHEMA_VERSION
from tests.helpers import REPO, write_camera, write_edge

TICKET_SCHEMA = json.loads((REPO / "agent" / "schemas" / "ticket.schema.json").read_text())
TICKET_FIELDS = {"ticket_id", "agent_id", "camera_id", "zone_id", "rule", "class", "confidence", "first_seen",
                 "last_seen", "boxes", "location", "model", "schema_version", "seq", "evidence"}


class Subscriber:
    """A real MQTT client recording everything under a topic filter."""

    def __init__(self, port: int, topic: str, persistent_session: bool = False):
        """With ``persistent_session`` the broker keeps the subscription and queues messages for
        this client while it is away, also across a (persistent) broker's restart."""
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = lambda c, u, msg: self._add(msg)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        props = None
        if persistent_session:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=not persistent_session, properties=props)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(10), "subscription not acknowledged"

    def _add(self, msg):
        with self.lock:
            self.messages.append(msg)

    def on(self, suffix: str) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def by_topic(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_two_cameras_rtsp_and_file_deliver_evidence_tickets_to_the_broker(tmp_path, footage, mosquitto,
                                                                          rtsp_server):
    clip = footage["vtest.mp4"]
    server = rtsp_server({"/plaza": clip})
    cams = [
        write_camera(tmp_path, "cam-rtsp", server.urls["/plaza"], dwell=2),
        write_camera(tmp_path, "cam-file", str(clip), dwell=2, realtime=True),
    ]
    edge = write_edge(tmp_path, cams, mqtt_port=mosquitto.port)
    sub = Subscriber(mosquitto.port, "cityops/test-box/#")
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "run"],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        def both_cameras_ticketed():
            tickets = [json.loads(m.payload) for m in sub.on("/tickets")]
            return {t["camera_id"] for t in tickets if t["event"] == "opened"} >= {"cam-rtsp", "cam-file"}

        wait_for(both_cameras_ticketed, 90, "an opened ticket from each camera", agent)
        opened = [json.loads(m.payload) for m in sub.on("/tickets")]
        for doc in opened:
            wait_for(lambda doc=doc: all(sub.by_topic(e["topic"]) for e in doc["evidence"]), 20,
                     f"evidence of ticket {doc['ticket_id']}", agent)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
            raise AssertionError("agent did not stop within 20 s of SIGTERM")
        sub.close()
    log_text = log_path.read_text()
    assert code == 0, log_text
    assert "event=camera_connected camera=cam-rtsp" in log_text, log_text

    for message in sub.on("/tickets"):
        doc = json.loads(message.payload)
        jsonschema.validate(doc, TICKET_SCHEMA)
        assert TICKET_FIELDS <= doc.keys()
        assert doc["agent_id"] == "test-box" and doc["zone_id"] == "plaza" and doc["rule"] == "object_dwell"
        assert doc["class"] == "person" and 0.4 <= doc["confidence"] <= 1
        assert doc["location"] == {"lat": 31.2304, "lon": 121.4737, "grid_code": "310101001001"}
        assert doc["model"]["name"] == "nanodet-g-416" and len(doc["model"]["sha256"]) == 64
        assert doc["first_seen"] <= doc["last_seen"] and doc["boxes"]
        assert dict(message.properties.UserProperty)["schema_version"] == SCHEMA_VERSION
        for item in doc["evidence"]:
            if item["kind"] == "clip":
                continue  # clips are checked by the platform-loop test
            # A topic can carry several items of one kind (a reopened ticket's new snapshot):
            # the one this message names is the one with its hash.
            payloads = [m.payload for m in sub.by_topic(item["topic"])
                        if hashlib.sha256(m.payload).hexdigest() == item["sha256"]]
            assert payloads, f"no {item['kind']} with sha256 {item['sha256']} on {item['topic']}"
            assert len(payloads[0]) == item["size"]
            image = cv2.imdecode(np.frombuffer(payloads[0], np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape[:2] == (576, 768)

    db = sqlite3.connect(tmp_path / "var" / "outbox.sqlite")
    opened_ids = {json.loads(m.payload)["ticket_id"] for m in sub.on("/tickets")}
    rows = db.execute("SELECT ticket_id, kind, delivered_at FROM messages WHERE ticket_id IS NOT NULL").fetchall()
    assert {r[0] for r in rows} >= opened_ids
    for ticket_id, kind, delivered_at in rows:
        if ticket_id in opened_ids:
            assert delivered_at is not None, f"{kind} of {ticket_id} received but not marked delivered"
