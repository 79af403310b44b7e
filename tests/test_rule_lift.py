"""The lift_ebike rule: the classes path and the local action on synthetic detections, the
fallback's empty-car reference on a real vtest frame with objects drawn in, and
scenarios/lift_ebike_car.toml (both paths) through the real agent on real pixels."""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import pytest

from agent.rules.lift_ebike import LiftEbikeRule, Params
from agent.types import Detections, EventKind, Observation
from agent.zones import Zone
from tests import lift_scenes
from tests.helpers import REPO
from tools.evaluate import evaluate_scenario

NAMES = ("person", "ebike")
PERSON, EBIKE = range(2)
STEP = 0.5
CAR = Zone("car", np.array([[40, 420], [360, 420], [360, 576], [40, 576]], np.float32))  # 320 x 156 px
EBIKE_IN_CAR = (120, 440, 280, 560)
PERSON_IN_CAR = (150, 400, 210, 570)
BLANK = np.zeros((576, 768, 3), np.uint8)


def dets(*rows) -> Detections:
    """rows: (box, class_id) with score 0.9, or (box, class_id, score)."""
    if not rows:
        return Detections.empty(NAMES)
    rows = [r if len(r) == 3 else (*r, 0.9) for r in rows]
    return Detections(np.array([r[0] for r in rows], np.float32), np.array([r[2] for r in rows], np.float32),
                      np.array([r[1] for r in rows], np.int32), NAMES)


def obs(ts, detections=None, image=BLANK) -> Observation:
    return Observation("lift", ts, image, dets() if detections is None else detections)


def run(rule, frames):
    """frames: [(ts, detections or None, image)] -> [(ts, kind)]"""
    return [(ts, e.kind) for ts, d, image in frames for e in rule.update(obs(ts, d, image)).events]


def times(start, stop):
    return [i * STEP for i in range(round(start / STEP), round(stop / STEP))]


def model(**kw) -> Params:
    return Params(**({"classes": ("ebike",), "fallback": False} | kw))


# --------------------------------------------------------------------------- classes path

def test_an_ebike_in_the_car_opens_after_the_dwell_and_clears_after_it_left():
    rule = LiftEbikeRule(CAR, model())
    frames = [(ts, dets((EBIKE_IN_CAR, EBIKE)), BLANK) for ts in times(0, 5)]
    frames += [(ts, dets(), BLANK) for ts in times(5, 10)]
    assert run(rule, frames) == [(1.0, EventKind.OPENED), (7.5, EventKind.CLEARED)]


def test_a_gap_before_opening_restarts_the_dwell_and_people_or_low_scores_do_not_count():
    rule = LiftEbikeRule(CAR, model(min_dwell_s=1, max_gap_s=0.5))
    flicker = [(ts, dets((EBIKE_IN_CAR, EBIKE)) if i % 3 != 2 else dets(), BLANK) for i, ts in enumerate(times(0, 6))]
    person = [(ts, dets((PERSON_IN_CAR, PERSON)), BLANK) for ts in times(6, 12)]
    unsure = [(ts, dets((EBIKE_IN_CAR, EBIKE, 0.3)), BLANK) for ts in times(12, 18)]
    outside = [(ts, dets(((400, 300, 500, 400), EBIKE)), BLANK) for ts in times(18, 24)]
    assert run(rule, flicker + person + unsure + outside) == []


def test_alarm_fact_is_on_while_open_and_off_on_the_clear_and_the_opening_rings_the_topic():
    rule = LiftEbikeRule(CAR, model(min_dwell_s=0, alarm_topic="lift/1/alarm"))
    output = rule.update(obs(0.0, dets((EBIKE_IN_CAR, EBIKE))))
    (opened,) = output.events
    assert opened.facts == {"detected_by": "model", "alarm": True} and opened.label == "ebike"
    assert output.alarm_topic(opened) == "lift/1/alarm"
    cleared_output = rule.update(obs(3.0))
    (cleared,) = cleared_output.events
    assert cleared.kind is EventKind.CLEARED and cleared.facts == {"alarm": False}
    assert cleared_output.alarms == ()
    np.testing.assert_allclose(cleared.boxes, [EBIKE_IN_CAR])
    quiet = LiftEbikeRule(CAR, model(min_dwell_s=0)).update(obs(0.0, dets((EBIKE_IN_CAR, EBIKE))))
    assert "alarm" not in quiet.events[0].facts and quiet.alarms == ()


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_command_runs_once_per_ticket_without_blocking(tmp_path):
    marks = tmp_path / "marks"
    # Writes a mark and then takes 1 s, like a voice prompt.
    script = f"open({str(marks)!r}, 'a').write('x'); import time; time.sleep(1)"
    rule = LiftEbikeRule(CAR, model(min_dwell_s=0, clear_after_s=1, command=(sys.executable, "-c", script)))
    started = time.monotonic()
    for ts in times(0, 3):
        rule.update(obs(ts, dets((EBIKE_IN_CAR, EBIKE))))
    assert time.monotonic() - started < 0.5, "update waited for the command"
    assert _wait_for(lambda: marks.exists() and marks.read_text() == "x")
    for ts in times(3, 5):
        rule.update(obs(ts))  # cleared; the first run finishes meanwhile and is reaped
    assert _wait_for(lambda: rule._process is None or rule._process.poll() is not None)
    time.sleep(1.2)
    for ts in times(5, 7):
        rule.update(obs(ts, dets((EBIKE_IN_CAR, EBIKE))))  # a second ticket: a second run
    assert _wait_for(lambda: marks.read_text() == "xx")
    time.sleep(0.5)
    assert marks.read_text() == "xx"


def test_a_command_still_running_is_not_started_again(tmp_path, caplog):
    marks = tmp_path / "marks"
    script = f"open({str(marks)!r}, 'a').write('x'); import time; time.sleep(30)"
    rule = LiftEbikeRule(CAR, model(min_dwell_s=0, clear_after_s=0.5, command=(sys.executable, "-c", script)))
    try:
        with caplog.at_level(logging.WARNING, "agent.rules.lift_ebike"):
            for ts, present in [(0, True), (1, False), (2, True)]:  # opened, cleared, opened again
                rule.update(obs(ts, dets((EBIKE_IN_CAR, EBIKE)) if present else None))
        assert _wait_for(lambda: marks.exists())
        time.sleep(0.3)
        assert marks.read_text() == "x"
        assert "lift_command_still_running" in caplog.messages
    finally:
        rule._process.kill()
        rule._process.wait()


def test_a_failing_command_is_logged_not_raised(caplog):
    missing = LiftEbikeRule(CAR, model(min_dwell_s=0, command=("/nonexistent/espeak-ng", "hello")))
    failing = LiftEbikeRule(CAR, model(min_dwell_s=0, command=(sys.executable, "-c", "raise SystemExit(3)")))
    with caplog.at_level(logging.WARNING, "agent.rules.lift_ebike"):
        (opened,) = missing.update(obs(0.0, dets((EBIKE_IN_CAR, EBIKE)))).events
        assert opened.kind is EventKind.OPENED
        failing.update(obs(0.0, dets((EBIKE_IN_CAR, EBIKE))))
        assert _wait_for(lambda: failing._process.poll() is not None)
        failing.update(obs(0.5))
    failures = [r for r in caplog.records if r.getMessage() == "lift_command_failed"]
    assert [r.fields.get("exit_code") for r in failures] == [None, 3]
    assert "FileNotFoundError" in failures[0].fields["error"]


@pytest.mark.parametrize("kw, message", [
    ({"classes": (), "fallback": False}, "give classes"),
    ({"fallback": True, "learn_after_s": 10, "relearn_after_s": 5}, "relearn_after_s"),
    ({"fallback": False, "empty_reference": REPO / "README.md"}, "only with fallback"),
    ({"fallback": True, "empty_reference": REPO / "no-such.jpg"}, "not found"),
])
def test_params_validate(kw, message):
    with pytest.raises(ValueError, match=message):
        Params(**kw)


def test_the_documented_defaults_alone_are_a_working_rule():
    """A technician sets only the zone and type: the ebike class where the model has it, and the fallback."""
    p = Params()
    assert p.classes == ("ebike",) and p.fallback
    coco = Detections(np.array([EBIKE_IN_CAR], np.float32), np.array([0.9], np.float32), np.array([1], np.int32),
                      ("person", "bicycle"))
    assert LiftEbikeRule(CAR, p).update(obs(0.0, coco)).events == ()  # a model without ebike: no match, no error


# --------------------------------------------------------------------------- fallback, on composites

ZONE = Zone("car", lift_scenes.FLOOR)
SEEDS = range(6)


def person_dets(boxes) -> Detections:
    if not boxes:
        return Detections.empty(("person",))
    return Detections(np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32),
                      np.zeros(len(boxes), np.int32), ("person",))


def play(scene, params=None):
    rule = LiftEbikeRule(ZONE, params or Params())
    return [e for i, (image, boxes) in enumerate(scene.frames)
            for e in rule.update(Observation("lift", i * lift_scenes.STEP_S, image, person_dets(boxes))).events]


@pytest.mark.parametrize("seed", SEEDS)
def test_an_ebike_pushed_in_with_a_person_opens_on_the_defaults(seed):
    """12 frames at 2 fps, the empty car only in the first; the person missed in ~30% of frames."""
    events = play(lift_scenes.scene("ebike", seed))
    assert [e.kind for e in events] == [EventKind.OPENED]
    opened = events[0]
    assert opened.label == "large_object" and opened.facts["detected_by"] == "foreground"
    assert opened.facts["object_length"] >= 0.75 and opened.ts <= 3.5  # within 2 s of standing still


@pytest.mark.parametrize("what", ["person", "pram", "suitcase"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_person_alone_a_pram_or_a_suitcase_stays_silent(what, seed):
    assert play(lift_scenes.scene(what, seed)) == []


def test_a_person_the_detector_never_sees_is_not_an_object():
    """Nothing came with a person: a person missed in every frame (or a light change) opens nothing,
    and so would an e-bike whose person is never detected (the fallback's price)."""
    for what in ("person", "ebike"):
        scene = lift_scenes.scene(what, 0)
        scene.frames = [(image, []) for image, _ in scene.frames]
        assert play(scene) == []


# --------------------------------------------------------------------------- real footage

def test_bicycle_in_the_car_opens_and_a_person_alone_does_not(footage, tmp_path):
    """scenarios/lift_ebike_car.toml through the real agent: a person alone 8-18 s, a bicycle 24-32 s,
    watched by the COCO classes path (opens) and by the fallback on its defaults (silent: the bicycle
    comes with nobody, and the fallback takes only objects brought in by a person)."""
    result = evaluate_scenario(REPO / "scenarios" / "lift_ebike_car.toml", tmp_path)
    assert result.error is None
    assert [m.truth.zone for m in result.matching.matches] == ["car_model"]
    min_dwell_s = 1
    for match in result.matching.matches:
        assert match.detected, match.truth.zone
        assert min_dwell_s <= match.time_to_open_s <= min_dwell_s + 3, match
        assert match.time_to_clear_s is not None and match.time_to_clear_s <= 10, match
    # Nothing opened before 24 s (the person alone) nor twice.
    assert result.matching.false_positives == ()
