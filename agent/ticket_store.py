"""The tickets and mutes tables: every query the agent makes on them, each a named method.

The tables live in the outbox's database (made by :mod:`agent.migrations`) so that a ticket's
state commits in the same transaction as the message reporting it. Reads go through the outbox's
lock (:meth:`Outbox.query`); writes take the caller's :class:`Transaction`, which holds it.

Nothing else writes SQL against these tables: a new question about tickets is a new method here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from agent.outbox import Transaction

ANY = "*"  # a mute's zone or rule that stands for all of them

_TICKET_COLUMNS = "ticket_id, camera, zone, rule, status, changed_at, doc"


class Status(str, Enum):
    OPEN = "open"
    CLEARED = "cleared"
    CLOSED = "closed"
    REJECTED = "rejected"


ENDED = (Status.CLOSED, Status.REJECTED)


@dataclass(frozen=True)
class Ticket:
    id: str
    camera: str
    zone: str
    rule: str
    status: Status
    changed_at: float
    doc: dict  # the last message sent about it, unsigned


class Database(Protocol):
    """What the store reads through: the :class:`~agent.outbox.Outbox`, or a read-only view of
    another process's outbox file (tools/soak.py)."""

    def query(self, sql: str, params: tuple = ()) -> list[tuple]: ...


class TicketStore:
    def __init__(self, db: Database):
        self.db = db

    # --- tickets ------------------------------------------------------------------------------
    def get(self, ticket_id: str) -> Ticket | None:
        return self._one(f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE ticket_id = ?", (ticket_id,))

    def latest(self, camera: str, zone: str, rule: str) -> Ticket | None:
        """The most recently created ticket of a zone's rule, whatever its status.

        By creation order (rowid), not by ``changed_at``: a clip attached or a command recorded
        later changes an older ticket, and must not make it look like the newest one.
        """
        return self._one(f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE camera = ? AND zone = ? AND rule = ? "
                         "ORDER BY rowid DESC LIMIT 1", (camera, zone, rule))

    def all(self) -> list[Ticket]:
        """Every ticket still kept, by id: for inspection, soak checks and tests."""
        return [_ticket(row) for row in self.db.query(f"SELECT {_TICKET_COLUMNS} FROM tickets ORDER BY ticket_id")]

    def open_ids(self) -> set[str]:
        return {row[0] for row in self.db.query("SELECT ticket_id FROM tickets WHERE status = ?",
                                                (Status.OPEN.value,))}

    def count_by_status(self) -> dict[str, int]:
        return dict(self.db.query("SELECT status, COUNT(*) FROM tickets GROUP BY status"))

    def save(self, tx: Transaction, ticket: Ticket, status: Status, ts: float, doc: dict) -> None:
        """Insert the ticket, or change its status, time and document (its place never changes)."""
        tx.execute(f"INSERT INTO tickets({_TICKET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT(ticket_id) DO UPDATE SET "
                   "status = excluded.status, changed_at = excluded.changed_at, doc = excluded.doc",
                   (ticket.id, ticket.camera, ticket.zone, ticket.rule, status.value, ts,
                    json.dumps(doc, ensure_ascii=False)))

    def prune_ended(self, tx: Transaction, changed_before: float) -> int:
        """Forget ended tickets last changed before ``changed_before``; how many were."""
        return tx.execute("DELETE FROM tickets WHERE status IN (?, ?) AND changed_at < ?",
                          (*(s.value for s in ENDED), changed_before)).rowcount

    def _one(self, sql: str, params: tuple) -> Ticket | None:
        rows = self.db.query(sql, params)
        return _ticket(rows[0]) if rows else None

    # --- mutes --------------------------------------------------------------------------------
    def mutes(self, camera: str) -> dict[tuple[str, str], float]:
        """(zone, rule) -> muted until, of one camera; either may be :data:`ANY`."""
        rows = self.db.query("SELECT zone, rule, until FROM mutes WHERE camera = ?", (camera,))
        return {(zone, rule): until for zone, rule, until in rows}

    def set_mute(self, tx: Transaction, camera: str, zone: str, rule: str, until: float) -> None:
        tx.execute("INSERT INTO mutes(camera, zone, rule, until) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT(camera, zone, rule) DO UPDATE SET until = excluded.until", (camera, zone, rule, until))

    def unmute(self, tx: Transaction, camera: str, zone: str | None) -> None:
        """Lift a zone's mutes (every rule's), or with ``zone`` None every mute of the camera."""
        if zone is None:
            tx.execute("DELETE FROM mutes WHERE camera = ?", (camera,))
        else:
            tx.execute("DELETE FROM mutes WHERE camera = ? AND zone = ?", (camera, zone))


def _ticket(row: tuple) -> Ticket:
    ticket_id, camera, zone, rule, status, changed_at, doc = row
    return Ticket(ticket_id, camera, zone, rule, Status(status), changed_at, json.loads(doc))
