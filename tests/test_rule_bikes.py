"""The misparked_bikes rule: parking spots over synthetic tracks (pure logic, time driven by the
test), and scenarios/bikes_parked_green_belt.toml through the real agent on real pixels."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import load_config
from agent.rules import Need, rule_types
from agent.rules.misparked_bikes import MisparkedBikesRule, Mode, Params
from agent.track import Tracks
from agent.types import Detections, EventKind, Observation, StaticBlob
from agent.zones import Zone
from tests.helpers import REPO, write_edge
from tools.evaluate import evaluate_scenario

NAMES = ("person", "bicycle", "motorcycle")
PERSON, BICYCLE, MOTORCYCLE = range(3)
NAN = float("nan")
ZONE = Zone("fire_lane", np.array([[0, 100], [400, 100], [400, 200], [0, 200]], np.float32))
STEP = 0.5  # the agent analyses 2 frames a second


def bike(x, y=150, w=60, h=40):
    """A box whose bottom centre is (x + w/2, y)."""
    return (x, y - h, x + w, y)


def tracks(*rows) -> Tracks:
    """rows: (id, box, stationary_since) or (id, box, stationary_since, class_id, score)."""
    if not rows:
        return Tracks.empty(NAMES)
    full = [r if len(r) == 5 else (*r, BICYCLE, 0.8) for r in rows]
    return Tracks(ids=np.array([r[0] for r in full], np.int64),
                  xyxy=np.array([r[1] for r in full], np.float32),
                  score=np.array([r[4] for r in full], np.float32),
                  class_id=np.array([r[3] for r in full], np.int32),
                  first_seen=np.zeros(len(full)),
                  stationary_since=np.array([r[2] for r in full], np.float64),
                  class_names=NAMES)


def obs(ts, t: Tracks, detections: Detections | None = None) -> Observation:
    return Observation("cam", ts, np.zeros((1, 1, 3), np.uint8),
                       t.as_detections() if detections is None else detections, {Need.TRACKS: t})


def run(rule, frames):
    """frames: [(ts, Tracks)] -> [(ts, kind, facts)]"""
    return [(ts, e.kind, e.facts) for ts, t in frames for e in rule.update(obs(ts, t)).events]


def params(**kw):
    return Params(**({"min_dwell_s": 60, "clear_after_s": 20} | kw))


def times(start, stop):
    return [i * STEP for i in range(round(start / STEP), round(stop / STEP))]


def test_a_bike_parked_for_the_dwell_opens_once_and_clears_after_it_left():
    rule = MisparkedBikesRule(ZONE, params())
    frames = [(ts, tracks((1, bike(100), 0.0))) for ts in times(0, 100)]
    frames += [(ts, tracks()) for ts in times(100, 130)]
    # Present until 99.5 s: forgotten 20 s later.
    assert run(rule, frames) == [(60.0, EventKind.OPENED, {"count": 1}), (119.5, EventKind.CLEARED, {"count": 0})]


def test_a_new_track_id_at_the_same_place_continues_the_dwell():
    """The tracker lost the bike behind a bus and found it again as track 2, stationary afresh."""
    rule = MisparkedBikesRule(ZONE, params())
    frames = [(ts, tracks((1, bike(100), 0.0))) for ts in times(0, 40)]
    frames += [(ts, tracks()) for ts in times(40, 50)]  # hidden for 10 s
    frames += [(ts, tracks((2, bike(102, 151), 50.0))) for ts in times(50, 70)]
    assert run(rule, frames) == [(60.0, EventKind.OPENED, {"count": 1})]  # 60 s after 0, not after 50


def test_moving_bikes_and_bikes_outside_the_zone_never_count():
    rule = MisparkedBikesRule(ZONE, params(min_dwell_s=0))
    outside = bike(100, y=250)  # bottom centre below the zone
    moving = [(ts, tracks((1, bike(10 + 2 * i), NAN))) for i, ts in enumerate(times(0, 100))]
    parked_outside = [(ts, tracks((2, outside, 0.0))) for ts in times(100, 200)]
    person = [(ts, tracks((3, bike(100), 0.0, PERSON, 0.9))) for ts in times(200, 300)]
    unsure = [(ts, tracks((4, bike(100), 0.0, BICYCLE, 0.2))) for ts in times(300, 400)]
    assert run(rule, moving + parked_outside + person + unsure) == []


def test_one_bike_seen_as_bicycle_and_motorcycle_counts_once():
    rule = MisparkedBikesRule(ZONE, params(min_dwell_s=0))
    both = tracks((1, bike(100), 0.0, BICYCLE, 0.7), (2, bike(101), 0.0, MOTORCYCLE, 0.6))
    (event,) = rule.update(obs(0.0, both)).events
    assert event.facts == {"count": 1} and event.label == "bicycle" and len(event.boxes) == 1


def test_overflow_opens_above_max_count_and_updates_only_when_the_count_changes():
    rule = MisparkedBikesRule(ZONE, params(mode=Mode.OVERFLOW, max_count=2, min_dwell_s=10, clear_after_s=5))
    a, b, c, d = (1, bike(0), 0.0), (2, bike(100), 0.0), (3, bike(200), 20.0), (4, bike(300), 30.0)
    frames = [(ts, tracks(a, b)) for ts in times(0, 20)]  # two parked: within the limit
    frames += [(ts, tracks(a, b, c)) for ts in times(20, 30)]  # a third, parked from 30 s
    # A fourth from 40 s; the detector misses bike c in every other frame: no update for that.
    frames += [(ts, tracks(a, b, c, d) if i % 2 else tracks(a, b, d)) for i, ts in enumerate(times(30, 60))]
    frames += [(ts, tracks(a, b, c)) for ts in times(60, 70)]  # d taken away at 60 s
    frames += [(ts, tracks(a, b)) for ts in times(70, 80)]  # c taken away at 70 s
    assert run(rule, frames) == [
        # c's dwell ends at 30 s, when the detector misses it: it counts when seen again, 30.5 s.
        (30.5, EventKind.OPENED, {"count": 3, "max_count": 2}),
        (40.0, EventKind.UPDATED, {"count": 4, "max_count": 2}),
        (64.5, EventKind.UPDATED, {"count": 3, "max_count": 2}),
        (74.5, EventKind.CLEARED, {"count": 2, "max_count": 2}),
    ]


def test_events_carry_the_parked_boxes_and_when_the_bike_stopped():
    rule = MisparkedBikesRule(ZONE, params(min_dwell_s=5))
    assert rule.update(obs(7.5, tracks((1, bike(100), 3.0)))).events == ()
    (opened,) = rule.update(obs(8.0, tracks((1, bike(100), 3.0, MOTORCYCLE, 0.66)))).events
    assert (opened.first_seen, opened.last_seen, opened.label) == (3.0, 8.0, "motorcycle")
    assert opened.confidence == pytest.approx(0.66)
    np.testing.assert_allclose(opened.boxes, [bike(100)])
    assert rule.update(obs(27.5, tracks())).events == ()
    (cleared,) = rule.update(obs(28.0, tracks())).events
    np.testing.assert_allclose(cleared.boxes, [bike(100)])  # the last ones reported


def test_present_looks_at_the_detections_now():
    no_parking = MisparkedBikesRule(ZONE, params())
    overflow = MisparkedBikesRule(ZONE, params(mode=Mode.OVERFLOW, max_count=1))
    one, two = tracks((1, bike(100), NAN)), tracks((1, bike(100), NAN), (2, bike(250), NAN))
    assert no_parking.present(obs(0, one)) is not None  # no dwell, moving or not
    assert overflow.present(obs(0, one)) is None and overflow.present(obs(0, two)).shape == (2, 4)
    assert no_parking.present(obs(0, tracks())) is None


def test_reset_forgets_the_spots():
    rule = MisparkedBikesRule(ZONE, params(min_dwell_s=10))
    rule.update(obs(0.0, tracks((1, bike(100), 0.0))))
    rule.reset()
    assert rule.update(obs(12.0, tracks((1, bike(100), 11.0)))).events == ()


def blob_obs(ts, blobs, people=()):
    """A frame where the detector sees only ``people`` (boxes) and the scene model ``blobs``
    (box, static_since)."""
    found = Detections(xyxy=np.array(people, np.float32).reshape(-1, 4), score=np.full(len(people), 0.9, np.float32),
                       class_id=np.full(len(people), PERSON, np.int32), class_names=NAMES)
    still = tuple(StaticBlob(i + 1, np.array(box, np.float32), 400.0, since, since) for i, (box, since) in enumerate(blobs))
    return Observation("cam", ts, np.zeros((240, 480, 3), np.uint8), found,
                       {Need.TRACKS: Tracks.empty(NAMES), Need.STATIC_BLOBS: still})


# A bike the detector never finds, as the scene model sees it: two wheels and a bit of frame.
WHEELS = [((100, 122, 128, 150), 5.0), ((140, 122, 168, 150), 5.0), ((118, 110, 150, 124), 6.0)]


def test_fallback_counts_a_bike_sized_still_object_the_detector_never_finds():
    rule = MisparkedBikesRule(ZONE, params(min_dwell_s=10))
    events = [e for ts in times(6, 30) for e in rule.update(blob_obs(ts, WHEELS)).events]
    assert [e.kind for e in events] == [EventKind.OPENED]
    opened = events[0]
    # The wheels and frame are one object, as old as its youngest part (6.0 s): open at 16 s.
    assert opened.ts == 16.0 and opened.first_seen == 6.0 and opened.label == "bike_sized_object"
    assert opened.boxes.tolist() == [[100, 110, 168, 150]] and opened.confidence < 0.35
    assert rule.present(blob_obs(30, WHEELS)) is not None


@pytest.mark.parametrize("case", ["fallback off", "litter-sized", "under a person", "a person stood there"])
def test_fallback_ignores_small_objects_people_and_what_they_covered(case):
    p = params(min_dwell_s=10, fallback=case != "fallback off")
    rule = MisparkedBikesRule(ZONE, p)
    litter = [((200, 140, 212, 150), 5.0)]
    person = [(95, 60, 175, 152)]
    frames = {"fallback off": [blob_obs(ts, WHEELS) for ts in times(6, 30)],
              "litter-sized": [blob_obs(ts, litter) for ts in times(6, 30)],
              "under a person": [blob_obs(ts, WHEELS, person) for ts in times(6, 30)],
              # Stood there 6-20 s, missed by the detector from 20 s on in every other frame.
              "a person stood there": [blob_obs(ts, WHEELS, person if ts < 20 or int(ts * 2) % 2 else ())
                                       for ts in times(6, 30)]}[case]
    assert [e for o in frames for e in rule.update(o).events] == []


@pytest.mark.parametrize("standing", [True, False])
def test_a_bike_hidden_behind_someone_standing_still_is_not_cleared(standing):
    rule = MisparkedBikesRule(ZONE, params(min_dwell_s=10, clear_after_s=5))
    parked = tracks((1, bike(100), 0.0))
    assert [e.kind for ts in times(0, 12) for e in rule.update(obs(ts, parked)).events] == [EventKind.OPENED]
    # From 12 s a person stands in front of it (a stationary track), or walks about there.
    person = tracks((2, (95, 90, 170, 155), 12.0 if standing else NAN, PERSON, 0.9))
    kinds = [e.kind for ts in times(12, 40) for e in rule.update(obs(ts, person)).events]
    assert kinds == ([] if standing else [EventKind.CLEARED])


def test_a_detection_on_a_fallback_spot_names_it():
    rule = MisparkedBikesRule(ZONE, params(min_dwell_s=10))
    for ts in times(6, 12):
        rule.update(blob_obs(ts, WHEELS))
    seen = tracks((7, (100, 110, 168, 150), 11.0, BICYCLE, 0.6))
    o = blob_obs(12, WHEELS)
    events = [e for ts in times(12, 20)
              for e in rule.update(Observation("cam", ts, o.image, seen.as_detections(),
                                               {Need.TRACKS: seen, Need.STATIC_BLOBS: o.static_blobs})).events]
    assert [(e.kind, e.label, e.first_seen) for e in events] == [(EventKind.OPENED, "bicycle", 6.0)]


@pytest.mark.parametrize("kw, message", [
    ({"mode": Mode.OVERFLOW}, "max_count"),
    ({"max_count": 3}, "only for mode"),
    ({"classes": ()}, "classes"),
])
def test_params_validate(kw, message):
    with pytest.raises(ValueError, match=message):
        Params(**kw)


def test_registered_with_tracks_and_zone_crops_and_loaded_from_camera_config(tmp_path):
    assert rule_types()["misparked_bikes"].needs == frozenset({Need.TRACKS, Need.SMALL_OBJECTS, Need.STATIC_BLOBS})
    camera = tmp_path / "cam.toml"
    camera.write_text("""\
id = "cam"
url = "x.mp4"
[location]
lat = 31.2
lon = 121.4
grid_code = "310101001001"
[zones.racks.rule]
type = "misparked_bikes"
mode = "overflow"
max_count = 12
min_dwell_s = 60
[zones.racks]
polygon = [[0, 0], [10, 0], [10, 10]]
""")
    (zone,) = load_config(write_edge(tmp_path, [camera])).camera("cam").zones
    assert zone.params == Params(mode=Mode.OVERFLOW, max_count=12, min_dwell_s=60)
    assert zone.category.minor == "非机动车乱停放"


# --------------------------------------------------------------------------- real footage

def test_parked_bike_opens_and_clears_and_a_pushed_bike_does_not(footage, tmp_path):
    """scenarios/bikes_parked_green_belt.toml through the real agent (NanoDet-g, tracker, rule)."""
    result = evaluate_scenario(REPO / "scenarios" / "bikes_parked_green_belt.toml", tmp_path)
    assert result.error is None
    parked, witness = result.matching.matches
    assert parked.truth.zone == "green_belt" and parked.detected
    min_dwell_s = 10
    assert min_dwell_s <= parked.time_to_open_s <= min_dwell_s + 3
    assert parked.time_to_clear_s is not None and 0 <= parked.time_to_clear_s <= 10
    # The pushed bike was seen in its zone for longer than the dwell (plain occupancy opened) ...
    assert witness.truth.zone == "blind_lane_witness" and witness.detected
    # ... and misparked_bikes opened nothing there, nor anything else anywhere.
    assert result.matching.false_positives == ()
