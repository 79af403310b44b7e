"""Evidence changed in transit is caught: the real agent, a real mosquitto, a man in the middle that
relays everything and alters one snapshot, and the reference platform checking signatures and hashes."""

from __future__ import annotations

import hashlib
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.app import Agent
from agent.clock import ManualClock
from agent.config import load_config
from agent.ticket_signing import KEY_FILE, DeviceKey, public_pem
from agent.types import Frame
from tests.helpers import COMMAND_KEY, write_camera, write_edge
from tests.test_ref_platform import eventually
from tools.ref_platform import RefPlatform

RAW, PLATFORM = "edge-raw", "cityops"  # the agent publishes under RAW; the platform hears PLATFORM
RELAYED = ("ContentType", "UserProperty", "MessageExpiryInterval", "ResponseTopic", "CorrelationData")


class ManInTheMiddle:
    """Relays every message from RAW/# to PLATFORM/#, with the bytes of the first snapshot altered.
    A careful attacker: the altered item's sha256 user property is rewritten to match its bytes."""

    def __init__(self, port: int):
        self.tampered: list[str] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mitm", protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda client, *a: client.subscribe(f"{RAW}/#", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._relay
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "man in the middle not subscribed"

    def _relay(self, client, userdata, msg) -> None:
        props = Properties(PacketTypes.PUBLISH)
        for name in RELAYED:
            if hasattr(msg.properties, name):
                setattr(props, name, getattr(msg.properties, name))
        payload = msg.payload
        if msg.topic.endswith("/snapshot") and "/evidence/" in msg.topic and not self.tampered:
            user = dict(props.UserProperty)
            assert "chunk" not in user, "a snapshot fits one message"
            payload = payload[:1000] + bytes([payload[1000] ^ 0xFF]) + payload[1001:]
            user["sha256"] = hashlib.sha256(payload).hexdigest()
            props.UserProperty = list(user.items())
            self.tampered.append(msg.topic)
        client.publish(PLATFORM + msg.topic[len(RAW):], payload, qos=1, retain=msg.retain, properties=props)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_snapshot_changed_in_transit_is_rejected_and_the_genuine_one_accepted(tmp_path, mosquitto, vtest_2fps):
    cam = write_camera(tmp_path, "cam1", "/nonexistent.mp4", dwell=2,
                       polygon="[[0, 150], [768, 150], [768, 576], [0, 576]]")
    edge = write_edge(tmp_path, [cam], mqtt_port=mosquitto.port, prefix=RAW)
    # Enrolment before the first start: the agent reuses the key made here.
    device = DeviceKey.load_or_create(tmp_path / "var" / KEY_FILE)
    mitm = ManInTheMiddle(mosquitto.port)
    platform = RefPlatform("127.0.0.1", mosquitto.port, tmp_path / "platform.sqlite", prefix=PLATFORM,
                           command_keys={"test-box": COMMAND_KEY},
                           device_keys={"test-box": public_pem(device.public)}).start()
    start = time.time()
    clock = ManualClock(start)
    agent = Agent(load_config(edge), clock=clock)
    assert agent.device_key.key_id == device.key_id
    agent.transport.start()
    try:
        docs = []
        agent.pipelines["cam1"].on_ticket = docs.append
        blank = vtest_2fps[0].copy()
        blank[150:] = 90  # everybody gone: the ticket clears with a snapshot_after
        for i, image in enumerate(vtest_2fps[:20] + [blank] * 14):
            clock._now = start + i * 0.5
            agent.pipelines["cam1"].on_frame(Frame("cam1", clock.now(), image))
        assert [d["event"] for d in docs] == ["opened", "cleared"], [d["event"] for d in docs]
        ticket_id = docs[0]["ticket_id"]

        eventually(lambda: (platform.ticket(ticket_id) or {}).get("status") == "cleared", "the cleared ticket", 20)
        eventually(lambda: {row["kind"] for row in platform.evidence_of(ticket_id)} == {"snapshot", "snapshot_after"},
                   "both snapshots at the platform", 20)
    finally:
        agent.transport.stop()
        agent.outbox.close()
        mitm.close()
    verdict = {row["kind"]: (row["verified"], row["sha256"]) for row in platform.evidence_of(ticket_id)}
    rejected, violations = platform.rejected_list(), platform.violation_list()
    platform.stop()

    assert mitm.tampered == [f"{RAW}/test-box/cam1/evidence/{ticket_id}/snapshot"]
    sent = {item["kind"]: item["sha256"] for item in docs[-1]["evidence"]}
    assert verdict["snapshot"][0] == 0 and verdict["snapshot"][1] != sent["snapshot"], "the altered one rejected"
    assert verdict["snapshot_after"] == (1, sent["snapshot_after"]), "the genuine one accepted"
    assert rejected == [] and violations == [], "the ticket messages themselves came through unchanged"
