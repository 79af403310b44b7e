"""Keeping the box's disk bounded: evidence quota, outbox pruning, pressure reporting.

An unattended box runs for years on a small disk. Evidence is the bulk (a clip is ~1 MB, a
snapshot ~90 KB). When the evidence folder grows past its quota, or the disk's free space falls
below its floor, the janitor deletes evidence oldest first, but only of tickets that are over
(cleared, closed or rejected) and whose every message the broker has acknowledged: evidence of an
open ticket, or one not yet delivered, is never deleted. Delivered outbox rows and ended tickets
are pruned after ``keep_delivered_s``. What cannot be freed is reported as pressure (log, status)
instead of crashing; writes that then fail leave SQLite consistent (each ticket change is one
transaction) and the camera goes on analysing.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.logs import log_event
from agent.outbox import Outbox
from agent.ticket_store import TicketStore
from agent.typedtoml import setting

log = logging.getLogger("agent.storage")


@dataclass(frozen=True)
class StorageLimits:
    evidence_quota_mb: float = setting(2048.0, gt=0, help="Evidence folder size that starts pruning")
    min_free_mb: float = setting(500.0, ge=0, help="Free disk below this starts pruning too")
    keep_delivered_s: float = setting(
        7 * 86400.0, ge=0, help="Delivered messages and ended tickets are kept this long for inspection")


@dataclass(frozen=True)
class StorageReport:
    evidence_bytes: int
    free_bytes: int
    pruned_tickets: int
    pressure: str | None  # why the agent could not get back under its limits, if it could not

    def as_dict(self) -> dict:
        return {"evidence_mb": round(self.evidence_bytes / 2**20, 1), "free_mb": round(self.free_bytes / 2**20, 1),
                "pressure": self.pressure}


class StorageJanitor:
    def __init__(self, outbox: Outbox, evidence_root: Path, limits: StorageLimits):
        self.outbox, self.evidence_root, self.limits = outbox, evidence_root, limits
        self.tickets = TicketStore(outbox)
        self.last: StorageReport | None = None

    def run(self, now: float) -> StorageReport:
        pruned = self._prune_rows(now)
        quota = self.limits.evidence_quota_mb * 2**20
        floor = self.limits.min_free_mb * 2**20
        folders = self._folders()
        size = sum(bytes_ for _, _, bytes_ in folders)
        free = shutil.disk_usage(self.evidence_root).free
        removed = 0
        if size > quota or free < floor:
            removable = self._removable({name for name, _, _ in folders})
            for name, _, bytes_ in sorted(folders, key=lambda f: f[1]):  # oldest first
                if size <= quota and free >= floor:
                    break
                if name not in removable:
                    continue
                shutil.rmtree(self.evidence_root / name, ignore_errors=True)
                size -= bytes_
                free += bytes_
                removed += 1
        pressure = None
        if size > quota:
            pressure = f"evidence {size / 2**20:.0f} MB over quota {self.limits.evidence_quota_mb:.0f} MB; " \
                       "the rest belongs to open or undelivered tickets"
        elif free < floor:
            pressure = f"free disk {free / 2**20:.0f} MB below {self.limits.min_free_mb:.0f} MB"
        if removed or pruned or pressure:
            log_event(log, "storage_pruned", level=logging.WARNING if pressure else logging.INFO,
                      evidence_folders=removed, rows=pruned, evidence_mb=round(size / 2**20, 1),
                      free_mb=round(free / 2**20, 1), pressure=pressure or "-")
        self.last = StorageReport(size, free, removed, pressure)
        return self.last

    def _folders(self) -> list[tuple[str, float, int]]:
        """(name, newest mtime, bytes) of each evidence folder (one per ticket or spot check)."""
        out: list[tuple[str, float, int]] = []
        if not self.evidence_root.is_dir():
            return out
        for folder in self.evidence_root.iterdir():
            files = [f for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
            if files:
                stats = [f.stat() for f in files]
                out.append((folder.name, max(s.st_mtime for s in stats), sum(s.st_size for s in stats)))
        return out

    def _removable(self, names: set[str]) -> set[str]:
        """Folders whose ticket is over and fully delivered (spot checks: delivered)."""
        keep = self.tickets.open_ids()
        undelivered_paths = {row[0] for row in self.outbox.query(
            "SELECT DISTINCT payload_path FROM messages WHERE delivered_at IS NULL AND payload_path IS NOT NULL")}
        keep |= {Path(p).parent.name for p in undelivered_paths}
        keep |= {row[0] for row in self.outbox.query(
            "SELECT DISTINCT ticket_id FROM messages WHERE delivered_at IS NULL AND ticket_id IS NOT NULL")}
        return names - keep

    def _prune_rows(self, now: float) -> int:
        cutoff = now - self.limits.keep_delivered_s
        with self.outbox.transaction(now) as tx:
            rows = tx.execute("DELETE FROM messages WHERE delivered_at IS NOT NULL AND delivered_at < ?",
                              (cutoff,)).rowcount
            rows += self.tickets.prune_ended(tx, cutoff)
        return rows
