"""Only signed, fresh, new commands are carried out (agent/command_auth.py), against a real agent core."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from agent import schemas
from agent.app import Agent
from agent.cli import main
from agent.clock import ManualClock
from agent.command_auth import CommandKey, sign
from agent.config import load_config
from agent.ticket_store import TicketStore
from agent.transport import Request
from agent.typedtoml import ConfigError
from agent.types import Frame
from tests.helpers import COMMAND_KEY, COMMAND_KEY_HEX, write_camera, write_edge

START = 1_800_000_000.0
TOPIC = "cityops/test-box/cmd/reject"


@pytest.fixture
def box(tmp_path):
    cam = write_camera(tmp_path, "cam1", "/nonexistent.mp4", dwell=2,
                       polygon="[[0, 150], [768, 150], [768, 576], [0, 576]]")
    return write_edge(tmp_path, [cam])


def start(edge, clock):
    return Agent(load_config(edge), clock=clock)


@pytest.fixture
def ticket(box, vtest_2fps):
    """An agent with one open ticket; the commands below try to reject it."""
    clock = ManualClock(START)
    agent = start(box, clock)
    docs = []
    agent.pipelines["cam1"].on_ticket = docs.append
    for i, image in enumerate(vtest_2fps[:20]):
        clock._now = START + i * 0.5
        agent.pipelines["cam1"].on_frame(Frame("cam1", clock.now(), image))
    assert docs, "people stand in the zone: a ticket must open"
    return agent, clock, docs[0]["ticket_id"]


def reject(ticket_id: str) -> dict:
    return {"schema": "edge-agent/command", "schema_version": "1.0", "command_id": uuid.uuid4().hex,
            "verb": "reject", "ticket_id": ticket_id}


def send(agent, payload: dict, topic: str = TOPIC) -> dict:
    return agent.commands.handle(Request(topic, json.dumps(payload).encode(), None, b"corr"))


def tickets(agent):
    return TicketStore(agent.outbox).all()


def forged_key(command, now):
    return sign(CommandKey(b"\x01" * 32), TOPIC, command, int(now), uuid.uuid4().hex)


def moved_topic(command, now):
    # a signature made for another agent's topic
    return sign(COMMAND_KEY, "cityops/other-box/cmd/reject", command, int(now), uuid.uuid4().hex)


def changed_body(command, now):
    signed = sign(COMMAND_KEY, TOPIC, command | {"duration_s": 5}, int(now), uuid.uuid4().hex)
    return signed | {"duration_s": 3600}


def malformed(command, now):
    signed = sign(COMMAND_KEY, TOPIC, command, int(now), uuid.uuid4().hex)
    return signed | {"auth": signed["auth"] | {"sig": signed["auth"]["sig"].upper()}}


REFUSED = [
    ("unsigned", lambda command, now: command, "unsigned"),
    ("forged key", forged_key, "bad_signature"),
    ("other topic", moved_topic, "bad_signature"),
    ("changed body", changed_body, "bad_signature"),
    ("malformed auth", malformed, "bad_signature"),
    ("stale", lambda command, now: sign(COMMAND_KEY, TOPIC, command, int(now) - 121, uuid.uuid4().hex), "stale"),
    ("from the future", lambda command, now: sign(COMMAND_KEY, TOPIC, command, int(now) + 121, uuid.uuid4().hex),
     "stale"),
]


@pytest.mark.parametrize("case, make, code", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_command_without_a_valid_signature_is_refused_logged_and_changes_nothing(ticket, caplog, case, make, code):
    agent, clock, ticket_id = ticket
    before = tickets(agent)
    caplog.set_level(logging.INFO, logger="agent.commands")
    reply = send(agent, make(reject(ticket_id), clock.now()))
    schemas.validator("reply").validate(reply)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert tickets(agent) == before
    (refused,) = [r for r in caplog.records if r.getMessage() == "command_refused"]
    assert refused.fields["topic"] == TOPIC and refused.fields["code"] == code
    assert not [r for r in caplog.records if r.getMessage() == "command"], "nothing may be dispatched"
    assert COMMAND_KEY_HEX not in caplog.text


def test_a_signed_command_is_carried_out_once_and_its_replay_refused(ticket, caplog):
    agent, clock, ticket_id = ticket
    signed = sign(COMMAND_KEY, TOPIC, reject(ticket_id), int(clock.now()) - 60, uuid.uuid4().hex)
    reply = send(agent, signed)
    assert reply["ok"] and reply["result"] == "rejected", reply
    after = tickets(agent)
    caplog.set_level(logging.INFO, logger="agent.commands")
    clock.advance(30)  # still within the window: the nonce decides
    again = send(agent, signed)
    assert again["error"]["code"] == "replayed"
    assert tickets(agent) == after
    assert signed["auth"]["sig"] not in caplog.text, "a MAC is never logged"


def test_a_replay_stays_refused_after_a_restart(box, ticket):
    agent, clock, ticket_id = ticket
    signed = sign(COMMAND_KEY, TOPIC, reject(ticket_id), int(clock.now()), uuid.uuid4().hex)
    assert send(agent, signed)["ok"]
    agent.outbox.close()
    restarted = start(box, clock)
    before = tickets(restarted)
    assert send(restarted, signed)["error"]["code"] == "replayed"
    assert tickets(restarted) == before


def test_nonces_are_forgotten_once_their_commands_are_stale(box):
    clock = ManualClock(START)
    agent = start(box, clock)
    mute = {"schema": "edge-agent/command", "schema_version": "1.0", "command_id": "m1", "verb": "mute",
            "camera_id": "cam1", "duration_s": 60}
    topic = "cityops/test-box/cmd/mute"
    for _ in range(3):
        assert send(agent, sign(COMMAND_KEY, topic, mute, int(clock.now()), uuid.uuid4().hex), topic)["ok"]
    assert agent.outbox.query("SELECT count(*) FROM command_nonces") == [(3,)]
    clock.advance(121)
    assert send(agent, sign(COMMAND_KEY, topic, mute, int(clock.now()), uuid.uuid4().hex), topic)["ok"]
    assert agent.outbox.query("SELECT count(*) FROM command_nonces") == [(1,)]


def test_without_a_command_key_every_command_is_refused(tmp_path):
    cam = write_camera(tmp_path, "cam1", "/nonexistent.mp4")
    agent = start(write_edge(tmp_path, [cam], command_key=False), ManualClock(START))
    topic = "cityops/test-box/cmd/unmute"
    command = {"schema": "edge-agent/command", "schema_version": "1.0", "command_id": "u1", "verb": "unmute",
               "camera_id": "cam1"}
    reply = send(agent, sign(COMMAND_KEY, topic, command, int(START), uuid.uuid4().hex), topic)
    assert reply["error"]["code"] == "no_command_key"


@pytest.mark.parametrize("content, reason", [
    (None, "not found"),
    ("ab" * 16, "16 bytes; at least 32"),
    ("not hex at all", "as hex digits"),
], ids=["missing", "short", "not hex"])
def test_a_bad_command_key_stops_the_agent_at_load(box, content, reason):
    key = box.parent / "command.key"
    if content is None:
        key.unlink()
    else:
        key.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_config(box)
    assert error.value.key == "commands.key_file" and reason in error.value.reason
    assert COMMAND_KEY_HEX not in str(error.value)


def test_the_key_never_shows_in_the_config(box):
    config = load_config(box)
    assert COMMAND_KEY_HEX not in repr(config) and "<secret>" in repr(config.command_key)


def test_check_names_the_key_file_and_warns_when_others_can_read_it(box, capsys):
    key = box.parent / "command.key"
    assert main(["-c", str(box), "check"]) == 0
    out = capsys.readouterr().out
    assert f"commands: signed with the key in {key}" in out and "warning: commands.key_file" not in out
    key.chmod(0o644)
    assert main(["-c", str(box), "check"]) == 0
    assert f"warning: commands.key_file {key} is readable by other users (mode 0644); chmod 600 it" in capsys.readouterr().out
