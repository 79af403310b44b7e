"""The SQLite outbox: order, counters, delivery marks, rollback, and durability across reopen."""

from __future__ import annotations

import pytest

from agent.outbox import Outbox, OutMessage


def msg(i, **kw):
    return OutMessage(topic=f"t/{i}", kind="ticket", content_type="application/json", payload=f"{i}".encode(), **kw)


def test_messages_come_back_in_order_and_survive_reopen(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    for i in range(5):
        with box.transaction(now=1.0) as tx:
            tx.add(msg(i))
    box.mark_delivered([1, 2], now=2.0)
    box.close()

    box = Outbox(path)
    pending = box.pending()
    assert [m.topic for m in pending] == ["t/2", "t/3", "t/4"]
    assert box.counts() == {"stored": 5, "pending": 3}
    assert [m.topic for m in box.pending(after_id=pending[0].id)] == ["t/3", "t/4"]
    assert journal_mode(box) == "wal"


def journal_mode(box):
    return box._db.execute("PRAGMA journal_mode").fetchone()[0]


def test_counter_is_monotonic_across_reopen(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    with box.transaction(now=0) as tx:
        assert [tx.next_counter("ticket_seq") for _ in range(3)] == [1, 2, 3]
    box.close()
    box = Outbox(path)
    with box.transaction(now=0) as tx:
        assert tx.next_counter("ticket_seq") == 4


def test_a_failed_transaction_stores_nothing_and_takes_no_seq(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite")
    with pytest.raises(RuntimeError), box.transaction(now=0) as tx:
        tx.next_counter("ticket_seq")
        tx.add(msg(1))
        raise RuntimeError("evidence write failed")
    assert box.counts() == {"stored": 0, "pending": 0}
    with box.transaction(now=0) as tx:
        assert tx.next_counter("ticket_seq") == 1


def test_file_payload_is_read_at_send_time(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite")
    evidence = tmp_path / "snap.jpg"
    evidence.write_bytes(b"\xff\xd8jpeg")
    with box.transaction(now=0) as tx:
        tx.add(OutMessage("t/e", "evidence", "image/jpeg", "abc", payload_path=str(evidence)))
    (stored,) = box.pending()
    assert stored.body() == b"\xff\xd8jpeg"


def test_message_needs_exactly_one_payload():
    with pytest.raises(ValueError):
        OutMessage("t", "ticket", "application/json")
