"""The box's database (``outbox.sqlite``): its tables and every change made to them since 0.1.0.

``PRAGMA user_version`` holds how many of :data:`MIGRATIONS` a database has had. At open the
missing ones run in one transaction, so an upgrade either migrates the whole database or leaves
it as it was; a database from a newer agent (a downgrade) is refused untouched, since this code
cannot know what its tables mean.

Never edit a migration that was released: append one (``ALTER TABLE ... ADD COLUMN``, a new table,
an ``UPDATE`` filling a column). Every table of the database, the outbox's and other modules'
(tickets, mutes, command nonces), is made here, so that one number says what a file holds.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.logs import log_event

log = logging.getLogger("agent.migrations")


@dataclass(frozen=True)
class Migration:
    version: int
    why: str
    sql: str


class DatabaseSchemaError(Exception):
    """A database this agent cannot use: written by a newer agent, or a migration failed."""


MIGRATIONS = (
    # Databases from before versioning (0.1.0, user_version 0) have these tables already, and keep
    # them and their rows as they are: hence IF NOT EXISTS.
    Migration(1, "0.1.0's tables: outbox messages and counters, ticket state, mutes, command nonces", """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,              -- ticket, evidence, ...
    ticket_id TEXT,
    payload BLOB,                    -- inline payload, or NULL when payload_path names a file
    payload_path TEXT,
    payload_offset INTEGER NOT NULL DEFAULT 0,   -- a chunk of the file: [offset, offset + length)
    payload_length INTEGER,                      -- NULL: to the end of the file
    content_type TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',       -- MessageProps as JSON
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
    doc TEXT NOT NULL                -- the last message sent about it
);
CREATE INDEX IF NOT EXISTS tickets_by_place ON tickets (camera, zone, rule, changed_at);
CREATE TABLE IF NOT EXISTS mutes (
    camera TEXT NOT NULL,
    zone TEXT NOT NULL,              -- '*' for the whole camera
    rule TEXT NOT NULL,              -- '*' for every rule
    until REAL NOT NULL,
    PRIMARY KEY (camera, zone, rule)
);
CREATE TABLE IF NOT EXISTS command_nonces (
    nonce TEXT PRIMARY KEY,
    ts REAL NOT NULL                 -- the command's own ts: forgotten once that is stale
);
"""),
)


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def refuse_newer(db: sqlite3.Connection, path: Path, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    """Raise :class:`DatabaseSchemaError` if the database is newer than ``migrations``; reads only,
    so call it before anything (``journal_mode``, a migration) writes to the file."""
    found, known = schema_version(db), migrations[-1].version
    if found > known:
        raise DatabaseSchemaError(
            f"{path}: database schema version {found}, but edge-agent {__version__} knows up to version {known}: "
            f"it was written by a newer edge-agent; run that one again (or restore the backup made before "
            f"upgrading); the file is left as it is")


def migrate(db: sqlite3.Connection, path: Path, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    """Run the migrations the database lacks, all in one transaction. ``db`` is in autocommit
    mode (``isolation_level=None``) and the agent is the database's only writer."""
    refuse_newer(db, path, migrations)
    found = schema_version(db)
    missing = [m for m in migrations if m.version > found]
    if not missing:
        return
    fresh = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    # One script, its own BEGIN and COMMIT: sqlite3's executescript() would commit a transaction
    # begun outside it before running. PRAGMA user_version is part of the transaction.
    script = "".join(m.sql.rstrip().rstrip(";") + ";\n" for m in missing)
    try:
        db.executescript(f"BEGIN IMMEDIATE;\n{script}PRAGMA user_version = {missing[-1].version};\nCOMMIT;")
    except sqlite3.Error as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise DatabaseSchemaError(f"{path}: migrating the database from schema version {found} to "
                                  f"{missing[-1].version} failed, it is left at version {found}: {exc}") from exc
    if fresh:
        log_event(log, "database_created", file=path, version=missing[-1].version)
    else:
        log_event(log, "database_migrated", file=path, from_version=found, to_version=missing[-1].version,
                  steps=" | ".join(f"{m.version}: {m.why}" for m in missing))
