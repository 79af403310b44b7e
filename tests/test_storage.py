"""Disk: quota pruning keeps what is open or undelivered; a full disk (a real 3 MB tmpfs) during
writes leaves the outbox consistent and loses nothing already stored."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent.config import CameraConfig, TicketsSection, ZoneConfig
from agent.evidence import EvidenceStore
from agent.faults import DEFAULT_CATEGORIES
from agent.outbox import Outbox
from agent.rules import Category
from agent.storage import StorageJanitor, StorageLimits
from agent.ticket_signing import KEY_FILE, DeviceKey
from agent.ticket_store import TicketStore
from agent.tickets import ModelInfo, TicketBook
from agent.topics import Topics
from agent.types import Detections, EventKind, RuleEvent
from agent.zones import Zone

NOBODY = Detections.empty(("person",))
ZONE = Zone("z", np.array([[0, 0], [100, 0], [100, 100], [0, 100]], np.float32))
CAMERA = CameraConfig(id="cam", name="cam", url="x.mp4", source_file=None, model="m", analysis_fps=2,
                      read_timeout_s=5, realtime=False, loop=False, lat=31.0, lon=121.0, grid_code="g",
                      zones=(ZoneConfig(ZONE, "object_dwell", None, Category("a", "b", "c"), None),),
                      view_check=False)


def book_in(folder):
    outbox = Outbox(folder / "outbox.sqlite")
    evidence = EvidenceStore(folder / "evidence", jpeg_quality=95)
    book = TicketBook("box", CAMERA, ModelInfo("m", "0" * 64), Topics("p", "box"), outbox, evidence,
                      TicketsSection(reopen_window_s=0), 256 * 1024, DEFAULT_CATEGORIES,
                      DeviceKey.load_or_create(folder / KEY_FILE))
    return outbox, evidence, book


def noisy_frame(seed):
    """Noise compresses badly: ~400 KB per JPEG, so a few tickets fill a small disk."""
    return np.random.default_rng(seed).integers(0, 255, (480, 640, 3), dtype=np.uint8)


def event(kind, ts):
    return RuleEvent(kind, "object_dwell", "z", ts, ts - 5, ts, "person", 0.9,
                     np.array([[10, 10, 50, 90]], np.float32), {"count": 1})


def make_ticket(book, seed, ts, clear=True):
    doc = book.on_rule_event(event(EventKind.OPENED, ts), noisy_frame(seed), NOBODY)
    if clear:
        book.on_rule_event(event(EventKind.CLEARED, ts + 1), noisy_frame(seed + 1000), NOBODY)
    return doc["ticket_id"]


def age(evidence, ticket_id, mtime):
    for f in evidence.folder(ticket_id).iterdir():
        os.utime(f, (mtime, mtime))


def test_quota_prunes_oldest_ended_delivered_evidence_and_keeps_open_or_undelivered(tmp_path):
    outbox, evidence, book = book_in(tmp_path)
    ended = [make_ticket(book, i, 1000.0 + 10 * i) for i in range(4)]
    undelivered = make_ticket(book, 20, 1100.0)
    still_open = make_ticket(book, 10, 1200.0, clear=False)  # last: an open ticket holds its zone
    for rank, ticket in enumerate(ended + [undelivered, still_open]):
        age(evidence, ticket, 1_000_000 + rank)  # the list's order is oldest first
    ids = [row[0] for row in outbox.query("SELECT id FROM messages WHERE ticket_id != ?", (undelivered,))]
    outbox.mark_delivered(ids, now=2000.0)

    folder_size = sum(f.stat().st_size for f in evidence.folder(ended[0]).iterdir())
    total = sum(f.stat().st_size for f in evidence.root.rglob("*") if f.is_file())
    # A quota that needs two folders gone: the two oldest ended, delivered ones go.
    janitor = StorageJanitor(outbox, evidence.root, StorageLimits(
        evidence_quota_mb=(total - 1.5 * folder_size) / 2**20, min_free_mb=0, keep_delivered_s=1e9))
    report = janitor.run(now=3000.0)
    assert report.pruned_tickets == 2 and report.pressure is None
    assert not evidence.folder(ended[0]).exists() and not evidence.folder(ended[1]).exists()
    assert all(evidence.folder(t).exists() for t in ended[2:] + [still_open, undelivered])

    # A quota nothing can meet: every ended+delivered folder goes, the rest stays, pressure said.
    janitor = StorageJanitor(outbox, evidence.root, StorageLimits(evidence_quota_mb=0.01, min_free_mb=0,
                                                                  keep_delivered_s=1e9))
    report = janitor.run(now=3000.0)
    assert report.pressure and "open or undelivered" in report.pressure
    assert evidence.folder(still_open).exists() and evidence.folder(undelivered).exists()
    assert not any(evidence.folder(t).exists() for t in ended)
    assert outbox.counts()["stored"] > 0  # rows are pruned by age, not by the evidence quota


def test_delivered_rows_and_ended_tickets_are_pruned_after_retention(tmp_path):
    outbox, _, book = book_in(tmp_path)
    old = make_ticket(book, 1, 1000.0)
    book.verify(old, 1002.0, noisy_frame(3), NOBODY, None)  # closed
    recent = make_ticket(book, 2, 5000.0, clear=False)
    outbox.mark_delivered([row[0] for row in outbox.query("SELECT id FROM messages")], now=5001.0)
    StorageJanitor(outbox, tmp_path / "evidence", StorageLimits(keep_delivered_s=100, min_free_mb=0)).run(now=5050.0)
    assert [t.id for t in TicketStore(outbox).all()] == [recent]


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"this test mounts a 3 MB tmpfs and needs root: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_during_writes_leaves_the_outbox_consistent(tiny_disk):
    outbox, evidence, book = book_in(tiny_disk)
    stored, failure = [], None
    for i in range(40):
        try:
            stored.append(book.on_rule_event(event(EventKind.OPENED, 1000.0 + i), noisy_frame(i),
                                             NOBODY)["ticket_id"])
            book.on_rule_event(event(EventKind.CLEARED, 1000.5 + i), noisy_frame(i + 100), NOBODY)
        except (OSError, sqlite3.OperationalError) as exc:
            failure = exc
            break
    assert failure is not None, "a 3 MB disk must fill up"
    assert len(stored) >= 2, "some tickets fit before the disk filled"
    outbox.close()

    db = sqlite3.connect(tiny_disk / "outbox.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT ticket_id, kind, payload, payload_path FROM messages ORDER BY id").fetchall()
    opened = {json.loads(p)["ticket_id"] for _, kind, p, _ in rows if kind == "ticket"
              and json.loads(p)["event"] == "opened"}
    assert set(stored) <= opened, "a ticket the agent reported stored must be in the outbox"
    for ticket_id, kind, payload, path in rows:
        if kind == "ticket":
            for item in json.loads(payload)["evidence"]:
                named = [p for t, k, _, p in rows if t == ticket_id and k == "evidence" and p]
                assert any(hashlib.sha256(Path(p).read_bytes()).hexdigest() == item["sha256"] for p in named)
    db.close()

    outbox, evidence, _ = book_in(tiny_disk)
    report = StorageJanitor(outbox, evidence.root, StorageLimits(min_free_mb=1)).run(now=2000.0)
    assert report.pressure is not None  # nothing is delivered, so nothing may be freed: it says so


def test_one_open_ticket_per_zone_even_when_an_older_ticket_changes_later(tmp_path):
    """Found by the soak: a clip attached to an older ticket made it look newest, and the zone's
    open ticket was forgotten, so a second one opened beside it."""
    _, _, book = book_in(tmp_path)
    first = make_ticket(book, 1, 1000.0)  # opened and cleared
    second = make_ticket(book, 2, 2000.0, clear=False)  # open
    clip = book.evidence.save(first, "clip.mp4", "clip", b"\x00" * 100, "video/mp4")
    assert book.attach(first, clip, ts=9999.0) is not None  # the older ticket changes last
    assert book.on_rule_event(event(EventKind.OPENED, 3000.0), noisy_frame(3), NOBODY) is None
    assert book.latest("z", "object_dwell").id == second
