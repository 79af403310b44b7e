"""Ticket messages are signed with the box's Ed25519 key (agent/ticket_signing.py)."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest

from agent import schemas
from agent.app import Agent
from agent.clock import ManualClock
from agent.config import load_config
from agent.ticket_signing import KEY_FILE, DeviceKey, load_public, public_pem, public_raw, verify
from agent.ticket_store import TicketStore
from agent.typedtoml import ConfigError
from agent.types import Frame
from tests.helpers import write_camera, write_edge

START = 1_800_000_000.0


@pytest.fixture
def edge(tmp_path):
    cam = write_camera(tmp_path, "cam1", "/nonexistent.mp4", dwell=2,
                       polygon="[[0, 150], [768, 150], [768, 576], [0, 576]]")
    return write_edge(tmp_path, [cam])


def test_the_device_key_is_made_once_with_mode_0600_and_reused(edge, tmp_path):
    key_path = tmp_path / "var" / KEY_FILE
    assert not key_path.exists()
    first = Agent(load_config(edge), clock=ManualClock(START))
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) & 0o077 == 0
    assert not [p for p in key_path.parent.iterdir() if p != key_path], "no temp file left behind"
    first.outbox.close()
    second = Agent(load_config(edge), clock=ManualClock(START))
    assert second.device_key.key_id == first.device_key.key_id
    assert second.status()["device_key"] == first.device_key.describe()


def test_ticket_messages_verify_and_name_the_sha256_of_the_bytes_sent(edge, vtest_2fps):
    clock = ManualClock(START)
    agent = Agent(load_config(edge), clock=clock)
    for i, image in enumerate(vtest_2fps[:20]):
        clock._now = START + i * 0.5
        agent.pipelines["cam1"].on_frame(Frame("cam1", clock.now(), image))
    messages = [json.loads(m.payload) for m, _ in agent.outbox.messages("ticket")]
    assert messages, "people stand in the zone: a ticket must open"
    # What the platform enrols: the PEM `edge-agent key` prints, or the status document's raw key.
    enrolled = load_public(public_pem(agent.device_key.public))
    assert public_raw(load_public(agent.status()["device_key"]["public_key"])) == public_raw(enrolled)
    sent = {}
    for message, _ in agent.outbox.messages("evidence"):
        sent[message.topic] = sent.get(message.topic, b"") + message.body()
    for doc in messages:
        schemas.validator("ticket").validate(doc)
        assert verify(doc, enrolled) is None
        for item in doc["evidence"]:
            assert item["sha256"] == hashlib.sha256(sent[item["topic"]]).hexdigest()
    (stored,) = TicketStore(agent.outbox).all()
    assert "signature" not in stored.doc, "the stored doc is the unsigned base of the next message"


@pytest.mark.parametrize("change", [
    lambda d: d.update(status="closed"),
    lambda d: d["evidence"][0].update(sha256="0" * 64),
    lambda d: d["boxes"][0].__setitem__(0, d["boxes"][0][0] + 1),
    lambda d: d.pop("facts"),
    lambda d: d.update(extra="x"),
], ids=["status", "evidence hash", "a box", "a removed field", "an added field"])
def test_a_changed_message_fails_to_verify(tmp_path, change):
    key = DeviceKey.load_or_create(tmp_path / KEY_FILE)
    doc = key.sign({"ticket_id": "a" * 32, "status": "open", "boxes": [[1.0, 2.0, 3.0, 4.0]], "facts": {},
                    "evidence": [{"kind": "snapshot", "sha256": "f" * 64}], "名": "中文"})
    assert verify(doc, key.public) is None
    change(doc)
    assert verify(doc, key.public) == "signature does not verify"


def test_another_boxs_key_or_no_signature_fails(tmp_path):
    mine = DeviceKey.load_or_create(tmp_path / "a.pem")
    other = DeviceKey.load_or_create(tmp_path / "b.pem")
    doc = other.sign({"ticket_id": "a" * 32})
    assert "enrolled key is" in verify(doc, mine.public)
    assert verify({"ticket_id": "a" * 32}, mine.public) == "no signature"


def test_a_corrupt_device_key_stops_the_agent_and_is_not_replaced(tmp_path):
    path = tmp_path / KEY_FILE
    path.parent.mkdir()
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="device key unreadable"):
        DeviceKey.load_or_create(path)
    assert "not a key" in path.read_text()
