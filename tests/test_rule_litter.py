"""The litter rule: pure logic on synthetic static blobs and detections (time driven by the test),
then two scenarios through the real agent on composites built from real pixels by
tools/scenario_kit.py: vtest's own plastic (GrabCut) dropped on its lawn, and a man from darknet's
person.jpg standing on the same lawn, which must not be litter."""

from __future__ import annotations

import numpy as np
import pytest

from agent.rules.litter import LitterRule, Params
from agent.types import Detections, EventKind, Need, Observation, StaticBlob
from agent.zones import Zone
from tests.helpers import REPO
from tools.evaluate import evaluate_scenario
from tools.scenario_kit import load_recipe

NAMES = ("person", "car", "bottle")
PERSON, CAR, BOTTLE = 0, 1, 2
IMAGE = np.zeros((576, 768, 3), np.uint8)
ZONE = Zone("lawn", np.array([[0, 300], [400, 300], [400, 576], [0, 576]], np.float32))
CAN = (100, 400, 140, 430)  # bottom centre (120, 430): on the lawn
STEP = 0.5


def blob(xyxy=CAN, static_since=0.0, area=1000.0, blob_id=1, first_seen=None) -> StaticBlob:
    first_seen = static_since if first_seen is None else first_seen
    return StaticBlob(blob_id, np.array(xyxy, np.float32), area, first_seen, static_since)


def detections(*boxes, cls=PERSON) -> Detections:
    if not boxes:
        return Detections.empty(NAMES)
    return Detections(np.array(boxes, np.float32), np.full(len(boxes), 0.8, np.float32),
                      np.full(len(boxes), cls, np.int32), NAMES)


def obs(ts, blobs=(), found=None) -> Observation:
    return Observation("cam", ts, IMAGE, detections() if found is None else found, {Need.STATIC_BLOBS: tuple(blobs)})


def params(**kw) -> Params:
    return Params(**({"min_dwell_s": 10.0, "clear_after_s": 5.0} | kw))


def run(rule, scene, start=0.0, end=40.0):
    """Feed frames every STEP from ``start`` to before ``end``; ``scene(ts) -> (blobs, found)``.
    Returns [(ts, kind, count)]."""
    events = []
    for ts in np.arange(start, end, STEP):
        blobs, found = scene(float(ts))
        events += [(e.ts, e.kind, e.facts["count"]) for e in rule.update(obs(float(ts), blobs, found)).events]
    return events


# --------------------------------------------------------------------------- dwell and clear

def test_dwell_counts_from_when_the_object_came_to_rest_not_from_its_first_report():
    # The scene model reports the can from 7.5 s, after its own min_static_s; it lay still from 2.
    rule = LitterRule(ZONE, params())
    events = []
    for ts in np.arange(0, 30, STEP):
        shown = [blob(static_since=2.0, first_seen=1.5)] if 7.5 <= ts < 20 else []
        events += rule.update(obs(float(ts), shown)).events
    opened, cleared = events
    assert (opened.kind, opened.ts, opened.first_seen, opened.facts) == (EventKind.OPENED, 12.0, 1.5, {"count": 1})
    # Gone from 20 s: cleared clear_after_s later, reporting where the litter was.
    assert (cleared.kind, cleared.ts, cleared.facts) == (EventKind.CLEARED, 25.0, {"count": 0})
    assert cleared.boxes.tolist() == [list(CAN)] and cleared.last_seen == 19.5
    assert opened.label == "litter" and 0 <= opened.confidence <= 1


def test_dwell_is_not_dated_back_beyond_the_start_of_watching():
    # Lying there since 0, but the zone is watched only from 100 s (start, schedule or mute end).
    rule = LitterRule(ZONE, params())
    assert run(rule, lambda ts: ([blob(static_since=0.0)], None), 100, 115) == [(110.0, EventKind.OPENED, 1)]
    rule.reset()
    assert run(rule, lambda ts: ([blob(static_since=0.0)], None), 200, 209.5) == []


def test_the_anchor_is_the_bottom_centre_and_the_area_must_be_within_bounds():
    above = (100, 250, 140, 290)  # in the picture above the zone: bottom centre y 290
    reaching_in = (100, 280, 140, 320)  # top above the zone, bottom centre inside
    for box, area, opens in [(above, 1000, False), (reaching_in, 1000, True),
                             (CAN, 10, False), (CAN, 60000, False), (CAN, 16, True)]:
        rule = LitterRule(ZONE, params())
        assert bool(run(rule, lambda ts, box=box, area=area: ([blob(box, area=area)], None),
                        0, 12)) is opens, (box, area)


def test_area_bounds_in_square_metres_need_px_per_m2():
    # 2000 px per m2: 0.5 m2 is 1000 px.
    p = params(px_per_m2=2000.0, min_area_m2=0.5, max_area_m2=2.0)
    assert p.area_range_px == (1000.0, 4000.0)
    for area, opens in [(800, False), (1200, True), (5000, False)]:
        rule = LitterRule(ZONE, p)
        assert bool(run(rule, lambda ts, area=area: ([blob(area=area)], None), 0, 12)) is opens, area
    with pytest.raises(ValueError, match="px_per_m2"):
        params(min_area_m2=0.5)
    with pytest.raises(ValueError, match="smallest area"):
        params(min_area_px=5000, max_area_px=1000)


# --------------------------------------------------------------------------- people and vehicles

PERSON_OVER_CAN = (90, 300, 150, 435)


def test_a_blob_under_a_person_or_a_vehicle_is_not_litter():
    for cls in (PERSON, CAR):
        rule = LitterRule(ZONE, params())
        assert run(rule, lambda ts, cls=cls: ([blob()], detections(PERSON_OVER_CAN, cls=cls))) == []
    # A bottle is not a mover: its box over the blob changes nothing.
    rule = LitterRule(ZONE, params())
    assert run(rule, lambda ts: ([blob()], detections(CAN, cls=BOTTLE)), 0, 12) == [(10.0, EventKind.OPENED, 1)]


def test_a_person_standing_still_whom_the_detector_misses_now_and_then_is_not_litter():
    """The scene model freezes its counters under a box, so such a person becomes a blob, present
    in every frame, that no current box covers in the frames where the detector missed them."""
    def standing(ts):
        missed = round(ts / STEP) % 10 == 9
        return [blob(PERSON_OVER_CAN, area=6000)], None if missed else detections(PERSON_OVER_CAN)

    assert run(LitterRule(ZONE, params()), standing) == []
    # Without the memory of where people were, the first missed frame after the dwell opens one.
    forgetful = LitterRule(ZONE, params(mover_memory_s=0.01))
    assert run(forgetful, standing)[:1] == [(14.5, EventKind.OPENED, 1)]


def test_a_blob_that_stands_is_not_litter_whatever_the_detector_saw():
    """A man the detector never saw, standing still (a 43 x 135 px blob on the harder set), against
    a bag lying there and a thin speck too small for its shape to mean anything."""
    man, bag, speck = (100, 295, 143, 430), (100, 410, 130, 430), (100, 422, 103, 430)
    for box, opens in [(man, False), (bag, True), (speck, True)]:
        rule = LitterRule(ZONE, params())
        assert bool(run(rule, lambda ts, box=box: ([blob(box, area=500)], None), 0, 12)) is opens, box
    rule = LitterRule(ZONE, params(max_upright_ratio=0))
    assert run(rule, lambda ts: ([blob(man, area=5000)], None), 0, 12) == [(10.0, EventKind.OPENED, 1)]


def test_a_passer_by_hides_the_litter_for_a_moment_but_does_not_restart_its_dwell():
    def scene(ts):
        return [blob(static_since=0.0)], detections(PERSON_OVER_CAN) if 9.0 <= ts < 10.5 else None

    # Hidden at 10.0, the dwell's end: opens on the first frame the can is seen again.
    assert run(LitterRule(ZONE, params()), scene, 0, 20) == [(10.5, EventKind.OPENED, 1)]


def test_someone_standing_beside_open_litter_does_not_clear_it_and_taking_it_away_does():
    def scene(ts):
        blobs = [blob()] if ts < 50 else []  # taken away at 50 s
        return blobs, detections(PERSON_OVER_CAN) if 20 <= ts < 50 else None

    assert run(LitterRule(ZONE, params()), scene, 0, 60) == [(10.0, EventKind.OPENED, 1),
                                                             (55.0, EventKind.CLEARED, 0)]


# --------------------------------------------------------------------------- updates and present

def test_updates_come_only_when_a_new_count_has_held_for_clear_after_s():
    second = (200, 450, 240, 480)

    def scene(ts):
        blobs = [blob()]
        if 20 <= ts < 40:
            blobs.append(blob(second, static_since=20.0, blob_id=2))
        if 45 <= ts < 60 and round(ts / STEP) % 2:  # a blob that splits off every other frame
            blobs.append(blob(second, static_since=45.0, blob_id=3))
        return blobs, None

    assert run(LitterRule(ZONE, params()), scene, 0, 60) == [
        (10.0, EventKind.OPENED, 1), (25.0, EventKind.UPDATED, 2), (45.0, EventKind.UPDATED, 1)]


def test_present_shows_the_litter_now_without_dwell_and_none_when_a_person_hides_it():
    rule = LitterRule(ZONE, params())
    assert rule.present(obs(0.0, [blob(static_since=0.0)])).tolist() == [list(CAN)]
    assert rule.present(obs(0.0, [blob()], detections(PERSON_OVER_CAN))) is None
    assert rule.present(obs(0.0)) is None


# --------------------------------------------------------------------------- real footage

def test_plastic_dropped_on_the_lawn_opens_a_ticket_on_time_and_clears_when_taken_away(footage, tmp_path):
    """scenarios/litter_lawn.toml through the real agent: vtest's plastic, cut out with GrabCut,
    lies on the lawn 10-35 s; one ticket, opened within min_dwell_s + 3 s, cleared within
    clear_after_s + 1 s of the end, nothing else. The plastic lying in the zone from the first frame
    is background: any ticket for it would be a false positive."""
    recipe = load_recipe(REPO / "scenarios" / "litter_lawn.toml")
    lawn = Zone("lawn", np.array(recipe.camera["zones"]["lawn"]["polygon"], np.float32))
    old_plastic = np.array([[115, 525]], np.float32)  # bottom centre of x 70-160, y 495-525 in frame 0
    assert lawn.contains(old_plastic).all(), "the old plastic must be in the zone for this to test it"
    rule = recipe.camera["zones"]["lawn"]["rule"]

    result = evaluate_scenario(recipe.path, tmp_path)
    assert result.error is None
    (match,) = result.matching.matches
    assert match.detected
    # Measured: opened at 20.5 s (the plastic came to rest at 10.5 s), cleared at 40 s.
    assert 0 <= match.time_to_open_s <= rule["min_dwell_s"] + 3
    assert match.time_to_clear_s is not None and 0 <= match.time_to_clear_s <= rule["clear_after_s"] + 1
    assert result.matching.false_positives == ()


def test_a_person_standing_on_the_lawn_is_not_litter(footage, tmp_path):
    """scenarios/litter_person_still.toml: a man stands on the lawn for 30 s, three times the dwell;
    the detector finds him, the scene model masks him, and no ticket opens."""
    result = evaluate_scenario(REPO / "scenarios" / "litter_person_still.toml", tmp_path)
    assert result.error is None
    assert result.matching.matches == () and result.matching.false_positives == ()
