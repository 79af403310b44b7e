"""An e-bike taken into a lift car (电动车进电梯): a local warning at once, and a ticket.

E-bike batteries catch fire in lifts and homes; buildings warn in the car the moment one is pushed
in, so this rule acts locally instead of waiting for the platform. The zone is the car's floor as
the car camera sees it. Something counts as an e-bike in the car when either path sees it:

- **classes** (default ``["ebike"]``): detections of ``classes`` of an operator's own model with
  their box bottom centre in the zone. A name the camera's model lacks simply never matches, so the
  default is harmless on the bundled COCO model, which has no e-bike; ``["bicycle", "motorcycle"]``
  can stand in, but COCO was taken from the street at eye level: from a lift's ceiling corner an
  e-bike is mostly seat and handlebars from above, which COCO models rarely call anything.
- **fallback** (default on): a large, long, still non-person object that came in with a person.
  The rule keeps a picture of the empty car (``empty_reference``, or learned: the first frame with
  no person in the car is taken at once, because a lift clip may show the empty car only before
  the doors open; later, ``learn_after_s`` of a still, person-free, clear car relearns it, and
  ``relearn_after_s`` even with foreground). Foreground is where the picture differs from it by
  ``diff_level`` (after a per-channel exposure gain) inside the zone, minus every person box grown
  by ``person_margin`` and held ``person_hold_s`` after the detector last saw it (fisheye views
  make detectors miss people in some frames). The object is the largest non-person part (parts
  split by a person are joined through them); it must cover ``min_fraction`` (5%) of the zone,
  be first seen while a person is in the car (e-bikes are pushed in: a door, a light change or a
  person the detector never sees has nobody with it), be ``min_length`` (0.75) of the zone's long
  side long (an e-bike of 1.6-1.8 m in a 1.4 x 1.6 m car spans it; a pram of 0.8-1 m is about
  0.5-0.6, a suitcase under 0.45) in its longest view while it stands still (a person beside it
  hides part of it), and stand still (box IoU >= 0.6 frame to frame). Once it came, it counts
  without the person (the person steps out, the doors close on it).
  Limits: a person the detector never finds disables the fallback for what they bring; a person
  missed for more than ``person_hold_s`` who walks and then stands still is an object; anything
  long enough counts (a ladder, a long box, a wheelchair with a footrest); the lengths assume the
  zone is the car floor as seen, and a ceiling fisheye lengthens tall things near the camera; the
  exposure gain assumes the object covers well under half of the visible floor; tested on
  side-view cut-outs turned in the picture's plane, not on real lift footage.

Present for ``min_dwell_s`` (a gap of up to ``max_gap_s`` allowed) opens the ticket and, once per
ticket, does the local action: the event's facts carry ``"alarm": true`` when ``alarm_topic`` is
set (``false`` on the clear), for the wiring that publishes to that MQTT topic; and ``command``
(an argv list, e.g. ``["espeak-ng", "请勿将电动车推入电梯"]``) is started with
``subprocess.Popen``: no shell, not waited for, its failure logged and never raised. A command
still running from the previous ticket is not started again, so a hanging one cannot pile up.
The ticket clears after ``clear_after_s`` with nothing present.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from agent.logs import log_event
from agent.rules import Cadence, Category, RuleOutput, register
from agent.track import box_iou
from agent.typedtoml import setting
from agent.types import Alarm, Detections, EventKind, Observation, RuleEvent
from agent.zones import Zone

log = logging.getLogger("agent.rules.lift_ebike")

WORK_WIDTH = 320  # the zone is compared at most this wide: enough for an object of 5% of a car
STILL_FRACTION = 0.01  # zone pixels allowed to change between frames for the picture to be still
PERSON_CLASS = "person"
EXPOSED = (16, 240)  # grey levels between which a value tells the exposure (not noise, not clipped)
MIN_EXPOSED = 100  # working pixels needed to estimate a channel's gain
PART_FRACTION = 0.01  # foreground parts smaller than this share of the zone are specks, not an object
STILL_IOU = 0.6  # an object's box overlapping its last box this much (IoU) has not moved


@dataclass(frozen=True)
class Params:
    classes: tuple[str, ...] = setting(
        ("ebike",), help="Detector classes that are e-bikes; names the camera's model lacks never match "
                         "(the bundled COCO model has no ebike: only the fallback works with it)")
    fallback: bool = setting(
        True, help="Also count a large, long, still non-person object that came in with a person "
                   "(class-agnostic, against the empty car)")
    min_score: float = setting(0.4, ge=0, le=1, help="Detections (e-bikes, and the people masked out) below this are ignored")
    min_dwell_s: float = setting(1.0, ge=0, help="Seconds present before the ticket opens and the action runs")
    max_gap_s: float = setting(
        1.0, ge=0, help="Before opening, a gap longer than this in the sightings restarts min_dwell_s")
    clear_after_s: float = setting(3.0, gt=0, help="Seconds with nothing present before the ticket clears")
    alarm_topic: str | None = setting(
        None, help="MQTT topic for the local alarm; the rule's facts then carry alarm = true / false")
    command: tuple[str, ...] = setting(
        (), help="Program and arguments started once per ticket, without a shell, e.g. "
                 "[\"espeak-ng\", \"请勿将电动车推入电梯\"]")
    empty_reference: Path | None = setting(
        None, help="fallback: a frame of this camera with the car empty; default: learned")
    min_fraction: float = setting(
        0.05, gt=0, le=1, help="fallback: share of the zone the object's non-person foreground must cover")
    min_length: float = setting(
        0.75, gt=0, le=3, help="fallback: the object's length (long side of its rotated box) as a share of "
                               "the zone's long side; an e-bike (1.6-1.8 m) in a 1.4 x 1.6 m car spans it, "
                               "a pram (0.8-1 m) about 0.6, a suitcase (0.4-0.7 m) under 0.45")
    diff_level: float = setting(
        30.0, gt=0, help="fallback: difference from the empty car (grey levels, largest of B, G, R) "
                         "that makes a pixel foreground")
    person_margin: float = setting(
        0.2, ge=0, help="fallback: person boxes are grown by this fraction of their size on every side "
                        "before they are masked out (arms, bags, shadows)")
    person_hold_s: float = setting(
        2.0, ge=0, help="fallback: a person box stays masked out this long after the detector last saw "
                        "it, so a person missed in a few frames is not an object")
    learn_after_s: float = setting(
        5.0, ge=0, help="fallback: seconds the zone must be still, person-free and clear before its "
                        "picture is relearned as the empty car (the first person-free frame is taken "
                        "at once)")
    relearn_after_s: float = setting(
        300.0, ge=0, help="fallback: seconds still and person-free after which even a picture with "
                          "foreground becomes the empty car (light changed, something stays)")

    def __post_init__(self):
        if not self.classes and not self.fallback:
            raise ValueError("give classes, or set fallback = true, or both")
        if self.empty_reference is not None:
            if not self.fallback:
                raise ValueError("empty_reference: only with fallback = true")
            if not self.empty_reference.is_file():
                raise ValueError(f"empty_reference: file not found: {self.empty_reference}")
        if self.relearn_after_s < self.learn_after_s:
            raise ValueError("relearn_after_s: must not be shorter than learn_after_s")


@dataclass(frozen=True)
class Foreground:
    """What the fallback sees in one frame."""

    fraction: float  # of the zone's pixels, all foreground outside people
    box: np.ndarray | None  # (4,) frame pixels around the largest object, None when there is none
    object_fraction: float = 0.0  # the largest object's non-person pixels, of the zone's
    length: float = 0.0  # the largest object's length, of the zone's long side


class EmptyCar:
    """The fallback's picture of the empty car, at working size, and the foreground against it."""

    def __init__(self, zone: Zone, params: Params, frame_shape: tuple, reference: np.ndarray | None):
        self.params = params
        self.frame_shape = frame_shape[:2]
        h, w = self.frame_shape
        x, y, bw, bh = zone.bounds()
        self.x0, self.y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + bw, w), min(y + bh, h)
        self.scale = min(1.0, WORK_WIDTH / max(x1 - self.x0, 1))
        self.size = (max(1, round((x1 - self.x0) * self.scale)), max(1, round((y1 - self.y0) * self.scale)))
        self.crop_box = (self.x0, self.y0, x1, y1)
        self.mask = np.zeros(self.size[::-1], np.uint8)
        corners = np.round((zone.polygon - [self.x0, self.y0]) * self.scale).astype(np.int32)
        cv2.fillPoly(self.mask, [corners], 1)
        self.mask = self.mask.astype(bool)
        self.zone_pixels = max(int(self.mask.sum()), 1)
        # The car floor's long side as the camera sees it: the yardstick of an object's length.
        self.zone_length = max(max(cv2.minAreaRect(corners.astype(np.float32))[1]), 1.0)
        self.reference = None if reference is None else self.picture(cv2.resize(reference, (w, h)))
        self.previous: np.ndarray | None = None
        self.quiet_since: float | None = None

    def picture(self, image: np.ndarray) -> np.ndarray:
        """The zone's bounding rectangle of ``image`` at working size, float32 BGR."""
        x0, y0, x1, y1 = self.crop_box
        return cv2.resize(image[y0:y1, x0:x1], self.size, interpolation=cv2.INTER_AREA).astype(np.float32)

    def people(self, boxes: np.ndarray) -> np.ndarray:
        """Working-size mask of the person boxes, grown by ``person_margin``."""
        covered = np.zeros(self.mask.shape, np.uint8)
        for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
            gx, gy = self.params.person_margin * (x2 - x1), self.params.person_margin * (y2 - y1)
            top_left = np.floor((np.array([x1 - gx, y1 - gy]) - [self.x0, self.y0]) * self.scale).astype(int)
            bottom_right = np.ceil((np.array([x2 + gx, y2 + gy]) - [self.x0, self.y0]) * self.scale).astype(int)
            cv2.rectangle(covered, tuple(top_left.tolist()), tuple(bottom_right.tolist()), 1, -1)
        return covered.astype(bool)

    def foreground(self, picture: np.ndarray, people: np.ndarray) -> Foreground:
        """The foreground outside people, and its largest object.

        An object is the non-person foreground of one connected part of (foreground or person
        mask): a person standing over an e-bike splits its pixels in two, and joining them through
        the person keeps the e-bike's full length. Specks and shadow slivers (parts under
        ``PART_FRACTION`` of the zone) are dropped before joining, so they cannot stretch it.
        """
        if self.reference is None:
            return Foreground(0.0, None)
        usable = self.mask & ~people
        if not usable.any():
            return Foreground(0.0, None)
        gain = _exposure_gain(self.reference[usable], picture[usable])
        found = ((_difference(picture * gain, self.reference) > self.params.diff_level)
                 & usable).astype(np.uint8)
        found = cv2.morphologyEx(found, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # sensor noise specks
        count = int(found.sum())
        if not count:
            return Foreground(0.0, None)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(found)
        big = 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= PART_FRACTION * self.zone_pixels)
        solid = np.isin(labels, big)
        if not solid.any():
            return Foreground(count / self.zone_pixels, None)
        _, joined = cv2.connectedComponents((solid | (people & self.mask)).astype(np.uint8))
        sizes = np.bincount(joined[solid])
        largest = int(np.argmax(sizes))
        pixels = solid & (joined == largest)
        ys, xs = np.nonzero(pixels)
        points = np.column_stack([xs, ys]).astype(np.float32)
        length = max(cv2.minAreaRect(points)[1]) + 1
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32) / self.scale
        return Foreground(count / self.zone_pixels, (box + [self.x0, self.y0, self.x0, self.y0]).astype(np.float32),
                          int(sizes[largest]) / self.zone_pixels, length / self.zone_length)

    def learn(self, ts: float, picture: np.ndarray, people: np.ndarray, seen: bool, fraction: float) -> bool:
        """Take ``picture`` as the empty car when the zone has been quiet long enough; True when it did.

        Quiet: no person in the zone, nothing found by the classes path (``seen``), and a still
        picture. With no empty car yet, the first quiet frame is taken at once, still or not: a
        lift camera's clip may show the empty car only in its first frame before the doors open.
        Clear of foreground, ``learn_after_s`` of quiet is enough (following slow light changes);
        with foreground, ``relearn_after_s`` is needed.
        """
        still = self.previous is not None and (
            ((_difference(picture, self.previous) > self.params.diff_level) & self.mask).sum()
            < STILL_FRACTION * self.zone_pixels)
        self.previous = picture
        if seen or (people & self.mask).any():
            self.quiet_since = None
            return False
        if self.reference is None:
            self.reference = picture
            return True
        if not still:
            self.quiet_since = None
            return False
        self.quiet_since = ts if self.quiet_since is None else self.quiet_since
        needed = self.params.learn_after_s if fraction < self.params.min_fraction else self.params.relearn_after_s
        if ts - self.quiet_since >= needed:
            self.reference = picture
            return True
        return False


def _exposure_gain(reference: np.ndarray, picture: np.ndarray) -> np.ndarray:
    """Per channel, the factor that brings ``picture`` (N, 3) to the exposure of ``reference``.

    Auto exposure scales every pixel alike, so the median of the per-pixel ratios is the floor's
    ratio while the floor is most of the zone: over an object the ratios scatter either way (the
    ratio of the two medians is not robust like that: an object covering a third of the zone
    shifts it enough to light up the rest). Only well-exposed values take part; near 0 a ratio is
    noise, near 255 clipped. A channel with too few of them (vtest's lawn has little blue) keeps 1.
    """
    gain = np.ones(3, np.float32)
    for c in range(3):
        exposed = ((reference[:, c] > EXPOSED[0]) & (reference[:, c] < EXPOSED[1])
                   & (picture[:, c] > EXPOSED[0]) & (picture[:, c] < EXPOSED[1]))
        if exposed.sum() >= MIN_EXPOSED:
            gain[c] = np.median(reference[exposed, c] / picture[exposed, c])
    return gain


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel, the largest absolute difference over the three channels."""
    d = cv2.absdiff(a, b)
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])


# 04-99 (突发事件, other) is a placeholder: cities file this under their own code, which operators
# must set (edge.toml [categories.lift_ebike]).
@register("lift_ebike", Params, Category("突发事件", "电动车进电梯", "04-99"), cadence=Cadence.LIVE)
class LiftEbikeRule:
    name: ClassVar[str]  # set by register

    def __init__(self, zone: Zone, params: Params):
        self.zone, self.params = zone, params
        self.classes = frozenset(params.classes)
        self._reference_image = None
        if params.empty_reference is not None:
            self._reference_image = cv2.imread(str(params.empty_reference), cv2.IMREAD_COLOR)
            if self._reference_image is None:
                raise ValueError(f"empty_reference: cannot read image {params.empty_reference}")
        self._process: subprocess.Popen | None = None  # the command's last run, kept to reap it
        self.reset()

    def reset(self) -> None:
        self._car: EmptyCar | None = None  # made at the first frame, whose size it needs
        self._seen_people: list[tuple[float, np.ndarray]] = []  # (ts, boxes) within person_hold_s
        self._object_box: np.ndarray | None = None  # the fallback's object, once it came with a person
        self._object_length = 0.0  # its longest view while still, of the zone's long side
        self._first_seen: float | None = None
        # Set together with _first_seen, read only while a candidate exists (_first_seen not None).
        self._last_seen = float("-inf")
        self._open = False
        self._sighting: RuleEvent | None = None  # the latest frame something was present, as an opening

    def _ebikes(self, detections: Detections) -> Detections:
        found = detections[detections.of_classes(self.classes) & (detections.score >= self.params.min_score)]
        return found[self.zone.contains(found.bottom_centres())]

    def _person_boxes(self, detections: Detections) -> np.ndarray:
        """(N, 4) boxes of the people the detector sees in this frame."""
        people = detections[detections.of_classes({PERSON_CLASS}) & (detections.score >= self.params.min_score)]
        return people.xyxy.reshape(-1, 4)

    def _people(self, obs: Observation) -> np.ndarray:
        """This frame's person boxes and those seen within ``person_hold_s`` before it."""
        held = [boxes for ts, boxes in self._seen_people if obs.ts - ts <= self.params.person_hold_s]
        return np.concatenate([self._person_boxes(obs.detections), *held])

    def _look(self, obs: Observation, car: EmptyCar | None) -> tuple[Detections, Foreground, np.ndarray | None,
                                                                     np.ndarray | None]:
        """This frame's e-bike detections, fallback foreground, zone picture and person mask."""
        ebikes = self._ebikes(obs.detections) if self.classes else Detections.empty(obs.detections.class_names)
        if car is None:
            return ebikes, Foreground(0.0, None), None, None
        picture, people = car.picture(obs.image), car.people(self._people(obs))
        return ebikes, car.foreground(picture, people), picture, people

    def _length(self, foreground: Foreground) -> float:
        """The object's length: the longest it was seen since it stood where it is now.

        A person standing beside an e-bike hides part of it behind their (grown) box, so one
        frame's view can be far shorter than the e-bike; while the object has not moved (its box
        overlaps the last one by ``STILL_IOU``) the longest view so far is its length.
        """
        if self._stands_still(foreground.box):
            return max(foreground.length, self._object_length)
        return foreground.length

    def _stands_still(self, box: np.ndarray | None) -> bool:
        """Whether ``box`` overlaps the object's last box by ``STILL_IOU``: it has not moved."""
        return box is not None and self._object_box is not None and float(
            box_iou(box[None].astype(np.float64), self._object_box[None].astype(np.float64))[0, 0]) >= STILL_IOU

    def present(self, obs: Observation) -> np.ndarray | None:
        """A look without changing any state (the platform's verify): e-bikes, or a large object."""
        ebikes, foreground, _, _ = self._look(obs, self._car)
        if len(ebikes):
            return ebikes.xyxy
        if (foreground.box is not None and foreground.object_fraction >= self.params.min_fraction
                and self._length(foreground) >= self.params.min_length):
            return foreground.box[None]
        return None

    def _fallback_sighting(self, foreground: Foreground, person_near: bool) -> bool:
        """Whether the fallback's object is there in this frame; follows the object.

        An object (non-person foreground over ``min_fraction`` of the zone) is only taken as new
        while a person is in the car: e-bikes are pushed in, while a person the detector missed
        altogether, a door or a light change has nobody with it. It counts once it is long
        (``min_length``) and stays still (its box overlaps its last one by ``STILL_IOU``), so a
        person walking about while the detector misses them, or an e-bike still being wheeled
        in, does not. Once it came, it counts without the person too (the person steps out, the
        doors close on the e-bike).
        """
        p = self.params
        if foreground.box is None or foreground.object_fraction < p.min_fraction:
            if not person_near and foreground.fraction < p.min_fraction:
                self._object_box = None  # nothing there and nothing hidden by a person: it left
            return False
        still = self._stands_still(foreground.box)
        if not still and not person_near:
            return False
        self._object_length = self._length(foreground)
        self._object_box = foreground.box
        return still and self._object_length >= p.min_length

    def dwell(self) -> float | None:
        """Seconds the current candidate has held towards ``min_dwell_s`` (None: no candidate)."""
        return None if self._first_seen is None else self._last_seen - self._first_seen

    def update(self, obs: Observation) -> RuleOutput:
        p, ts = self.params, obs.ts
        self._reap()
        if p.fallback and (self._car is None or self._car.frame_shape != obs.image.shape[:2]):
            # The first frame, or the camera's picture size changed: what was learned is void.
            self._car = EmptyCar(self.zone, p, obs.image.shape, self._reference_image)
            self._object_box = None
        ebikes, foreground, picture, people = self._look(obs, self._car)
        self._seen_people = [(t, b) for t, b in self._seen_people if ts - t <= p.person_hold_s]
        self._seen_people.append((ts, self._person_boxes(obs.detections)))
        found_object = False
        if self._car is not None:
            assert picture is not None and people is not None  # _look cuts them out whenever there is a car
            if self._car.learn(ts, picture, people, len(ebikes) > 0, foreground.fraction):
                self._object_box = None  # the new empty car is what the object was compared with
            else:
                found_object = self._fallback_sighting(foreground, bool((people & self._car.mask).any()))

        if len(ebikes) or found_object:
            # Before the ticket opens a gap restarts the dwell; once open, only clear_after_s ends it.
            if not self._open and (self._first_seen is None or ts - self._last_seen > p.max_gap_s):
                self._first_seen = ts
            self._last_seen = ts
            self._sighting = self._event(ts, ebikes, foreground)
            assert self._first_seen is not None  # set above, or when the candidate began
            if not self._open and ts - self._first_seen >= p.min_dwell_s:
                self._open = True
                self._run_command()
                alarms = [Alarm(self._sighting, p.alarm_topic)] if p.alarm_topic else []
                return RuleOutput([self._sighting], alarms=alarms)
            return RuleOutput()

        if self._open and ts - self._last_seen >= p.clear_after_s:
            assert self._sighting is not None  # the ticket opened on one
            self._open = False
            self._first_seen, self._last_seen = None, float("-inf")
            # The clear shows the last sighting; the alarm, if any, goes off.
            return RuleOutput([replace(self._sighting, kind=EventKind.CLEARED, ts=ts,
                                       facts={"alarm": False} if p.alarm_topic else {})])
        return RuleOutput()

    def _event(self, ts: float, ebikes: Detections, foreground: Foreground) -> RuleEvent:
        p = self.params
        assert self._first_seen is not None  # a sighting belongs to a candidate
        facts: dict[str, object]
        if len(ebikes):
            best = int(np.argmax(ebikes.score))
            label, confidence, boxes = ebikes.names()[best], float(ebikes.score[best]), ebikes.xyxy.copy()
            facts = {"detected_by": "model"}
        else:
            assert foreground.box is not None  # no e-bike: the fallback's object is the sighting
            label, confidence, boxes = "large_object", 0.0, foreground.box[None].copy()
            facts = {"detected_by": "foreground", "object_length": round(self._object_length, 2)}
        if p.fallback:
            facts["foreground_fraction"] = round(foreground.object_fraction, 3)
        if p.alarm_topic:
            facts["alarm"] = True
        return RuleEvent(EventKind.OPENED, self.name, self.zone.id, ts, self._first_seen, ts, label, confidence,
                         boxes, facts)

    def _run_command(self) -> None:
        """Start ``command`` without waiting; never raises (a warning must not stop the camera)."""
        if not self.params.command:
            return
        if self._process is not None:
            log_event(log, "lift_command_still_running", logging.WARNING, zone=self.zone.id,
                      pid=self._process.pid)
            return
        try:
            self._process = subprocess.Popen(list(self.params.command), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, ValueError) as exc:
            log_event(log, "lift_command_failed", logging.ERROR, zone=self.zone.id,
                      command=" ".join(self.params.command), error=f"{type(exc).__name__}: {exc}")

    def _reap(self) -> None:
        """Collect the command's exit once it has finished (no zombie), logging a failure."""
        if self._process is None or self._process.poll() is None:
            return
        if self._process.returncode != 0:
            log_event(log, "lift_command_failed", logging.WARNING, zone=self.zone.id,
                      command=" ".join(self.params.command), exit_code=self._process.returncode)
        self._process = None
