"""The object_dwell rule on synthetic boxes, time driven by the test (pure logic)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.rules.object_dwell import ObjectDwellRule, Params
from agent.types import Detections, EventKind, Observation
from agent.zones import Zone

NAMES = ("person", "bicycle")
ZONE = Zone("strip", np.array([[0, 100], [200, 100], [200, 200], [0, 200]], np.float32))


def dets(*boxes, cls=0, score=0.9):
    if not boxes:
        return Detections.empty(NAMES)
    return Detections(np.array(boxes, np.float32), np.full(len(boxes), score, np.float32),
                      np.full(len(boxes), cls, np.int32), NAMES)


INSIDE = (50, 60, 80, 150)  # bottom centre (65, 150): inside
HEAD_INSIDE = (50, 120, 80, 250)  # head inside, feet (65, 250) outside


def obs(ts, detections):
    return Observation("cam", ts, np.zeros((1, 1, 3), np.uint8), detections)


def run(rule, frames):
    """frames: [(ts, detections)] -> [(ts, kind)]"""
    out = []
    for ts, d in frames:
        out += [(ts, e.kind) for e in rule.update(obs(ts, d)).events]
    return out


def params(**kw):
    base = {"classes": frozenset({"person"}), "min_dwell_s": 3, "clear_after_s": 4, "cooldown_s": 20, "max_gap_s": 1.0}
    return Params(**(base | kw))


def test_opens_once_after_dwell_and_clears_after_absence():
    rule = ObjectDwellRule(ZONE, params())
    frames = [(t * 0.5, dets(INSIDE)) for t in range(21)]  # 0..10 s present
    frames += [(10 + t * 0.5, dets()) for t in range(1, 12)]  # absent from 10.5 s
    assert run(rule, frames) == [(3.0, EventKind.OPENED), (14.0, EventKind.CLEARED)]


def test_anchor_is_the_bottom_centre():
    rule = ObjectDwellRule(ZONE, params())
    assert run(rule, [(t * 0.5, dets(HEAD_INSIDE)) for t in range(20)]) == []


def test_other_classes_and_low_scores_do_not_count():
    rule = ObjectDwellRule(ZONE, params())
    assert run(rule, [(t * 0.5, dets(INSIDE, cls=1)) for t in range(20)]) == []
    assert run(rule, [(t * 0.5, dets(INSIDE, score=0.2)) for t in range(20)]) == []


def test_gap_before_open_restarts_the_dwell_clock():
    rule = ObjectDwellRule(ZONE, params())
    frames = [(0, dets(INSIDE)), (2, dets(INSIDE)), (3.5, dets(INSIDE)), (5, dets(INSIDE)), (6.5, dets(INSIDE))]
    # gaps of 1.5 s > max_gap_s: never 3 s of continuous presence
    assert run(rule, frames) == []


def test_short_absence_after_open_keeps_the_ticket():
    rule = ObjectDwellRule(ZONE, params())
    frames = [(t, dets(INSIDE)) for t in range(5)] + [(5, dets()), (6, dets()), (7, dets(INSIDE))]
    assert run(rule, frames) == [(3, EventKind.OPENED)]


def test_cooldown_suppresses_a_new_ticket_right_after_a_clear():
    rule = ObjectDwellRule(ZONE, params(cooldown_s=20))
    first = [(t, dets(INSIDE)) for t in range(5)] + [(t, dets()) for t in range(5, 10)]
    again = [(t, dets(INSIDE)) for t in range(10, 40)]
    events = run(rule, first + again)
    # opened at 3, cleared at 8 (absent since 4 for >= 4 s), quiet until 28, opens again at 28
    assert events == [(3, EventKind.OPENED), (8, EventKind.CLEARED), (28, EventKind.OPENED)]


def test_event_carries_boxes_label_and_count():
    rule = ObjectDwellRule(ZONE, params(min_dwell_s=0))
    (event,) = rule.update(obs(100.0, dets(INSIDE, (100, 100, 120, 180)))).events
    assert event.label == "person" and event.facts == {"count": 2}
    assert event.first_seen == 100.0 and event.confidence == pytest.approx(0.9)
    assert event.boxes.shape == (2, 4)


def test_params_validate():
    with pytest.raises(ValueError, match="classes"):
        Params(classes=frozenset())


def test_clear_reports_the_last_sighting_and_a_zero_count():
    rule = ObjectDwellRule(ZONE, params(min_dwell_s=0, clear_after_s=2))
    rule.update(obs(0, dets(INSIDE, score=0.8)))
    (cleared,) = rule.update(obs(3, dets())).events
    assert cleared.kind is EventKind.CLEARED and cleared.facts == {"count": 0}
    assert cleared.label == "person" and cleared.confidence == pytest.approx(0.8)
    np.testing.assert_allclose(cleared.boxes, [INSIDE])
    assert (cleared.first_seen, cleared.last_seen, cleared.ts) == (0, 0, 3)


def test_present_looks_at_the_current_picture_only():
    rule = ObjectDwellRule(ZONE, params(min_dwell_s=30))
    assert rule.present(obs(0, dets(INSIDE))) is not None  # no dwell needed for a look
    assert rule.present(obs(0, dets(HEAD_INSIDE))) is None
    assert rule.present(obs(0, dets())) is None
