"""The lift_ebike rule: the classes path and the local action on synthetic detections, the
fallback's empty-car reference on a real vtest frame with objects drawn in, and
scenarios/lift_ebike_car.toml (both paths) through the real agent on real pixels."""

from __future__ import annotations

import logging
import sys
import time

import av
import cv2
import numpy as np
import pytest

from agent.rules.lift_ebike import LiftEbikeRule, Params
from agent.types import Detections, EventKind, Observation
from agent.zones import Zone
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
    return [(ts, e.kind) for ts, d, image in frames for e in rule.update(obs(ts, d, image))]


def times(start, stop):
    return [i * STEP for i in range(round(start / STEP), round(stop / STEP))]


def model(**kw) -> Params:
    return Params(**({"classes": ("ebike",)} | kw))


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


def test_alarm_fact_is_on_while_open_and_off_on_the_clear():
    rule = LiftEbikeRule(CAR, model(min_dwell_s=0, alarm_topic="lift/1/alarm"))
    (opened,) = rule.update(obs(0.0, dets((EBIKE_IN_CAR, EBIKE))))
    assert opened.facts == {"detected_by": "model", "alarm": True} and opened.label == "ebike"
    (cleared,) = rule.update(obs(3.0))
    assert cleared.kind is EventKind.CLEARED and cleared.facts == {"alarm": False}
    np.testing.assert_allclose(cleared.boxes, [EBIKE_IN_CAR])
    quiet = LiftEbikeRule(CAR, model(min_dwell_s=0))
    assert "alarm" not in quiet.update(obs(0.0, dets((EBIKE_IN_CAR, EBIKE))))[0].facts


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
        (opened,) = missing.update(obs(0.0, dets((EBIKE_IN_CAR, EBIKE))))
        assert opened.kind is EventKind.OPENED
        failing.update(obs(0.0, dets((EBIKE_IN_CAR, EBIKE))))
        assert _wait_for(lambda: failing._process.poll() is not None)
        failing.update(obs(0.5))
    failures = [r for r in caplog.records if r.getMessage() == "lift_command_failed"]
    assert [r.fields.get("exit_code") for r in failures] == [None, 3]
    assert "FileNotFoundError" in failures[0].fields["error"]


@pytest.mark.parametrize("kw, message", [
    ({}, "give classes"),
    ({"fallback": True, "learn_after_s": 10, "relearn_after_s": 5}, "relearn_after_s"),
    ({"classes": ("ebike",), "empty_reference": REPO / "README.md"}, "only with fallback"),
    ({"fallback": True, "empty_reference": REPO / "no-such.jpg"}, "not found"),
])
def test_params_validate(kw, message):
    with pytest.raises(ValueError, match=message):
        Params(**kw)


# --------------------------------------------------------------------------- fallback

@pytest.fixture(scope="module")
def lawn(footage) -> np.ndarray:
    """vtest's first frame: the lower-left lawn is the car floor, nobody on it."""
    with av.open(str(footage["vtest.mp4"])) as container:
        return next(container.decode(video=0)).to_ndarray(format="bgr24")


def noisy(picture, seed, gain=1.0):
    """The picture as a camera gives it frame after frame: fresh sensor noise (std 2)."""
    noise = np.random.default_rng(seed).normal(0, 2, picture.shape)
    return np.clip(picture * gain + noise, 0, 255).astype(np.uint8)


def with_box(picture, box, colour=(40, 40, 170)):
    out = picture.copy()
    cv2.rectangle(out, box[:2], box[2:], colour, -1)
    return out


def fallback(**kw) -> Params:
    return Params(**({"fallback": True, "learn_after_s": 3, "relearn_after_s": 30} | kw))


def frames(picture, start, stop, detections=None):
    return [(ts, detections, noisy(picture, round(ts * 2))) for ts in times(start, stop)]


def test_fallback_learns_the_empty_car_then_finds_a_large_object(lawn):
    rule = LiftEbikeRule(CAR, fallback())
    # 160 x 120 px of the 320 x 156 zone: 38%.
    events = run(rule, frames(lawn, 0, 5) + frames(with_box(lawn, EBIKE_IN_CAR), 5, 10) + frames(lawn, 10, 15))
    assert events == [(6.0, EventKind.OPENED), (12.5, EventKind.CLEARED)]


def test_fallback_ignores_small_objects_and_people(lawn):
    rule = LiftEbikeRule(CAR, fallback())
    small = with_box(lawn, (100, 500, 140, 540))  # 40 x 40: 3% of the zone
    person = dets((PERSON_IN_CAR, PERSON))
    person_pixels = with_box(lawn, (160, 420, 200, 560))  # inside the person's box
    assert run(rule, frames(lawn, 0, 5) + frames(small, 5, 10) + frames(person_pixels, 10, 15, person)) == []
    # Had the detector missed that person, the same pixels would be an object.
    assert rule.update(obs(15.0, dets(), noisy(person_pixels, 99))) == []
    assert rule.present(obs(15.0, dets(), noisy(person_pixels, 99))) is not None


def test_fallback_compensates_auto_exposure(lawn):
    rule = LiftEbikeRule(CAR, fallback())
    brighter = noisy(lawn, 1, gain=1.3)
    x0, y0, x1, y1 = 40, 420, 360, 576
    raw = np.abs(brighter[y0:y1, x0:x1].astype(int) - lawn[y0:y1, x0:x1]).max(axis=2)
    assert (raw > 30).mean() > 0.12, "uncompensated, the whole car would differ"
    assert run(rule, frames(lawn, 0, 5) + [(ts, None, noisy(lawn, round(ts * 2), 1.3)) for ts in times(5, 10)]) == []


def test_fallback_never_learns_while_a_person_is_in_the_car(lawn):
    rule = LiftEbikeRule(CAR, fallback())
    person = dets((PERSON_IN_CAR, PERSON))
    # A person stands there with an e-bike from the start: no empty car yet, nothing to compare.
    events = run(rule, frames(with_box(lawn, EBIKE_IN_CAR), 0, 10, person))
    # The person leaves with the e-bike; the empty car is learned 3 s later; the e-bike comes back.
    events += run(rule, frames(lawn, 10, 15) + frames(with_box(lawn, EBIKE_IN_CAR), 15, 18))
    assert events == [(16.0, EventKind.OPENED)]


def test_fallback_relearns_what_stays_still_and_person_free(lawn):
    """A poster put up in the car (or a light changed) is foreground until relearn_after_s."""
    rule = LiftEbikeRule(CAR, fallback(relearn_after_s=20, clear_after_s=3))
    events = run(rule, frames(lawn, 0, 5) + frames(with_box(lawn, EBIKE_IN_CAR), 5, 40))
    # Opened at 6 s; still from 5.5 s, so learned as the empty car at 25.5 s; cleared 3 s later.
    assert events == [(6.0, EventKind.OPENED), (28.5, EventKind.CLEARED)]


def test_fallback_uses_a_given_empty_reference_from_the_first_frame(lawn, tmp_path):
    reference = tmp_path / "empty.png"
    cv2.imwrite(str(reference), lawn)
    rule = LiftEbikeRule(CAR, fallback(empty_reference=reference))
    (opened,) = [e for ts, _, image in frames(with_box(lawn, EBIKE_IN_CAR), 0, 2)
                 for e in rule.update(obs(ts, None, image))]
    assert opened.ts == 1.0 and opened.label == "large_object"
    assert opened.facts["detected_by"] == "foreground" and opened.facts["foreground_fraction"] > 0.3
    x1, y1, x2, y2 = opened.boxes[0]
    assert abs(x1 - 120) <= 4 and abs(y1 - 440) <= 4 and abs(x2 - 280) <= 4 and abs(y2 - 560) <= 4


# --------------------------------------------------------------------------- real footage

def test_bicycle_in_the_car_opens_and_a_person_alone_does_not(footage, tmp_path):
    """scenarios/lift_ebike_car.toml through the real agent: a person alone 8-18 s, a bicycle 24-32 s,
    watched by the COCO classes path and by the fallback."""
    result = evaluate_scenario(REPO / "scenarios" / "lift_ebike_car.toml", tmp_path)
    assert result.error is None
    assert [m.truth.zone for m in result.matching.matches] == ["car_model", "car_fallback"]
    min_dwell_s = 1
    for match in result.matching.matches:
        assert match.detected, match.truth.zone
        assert min_dwell_s <= match.time_to_open_s <= min_dwell_s + 3, match
        assert match.time_to_clear_s is not None and match.time_to_clear_s <= 10, match
    # Nothing opened before 24 s (the person alone) nor twice.
    assert result.matching.false_positives == ()
