"""The reference platform (tools/ref_platform.py) against a real mosquitto and a fake agent.

The fake agent is a plain paho client that publishes hand-made messages the way docs/messages.md
says an agent does and answers commands, so these tests pin the platform side of the protocol
alone; the full loop with the real agent is tested elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.command_auth import sign
from agent.schemas import validator
from agent.ticket_signing import DeviceKey, public_pem
from tests.helpers import COMMAND_KEY, COMMAND_KEY_HEX, REPO
from tools.ref_platform import CommandTimeout, InvalidReply, RefPlatform, UnknownTicket

AGENT = "fake-box"
CAMERA = "cam-1"
PREFIX = "cityops"
# The fake agent's device key, in memory only; the platforms below enrol its public half.
DEVICE = DeviceKey(Ed25519PrivateKey.generate(), Path("fake-box.pem"))
ENROLLED = {AGENT: public_pem(DEVICE.public)}
RESULTS = {"ack": "recorded", "dispatched": "recorded", "handled": "verified_cleared", "verify": "verified_cleared",
           "snapshot": "snapshot", "reject": "rejected", "mute": "muted", "unmute": "unmuted"}


def utc(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def eventually(predicate: Callable[[], object], what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def picture(size: int, seed: int = 1) -> bytes:
    """Stand-in evidence bytes; the platform never decodes them, it only checks size and hash."""
    return random.Random(seed).randbytes(size)


def evidence_item(ticket_id: str, data: bytes, kind: str = "snapshot", chunks: int = 1) -> dict:
    item = {"kind": kind, "content_type": "image/jpeg", "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data), "topic": f"{PREFIX}/{AGENT}/{CAMERA}/evidence/{ticket_id}/{kind}"}
    return item | ({"chunks": chunks} if chunks > 1 else {})


def ticket_doc(ticket_id: str, seq: int, *, event: str = "opened", status: str = "open",
               evidence: list[dict] | None = None, platform_state: str = "new") -> dict:
    now = utc()
    doc = {
        "schema": "edge-agent/ticket", "schema_version": "1.0", "ticket_id": ticket_id, "seq": seq,
        "event": event, "event_time": now, "agent_id": AGENT, "camera_id": CAMERA, "camera_name": "Gate 1",
        "zone_id": "plaza", "rule": "object_dwell", "class": "person", "confidence": 0.82,
        "first_seen": utc(time.time() - 30), "last_seen": now, "frame_size": [768, 576],
        "boxes": [[10.0, 20.0, 110.0, 220.0]], "facts": {"count": 1},
        "location": {"lat": 31.2304, "lon": 121.4737, "grid_code": "310101001001"},
        "model": {"name": "nanodet-g-416", "sha256": "0" * 64}, "evidence": evidence or [],
        "status": status, "platform_state": platform_state,
        "category": {"major": "市容环境", "minor": "暴露垃圾", "code": "0101"},
    }
    doc = DEVICE.sign(doc)
    validator("ticket").validate(doc)  # the fake agent itself keeps to the contract
    return doc


@dataclass
class ReceivedCommand:
    topic: str
    doc: dict
    response_topic: str | None
    correlation: bytes | None


class FakeAgent:
    """Publishes what an agent publishes and answers commands on <prefix>/<agent>/cmd/+.

    ``answer(verb, command)`` returns the reply's extra fields (merged into a successful reply),
    or None to stay silent; replace it to script a test. Replies go to the command's ResponseTopic
    with its CorrelationData, as the protocol says."""

    def __init__(self, port: int):
        self.commands: list[ReceivedCommand] = []
        self.answer: Callable[[str, dict], dict | None] = lambda verb, command: {"result": RESULTS[verb]}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fake-agent-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda client, *a: client.subscribe(f"{PREFIX}/{AGENT}/cmd/+", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_command
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "fake agent not subscribed"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes | str, *, content_type: str = "application/json",
                user: list[tuple[str, str]] = (), retain: bool = False) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = content_type
        props.UserProperty = [("schema_version", "1.0"), *user]
        self.client.publish(topic, payload, qos=1, retain=retain, properties=props).wait_for_publish(10)

    def ticket(self, doc: dict) -> None:
        """Publish ``doc`` signed as it is now (a test may have changed it since ticket_doc)."""
        self.publish(f"{PREFIX}/{AGENT}/{CAMERA}/tickets", json.dumps(DEVICE.sign(doc), ensure_ascii=False),
                     user=[("kind", "ticket"), ("ticket_id", doc["ticket_id"])])

    def evidence(self, ticket_id: str, data: bytes, *, kind: str = "snapshot", chunks: int = 1,
                 claimed_sha256: str | None = None, order: list[int] | None = None) -> None:
        """Publish ``data`` in ``chunks`` parts (in ``order``, 1-based, default ascending), each
        carrying chunk = i/n and the item's sha256 (``claimed_sha256`` to lie about it)."""
        sha256 = claimed_sha256 or hashlib.sha256(data).hexdigest()
        size = -(-len(data) // chunks)
        parts = [data[i * size:(i + 1) * size] for i in range(chunks)]
        for index in order or range(1, chunks + 1):
            chunk = [("chunk", f"{index}/{chunks}")] if chunks > 1 else []
            self.publish(f"{PREFIX}/{AGENT}/{CAMERA}/evidence/{ticket_id}/{kind}", parts[index - 1],
                         content_type="image/jpeg",
                         user=[("kind", "evidence"), ("ticket_id", ticket_id), ("sha256", sha256), *chunk])

    def reply(self, command: ReceivedCommand, doc: dict, correlation: bytes | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.CorrelationData = correlation if correlation is not None else command.correlation
        props.UserProperty = [("schema_version", "1.0"), ("kind", "reply")]
        self.client.publish(command.response_topic or f"{PREFIX}/{AGENT}/replies", json.dumps(doc), qos=1,
                            properties=props)

    def reply_doc(self, command: dict, **fields) -> dict:
        return {"schema": "edge-agent/reply", "schema_version": "1.0", "agent_id": AGENT,
                "command_id": command["command_id"], "verb": command["verb"], "ok": True, "time": utc(),
                **({"ticket_id": command["ticket_id"]} if "ticket_id" in command else {}), **fields}

    def verbs(self) -> list[str]:
        return [c.doc["verb"] for c in self.commands]

    def _on_command(self, client, userdata, msg) -> None:
        command = ReceivedCommand(msg.topic, json.loads(msg.payload), getattr(msg.properties, "ResponseTopic", None),
                                  getattr(msg.properties, "CorrelationData", None))
        self.commands.append(command)
        fields = self.answer(command.doc["verb"], command.doc)
        if fields is not None:
            self.reply(command, self.reply_doc(command.doc, **fields))


@pytest.fixture
def agent(mosquitto):
    fake = FakeAgent(mosquitto.port)
    yield fake
    fake.close()


@pytest.fixture
def platform(mosquitto, tmp_path):
    with RefPlatform(mosquitto.host, mosquitto.port, tmp_path / "platform.sqlite", command_timeout_s=5,
                     command_keys={AGENT: COMMAND_KEY}, device_keys=ENROLLED) as p:
        yield p


def rows(platform: RefPlatform, sql: str, *args) -> list[sqlite3.Row]:
    return platform.db.read(sql, *args)


def new_ticket_id() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- receiving

def test_ticket_and_evidence_in_three_chunks_are_stored_and_verified(platform, agent):
    ticket_id, data = new_ticket_id(), picture(30_000)
    agent.ticket(ticket_doc(ticket_id, 1, evidence=[evidence_item(ticket_id, data, chunks=3)]))
    agent.evidence(ticket_id, data, chunks=3)

    eventually(lambda: platform.summary()["evidence"]["verified"] == 1, "the evidence verified")
    ticket = platform.ticket(ticket_id)
    assert (ticket["agent"], ticket["camera"], ticket["zone"]) == (AGENT, CAMERA, "plaza")
    assert (ticket["status"], ticket["platform_state"], ticket["last_seq"]) == ("open", "new", 1)
    assert json.loads(ticket["category"])["minor"] == "暴露垃圾"
    (stored,) = rows(platform, "SELECT * FROM evidence")
    assert (stored["ticket_id"], stored["kind"], stored["size"]) == (ticket_id, "snapshot", len(data))
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()
    with open(stored["path"], "rb") as f:
        assert f.read() == data
    assert stored["path"].endswith(".jpg")
    assert rows(platform, "SELECT count(*) FROM chunks")[0][0] == 0, "chunks are dropped once assembled"
    assert platform.summary() == {"tickets": {"open": 1}, "messages": 1, "violations": 0, "rejected": 0,
                                  "evidence": {"verified": 1, "unverified": 0, "pending": 0}}


def test_evidence_before_its_ticket_waits_then_is_verified(platform, agent):
    ticket_id, data = new_ticket_id(), picture(9_000, seed=2)
    agent.evidence(ticket_id, data, chunks=3, order=[3, 1, 2])
    eventually(lambda: platform.summary()["evidence"]["pending"] == 1, "the evidence stored, pending")

    agent.ticket(ticket_doc(ticket_id, 1, evidence=[evidence_item(ticket_id, data, chunks=3)]))
    eventually(lambda: platform.summary()["evidence"]["verified"] == 1, "the evidence verified by its ticket")
    assert platform.summary()["violations"] == 0


def test_a_duplicated_message_is_stored_once(platform, agent):
    ticket_id, data = new_ticket_id(), picture(5_000, seed=3)
    doc = ticket_doc(ticket_id, 1, evidence=[evidence_item(ticket_id, data, chunks=2)])
    for _ in range(2):  # what a resend after a reconnect looks like
        agent.ticket(doc)
        agent.evidence(ticket_id, data, chunks=2)
    eventually(lambda: platform.received["ticket"] == 2 and platform.received["evidence"] == 4, "both copies")

    assert rows(platform, "SELECT count(*) FROM messages WHERE ticket_id = ?", ticket_id)[0][0] == 1
    assert rows(platform, "SELECT count(*) FROM evidence")[0][0] == 1
    assert rows(platform, "SELECT count(*) FROM chunks")[0][0] == 0, "a late copy's chunks must not linger"
    assert platform.summary()["evidence"]["verified"] == 1
    assert platform.violation_list() == []


def test_an_older_seq_arriving_late_does_not_move_the_ticket_back(platform, agent):
    ticket_id = new_ticket_id()
    agent.ticket(ticket_doc(ticket_id, 5))
    agent.ticket(ticket_doc(ticket_id, 7, event="cleared", status="cleared", platform_state="dispatched"))
    agent.ticket(ticket_doc(ticket_id, 6, event="updated", status="open", platform_state="acked"))  # late
    eventually(lambda: platform.received["ticket"] == 3, "three messages")

    ticket = platform.ticket(ticket_id)
    assert (ticket["status"], ticket["platform_state"], ticket["last_seq"]) == ("cleared", "dispatched", 7)
    assert json.loads(ticket["last_doc"])["event"] == "cleared"
    history = rows(platform, "SELECT seq, event FROM messages WHERE ticket_id = ? ORDER BY seq", ticket_id)
    assert [tuple(r) for r in history] == [(5, "opened"), (6, "updated"), (7, "cleared")], "the late one is history"


def test_messages_breaking_the_protocol_are_recorded_not_fatal(platform, agent):
    broken = ticket_doc(new_ticket_id(), 1)
    del broken["category"]
    agent.ticket(broken)
    agent.publish(f"{PREFIX}/{AGENT}/{CAMERA}/tickets", b"{not json")
    elsewhere = ticket_doc(new_ticket_id(), 2)
    agent.publish(f"{PREFIX}/{AGENT}/cam-2/tickets", json.dumps(elsewhere))  # camera_id says cam-1
    agent.publish(f"{PREFIX}/{AGENT}/{CAMERA}/evidence/../snapshot", b"x", user=[("kind", "evidence")])
    good = ticket_doc(new_ticket_id(), 3)
    agent.ticket(good)

    eventually(lambda: platform.ticket(good["ticket_id"]), "the good ticket after the bad ones")
    reasons = [reason for _, reason in platform.violation_list()]
    assert len(reasons) == 4, reasons
    assert "ticket schema" in reasons[0] and "category" in reasons[0]
    assert reasons[1].startswith("not JSON")
    assert "cam-2" in reasons[2]
    assert "evidence topic" in reasons[3]
    assert platform.summary()["tickets"] == {"open": 1}


def test_evidence_whose_bytes_do_not_match_the_ticket_is_unverified(platform, agent):
    ticket_id, data = new_ticket_id(), picture(12_000, seed=4)
    corrupted = data[:6_000] + bytes([data[6_000] ^ 0xFF]) + data[6_001:]
    agent.ticket(ticket_doc(ticket_id, 1, evidence=[evidence_item(ticket_id, data, chunks=3)]))
    agent.evidence(ticket_id, corrupted, chunks=3, claimed_sha256=hashlib.sha256(data).hexdigest())

    eventually(lambda: platform.summary()["evidence"]["unverified"] == 1, "the evidence flagged unverified")
    (stored,) = rows(platform, "SELECT sha256, verified FROM evidence")
    assert stored["sha256"] == hashlib.sha256(corrupted).hexdigest()
    # The violation is recorded just after the item is stored and matched.
    ((topic, reason),) = eventually(platform.violation_list, "the false sha256 claim recorded")
    assert topic.endswith(f"/evidence/{ticket_id}/snapshot") and "sha256" in reason


def published(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def test_ticket_messages_that_do_not_verify_are_rejected_and_kept(platform, agent):
    topic = f"{PREFIX}/{AGENT}/{CAMERA}/tickets"
    changed = ticket_doc(new_ticket_id(), 1)
    changed["status"] = "closed"  # after signing: what a man in the middle would do
    agent.publish(topic, published(changed))
    unsigned = ticket_doc(new_ticket_id(), 2)
    del unsigned["signature"]
    agent.publish(topic, published(unsigned))
    stranger = DeviceKey(Ed25519PrivateKey.generate(), Path("other.pem")).sign(ticket_doc(new_ticket_id(), 3))
    agent.publish(topic, published(stranger))
    not_enrolled = ticket_doc(new_ticket_id(), 4) | {"agent_id": "other-box"}
    agent.publish(f"{PREFIX}/other-box/{CAMERA}/tickets", published(DEVICE.sign(not_enrolled)))
    good = ticket_doc(new_ticket_id(), 5)
    agent.ticket(good)

    eventually(lambda: platform.ticket(good["ticket_id"]), "the good ticket after the bad ones")
    eventually(lambda: len(platform.rejected_list()) == 4, "four rejections")
    reasons = {ticket_id: reason for _, ticket_id, reason in platform.rejected_list()}
    assert reasons == {changed["ticket_id"]: "signature does not verify", unsigned["ticket_id"]: "no signature",
                       stranger["ticket_id"]: f"signed by key {stranger['signature']['key_id']!r}, enrolled key is "
                                              f"{DEVICE.key_id}",
                       not_enrolled["ticket_id"]: "agent 'other-box' has no enrolled device key"}
    assert platform.summary()["tickets"] == {"open": 1} and platform.summary()["rejected"] == 4
    (payload,) = rows(platform, "SELECT payload FROM rejected WHERE ticket_id = ?", changed["ticket_id"])[0]
    assert json.loads(payload)["status"] == "closed", "kept as received, for inspection"


def test_evidence_is_checked_only_against_signed_messages(platform, agent):
    ticket_id, data = new_ticket_id(), picture(4_000, seed=6)
    forged = picture(4_000, seed=7)
    agent.ticket(ticket_doc(ticket_id, 1, evidence=[evidence_item(ticket_id, data)]))
    # A forged message naming other bytes: rejected, so the forged bytes match nothing.
    doc = ticket_doc(ticket_id, 2, event="updated", evidence=[evidence_item(ticket_id, forged)])
    doc["evidence"][0]["sha256"] = hashlib.sha256(forged).hexdigest()
    agent.publish(f"{PREFIX}/{AGENT}/{CAMERA}/tickets", published(doc | {"seq": 3}))
    agent.evidence(ticket_id, forged)
    agent.evidence(ticket_id, data)
    eventually(lambda: platform.summary()["evidence"] == {"verified": 1, "unverified": 1, "pending": 0},
               "the genuine item accepted, the forged one rejected")
    verdict = {row["sha256"]: row["verified"] for row in platform.evidence_of(ticket_id)}
    assert verdict == {hashlib.sha256(data).hexdigest(): 1, hashlib.sha256(forged).hexdigest(): 0}


def test_status_is_stored_and_a_broken_one_recorded(platform, agent):
    status = {"schema": "edge-agent/status", "schema_version": "1.0", "agent_id": AGENT, "state": "online",
              "time": utc(), "cameras": [{"camera_id": CAMERA, "connected": True, "model": "nanodet-g-416"}]}
    agent.publish(f"{PREFIX}/{AGENT}/status", json.dumps(status), retain=True)
    eventually(lambda: rows(platform, "SELECT state FROM agents WHERE agent = ?", AGENT), "the status stored")

    agent.publish(f"{PREFIX}/{AGENT}/status", json.dumps({"state": "offline"}), retain=True)
    eventually(lambda: platform.violation_list(), "the broken status recorded")
    assert "status schema" in platform.violation_list()[0][1]
    assert rows(platform, "SELECT state FROM agents WHERE agent = ?", AGENT)[0][0] == "online"


def test_telemetry_is_stored_or_recorded_never_lost(platform, agent):
    topic = f"{PREFIX}/{AGENT}/{CAMERA}/telemetry/crowd"
    agent.publish(topic, json.dumps({"count": 3}), user=[("kind", "telemetry")])
    agent.publish(topic, b"nope", user=[("kind", "telemetry")])
    eventually(lambda: platform.received["telemetry"] == 2, "both telemetry messages handled")

    reasons = [reason for _, reason in platform.violation_list()]
    assert reasons[-1].startswith("not JSON")
    # While no telemetry schema ships any JSON object is kept; once one does, this hand-made
    # document may break it, and must then be recorded rather than dropped.
    kept = rows(platform, "SELECT doc FROM telemetry WHERE agent = ? AND camera = ? AND kind = 'crowd'", AGENT, CAMERA)
    assert [json.loads(r["doc"]) for r in kept] == [{"count": 3}] or "telemetry schema" in reasons[0]


def test_subscriptions_come_back_after_the_broker_restarts(mosquitto, platform, agent):
    status = {"schema": "edge-agent/status", "schema_version": "1.0", "agent_id": AGENT, "state": "online",
              "time": utc()}
    agent.publish(f"{PREFIX}/{AGENT}/status", json.dumps(status), retain=True)
    eventually(lambda: platform.received["status"] == 1, "the retained status")

    mosquitto.stop()
    mosquitto.start()
    # The broker sends retained messages on subscribe: a second status means we subscribed again.
    eventually(lambda: platform.received["status"] == 2, "the status again after resubscribing", timeout=20)
    eventually(agent.client.is_connected, "the fake agent back")
    ticket_id = new_ticket_id()
    agent.ticket(ticket_doc(ticket_id, 1))
    eventually(lambda: platform.ticket(ticket_id), "a ticket sent after the restart")


# --------------------------------------------------------------------------- commands

def test_command_and_reply_are_paired_by_correlation_data(platform, agent):
    ticket_id = new_ticket_id()
    agent.ticket(ticket_doc(ticket_id, 1))
    eventually(lambda: platform.ticket(ticket_id), "the ticket stored")

    def decoy_first(verb, command):
        # A reply to some other request arrives first on the same topic: it must not be taken.
        decoy = agent.commands[-1]
        agent.reply(decoy, agent.reply_doc(command, ok=False, error={"code": "internal", "message": "decoy"}),
                    correlation=uuid.uuid4().hex.encode())
        return {"result": "recorded", "ticket_status": "open"}

    agent.answer = decoy_first
    reply = platform.ack(ticket_id, case_id="2024-000123")

    assert (reply.ok, reply.result, reply.error) == (True, "recorded", None)
    assert reply.raw["ticket_status"] == "open"
    (command,) = agent.commands
    assert command.topic == f"{PREFIX}/{AGENT}/cmd/ack"
    assert command.response_topic == platform.topics.replies()
    assert command.correlation and reply.raw["command_id"] == command.doc["command_id"]
    validator("command").validate(command.doc)
    assert (command.doc["verb"], command.doc["ticket_id"], command.doc["case_id"]) == ("ack", ticket_id, "2024-000123")
    ticket = platform.ticket(ticket_id)
    assert (ticket["platform_state"], ticket["case_id"]) == ("acked", "2024-000123")

    agent.answer = lambda verb, command: {"result": RESULTS[verb]}
    assert platform.dispatched(ticket_id).result == "recorded"
    assert platform.mute(AGENT, CAMERA, 600, zone_id="plaza").result == "muted"
    assert platform.unmute(AGENT, CAMERA).result == "unmuted"
    assert platform.reject(ticket_id, duration_s=3600).result == "rejected"
    assert agent.verbs() == ["ack", "dispatched", "mute", "unmute", "reject"]
    mute = agent.commands[2]
    auth = mute.doc["auth"]
    assert abs(auth["ts"] - time.time()) < 30 and len({c.doc["auth"]["nonce"] for c in agent.commands}) == 5
    assert sign(COMMAND_KEY, mute.topic, mute.doc, auth["ts"], auth["nonce"]) == mute.doc, "signed with the key"
    assert {k: v for k, v in mute.doc.items() if k != "auth"} | {"command_id": "-"} == {
        "schema": "edge-agent/command", "schema_version": "1.0", "command_id": "-", "verb": "mute",
        "camera_id": CAMERA, "zone_id": "plaza", "duration_s": 600}
    assert platform.ticket(ticket_id)["platform_state"] == "dispatched"
    assert platform.violation_list() == []


def test_failed_missing_and_broken_replies(platform, agent):
    ticket_id = new_ticket_id()
    agent.ticket(ticket_doc(ticket_id, 1))
    eventually(lambda: platform.ticket(ticket_id), "the ticket stored")

    agent.answer = lambda verb, command: {"ok": False, "error": {"code": "not_allowed", "message": "ticket is open"}}
    refused = platform.handled(ticket_id)
    assert (refused.ok, refused.result, refused.error["code"]) == (False, None, "not_allowed")
    assert platform.ticket(ticket_id)["platform_state"] == "new", "a refused step is not recorded"

    agent.answer = lambda verb, command: None
    with pytest.raises(CommandTimeout):
        platform.send(AGENT, "verify", {"ticket_id": ticket_id}, timeout_s=0.5)

    agent.answer = lambda verb, command: {"result": "done"}  # not a result the schema allows
    with pytest.raises(InvalidReply, match="reply schema"):
        platform.verify(ticket_id)
    assert any(topic == platform.topics.replies() for topic, _ in platform.violation_list())

    with pytest.raises(UnknownTicket):
        platform.ack(new_ticket_id())
    with pytest.raises(ValueError, match="invalid command"):
        platform.mute(AGENT, CAMERA, duration_s=-1)
    with pytest.raises(ValueError, match="no command key for agent 'other-box'"):
        platform.mute("other-box", CAMERA, duration_s=60)


def test_snapshot_command_stores_the_picture(platform, agent):
    data = picture(7_000, seed=5)

    def publish_snapshot(verb, command):
        topic = f"{PREFIX}/{AGENT}/{CAMERA}/snapshots/{command['command_id']}"
        agent.client.publish(topic, data, qos=1)  # a reply follows the evidence the command caused
        item = {"kind": "snapshot", "content_type": "image/jpeg", "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data), "topic": topic}
        return {"result": "snapshot", "evidence": [item]}

    agent.answer = publish_snapshot
    reply = platform.snapshot(AGENT, CAMERA, zone_id="plaza")
    assert reply.ok and reply.result == "snapshot"
    stored = eventually(lambda: rows(platform, "SELECT * FROM snapshots WHERE command_id = ?",
                                     reply.raw["command_id"]), "the snapshot stored")
    assert (stored[0]["sha256"], stored[0]["size"]) == (reply.raw["evidence"][0]["sha256"], len(data))


def test_auto_loop_acks_dispatches_handles_and_verifies_once_cleared(mosquitto, agent, tmp_path):
    ticket_id = new_ticket_id()
    agent.answer = lambda verb, command: {"result": "still_present" if verb == "handled" else RESULTS[verb],
                                          "ticket_status": "open"}
    with RefPlatform(mosquitto.host, mosquitto.port, tmp_path / "p.sqlite", auto_loop=True,
                     command_timeout_s=5, command_keys={AGENT: COMMAND_KEY}, device_keys=ENROLLED) as platform:
        agent.ticket(ticket_doc(ticket_id, 1))
        eventually(lambda: platform.ticket(ticket_id) and platform.ticket(ticket_id)["platform_state"] == "handled",
                   "ack, dispatched, handled")
        assert agent.verbs() == ["ack", "dispatched", "handled"]
        assert platform.ticket(ticket_id)["case_id"] == f"REF-{ticket_id[:8]}"

        agent.ticket(ticket_doc(ticket_id, 2, event="cleared", status="cleared", platform_state="handled"))
        eventually(lambda: agent.verbs()[3:] == ["verify"], "the verify after the ticket cleared")
        time.sleep(0.5)
        assert agent.verbs() == ["ack", "dispatched", "handled", "verify"], "one verify, not two"


# --------------------------------------------------------------------------- sharing the load

def test_two_instances_in_one_group_store_each_ticket_once(mosquitto, agent, tmp_path):
    db = tmp_path / "shared.sqlite"
    count = 12
    with RefPlatform(mosquitto.host, mosquitto.port, db, group="city", device_keys=ENROLLED) as first, \
            RefPlatform(mosquitto.host, mosquitto.port, db, group="city") as second:  # enrolled in the shared db
        for n in range(count):
            ticket_id, data = new_ticket_id(), picture(3_000, seed=100 + n)
            agent.ticket(ticket_doc(ticket_id, n + 1, evidence=[evidence_item(ticket_id, data, chunks=3)]))
            agent.evidence(ticket_id, data, chunks=3)
        eventually(lambda: first.summary()["evidence"]["verified"] == count, "every item verified", timeout=20)
        eventually(lambda: (first.received["ticket"] + second.received["ticket"] == count
                            and first.received["evidence"] + second.received["evidence"] == 3 * count),
                   "every message counted by the instance that handled it")

        assert first.summary() == {"tickets": {"open": count}, "messages": count, "violations": 0, "rejected": 0,
                                   "evidence": {"verified": count, "unverified": 0, "pending": 0}}
        tickets = (first.received["ticket"], second.received["ticket"])
        evidence = (first.received["evidence"], second.received["evidence"])
        assert min(tickets) > 0 and min(evidence) > 0, f"the group shared the load: {tickets} {evidence}"
        assert first.db.read("SELECT count(*) FROM chunks")[0][0] == 0


# --------------------------------------------------------------------------- command line

def test_command_line_runs_until_sigterm_and_prints_the_summary(mosquitto, agent, tmp_path):
    db = tmp_path / "cli.sqlite"
    (tmp_path / "command.key").write_text(COMMAND_KEY_HEX)
    (tmp_path / "fake-box.pem").write_text(ENROLLED[AGENT])
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "ref_platform.py"), "--host", mosquitto.host,
                             "--port", str(mosquitto.port), "--prefix", PREFIX, "--db", str(db), "--group", "cli",
                             "--command-key", f"{AGENT}=command.key", "--enrol", f"{AGENT}=fake-box.pem"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = ""
        while "listening" not in line:
            line = proc.stderr.readline()
            assert line, f"ref_platform exited with {proc.wait()} before listening"
        ticket_id = new_ticket_id()
        agent.ticket(ticket_doc(ticket_id, 1))

        def stored() -> bool:
            with sqlite3.connect(db) as conn:
                return bool(conn.execute("SELECT 1 FROM tickets WHERE ticket_id = ?", (ticket_id,)).fetchone())

        eventually(stored, "the ticket in the CLI's database")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert json.loads(out)["tickets"] == {"open": 1}
