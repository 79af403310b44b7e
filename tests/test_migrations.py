"""The database between versions: a fresh one gets the latest tables, one from 0.1.0 (before
versioning) is migrated keeping every row, one from a newer agent is refused and left untouched."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import subprocess
import sys

import pytest

from agent.migrations import MIGRATIONS, DatabaseSchemaError, Migration, migrate
from agent.outbox import Outbox
from tests.helpers import REPO, write_edge

LATEST = MIGRATIONS[-1].version

# The tables exactly as edge-agent 0.1.0 made them (agent/outbox.py SCHEMA, agent/tickets.py
# TICKET_TABLES, agent/command_auth.py NONCE_TABLE), with user_version left at 0. Frozen here on
# purpose: it is what boxes in the field have, whatever the migrations say now.
SCHEMA_0_1_0 = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    ticket_id TEXT,
    payload BLOB,
    payload_path TEXT,
    payload_offset INTEGER NOT NULL DEFAULT 0,
    payload_length INTEGER,
    content_type TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS messages_pending ON messages (id) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    zone TEXT NOT NULL,
    rule TEXT NOT NULL,
    status TEXT NOT NULL,
    changed_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_by_place ON tickets (camera, zone, rule, changed_at);
CREATE TABLE IF NOT EXISTS mutes (
    camera TEXT NOT NULL,
    zone TEXT NOT NULL,
    rule TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (camera, zone, rule)
);
CREATE TABLE IF NOT EXISTS command_nonces (
    nonce TEXT PRIMARY KEY,
    ts REAL NOT NULL
);
"""

TABLES = ("messages", "counters", "tickets", "mutes", "command_nonces")


def make_0_1_0_database(path) -> dict[str, list[tuple]]:
    """A box's database as 0.1.0 left it: delivered and pending messages, the ticket seq, an open
    ticket, a mute and a nonce; returns every table's rows."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA_0_1_0)
    for i in range(1, 6):
        db.execute("INSERT INTO messages(topic, kind, ticket_id, payload, content_type, properties, created_at, "
                   "delivered_at) VALUES (?, 'ticket', ?, ?, 'application/json', '{}', ?, ?)",
                   (f"cityops/box/tickets/{i}", f"t{i}", f'{{"seq": {i}}}'.encode(), 100.0 + i,
                    200.0 + i if i <= 2 else None))
    db.execute("INSERT INTO messages(topic, kind, ticket_id, payload_path, payload_offset, payload_length, "
               "content_type, created_at) VALUES ('cityops/box/evidence/t5', 'evidence', 't5', "
               "'/var/lib/edge-agent/evidence/t5/snap.jpg', 0, 4096, 'image/jpeg', 106.0)")
    db.execute("INSERT INTO counters VALUES ('ticket_seq', 5)")
    db.execute("INSERT INTO tickets VALUES ('t5', 'cam1', 'plaza', 'object_dwell', 'open', 105.0, '{\"seq\": 5}')")
    db.execute("INSERT INTO mutes VALUES ('cam1', '*', '*', 1.9e9)")
    db.execute("INSERT INTO command_nonces VALUES ('nonce-0123456789abcdef', 1.8e9)")
    rows = table_rows(db)
    db.close()
    return rows


def table_rows(db: sqlite3.Connection) -> dict[str, list[tuple]]:
    return {table: db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in TABLES}


def user_version(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_a_fresh_database_gets_the_latest_version_and_every_table(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agent.migrations")
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    assert [(r.getMessage(), r.fields["version"]) for r in caplog.records] == [("database_created", LATEST)]
    assert user_version(path) == LATEST
    with sqlite3.connect(path) as db:
        assert set(TABLES) <= {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_0_1_0_database_is_migrated_keeping_every_row_and_its_pending_messages(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agent.migrations")
    path = tmp_path / "outbox.sqlite"
    before = make_0_1_0_database(path)
    assert user_version(path) == 0

    box = Outbox(path)
    assert [m.ticket_id for m in box.pending()] == ["t3", "t4", "t5", "t5"]  # sent after the upgrade
    assert box.counts() == {"stored": 6, "pending": 4}
    with box.transaction(now=300.0) as tx:
        assert tx.next_counter("ticket_seq") == 6  # ticket seq goes on, never reused
    box.close()
    assert user_version(path) == LATEST
    with sqlite3.connect(path) as db:
        after = table_rows(db)
    assert after["counters"] == [("ticket_seq", 6)]
    assert {t: rows for t, rows in after.items() if t != "counters"} == \
        {t: rows for t, rows in before.items() if t != "counters"}
    assert any(r.getMessage() == "database_migrated" and r.fields["from_version"] == 0
               and r.fields["to_version"] == LATEST for r in caplog.records)


def test_later_migrations_run_in_order_on_an_old_database_and_keep_its_rows(tmp_path):
    """What the next release's migration will do: a column added and filled for the stored rows."""
    path = tmp_path / "outbox.sqlite"
    before = make_0_1_0_database(path)
    later = MIGRATIONS + (
        Migration(LATEST + 1, "a column", "ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"),
        Migration(LATEST + 2, "filled", "UPDATE messages SET attempts = 1 WHERE delivered_at IS NOT NULL"),
    )
    with sqlite3.connect(path, isolation_level=None) as db:
        migrate(db, path, later)
        assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST + 2
        assert db.execute("SELECT id, attempts FROM messages ORDER BY id").fetchall() == \
            [(1, 1), (2, 1), (3, 0), (4, 0), (5, 0), (6, 0)]
        assert [row[:-1] for row in db.execute("SELECT * FROM messages ORDER BY id")] == before["messages"]


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path):
    path = tmp_path / "outbox.sqlite"
    before = make_0_1_0_database(path)
    broken = MIGRATIONS + (
        Migration(LATEST + 1, "a column", "ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"),
        Migration(LATEST + 2, "a typo", "UPDATE mesages SET attempts = 1"),
    )
    with sqlite3.connect(path, isolation_level=None) as db:
        with pytest.raises(DatabaseSchemaError) as err:
            migrate(db, path, broken)
        assert not db.in_transaction
    assert str(path) in str(err.value) and f"from schema version 0 to {LATEST + 2}" in str(err.value)
    assert "left at version 0" in str(err.value) and "no such table: mesages" in str(err.value)
    assert user_version(path) == 0
    with sqlite3.connect(path) as db:
        assert "attempts" not in [col[1] for col in db.execute("PRAGMA table_info(messages)")]
        assert table_rows(db) == before


def newer_database(path) -> str:
    """A database a later agent migrated past this one's latest; returns its sha256."""
    make_0_1_0_database(path)
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=DELETE")  # the whole database in the one file, to hash it
        db.execute(f"PRAGMA user_version = {LATEST + 3}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_database_from_a_newer_agent_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "outbox.sqlite"
    digest = newer_database(path)
    with pytest.raises(DatabaseSchemaError) as err:
        Outbox(path)
    message = str(err.value)
    assert str(path) in message and f"version {LATEST + 3}" in message and f"up to version {LATEST}" in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "outbox.sqlite-wal").exists()


def test_run_on_a_newer_database_exits_with_one_line_naming_the_file_and_both_versions(tmp_path):
    edge = write_edge(tmp_path, [])
    (tmp_path / "var").mkdir()
    path = tmp_path / "var" / "outbox.sqlite"
    digest = newer_database(path)
    out = subprocess.run([sys.executable, "-m", "agent.cli", "-c", str(edge), "run"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 1, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"edge-agent: run: {path}: database schema version {LATEST + 3}, but edge-agent ")
    assert f"knows up to version {LATEST}" in line
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
