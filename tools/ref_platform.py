"""The reference platform: a small, complete consumer of the edge agent's protocol (docs/messages.md).

It plays the city operations platform (城市运管服平台) against a real MQTT 5 broker: it receives
tickets, evidence, snapshots, telemetry and status, validates each against the schemas shipped in
``agent/schemas/``, stores them in SQLite, and sends the commands that move a ticket through
发现—立案—派遣—处置—核查—结案. It is the integration tests' peer and the example platform engineers read,
so it does every step the simple, correct way and says why.

It trusts nothing it cannot check (docs/security.md): every command it sends is signed with
the command key it shares with that agent (HMAC-SHA256, ``agent.command_auth``), and a ticket message is
accepted only if it verifies against the Ed25519 public key enrolled for its agent; evidence is
accepted only if its bytes hash to a sha256 named by such an authenticated message. Whatever fails
is stored in ``rejected`` with the reason, never applied.

    python tools/ref_platform.py --host 127.0.0.1 --port 1883 --prefix cityops --db platform.sqlite \
        --command-key box-17=box-17.key --enrol box-17=box-17.pub.pem
    python tools/ref_platform.py ... --auto-loop      # demo: ack, dispatch, handle every new ticket

    from tools.ref_platform import RefPlatform
    with RefPlatform("127.0.0.1", 1883, "platform.sqlite", command_keys={"box-17": key},
                     device_keys={"box-17": pem}) as platform:
        reply = platform.ack(ticket_id, case_id="2024-000123")

Several instances can share the load: they subscribe to tickets and evidence with one MQTT 5 shared
subscription group (the broker hands each message to one member) and share one SQLite file. Every
piece of state that spans messages — a ticket's latest seq, chunks of one evidence item, evidence
waiting for its ticket — therefore lives in the database, never in an instance's memory: the
chunks of one item may well arrive at different instances.

Layout: ``TopicPlan`` (topics in and out), ``Database`` (the shared SQLite file), ``Violations``,
``Devices`` (enrolled keys, rejected messages), ``TicketLedger``, ``EvidenceLocker``, ``AgentBoard``
(what the platform stores), ``CommandChannel``
(commands and their replies), ``AutoLoop`` (the demo operator) and ``RefPlatform``, which wires
them to one paho client.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import mimetypes
import os
import queue
import re
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Self

import paho.mqtt.client as mqtt
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.command_auth import CommandKey, load_key, sign
from agent.schemas import validator
from agent.ticket_signing import key_id, load_public, public_raw, verify
from agent.typedtoml import ConfigError

log = logging.getLogger("ref_platform")

COMMAND_SCHEMA = "edge-agent/command"
COMMAND_SCHEMA_VERSION = "1.0"
# The platform's steps in the order they happen; a ticket's platform_state only ever moves right.
PLATFORM_STEPS = ("new", "acked", "dispatched", "handled")
TICKET_ID = re.compile(r"^[0-9a-f]{32}$")
# Topic levels become file names: accept only plain names, never "..", so no topic can write
# outside the evidence folder.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
CHUNK = re.compile(r"^([0-9]+)/([0-9]+)$")
MAX_CHUNKS = 10_000


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def furthest_step(a: str, b: str) -> str:
    return max(a, b, key=PLATFORM_STEPS.index)


class ProtocolViolation(Exception):
    """A message that breaks docs/messages.md. Recorded in ``violations``; never fatal."""

# What paho hands over as MQTTMessage.payload.
Payload = bytes | bytearray


def decode_json(payload: Payload) -> dict:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolViolation(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolViolation(f"not a JSON object but {type(doc).__name__}")
    return doc


def check_schema(name: str, schema: Draft202012Validator, doc: dict) -> None:
    # best_match picks the most specific error, which names the field an engineer has to fix.
    error = best_match(schema.iter_errors(doc))
    if error is not None:
        raise ProtocolViolation(f"{name} schema: at {error.json_path}: {error.message}"[:1000])


def optional_validator(name: str) -> Draft202012Validator | None:
    """The validator for ``name``, or None while the agent package ships no such schema yet."""
    try:
        return validator(name)
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- topics

@dataclass(frozen=True)
class Incoming:
    """What a received topic says: which kind of message, from which agent and camera.
    ``tail`` holds the levels after the kind: (ticket_id, evidence kind) for evidence,
    (command_id,) for snapshots, (telemetry kind,) for telemetry."""

    topic: str
    kind: str
    agent: str
    camera: str | None = None
    tail: tuple[str, ...] = ()


class TopicPlan:
    """Every topic the platform uses, built and parsed in one place (agent/topics.py is the agent's twin)."""

    def __init__(self, prefix: str, group: str, client_id: str):
        self.prefix, self.group, self.client_id = prefix, group, client_id

    def subscriptions(self) -> list[str]:
        """Per-camera traffic goes through the shared group, so each message reaches one instance.
        Status is retained, and brokers send no retained messages to shared subscriptions (MQTT 5
        §4.8.2), so every instance subscribes to it directly; storing it is idempotent. Replies
        come to this instance's own topic: only the instance that sent a command waits for them."""
        shared = f"$share/{self.group}/{self.prefix}"
        return [f"{shared}/+/+/tickets", f"{shared}/+/+/evidence/#", f"{shared}/+/+/snapshots/+",
                f"{shared}/+/+/telemetry/+", f"{self.prefix}/+/status", self.replies()]

    def replies(self) -> str:
        return f"{self.prefix}/platform/{self.client_id}/replies"

    def command(self, agent: str, verb: str) -> str:
        return f"{self.prefix}/{agent}/cmd/{verb}"

    def parse(self, topic: str) -> Incoming | None:
        if topic == self.replies():
            return Incoming(topic, "reply", agent="")
        if not topic.startswith(self.prefix + "/"):
            return None
        levels = tuple(topic[len(self.prefix) + 1:].split("/"))
        match levels:
            case (agent, "status"):
                return Incoming(topic, "status", agent)
            case (agent, camera, "tickets"):
                return Incoming(topic, "ticket", agent, camera)
            case (agent, camera, "evidence", ticket_id, kind):
                return Incoming(topic, "evidence", agent, camera, (ticket_id, kind))
            case (agent, camera, "snapshots", command_id):
                return Incoming(topic, "snapshot", agent, camera, (command_id,))
            case (agent, camera, "telemetry", kind):
                return Incoming(topic, "telemetry", agent, camera, (kind,))
        return None


# --------------------------------------------------------------------------- storage

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id      TEXT PRIMARY KEY,
    agent          TEXT NOT NULL,
    camera         TEXT NOT NULL,
    zone           TEXT NOT NULL,
    rule           TEXT NOT NULL,
    category       TEXT NOT NULL,     -- JSON {major, minor, code}
    status         TEXT NOT NULL,     -- from the newest message (highest seq) received
    platform_state TEXT NOT NULL,     -- furthest of what the agent reported and what we did
    case_id        TEXT,              -- our own case number, sent with ack
    first_seen     TEXT NOT NULL,
    last_seq       INTEGER NOT NULL,
    last_doc       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    ticket_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event       TEXT NOT NULL,
    doc         TEXT NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (ticket_id, seq)           -- at-least-once delivery: a redelivered message is dropped here
);
CREATE TABLE IF NOT EXISTS evidence (
    ticket_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    sha256      TEXT NOT NULL,        -- of the bytes we hold, not of what a header claimed
    size        INTEGER NOT NULL,
    path        TEXT NOT NULL,
    verified    INTEGER,              -- NULL: ticket not seen yet; 1: accepted, a signed ticket message
                                      -- names this kind, sha256 and size; 0: rejected, none does
                                      -- (changed in transit, or a message naming it is still to come)
    received_at TEXT NOT NULL,
    UNIQUE (ticket_id, kind, sha256)
);
CREATE TABLE IF NOT EXISTS chunks (   -- parts of items not yet complete, from any instance
    topic       TEXT NOT NULL,
    sha256      TEXT NOT NULL,        -- the item's, from the chunk's user property
    idx         INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    data        BLOB NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (topic, sha256, idx)
);
CREATE TABLE IF NOT EXISTS snapshots (
    command_id  TEXT PRIMARY KEY,
    agent       TEXT NOT NULL,
    camera      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    path        TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    agent       TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    time        TEXT NOT NULL,
    doc         TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS telemetry (   -- the latest value of each series
    agent       TEXT NOT NULL,
    camera      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    doc         TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (agent, camera, kind)
);
CREATE TABLE IF NOT EXISTS violations (
    id             INTEGER PRIMARY KEY,
    topic          TEXT NOT NULL,
    reason         TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    received_at    TEXT NOT NULL,
    UNIQUE (topic, reason, payload_sha256)   -- a redelivered bad message is one violation
);
CREATE TABLE IF NOT EXISTS devices (     -- enrolled device keys: who may sign tickets
    agent       TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,           -- base64 of the raw 32-byte Ed25519 key
    key_id      TEXT NOT NULL,
    enrolled_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (    -- ticket messages that failed authentication, kept for inspection
    id          INTEGER PRIMARY KEY,
    topic       TEXT NOT NULL,
    agent       TEXT NOT NULL,
    ticket_id   TEXT,
    reason      TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at TEXT NOT NULL
);
"""


class Database:
    """The SQLite file every instance shares.

    WAL lets readers work while one connection writes. Every read-modify-write runs in
    ``BEGIN IMMEDIATE``, which takes the write lock up front: two instances applying messages of
    the same ticket then queue for it instead of both reading the old ``last_seq``. The connection
    is shared by paho's network thread and callers' threads, hence the lock.
    """

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA_SQL)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def read(self, sql: str, *args) -> list[sqlite3.Row]:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class Violations:
    """Messages that broke the protocol. A platform must keep going on a bad message (one broken
    agent must not stop the city's tickets) but must not drop it silently either."""

    def __init__(self, db: Database):
        self.db = db

    def record(self, topic: str, reason: str, payload: Payload) -> None:
        log.warning("protocol violation on %s: %s", topic, reason)
        with self.db.transaction() as tx:
            tx.execute("INSERT OR IGNORE INTO violations (topic, reason, payload_sha256, received_at) "
                       "VALUES (?, ?, ?, ?)", (topic, reason, hashlib.sha256(payload).hexdigest(), utc_now()))


class Devices:
    """Enrolled device keys, and the ticket messages that did not verify against them.

    A key is enrolled through a channel the platform trusts (the installer runs ``edge-agent key``
    on the box), never taken from the agent's own status message: whoever can publish that could
    then sign tickets. Keys live in the shared database so every instance checks the same ones."""

    def __init__(self, db: Database):
        self.db = db

    def enrol(self, agent: str, public: str | bytes) -> str:
        """Enrol ``agent``'s public key (PEM or base64 raw); returns its key id."""
        key = load_public(public)
        raw = base64.b64encode(public_raw(key)).decode("ascii")
        with self.db.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO devices (agent, public_key, key_id, enrolled_at) VALUES (?, ?, ?, ?)",
                       (agent, raw, key_id(key), utc_now()))
        log.info("enrolled device key %s of agent %s", key_id(key), agent)
        return key_id(key)

    def check(self, agent: str, doc: dict) -> str | None:
        """None when ``doc`` is signed by ``agent``'s enrolled key, else why it is not."""
        rows = self.db.read("SELECT public_key FROM devices WHERE agent = ?", agent)
        if not rows:
            return f"agent {agent!r} has no enrolled device key"
        return verify(doc, load_public(rows[0]["public_key"]))

    def reject(self, incoming: Incoming, doc: dict | None, reason: str, payload: Payload) -> None:
        ticket_id = doc.get("ticket_id") if doc else None
        log.warning("ticket message on %s (ticket %s) rejected: %s", incoming.topic, ticket_id, reason)
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO rejected (topic, agent, ticket_id, reason, payload, received_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (incoming.topic, incoming.agent, ticket_id if isinstance(ticket_id, str) else None, reason,
                        payload, utc_now()))


class Outcome(Enum):
    NEW = "new"                # the first message of this ticket we have
    APPLIED = "applied"        # newer than anything seen: the ticket's state moved
    STALE = "stale"            # older than a message already applied: kept as history, state unchanged
    DUPLICATE = "duplicate"    # (ticket_id, seq) seen before: dropped


class TicketLedger:
    """Tickets and every message of their lives.

    Dedupe is the messages table's UNIQUE (ticket_id, seq). Ordering is ``last_seq``: a message
    moves the ticket only if its seq is higher than the last one applied, so a late ``updated``
    (status open) can never reopen a ticket a newer ``cleared`` already cleared. Messages can arrive
    out of order here even though the agent sends them in order: a redelivery after a reconnect
    comes late, and members of a shared group process their messages at different speeds.
    """

    def __init__(self, db: Database):
        self.db = db

    def apply(self, doc: dict) -> tuple[Outcome, dict | None]:
        ticket_id, seq = doc["ticket_id"], doc["seq"]
        text = json.dumps(doc, ensure_ascii=False)
        with self.db.transaction() as tx:
            stored = tx.execute("INSERT OR IGNORE INTO messages (ticket_id, seq, event, doc, received_at) "
                                "VALUES (?, ?, ?, ?, ?)", (ticket_id, seq, doc["event"], text, utc_now()))
            if stored.rowcount == 0:
                return Outcome.DUPLICATE, None
            row = tx.execute("SELECT last_seq, platform_state FROM tickets WHERE ticket_id = ?",
                             (ticket_id,)).fetchone()
            fields = (doc["zone_id"], doc["rule"], json.dumps(doc["category"], ensure_ascii=False), doc["status"])
            if row is None:
                tx.execute("INSERT INTO tickets (ticket_id, agent, camera, zone, rule, category, status, "
                           "platform_state, first_seen, last_seq, last_doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (ticket_id, doc["agent_id"], doc["camera_id"], *fields, doc["platform_state"],
                            doc["first_seen"], seq, text))
                outcome = Outcome.NEW
            elif seq > row["last_seq"]:
                # platform_state is what we told the agent; a message the agent wrote before our
                # command arrived says less, and must not undo what we recorded on its reply.
                tx.execute("UPDATE tickets SET zone = ?, rule = ?, category = ?, status = ?, platform_state = ?, "
                           "last_seq = ?, last_doc = ? WHERE ticket_id = ?",
                           (*fields, furthest_step(row["platform_state"], doc["platform_state"]), seq, text,
                            ticket_id))
                outcome = Outcome.APPLIED
            else:
                outcome = Outcome.STALE
            ticket = tx.execute("SELECT * FROM tickets WHERE ticket_id = ?", (ticket_id,)).fetchone()
        return outcome, dict(ticket)

    def record_step(self, ticket_id: str, step: str, case_id: str | None = None) -> None:
        """Note a step the agent confirmed (ack, dispatched, handled). Acks produce no ticket
        message, so without this the platform would not know its own progress."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT platform_state FROM tickets WHERE ticket_id = ?", (ticket_id,)).fetchone()
            if row is not None:
                tx.execute("UPDATE tickets SET platform_state = ?, case_id = coalesce(?, case_id) "
                           "WHERE ticket_id = ?", (furthest_step(row["platform_state"], step), case_id, ticket_id))

    def ticket(self, ticket_id: str) -> dict | None:
        rows = self.db.read("SELECT * FROM tickets WHERE ticket_id = ?", ticket_id)
        return dict(rows[0]) if rows else None


@dataclass(frozen=True)
class ItemHeader:
    """What the MQTT 5 properties of a binary message say about the item it carries."""

    index: int                 # 1-based chunk number; 1 of 1 when not chunked
    count: int
    sha256: str | None         # of the whole item, as the sender claims
    content_type: str | None

    @classmethod
    def of(cls, msg: mqtt.MQTTMessage) -> ItemHeader:
        props = msg.properties
        user = dict(getattr(props, "UserProperty", None) or [])
        index = count = 1
        if "chunk" in user:
            found = CHUNK.match(user["chunk"])
            if not found:
                raise ProtocolViolation(f"chunk property {user['chunk']!r} is not i/n")
            index, count = int(found[1]), int(found[2])
            if not 1 <= index <= count <= MAX_CHUNKS:
                raise ProtocolViolation(f"chunk property {user['chunk']!r} out of range")
        return cls(index, count, user.get("sha256"), getattr(props, "ContentType", None))

    @property
    def extension(self) -> str:
        return (self.content_type and mimetypes.guess_extension(self.content_type)) or ".bin"


class EvidenceLocker:
    """Binary items: a ticket's evidence and spot-check snapshots. Reassembles chunks, writes the
    files (content-addressed, written whole and renamed, so a reader never sees half a file), and
    checks evidence against what its ticket names.

    Chunks wait in the database rather than memory because a shared subscription spreads one
    item's chunks over instances. Chunks are keyed by topic and the item's sha256 (user property),
    so a second item on the same topic — the second ``snapshot_verify`` of a ticket — never mixes
    with the first. An item is checked by its kind, sha256 and size against the evidence list of
    every stored message of its ticket; evidence that arrives before its ticket waits unverified
    (NULL) and is matched when the ticket comes — both sides call ``match``, each after its own
    commit, so whichever commits last sees both.
    """

    def __init__(self, db: Database, folder: Path):
        self.db, self.folder = db, folder

    def receive_evidence(self, incoming: Incoming, payload: Payload, header: ItemHeader) -> None:
        ticket_id, kind = incoming.tail
        if not TICKET_ID.match(ticket_id) or not SAFE_NAME.match(kind):
            raise ProtocolViolation(f"evidence topic names ticket {ticket_id!r} and kind {kind!r}")
        with self.db.transaction() as tx:
            if header.sha256 and tx.execute("SELECT 1 FROM evidence WHERE ticket_id = ? AND kind = ? AND sha256 = ?",
                                            (ticket_id, kind, header.sha256)).fetchone():
                return  # a redelivered copy of an item we hold
            data = self._assemble(tx, incoming.topic, payload, header)
            if data is None:
                return
            sha256 = hashlib.sha256(data).hexdigest()
            path = self._write(Path(ticket_id) / f"{kind}-{sha256[:16]}{header.extension}", data)
            tx.execute("INSERT OR IGNORE INTO evidence (ticket_id, kind, sha256, size, path, received_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (ticket_id, kind, sha256, len(data), str(path), utc_now()))
        log.info("evidence %s of ticket %s: %d bytes in %s", kind, ticket_id, len(data), path)
        self.match(ticket_id)
        if self.db.read("SELECT 1 FROM evidence WHERE ticket_id = ? AND kind = ? AND sha256 = ? AND verified = 0",
                        ticket_id, kind, sha256):
            log.warning("evidence %s of ticket %s rejected: no signed message of the ticket names sha256 %s",
                        kind, ticket_id, sha256)
        self._check_claim(header, sha256)

    def receive_snapshot(self, incoming: Incoming, payload: Payload, header: ItemHeader) -> None:
        (command_id,) = incoming.tail
        if not SAFE_NAME.match(command_id):
            raise ProtocolViolation(f"snapshot topic names command {command_id!r}")
        with self.db.transaction() as tx:
            if tx.execute("SELECT 1 FROM snapshots WHERE command_id = ?", (command_id,)).fetchone():
                return
            data = self._assemble(tx, incoming.topic, payload, header)
            if data is None:
                return
            sha256 = hashlib.sha256(data).hexdigest()
            path = self._write(Path("snapshots") / f"{command_id}{header.extension}", data)
            tx.execute("INSERT INTO snapshots (command_id, agent, camera, sha256, size, path, received_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (command_id, incoming.agent, incoming.camera, sha256, len(data), str(path), utc_now()))
        self._check_claim(header, sha256)

    def match(self, ticket_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("""
                UPDATE evidence SET verified = EXISTS (
                    SELECT 1 FROM messages AS m, json_each(m.doc, '$.evidence') AS item
                    WHERE m.ticket_id = evidence.ticket_id
                      AND json_extract(item.value, '$.kind') = evidence.kind
                      AND json_extract(item.value, '$.sha256') = evidence.sha256
                      AND json_extract(item.value, '$.size') = evidence.size)
                WHERE ticket_id = ? AND EXISTS (SELECT 1 FROM tickets WHERE ticket_id = ?)""",
                       (ticket_id, ticket_id))

    @staticmethod
    def _assemble(tx: sqlite3.Connection, topic: str, payload: Payload, header: ItemHeader) -> Payload | None:
        """The whole item once every chunk is in, else None. Runs inside the caller's transaction,
        so exactly one instance sees the last chunk arrive and assembles the item."""
        if header.count == 1:
            return payload
        if header.sha256 is None:
            raise ProtocolViolation("a chunk without the sha256 user property: chunks of different items "
                                    "on this topic could not be told apart")
        tx.execute("INSERT OR IGNORE INTO chunks (topic, sha256, idx, count, data, received_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (topic, header.sha256, header.index, header.count, payload, utc_now()))
        rows = tx.execute("SELECT count, data FROM chunks WHERE topic = ? AND sha256 = ? ORDER BY idx",
                          (topic, header.sha256)).fetchall()
        if any(row["count"] != header.count for row in rows):
            raise ProtocolViolation(f"chunks of item {header.sha256} disagree on their number")
        if len(rows) < header.count:
            return None
        tx.execute("DELETE FROM chunks WHERE topic = ? AND sha256 = ?", (topic, header.sha256))
        return b"".join(row["data"] for row in rows)

    def _write(self, relative: Path, data: Payload) -> Path:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".part-", delete=False) as part:
            part.write(data)
        os.replace(part.name, path)
        return path

    @staticmethod
    def _check_claim(header: ItemHeader, sha256: str) -> None:
        # Raised after the item is stored: a corrupted item is still evidence someone may want
        # to look at; it is stored under the hash of its bytes and so never matches its ticket.
        if header.sha256 and header.sha256 != sha256:
            raise ProtocolViolation(f"item claims sha256 {header.sha256} but its {header.count} chunk(s) "
                                    f"hash to {sha256}")


class AgentBoard:
    """What each agent says about itself (status) and its cameras (telemetry): latest value wins.

    Status is ordered by arrival, not by its ``time``: the last will is composed when the agent
    connects, so the ``offline`` it publishes carries an older time than the last ``online``."""

    def __init__(self, db: Database):
        self.db = db
        self.telemetry_schema = optional_validator("telemetry")

    def status(self, incoming: Incoming, doc: dict) -> None:
        if doc["agent_id"] != incoming.agent:
            raise ProtocolViolation(f"status of agent {doc['agent_id']!r} on agent {incoming.agent!r}'s topic")
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO agents (agent, state, time, doc, received_at) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (agent) DO UPDATE SET state = excluded.state, time = excluded.time, "
                       "doc = excluded.doc, received_at = excluded.received_at",
                       (incoming.agent, doc["state"], doc["time"], json.dumps(doc, ensure_ascii=False), utc_now()))
        log.info("agent %s is %s", incoming.agent, doc["state"])

    def telemetry(self, incoming: Incoming, doc: dict) -> None:
        if self.telemetry_schema is not None:
            check_schema("telemetry", self.telemetry_schema, doc)
        (kind,) = incoming.tail
        with self.db.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO telemetry (agent, camera, kind, doc, received_at) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (incoming.agent, incoming.camera, kind, json.dumps(doc, ensure_ascii=False), utc_now()))


# --------------------------------------------------------------------------- commands

@dataclass(frozen=True)
class Reply:
    """An agent's reply: ``ok``; on success ``result`` (recorded, verified_cleared, ...), on
    failure ``error`` = {code, message}; ``raw`` is the whole validated document."""

    ok: bool
    result: str | None
    error: dict | None
    raw: dict


class CommandError(Exception):
    """A command got no usable reply."""


class CommandTimeout(CommandError, TimeoutError):
    """No reply within the timeout: the agent may be offline. The command may still be carried
    out later (QoS 1 and the agent's session), so only resend commands that are safe to repeat."""


class InvalidReply(CommandError):
    """The reply broke reply.schema.json (also recorded as a violation)."""


class UnknownTicket(LookupError):
    """No ticket with this id is stored, so there is no agent to send the command to."""


@dataclass
class _Waiting:
    command_id: str
    done: threading.Event
    reply: Reply | None = None
    problem: str | None = None


class CommandChannel:
    """Publishes commands and pairs each reply with its request.

    Pairing is by MQTT 5 CorrelationData, not by anything in the payload, so it works for replies
    too broken to parse. Our CorrelationData is the command_id's bytes, one uuid for both.
    ``send`` blocks its caller until the reply comes; the reply arrives on paho's network thread, so
    ``send`` must never be called from a paho callback.
    """

    def __init__(self, client: mqtt.Client, topics: TopicPlan, violations: Violations, timeout_s: float,
                 keys: dict[str, CommandKey]):
        """``keys``: each agent's command key; an agent has its own, so a key taken from one box
        commands that box only."""
        self.client, self.topics, self.violations, self.timeout_s = client, topics, violations, timeout_s
        self.keys = keys
        self.command_schema = validator("command")
        self.reply_schema = validator("reply")
        self._waiting: dict[bytes, _Waiting] = {}
        self._lock = threading.Lock()

    def send(self, agent: str, verb: str, body: dict, timeout_s: float | None = None) -> Reply:
        command_id = uuid.uuid4().hex
        command = {"schema": COMMAND_SCHEMA, "schema_version": COMMAND_SCHEMA_VERSION, "command_id": command_id,
                   "verb": verb, **body}
        if agent not in self.keys:
            raise ValueError(f"no command key for agent {agent!r}: it would refuse the command")
        topic = self.topics.command(agent, verb)
        # Signed last, over exactly what is sent; a fresh nonce per command, so a resend of the
        # same body is a new command, never a replay.
        command = sign(self.keys[agent], topic, command, int(time.time()), uuid.uuid4().hex)
        try:
            check_schema("command", self.command_schema, command)
        except ProtocolViolation as exc:
            raise ValueError(f"refusing to send an invalid command: {exc}") from None
        correlation = command_id.encode()
        waiting = _Waiting(command_id, threading.Event())
        with self._lock:
            self._waiting[correlation] = waiting
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.topics.replies()
        props.CorrelationData = correlation
        props.ContentType = "application/json"
        try:
            # While disconnected paho queues the publish and sends it on reconnect; the timeout
            # below bounds the wait either way.
            self.client.publish(topic, json.dumps(command, ensure_ascii=False), qos=1, properties=props)
            if not waiting.done.wait(self.timeout_s if timeout_s is None else timeout_s):
                raise CommandTimeout(f"no reply from {agent} to {verb} {command_id}")
        finally:
            with self._lock:
                self._waiting.pop(correlation, None)
        if waiting.problem is not None:
            raise InvalidReply(waiting.problem)
        assert waiting.reply is not None  # done is set with a reply or a problem
        return waiting.reply

    def on_reply(self, msg: mqtt.MQTTMessage) -> None:
        """Network thread. Validates every reply, also late ones nobody waits for any more."""
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self._lock:
            waiting = self._waiting.get(correlation) if correlation else None
        try:
            doc = decode_json(msg.payload)
            check_schema("reply", self.reply_schema, doc)
            if waiting is not None and doc["command_id"] != waiting.command_id:
                raise ProtocolViolation(f"reply for command {doc['command_id']} carries the correlation data "
                                        f"of command {waiting.command_id}")
        except ProtocolViolation as exc:
            self.violations.record(msg.topic, str(exc), msg.payload)
            if waiting is not None:
                waiting.problem = str(exc)
                waiting.done.set()
            return
        if waiting is None:
            log.info("reply to %s %s with no one waiting (late, or not ours): dropped", doc["verb"], doc["command_id"])
            return
        waiting.reply = Reply(ok=doc["ok"], result=doc.get("result"), error=doc.get("error"), raw=doc)
        waiting.done.set()


# --------------------------------------------------------------------------- the demo operator

class AutoLoop:
    """The demo operator (``--auto-loop``): every new open ticket is acked (立案), dispatched (派遣)
    and reported handled (处置), which makes the agent verify (核查). If the camera still sees the
    problem, the ticket stays open; once the agent reports it cleared, one more ``verify`` closes it
    (结案). Runs on its own thread, because each command waits for a reply that arrives on paho's
    network thread; jobs run one at a time, in the order their messages were stored."""

    def __init__(self, platform: RefPlatform):
        self.platform = platform
        self.jobs: queue.SimpleQueue[tuple[Callable[[dict], None], dict] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="auto-loop", daemon=True)
        # (ticket_id, seq of its cleared message) already verified: two paths can ask for the same
        # verify (see _drive), and one look is enough.
        self._verified: set[tuple[str, int]] = set()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def consider(self, outcome: Outcome, ticket: dict) -> None:
        """Network thread: queue what a freshly stored ticket message asks of the operator."""
        if outcome is Outcome.NEW and ticket["status"] == "open":
            self.jobs.put((self._drive, ticket))
        elif (outcome is Outcome.APPLIED and ticket["status"] == "cleared"
              and ticket["platform_state"] == "handled"):
            self.jobs.put((self._verify_cleared, ticket))

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            work, ticket = job
            try:
                work(ticket)
            except Exception:
                log.exception("auto-loop: ticket %s failed", ticket["ticket_id"])

    def _drive(self, ticket: dict) -> None:
        platform, ticket_id = self.platform, ticket["ticket_id"]
        steps = (("ack", lambda: platform.ack(ticket_id, case_id=f"REF-{ticket_id[:8]}")),
                 ("dispatched", lambda: platform.dispatched(ticket_id)),
                 ("handled", lambda: platform.handled(ticket_id)))
        for verb, command in steps:
            reply = self._step(ticket_id, verb, command)
            if reply is None:
                return
        assert reply is not None  # the steps ran, each with a reply
        if reply.result == "still_present":
            log.info("auto-loop: ticket %s still there; will verify when the camera reports it cleared", ticket_id)
            # If the cleared message was stored before our handled step was, consider() saw a
            # ticket not yet handled and queued nothing: verify now instead.
            now = platform.ticket(ticket_id)
            if now is not None and now["status"] == "cleared":
                self._verify_cleared(now)

    def _verify_cleared(self, ticket: dict) -> None:
        key = (ticket["ticket_id"], ticket["last_seq"])
        if key not in self._verified:
            self._verified.add(key)
            self._step(ticket["ticket_id"], "verify", lambda: self.platform.verify(ticket["ticket_id"]))

    @staticmethod
    def _step(ticket_id: str, verb: str, command: Callable[[], Reply]) -> Reply | None:
        try:
            reply = command()
        except CommandError as exc:
            log.warning("auto-loop: ticket %s: %s: %s", ticket_id, verb, exc)
            return None
        if not reply.ok:
            log.warning("auto-loop: ticket %s: %s refused: %s", ticket_id, verb, reply.error)
            return None
        log.info("auto-loop: ticket %s: %s -> %s (ticket %s)", ticket_id, verb, reply.result,
                 reply.raw.get("ticket_status", "-"))
        return reply


# --------------------------------------------------------------------------- the platform

class RefPlatform:
    """One platform instance: a paho client (MQTT 5) plus the stores above on a shared SQLite file.

    paho acknowledges a QoS 1 message (PUBACK) when ``on_message`` returns, so every message is
    stored before the broker forgets it. If storing fails (say the disk is full) the error is
    logged and the message is lost to this instance; a production platform would switch to
    ``manual_ack`` with a persistent session so the broker redelivers it.

    ``command_keys`` are the agents' command keys, by agent id: commands to an agent without one
    are not sent (``ValueError``). ``device_keys`` enrols agents' public keys (more with
    ``devices.enrol``): a ticket message of an agent without one is rejected.

    ``session_expiry_s`` > 0 with a fixed ``client_id`` keeps the subscriptions and queues messages
    at the broker while the instance is away. Leave it 0 with generated client ids: a persistent
    session nobody comes back for keeps its share of the group's messages until it expires.
    """

    def __init__(self, host: str, port: int, db_path: str | os.PathLike[str], *, prefix: str = "cityops",
                 group: str = "ref-platform", client_id: str | None = None,
                 evidence_dir: str | os.PathLike[str] | None = None, auto_loop: bool = False,
                 command_timeout_s: float = 15.0, session_expiry_s: int = 0,
                 command_keys: dict[str, CommandKey] | None = None,
                 device_keys: Mapping[str, str | bytes] | None = None):
        self.host, self.port, self.session_expiry_s = host, port, session_expiry_s
        client_id = client_id or f"ref-platform-{uuid.uuid4().hex[:12]}"
        db_path = Path(db_path)
        self.topics = TopicPlan(prefix, group, client_id)
        self.db = Database(db_path)
        self.violations = Violations(self.db)
        self.devices = Devices(self.db)
        for agent, public in (device_keys or {}).items():
            self.devices.enrol(agent, public)
        self.ledger = TicketLedger(self.db)
        self.evidence = EvidenceLocker(self.db, Path(evidence_dir or db_path.with_suffix(".evidence")))
        self.agents = AgentBoard(self.db)
        self.ticket_schema = validator("ticket")
        self.status_schema = validator("status")
        self.received: Counter[str] = Counter()  # messages this instance handled, by Incoming.kind
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.commands = CommandChannel(self.client, self.topics, self.violations, command_timeout_s,
                                       dict(command_keys or {}))
        self.auto_loop = AutoLoop(self) if auto_loop else None
        self._subscribe_mid: int | None = None
        self._subscribed = threading.Event()
        self._refused: list[str] = []

    # lifecycle ------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> Self:
        """Connect and return once the broker has granted every subscription."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        # FIRST_ONLY: a clean session at start, the same session across paho's reconnects.
        self.client.connect_async(self.host, self.port, keepalive=30,
                                  clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=props)
        self.client.loop_start()
        if self.auto_loop:
            self.auto_loop.start()
        if not self._subscribed.wait(timeout_s) or self._refused:
            self.stop()
            raise ConnectionError(f"broker {self.host}:{self.port}: not subscribed within {timeout_s} s"
                                  + (f"; refused: {', '.join(self._refused)}" if self._refused else ""))
        log.info("listening on %s:%d as %s (group %s)", self.host, self.port, self.topics.client_id,
                 self.topics.group)
        return self

    def stop(self) -> None:
        if self.auto_loop:
            self.auto_loop.stop()
        self.client.disconnect()
        self.client.loop_stop()
        self.db.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # commands -------------------------------------------------------------------------------
    def send(self, agent: str, verb: str, body: dict, timeout_s: float | None = None) -> Reply:
        """Send ``verb`` with ``body`` to ``agent`` and wait for its reply (see CommandChannel)."""
        return self.commands.send(agent, verb, body, timeout_s)

    def ack(self, ticket_id: str, case_id: str | None = None) -> Reply:
        """立案: the platform registered the ticket as a case (``case_id``: its own case number)."""
        body = {"ticket_id": ticket_id} | ({"case_id": case_id} if case_id else {})
        return self._ticket_step(ticket_id, "ack", body, step="acked", case_id=case_id)

    def dispatched(self, ticket_id: str) -> Reply:
        """派遣: someone was sent to deal with it."""
        return self._ticket_step(ticket_id, "dispatched", {"ticket_id": ticket_id}, step="dispatched")

    def handled(self, ticket_id: str) -> Reply:
        """处置: they report it done; the agent verifies at once (result verified_cleared / still_present)."""
        return self._ticket_step(ticket_id, "handled", {"ticket_id": ticket_id}, step="handled")

    def verify(self, ticket_id: str) -> Reply:
        """核查: ask the camera to look now; clear closes the ticket (结案)."""
        return self._ticket_step(ticket_id, "verify", {"ticket_id": ticket_id})

    def reject(self, ticket_id: str, duration_s: float | None = None) -> Reply:
        """二次甄别 found a false positive: the ticket is rejected and similar ones held off for ``duration_s``."""
        body = {"ticket_id": ticket_id} | ({"duration_s": duration_s} if duration_s is not None else {})
        return self._ticket_step(ticket_id, "reject", body)

    def snapshot(self, agent: str, camera_id: str, zone_id: str | None = None) -> Reply:
        """抽查: a current annotated picture, published on <prefix>/<agent>/<camera>/snapshots/<command_id>."""
        return self.send(agent, "snapshot", self._where(camera_id, zone_id))

    def mute(self, agent: str, camera_id: str, duration_s: float, zone_id: str | None = None) -> Reply:
        """No new tickets from the camera (or one zone of it) for ``duration_s``, e.g. during road works."""
        return self.send(agent, "mute", self._where(camera_id, zone_id) | {"duration_s": duration_s})

    def unmute(self, agent: str, camera_id: str, zone_id: str | None = None) -> Reply:
        return self.send(agent, "unmute", self._where(camera_id, zone_id))

    def update_model(self, agent: str, model: str, url: str, sha256: str, manifest: dict | None = None,
                     timeout_s: float | None = None) -> Reply:
        """A new model for ``[models.<model>]`` on ``agent``: it downloads ``url`` (a host on its
        [models_update] allowed_hosts), checks ``sha256``, tries it and switches (docs/update.md).
        ``manifest``: the new model's manifest keys but file and sha256; None keeps the current ones."""
        body = {"model": model, "url": url, "sha256": sha256} | ({"manifest": manifest} if manifest is not None else {})
        return self.send(agent, "model", body, timeout_s)

    def roll_back_model(self, agent: str, model: str) -> Reply:
        """Back to the model ``[models.<model>]`` ran before its last update."""
        return self.send(agent, "model", {"model": model, "rollback": True})

    def _ticket_step(self, ticket_id: str, verb: str, body: dict, *, step: str | None = None,
                     case_id: str | None = None) -> Reply:
        ticket = self.ledger.ticket(ticket_id)
        if ticket is None:
            raise UnknownTicket(ticket_id)
        reply = self.send(ticket["agent"], verb, body)
        if reply.ok and step is not None:
            self.ledger.record_step(ticket_id, step, case_id)
        return reply

    @staticmethod
    def _where(camera_id: str, zone_id: str | None) -> dict:
        return {"camera_id": camera_id} | ({"zone_id": zone_id} if zone_id else {})

    # queries --------------------------------------------------------------------------------
    def ticket(self, ticket_id: str) -> dict | None:
        """The stored row of one ticket (columns of the ``tickets`` table), or None."""
        return self.ledger.ticket(ticket_id)

    def evidence_of(self, ticket_id: str) -> list[dict]:
        """The stored evidence rows of a ticket (verified 1: accepted, 0: rejected, NULL: pending)."""
        return [dict(row) for row in self.db.read("SELECT * FROM evidence WHERE ticket_id = ? ORDER BY received_at",
                                                  ticket_id)]

    def rejected_list(self) -> list[tuple[str, str | None, str]]:
        """(topic, ticket_id, reason) of every ticket message that failed authentication, oldest first."""
        return [(row["topic"], row["ticket_id"], row["reason"])
                for row in self.db.read("SELECT topic, ticket_id, reason FROM rejected ORDER BY id")]

    def violation_list(self) -> list[tuple[str, str]]:
        """(topic, reason) of every recorded violation, oldest first."""
        rows = self.db.read("SELECT topic, reason FROM violations ORDER BY id")
        return [(row["topic"], row["reason"]) for row in rows]

    def summary(self) -> dict:
        """Counts over the shared database: tickets by status, messages, violations, evidence."""
        tickets = {row["status"]: row["n"] for row in
                   self.db.read("SELECT status, count(*) AS n FROM tickets GROUP BY status")}
        (evidence,) = self.db.read("SELECT count(verified = 1 OR NULL) AS verified, "
                                   "count(verified = 0 OR NULL) AS unverified, "
                                   "count(*) - count(verified) AS pending FROM evidence")
        return {"tickets": tickets,
                "messages": self.db.read("SELECT count(*) FROM messages")[0][0],
                "violations": self.db.read("SELECT count(*) FROM violations")[0][0],
                "rejected": self.db.read("SELECT count(*) FROM rejected")[0][0],
                "evidence": dict(evidence)}

    # paho's network thread ------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        # Subscribing here, not once after connect, renews the subscriptions after every
        # reconnect (a clean or expired session has none).
        result, self._subscribe_mid = client.subscribe(
            [(topic, SubscribeOptions(qos=1)) for topic in self.topics.subscriptions()])
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", mqtt.error_string(result))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid != self._subscribe_mid:
            return
        self._refused = [f"{topic} ({code})" for topic, code in zip(self.topics.subscriptions(), reason_codes)
                         if code.is_failure]
        for refused in self._refused:
            log.error("broker refused subscription %s", refused)
        self._subscribed.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        incoming = self.topics.parse(msg.topic)
        # An exception escaping a paho callback would stop the network thread: catch everything.
        try:
            if incoming is None:
                raise ProtocolViolation("not a topic of protocol 1.0")
            self._route(incoming, msg)
        except ProtocolViolation as exc:
            self.violations.record(msg.topic, str(exc), msg.payload)
        except Exception:
            log.exception("could not handle the message on %s", msg.topic)
        # Counted once handled (stored, dropped as a copy, or recorded as a violation), so a
        # caller waiting on the count finds its effects in the database.
        self.received[incoming.kind if incoming else "unknown"] += 1

    def _route(self, incoming: Incoming, msg: mqtt.MQTTMessage) -> None:
        match incoming.kind:
            case "reply":
                self.commands.on_reply(msg)
            case "ticket":
                self._on_ticket(incoming, decode_json(msg.payload), msg.payload)
            case "evidence":
                self.evidence.receive_evidence(incoming, msg.payload, ItemHeader.of(msg))
            case "snapshot":
                self.evidence.receive_snapshot(incoming, msg.payload, ItemHeader.of(msg))
            case "telemetry":
                self.agents.telemetry(incoming, decode_json(msg.payload))
            case "status":
                if msg.payload:  # an empty retained message only deletes the retained status
                    doc = decode_json(msg.payload)
                    check_schema("status", self.status_schema, doc)
                    self.agents.status(incoming, doc)

    def _on_ticket(self, incoming: Incoming, doc: dict, payload: Payload) -> None:
        # Authenticity before anything else: an unsigned or altered message is rejected whole,
        # so the evidence hashes it names are never trusted.
        problem = self.devices.check(incoming.agent, doc)
        if problem is not None:
            self.devices.reject(incoming, doc, problem, payload)
            return
        check_schema("ticket", self.ticket_schema, doc)
        if (doc["agent_id"], doc["camera_id"]) != (incoming.agent, incoming.camera):
            raise ProtocolViolation(f"ticket of {doc['agent_id']}/{doc['camera_id']} on the topic of "
                                    f"{incoming.agent}/{incoming.camera}")
        outcome, ticket = self.ledger.apply(doc)
        log.info("ticket %s seq %d %s (status %s): %s", doc["ticket_id"], doc["seq"], doc["event"], doc["status"],
                 outcome.value)
        if outcome is Outcome.DUPLICATE:
            return
        assert ticket is not None  # only a duplicate comes without one
        self.evidence.match(doc["ticket_id"])
        if self.auto_loop:
            self.auto_loop.consider(outcome, ticket)


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The reference platform for edge-agent (docs/reference-platform.md).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="cityops", help="topic prefix the agents use (default cityops)")
    parser.add_argument("--db", default="platform.sqlite", help="SQLite file, shared by every instance")
    parser.add_argument("--evidence-dir", help="where evidence files go (default: <db>.evidence next to --db)")
    parser.add_argument("--group", default="ref-platform", help="shared subscription group of the instances")
    parser.add_argument("--client-id", help="MQTT client id (default: generated); fix it with --session-expiry")
    parser.add_argument("--session-expiry", type=int, default=0, metavar="S",
                        help="keep the session and queue messages at the broker for S seconds while away")
    parser.add_argument("--auto-loop", action="store_true", help="ack, dispatch and handle every new ticket (demo)")
    parser.add_argument("--command-key", action="append", default=[], metavar="AGENT=FILE",
                        help="an agent's command key (hex, the same as its [commands] key_file); repeatable; "
                             "held in memory only, never in the database")
    parser.add_argument("--enrol", action="append", default=[], metavar="AGENT=PEMFILE",
                        help="enrol an agent's device public key (edge-agent key prints it); repeatable, "
                             "kept in the database")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        command_keys = {agent: load_key(Path(path), "--command-key", agent)
                        for agent, path in (_pair("--command-key", spec) for spec in args.command_key)}
        device_keys = dict(_enrolment(spec) for spec in args.enrol)
    except (ConfigError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    platform = RefPlatform(args.host, args.port, args.db, prefix=args.prefix, group=args.group,
                           client_id=args.client_id, evidence_dir=args.evidence_dir, auto_loop=args.auto_loop,
                           session_expiry_s=args.session_expiry, command_keys=command_keys,
                           device_keys=device_keys)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        platform.start(timeout_s=30)
    except ConnectionError as exc:
        log.error("%s", exc)
        return 1
    stopping.wait()
    summary = platform.summary()
    platform.stop()
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _pair(option: str, spec: str) -> tuple[str, str]:
    agent, sep, path = spec.partition("=")
    if not sep or not agent or not path:
        raise ValueError(f"{option} {spec!r}: expected AGENT=FILE")
    return agent, path


def _enrolment(spec: str) -> tuple[str, bytes]:
    agent, path = _pair("--enrol", spec)
    data = Path(path).read_bytes()
    try:
        load_public(data)  # fail at start, naming the file, not at the first ticket
    except ValueError as exc:
        raise ValueError(f"--enrol {spec!r}: not an Ed25519 public key: {exc}") from None
    return agent, data


if __name__ == "__main__":
    raise SystemExit(main())
