"""Multi-object tracking by box overlap (ByteTrack-style), with a stationary state per track.

Association per frame, as ByteTrack does it but greedy instead of Hungarian: detections at or
above ``high_score`` are matched first, to every held track, by IoU between the track's predicted
box and the detection, best pair first; detections between ``low_score`` and ``high_score`` then
get a second chance with the tracks still unmatched, so a person half hidden behind a lamp post
(whose score drops) keeps its id instead of losing it and starting a new one. Greedy by
descending IoU gives the same pairs as the Hungarian method whenever boxes are clearly separable,
which is the only case where either can be trusted; it needs no scipy and is what most edge
trackers ship. Only detections of the same class, or of one class group (``{car, truck, bus}``:
the detector flips a van between car and truck from frame to frame), can continue a track.

At 2 analysed frames a second a pedestrian near the camera moves up to a body width between
frames, so the previous box often does not overlap the next one at all. Two things bridge that:
a constant-velocity prediction of the box centre (the first measured velocity taken whole, later
ones smoothed; no Kalman filter: frames 0.5 s apart with time passed in as a value need nothing
more), and buffered IoU (C-BIoU): both boxes grown by ``match_buffer`` of their size before the
overlap is taken, which is what lets a new track, whose velocity is not known yet, be matched.

Unmatched tracks are kept for ``lost_s`` (``lost_stationary_s`` for stationary ones: a parked car
hidden by a passing bus is still there, exactly where it was) and then dropped, so the state is
bounded by the detections of the last few seconds, whatever runs for months. New tracks start
from unmatched high-score detections, and for ``tentative_classes`` (bikes) also from unmatched
low-score ones, as *tentative* tracks that are reported only once matched in ``confirm_hits``
frames: a small parked bike that NanoDet-g scores 0.35-0.5 in frame after frame would otherwise
never get a track, while a one-off low-score box dies unreported after ``lost_s`` (SORT's
``min_hits``, applied to the low-score starts only).

**Stationary state** with hysteresis: a track becomes stationary when its box centre stayed within
a tolerance of an anchor point for ``stationary_after_s``, and stops being stationary only after
its centre has been farther than that from the anchor for ``moving_after_s`` without a break.
Box jitter and lighting flicker move a detector's box by a few pixels for a frame or two; without
the second timer each wobble would end the stationary object and start it again with a fresh
clock, the failure Frigate users know as "stationary objects restarting".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.typedtoml import setting
from agent.types import Detections


@dataclass(frozen=True)
class TrackerParams:
    high_score: float = setting(0.5, ge=0, le=1)
    """Detections at or above this are matched first and may start tracks."""
    low_score: float = setting(0.2, ge=0, le=1)
    """Detections below this are ignored; between the two they can only continue a track."""
    match_iou: float = setting(0.2, gt=0, le=1)
    """Least IoU between a predicted box and a high-score detection to continue the track; low,
    because 2 fps sampling moves people a long way between frames (ByteTrack's first stage uses
    0.2 too)."""
    match_buffer: float = setting(0.5, ge=0, le=5)
    """Boxes are grown by this fraction of their size on every side before the IoU is taken
    (buffered IoU, C-BIoU): a new track has no velocity yet, and a pedestrian near the camera moves
    a whole body width in 0.5 s, so unbuffered boxes would not overlap at all. On vtest at 2 fps,
    0.5 gave 24 person ids in the first 30 s where 0.3 gave 32 and no buffer 105."""
    low_match_iou: float = setting(0.4, gt=0, le=1)
    """Least IoU for a low-score detection; stricter, since low scores include false boxes."""
    lost_s: float = setting(2.0, gt=0)
    """A moving track unmatched for longer than this is dropped."""
    lost_stationary_s: float = setting(10.0, gt=0)
    """A stationary track unmatched for longer than this is dropped; longer than ``lost_s``
    because a stationary object is usually only hidden, and its box is known exactly."""
    velocity_smoothing: float = setting(0.5, gt=0, le=1)
    """Weight of the newest velocity measurement (0..1]; lower is steadier but slower to turn."""
    stationary_px: float = setting(6.0, ge=0)
    """Least tolerance, in pixels, for a box centre to count as not moving."""
    stationary_frac: float = setting(0.15, ge=0, le=1)
    """Tolerance as a fraction of the box's smaller side, used when it is larger than
    ``stationary_px``: a car filling a quarter of the picture jitters by more pixels than a
    pedestrian far away."""
    stationary_after_s: float = setting(5.0, ge=0)
    """Seconds within the tolerance before a track is stationary."""
    moving_after_s: float = setting(2.0, ge=0)
    """Seconds continuously beyond the tolerance before a stationary track moves again."""
    tentative_classes: tuple[str, ...] = ("bicycle", "motorcycle")
    """Classes whose low-score detections may start tentative tracks: small parked bikes are
    scored 0.35-0.5 by the bundled model, too low to start a track, every frame for minutes."""
    confirm_hits: int = setting(3, ge=1, le=1000)
    """Frames a tentative track must be matched in before it is reported (1: at once)."""
    class_groups: tuple[frozenset[str], ...] = (
        frozenset({"bicycle", "motorcycle"}),
        frozenset({"car", "truck", "bus"}),
    )
    """Classes that may continue each other's tracks; any other class matches only itself."""

    def __post_init__(self):
        # Single bounds are the fields' own (checked at load); these depend on another key.
        if self.low_score > self.high_score:
            raise ValueError(f"low_score: must be <= high_score ({self.high_score:g}), got {self.low_score:g}")
        if self.lost_stationary_s < self.lost_s:
            raise ValueError(f"lost_stationary_s: must be >= lost_s ({self.lost_s:g}), got {self.lost_stationary_s:g}")


@dataclass(frozen=True)
class Tracks:
    """Tracks seen in one frame, as parallel arrays like :class:`Detections`.

    ``stationary_since`` is when the object stopped moving (NaN while it moves); it is set only
    once the object has been still for ``stationary_after_s``, and then dates back to the start
    of the stillness, so ``stationary_for(ts)`` is at least ``stationary_after_s`` from the start.
    """

    ids: np.ndarray  # (N,) int64
    xyxy: np.ndarray  # (N, 4) float32, this frame's detection boxes
    score: np.ndarray  # (N,) float32
    class_id: np.ndarray  # (N,) int32, the latest detection's class
    first_seen: np.ndarray  # (N,) float64
    stationary_since: np.ndarray  # (N,) float64, NaN while moving
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must have shape ({n}, 4), got {self.xyxy.shape}")
        for name in ("score", "class_id", "first_seen", "stationary_since"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")

    @classmethod
    def empty(cls, class_names: tuple[str, ...] = ()) -> Tracks:
        return cls(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros(0, np.int32), np.zeros(0, np.float64), np.zeros(0, np.float64), class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, mask: np.ndarray | slice) -> Tracks:
        return Tracks(self.ids[mask], self.xyxy[mask], self.score[mask], self.class_id[mask],
                      self.first_seen[mask], self.stationary_since[mask], self.class_names)

    def stationary_for(self, ts: float) -> np.ndarray:
        """Seconds each track has been stationary at ``ts``; 0 for moving tracks."""
        since = np.where(np.isnan(self.stationary_since), ts, self.stationary_since)
        return ts - since

    def as_detections(self) -> Detections:
        """The boxes as :class:`Detections`, for zone tests and class filters."""
        return Detections(self.xyxy, self.score, self.class_id, self.class_names)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of (N, 4) and (M, 4) xyxy boxes."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def buffered(xyxy: np.ndarray, buffer: float) -> np.ndarray:
    """Boxes grown by ``buffer`` times their width and height on every side (C-BIoU)."""
    size = xyxy[:, 2:] - xyxy[:, :2]
    return np.concatenate([xyxy[:, :2] - buffer * size, xyxy[:, 2:] + buffer * size], axis=1)


def greedy_match(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """(row, column) pairs, best IoU first, each row and column used once, all >= ``min_iou``."""
    rows, cols = np.nonzero(iou >= min_iou)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_rows, used_cols, pairs = set(), set(), []
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return pairs


class _Track:
    """One object's state; mutated only by :class:`Tracker`."""

    __slots__ = ("anchor", "anchor_since", "box", "class_id", "first_seen", "group", "hits", "id", "last_seen",
                 "moving_since", "score", "stationary_since", "velocity")

    def __init__(self, track_id: int, ts: float, box: np.ndarray, score: float, class_id: int,
                 group: int | str, hits: int):
        self.id = track_id
        self.box = box.astype(np.float64)
        self.velocity = np.full(2, np.nan)  # of the box centre, px/s; unknown until seen twice
        self.score, self.class_id, self.group = score, class_id, group
        self.first_seen = self.last_seen = ts
        self.anchor, self.anchor_since = _centre(self.box), ts
        self.stationary_since = self.moving_since = float("nan")
        self.hits = hits  # frames matched; a tentative track is reported from confirm_hits on

    @property
    def stationary(self) -> bool:
        return not np.isnan(self.stationary_since)

    def predict(self, ts: float) -> np.ndarray:
        # A stationary object is not extrapolated: its velocity is jitter.
        if self.stationary:
            return self.box
        shift = np.nan_to_num(self.velocity) * (ts - self.last_seen)
        return self.box + np.concatenate([shift, shift])

    def observe(self, ts: float, box: np.ndarray, score: float, class_id: int, p: TrackerParams):
        centre, dt = _centre(box), ts - self.last_seen
        if dt > 0:
            measured = (centre - _centre(self.box)) / dt
            # The first measurement is taken whole: smoothing it towards zero would lag a walker
            # by a frame, which at 2 fps is enough to swap two people walking side by side.
            self.velocity = measured if np.isnan(self.velocity).any() else (
                self.velocity + p.velocity_smoothing * (measured - self.velocity))
        self.box, self.score, self.class_id, self.last_seen = box.astype(np.float64), score, class_id, ts
        self.hits += 1

        tolerance = max(p.stationary_px, p.stationary_frac * float(min(box[2] - box[0], box[3] - box[1])))
        away = float(np.hypot(*(centre - self.anchor))) > tolerance
        if not self.stationary:
            if away:
                self.anchor, self.anchor_since = centre, ts
            elif ts - self.anchor_since >= p.stationary_after_s:
                self.stationary_since = self.anchor_since
        elif not away:
            self.moving_since = float("nan")
        else:
            if np.isnan(self.moving_since):
                self.moving_since = ts
            if ts - self.moving_since >= p.moving_after_s:
                self.stationary_since = self.moving_since = float("nan")
                self.anchor, self.anchor_since = centre, ts
                self.velocity = np.full(2, np.nan)  # the stillness left no usable velocity


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float64)


class Tracker:
    """Associates each frame's detections with the tracks held; one instance per camera.

    ``first_id`` is the first id handed out; ids count up per instance (no shared counter), so two
    cameras' trackers are independent and a test's ids are predictable.
    """

    def __init__(self, params: TrackerParams = TrackerParams(), first_id: int = 1):
        self.params, self.first_id = params, first_id
        self.reset()

    def reset(self) -> None:
        """Forget every track; ids start again from ``first_id``."""
        self._tracks: dict[int, _Track] = {}
        self._next_id = self.first_id

    def __len__(self) -> int:
        """Tracks held, lost ones included: the whole state that grows with the scene."""
        return len(self._tracks)

    def update(self, ts: float, detections: Detections) -> Tracks:
        """Feed one frame's detections; return the tracks matched or started in it."""
        p = self.params
        detections = detections[detections.score >= p.low_score]
        groups = self._group_keys(detections)
        held = list(self._tracks.values())

        predicted = np.array([t.predict(ts) for t in held], np.float64).reshape(-1, 4)
        iou = box_iou(buffered(predicted, p.match_buffer),
                      buffered(detections.xyxy.astype(np.float64), p.match_buffer))
        iou[np.array([t.group for t in held], dtype=object)[:, None] != groups[None, :]] = 0.0

        high = np.flatnonzero(detections.score >= p.high_score)
        low = np.flatnonzero(detections.score < p.high_score)
        matched: dict[int, int] = {}  # track index -> detection index
        for r, c in greedy_match(iou[:, high], p.match_iou):
            matched[r] = int(high[c])
        unmatched = np.array([r for r in range(len(held)) if r not in matched], np.int64)
        for r, c in greedy_match(iou[unmatched][:, low], p.low_match_iou):
            matched[int(unmatched[r])] = int(low[c])

        for r, d in matched.items():
            held[r].observe(ts, detections.xyxy[d], float(detections.score[d]),
                            int(detections.class_id[d]), p)
        for r, track in enumerate(held):
            if r not in matched:
                limit = p.lost_stationary_s if track.stationary else p.lost_s
                if ts - track.last_seen > limit:
                    del self._tracks[track.id]
        used = set(matched.values())
        tentative = detections.of_classes(frozenset(p.tentative_classes))
        for d in range(len(detections)):
            if d not in used and (detections.score[d] >= p.high_score or tentative[d]):
                # A high-score start counts as confirmed at once, as it always has.
                hits = p.confirm_hits if detections.score[d] >= p.high_score else 1
                track = _Track(self._next_id, ts, detections.xyxy[d], float(detections.score[d]),
                               int(detections.class_id[d]), groups[d], hits)
                self._tracks[track.id] = track
                self._next_id += 1

        seen = [t for t in self._tracks.values() if t.last_seen == ts and t.hits >= p.confirm_hits]
        if not seen:
            return Tracks.empty(detections.class_names)
        return Tracks(
            ids=np.array([t.id for t in seen], np.int64),
            xyxy=np.array([t.box for t in seen], np.float32),
            score=np.array([t.score for t in seen], np.float32),
            class_id=np.array([t.class_id for t in seen], np.int32),
            first_seen=np.array([t.first_seen for t in seen], np.float64),
            stationary_since=np.array([t.stationary_since for t in seen], np.float64),
            class_names=detections.class_names,
        )

    def _group_keys(self, detections: Detections) -> np.ndarray:
        """Per detection, a key equal for classes that may continue each other's tracks."""
        group_of = {name: g for g, group in enumerate(self.params.class_groups) for name in group}
        return np.array([group_of.get(name, name) for name in detections.names()], dtype=object)
