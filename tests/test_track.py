"""The tracker: association and the stationary state on synthetic boxes (pure logic, time driven
by the test at 2 frames a second), and one run of the bundled detector over real vtest footage."""

from __future__ import annotations

import av
import numpy as np
from hypothesis import given, settings, strategies as st

from agent.detect import load_detector
from agent.track import Tracker, TrackerParams, Tracks, box_iou
from agent.types import Detections
from tests.helpers import NANODET_MANIFEST

NAMES = ("person", "bicycle", "car", "motorcycle", "truck")
PERSON, BICYCLE, CAR, MOTORCYCLE, TRUCK = range(5)
STEP = 0.5  # 2 analysed frames a second, as the agent samples


def dets(*boxes, cls=PERSON, score=0.9) -> Detections:
    if not boxes:
        return Detections.empty(NAMES)
    classes = cls if isinstance(cls, (list, tuple)) else [cls] * len(boxes)
    scores = score if isinstance(score, (list, tuple)) else [score] * len(boxes)
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32),
                      np.array(classes, np.int32), NAMES)


def box_at(x, y, w=30, h=60):
    return (x, y, x + w, y + h)


def run(tracker, frames) -> list[Tracks]:
    """frames: [detections], one per STEP seconds from ts 0."""
    return [tracker.update(i * STEP, d) for i, d in enumerate(frames)]


def test_ids_are_stable_across_frames():
    walkers = [dets(box_at(100 + 12 * i, 100), box_at(400 - 12 * i, 300)) for i in range(20)]
    out = run(Tracker(), walkers)
    assert [t.ids.tolist() for t in out] == [[1, 2]] * 20
    # Each id stays with its own walker: the first goes right, the second left.
    assert out[-1].xyxy[0, 0] == 100 + 12 * 19 and out[-1].xyxy[1, 0] == 400 - 12 * 19


def test_id_survives_a_missed_frame():
    frames = [dets(box_at(100 + 15 * i, 100)) for i in range(10)]
    frames[5] = dets()
    out = run(Tracker(), frames)
    assert len(out[5]) == 0, "a lost track is not reported"
    assert {int(i) for t in out for i in t.ids} == {1}


def test_lost_track_is_dropped_after_lost_s_and_the_object_comes_back_new():
    params = TrackerParams(lost_s=2.0)
    frames = [dets(box_at(100, 100))] * 2 + [dets()] * 5 + [dets(box_at(100, 100))]
    tracker = Tracker(params)
    out = run(tracker, frames)
    assert len(tracker) == 1 and out[-1].ids.tolist() == [2]
    frames = [dets(box_at(100, 100))] * 2 + [dets()] * 4 + [dets(box_at(100, 100))]  # 2.0 s gap
    assert run(Tracker(params), frames)[-1].ids.tolist() == [1]


def test_stationary_after_stationary_after_s():
    params = TrackerParams(stationary_after_s=5.0)
    out = run(Tracker(params), [dets(box_at(200, 200))] * 14)
    since = np.array([t.stationary_since[0] for t in out])
    assert np.isnan(since[:10]).all()  # up to ts 4.5
    assert (since[10:] == 0.0).all()  # from ts 5.0, dating back to the first sighting
    assert out[10].stationary_for(5.0).tolist() == [5.0]
    assert out[3].stationary_for(1.5).tolist() == [0.0]


def test_jitter_of_3_px_does_not_break_stationary():
    rng = np.random.default_rng(7)
    frames = [dets(tuple(np.array(box_at(200, 200)) + rng.integers(-3, 4, 4))) for _ in range(240)]
    out = run(Tracker(), frames)  # 2 minutes
    assert {int(i) for t in out for i in t.ids} == {1}
    since = np.array([t.stationary_since[0] for t in out])
    assert (since[10:] == 0.0).all(), "stationary from 5 s on, never restarted"


def test_a_one_frame_jump_is_absorbed_by_the_hysteresis():
    """A box flicker (20 px for one frame) keeps the object stationary; without the moving timer
    it would restart it: the test has teeth."""
    frames = [dets(box_at(200, 200))] * 20 + [dets(box_at(220, 200))] + [dets(box_at(200, 200))] * 20
    since = [t.stationary_since[0] for t in run(Tracker(), frames)]
    assert since[-1] == 0.0 and not np.isnan(since[20:]).any()
    no_hysteresis = run(Tracker(TrackerParams(moving_after_s=0.0)), frames)
    assert np.isnan(no_hysteresis[20].stationary_since[0])
    assert no_hysteresis[-1].stationary_since[0] == 10.5, "restarted: stillness counted anew"


def test_a_real_move_ends_stationary_after_moving_after_s():
    params = TrackerParams(stationary_after_s=5.0, moving_after_s=2.0)
    frames = [dets(box_at(200, 200))] * 20  # still until ts 9.5
    frames += [dets(box_at(200 + 10 * i, 200)) for i in range(1, 21)]  # walks off at 10 px a frame
    out = run(Tracker(params), frames)
    moving = [bool(np.isnan(t.stationary_since[0])) for t in out]
    # First beyond the 6 px tolerance at ts 10.0; moving from ts 12.0 = 10.0 + moving_after_s.
    assert moving.index(False) == 10
    assert not any(moving[10:24]) and all(moving[24:])
    assert {int(i) for t in out for i in t.ids} == {1}


def test_crossing_objects_keep_their_ids():
    # Two people walking towards each other on overlapping lanes, 16 px a frame each.
    a = [box_at(100 + 16 * i, 100) for i in range(20)]
    b = [box_at(404 - 16 * i, 120) for i in range(20)]
    out = run(Tracker(), [dets(pa, pb) for pa, pb in zip(a, b)])
    # The crossing is real: at some frame each box overlaps the other's previous box more than
    # match_iou, so matching to the wrong one was possible.
    cross = max(box_iou(np.array([a[i - 1]], float), np.array([b[i]], float))[0, 0] for i in range(1, 20))
    assert cross > TrackerParams().match_iou
    for t, pa in zip(out, a):
        assert t.ids.tolist() == [1, 2]
        assert t.xyxy[0].tolist() == list(pa)


def test_class_groups_continue_tracks_and_other_classes_do_not():
    frames = [dets(box_at(100, 100, 80, 50), box_at(300, 100), cls=[CAR, BICYCLE]),
              dets(box_at(104, 100, 80, 50), box_at(302, 100), cls=[TRUCK, MOTORCYCLE]),
              dets(box_at(108, 100, 80, 50), box_at(304, 100), cls=[CAR, PERSON])]
    out = run(Tracker(), frames)
    assert out[1].ids.tolist() == [1, 2] and out[1].class_id.tolist() == [TRUCK, MOTORCYCLE]
    assert out[2].ids.tolist() == [1, 3], "a person does not continue a motorcycle's track"


def test_low_score_detections_continue_tracks_but_start_none():
    frames = [dets(box_at(100, 100), score=0.9)] + [dets(box_at(100, 100), score=0.3)] * 3
    frames += [dets(box_at(400, 400), score=0.3)]
    out = run(Tracker(), frames)
    assert [t.ids.tolist() for t in out] == [[1], [1], [1], [1], []]
    assert len(run(Tracker(), [dets(box_at(1, 1), score=0.1)])[0]) == 0, "below low_score: ignored"


def test_bikes_seen_again_and_again_at_low_scores_start_a_track_once_confirmed():
    """A small parked bike scored 0.35-0.5 every frame: a tentative track, reported from its third
    hit; a one-off low-score bike and a low-score person start nothing."""
    frames = [dets(box_at(100, 100, 60, 40), cls=BICYCLE, score=0.4)] * 4
    out = run(Tracker(), frames)
    assert [t.ids.tolist() for t in out] == [[], [], [1], [1]]
    once = run(Tracker(), [dets(box_at(100, 100, 60, 40), cls=BICYCLE, score=0.4)] + [dets()] * 6
               + [dets(box_at(100, 100, 60, 40), cls=BICYCLE, score=0.4)] * 2)
    assert all(len(t) == 0 for t in once), "lost before its third hit: never reported"
    assert all(len(t) == 0 for t in run(Tracker(), [dets(box_at(100, 100), score=0.4)] * 4))


def test_ids_are_per_instance_and_reset_restarts_them():
    first, second = Tracker(first_id=100), Tracker()
    assert run(first, [dets(box_at(0, 0))])[0].ids.tolist() == [100]
    assert run(second, [dets(box_at(0, 0))])[0].ids.tolist() == [1]
    first.reset()
    assert len(first) == 0
    assert first.update(0.0, dets(box_at(50, 50))).ids.tolist() == [100]


def test_stationary_tracks_are_held_longer_when_hidden():
    params = TrackerParams(lost_s=2.0, lost_stationary_s=10.0, stationary_after_s=5.0)
    parked = box_at(300, 300, 120, 60)
    frames = [dets(parked)] * 12 + [dets()] * 16 + [dets(parked)]  # hidden 8 s by a bus
    out = run(Tracker(params), frames)
    assert out[-1].ids.tolist() == [1] and out[-1].stationary_since.tolist() == [0.0]


def test_state_stays_bounded_under_churn():
    """1000 frames of objects that never match (a busy, flickering scene): tracks are dropped
    after lost_s, so the state is bounded by the detections of the last lost_s seconds."""
    rng = np.random.default_rng(3)
    params = TrackerParams(lost_s=2.0)
    tracker = Tracker(params)
    bound = 8 * (params.lost_s / STEP + 2)
    sizes = []
    for i in range(1000):
        xy = rng.uniform(0, 2000, (8, 2))
        tracker.update(i * STEP, dets(*[box_at(x, y, 20, 20) for x, y in xy]))
        sizes.append(len(tracker))
    assert max(sizes) <= bound
    assert sizes[-1] >= 8 * params.lost_s / STEP, "lost tracks are kept for lost_s"


boxes = st.tuples(st.integers(0, 600), st.integers(0, 400), st.integers(10, 80), st.integers(10, 80))
frame = st.lists(st.tuples(boxes, st.sampled_from(range(len(NAMES))), st.floats(0, 1)), max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(frame, min_size=1, max_size=30))
def test_any_detections_give_unique_ids_and_bounded_state(frames):
    tracker = Tracker(TrackerParams(lost_s=1.0))
    for i, rows in enumerate(frames):
        d = dets(*[box_at(*b) for b, _, _ in rows], cls=[c for _, c, _ in rows],
                 score=[s for _, _, s in rows]) if rows else dets()
        out = tracker.update(i * STEP, d)
        assert len(set(out.ids.tolist())) == len(out) <= len(d)
        assert len(tracker) <= 6 * (1.0 / STEP + 1)
        assert out.as_detections().xyxy.shape == (len(out), 4)


# --------------------------------------------------------------------------- real footage


def test_people_in_vtest_keep_their_ids(footage):
    """The bundled detector and the tracker over the first 30 s of vtest at 2 fps.

    Measured here: 24 person ids in the 60 samples, median track length 12.5 samples, 2 ids seen
    only once. The three people of the first frame kept their ids for 32, 6 and 11 samples: the
    last two swapped in a three-way crossing near the lamp post at 2.5-3 s, where the boxes
    overlap and one score drops to 0.5. Without the buffered IoU (match_buffer=0) the same run
    gives 105 ids and a median of 1: at 2 fps walkers near the camera move a body width.
    """
    detector = load_detector(NANODET_MANIFEST, threads=2, min_score=0.35)
    tracker = Tracker()
    lengths: dict[int, int] = {}
    first_ids: list[int] = []
    with av.open(str(footage["vtest.avi"])) as container:
        for index, picture in enumerate(container.decode(video=0)):
            if index >= 300:
                break
            if index % 5:  # 10 fps -> 2 fps
                continue
            found = detector.detect(picture.to_ndarray(format="bgr24"))
            tracks = tracker.update(index / 10, found)
            people = tracks[tracks.as_detections().of_classes({"person"})]
            for i in people.ids.tolist():
                lengths[i] = lengths.get(i, 0) + 1
            if index == 0:
                first_ids = people.ids.tolist()
    assert len(first_ids) >= 3
    assert np.median(list(lengths.values())) >= 4, lengths
    assert len(lengths) <= 30, f"{len(lengths)} person ids: tracks keep breaking"
    assert max(lengths[i] for i in first_ids) >= 25, {i: lengths[i] for i in first_ids}
