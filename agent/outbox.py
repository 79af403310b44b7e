"""The durable outbox: every message is in SQLite before anything is sent.

A message row is written in the same transaction as the ticket state it reports, after its
evidence files are on disk, so a crash at any moment leaves either the whole ticket message or
none of it. Rows are sent in ``id`` order and marked delivered only when the broker acknowledged
them (PUBACK); rows not marked are sent again after a reconnect or a restart (at-least-once:
consumers dedupe by ticket id and seq).

Large evidence stays in files; a row names the file, and the sender reads it when it sends.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.migrations import migrate, refuse_newer


@dataclass(frozen=True)
class MessageProps:
    """MQTT 5 properties a message is sent with, beyond content type and kind."""

    user: tuple[tuple[str, str], ...] = ()
    correlation_data: bytes | None = None  # echoed from a command, for its reply
    expiry_s: int | None = None  # for telemetry: stale numbers are worthless
    retain: bool = False

    def to_json(self) -> str:
        return json.dumps({"user": self.user, "correlation_data": self.correlation_data.hex()
                           if self.correlation_data is not None else None,
                           "expiry_s": self.expiry_s, "retain": self.retain})

    @classmethod
    def from_json(cls, text: str) -> MessageProps:
        raw = json.loads(text)
        corr = raw.get("correlation_data")
        return cls(tuple(tuple(pair) for pair in raw.get("user", ())), bytes.fromhex(corr) if corr else None,
                   raw.get("expiry_s"), raw.get("retain", False))


@dataclass(frozen=True)
class OutMessage:
    topic: str
    kind: str
    content_type: str
    ticket_id: str | None = None
    payload: bytes | None = None
    payload_path: str | None = None
    payload_offset: int = 0
    payload_length: int | None = None
    props: MessageProps = MessageProps()

    def __post_init__(self):
        if (self.payload is None) == (self.payload_path is None):
            raise ValueError("an OutMessage has exactly one of payload and payload_path")


@dataclass(frozen=True)
class StoredMessage:
    id: int
    topic: str
    kind: str
    ticket_id: str | None
    content_type: str
    payload: bytes | None
    payload_path: str | None
    payload_offset: int
    payload_length: int | None
    props: MessageProps
    created_at: float

    def body(self) -> bytes:
        if self.payload is not None:
            return self.payload
        assert self.payload_path is not None  # a message has a payload or a payload file (OutMessage)
        with open(self.payload_path, "rb") as f:
            f.seek(self.payload_offset)
            return f.read(-1 if self.payload_length is None else self.payload_length)


_COLUMNS = ("id, topic, kind, ticket_id, content_type, payload, payload_path, payload_offset, payload_length, "
            "properties, created_at")


def _stored(row: tuple) -> StoredMessage:
    *head, props, created_at = row
    # *head: the nine columns before properties, in field order; mypy cannot count a starred list.
    return StoredMessage(*head, MessageProps.from_json(props), created_at)  # type: ignore[call-arg]


class Transaction:
    def __init__(self, db: sqlite3.Connection, now: float):
        self._db, self._now = db, now

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """For the tables other modules keep in the same database (ticket state, mutes), so their
        state changes commit together with the messages that report them."""
        return self._db.execute(sql, params)

    def next_counter(self, name: str) -> int:
        """The next value of a named monotonic counter (e.g. the agent's ticket seq)."""
        self._db.execute("INSERT INTO counters(name, value) VALUES (?, 1) "
                         "ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,))
        return self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def add(self, message: OutMessage) -> int:
        cur = self._db.execute(
            "INSERT INTO messages(topic, kind, ticket_id, payload, payload_path, payload_offset, payload_length, "
            "content_type, properties, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message.topic, message.kind, message.ticket_id, message.payload, message.payload_path,
             message.payload_offset, message.payload_length, message.content_type, message.props.to_json(),
             self._now),
        )
        assert cur.lastrowid is not None  # every INSERT sets it
        return cur.lastrowid


class Outbox:
    """Thread-safe: one connection, one lock, one transaction per write (as persist-queue does)."""

    def __init__(self, path: Path):
        """Opens (or makes) the database and migrates it to this version's tables
        (:mod:`agent.migrations`, other modules' tables too); one from a newer agent is refused."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            refuse_newer(self._db, path)  # before journal_mode, which writes to the file
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL loses at most the last transactions on power loss, never consistency; FULL makes
            # every ticket survive power loss too, at a few ms per commit, which tickets can afford.
            self._db.execute("PRAGMA synchronous=FULL")
            migrate(self._db, path)
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)

    @contextmanager
    def transaction(self, now: float) -> Iterator[Transaction]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._db, now)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._added.notify_all()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read other modules' tables in this database."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def pending(self, after_id: int = 0, limit: int = 100) -> list[StoredMessage]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE delivered_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [_stored(row) for row in rows]

    def wait_for_more(self, after_id: int, timeout: float) -> None:
        """Block until a message newer than ``after_id`` is stored, or ``timeout`` passes."""
        with self._added:
            if self._max_id() <= after_id:
                self._added.wait(timeout)

    def _max_id(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]

    def mark_delivered(self, ids: list[int], now: float) -> None:
        if not ids:
            return
        with self._lock:
            self._db.executemany("UPDATE messages SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                                 [(now, i) for i in ids])

    def counts(self) -> dict[str, int]:
        with self._lock:
            total, pending = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(delivered_at IS NULL), 0) FROM messages").fetchone()
        return {"stored": total, "pending": pending}

    def oldest_pending_at(self) -> float | None:
        """When the oldest undelivered message was stored (the agent's clock); None: nothing is pending."""
        with self._lock:
            row = self._db.execute(
                "SELECT created_at FROM messages WHERE delivered_at IS NULL ORDER BY id LIMIT 1").fetchone()
        return None if row is None else row[0]

    def messages(self, kind: str | None = None) -> list[tuple[StoredMessage, float | None]]:
        """Every message with its delivery time: for ``edge-agent`` inspection and tests."""
        query = (f"SELECT {_COLUMNS}, delivered_at FROM messages" + (" WHERE kind = ?" if kind else "")
                 + " ORDER BY id")
        with self._lock:
            rows = self._db.execute(query, (kind,) if kind else ()).fetchall()
        return [(_stored(row[:-1]), row[-1]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
