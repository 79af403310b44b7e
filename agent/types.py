"""Plain records that cross module borders.

Detections follow supervision's shape: one dataclass of parallel numpy arrays, validated on
construction, indexable by a boolean mask so zone tests and filters compose with ``&``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:  # agent.track imports this module
    from agent.track import Tracks


def bottom_centres(xyxy: np.ndarray) -> np.ndarray:
    """(N, 2) points where the (N, 4) boxes touch the ground: Frigate's zone anchor."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    return np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, xyxy[:, 3]], axis=1)


@dataclass(frozen=True)
class Frame:
    """One decoded picture of one camera.

    ``ts`` is seconds since the Unix epoch on the agent's clock for live streams, and the file's
    start time plus the frame's presentation time for replayed files, so replays run faster than
    real time while every dwell timer still sees media time.
    """

    camera: str
    ts: float
    image: np.ndarray  # H x W x 3, uint8, BGR


@dataclass(frozen=True)
class Detections:
    """Boxes of one frame: ``xyxy`` in pixels of the frame, with score and class per row."""

    xyxy: np.ndarray  # (N, 4) float32
    score: np.ndarray  # (N,) float32
    class_id: np.ndarray  # (N,) int32
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (N, 4), got {self.xyxy.shape}")
        if self.score.shape != (n,) or self.class_id.shape != (n,):
            raise ValueError(
                f"score and class_id must have shape ({n},), got {self.score.shape} and {self.class_id.shape}"
            )

    @classmethod
    def empty(cls, class_names: tuple[str, ...] = ()) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), class_names
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, mask: np.ndarray | slice) -> Detections:
        return Detections(self.xyxy[mask], self.score[mask], self.class_id[mask], self.class_names)

    def names(self) -> list[str]:
        return [self.class_names[i] if 0 <= i < len(self.class_names) else str(i) for i in self.class_id]

    def of_classes(self, names: Collection[str]) -> np.ndarray:
        """Boolean mask of rows whose class name is in ``names``."""
        wanted = np.array([n in names for n in self.class_names] + [False], dtype=bool)
        ids = np.where((self.class_id >= 0) & (self.class_id < len(self.class_names)), self.class_id, -1)
        return wanted[ids]

    def bottom_centres(self) -> np.ndarray:
        """(N, 2) points where an object touches the ground: Frigate's zone anchor."""
        return bottom_centres(self.xyxy)


# COCO classes that move by themselves or are moved through a scene: the scene model masks them out
# (it must neither report them nor learn them into its background) and the class-agnostic rules
# ignore static blobs under them.
MOVER_CLASSES = ("bicycle", "bus", "car", "dog", "motorcycle", "person", "truck")


class EventKind(str, Enum):
    """What a rule says about its zone. Reopening, closing and rejecting are the ticket book's."""

    OPENED = "opened"
    UPDATED = "updated"  # a material change while open (count, level): never a per-frame echo
    CLEARED = "cleared"


@dataclass(frozen=True)
class RuleEvent:
    """What a rule says about its zone; the ticket book turns it into a ticket message."""

    kind: EventKind
    rule: str
    zone: str
    ts: float
    first_seen: float
    last_seen: float
    label: str  # what was seen, e.g. "person"
    confidence: float
    boxes: np.ndarray  # (N, 4) the boxes that support the event
    facts: dict = field(default_factory=dict)  # rule-specific numbers, e.g. {"count": 3}


@dataclass(frozen=True)
class StaticBlob:
    """A class-agnostic new object that has stayed still: found against a learned background.

    ``id`` is stable while the blob persists; ``first_seen`` is when it became foreground.
    """

    id: int
    xyxy: np.ndarray  # (4,) float32, frame pixels
    area_px: float  # foreground pixels inside the box, at frame resolution
    first_seen: float
    static_since: float  # when it stopped changing

    def static_for(self, ts: float) -> float:
        return ts - self.static_since


class Need(str, Enum):
    """Work the pipeline does for a camera only when one of its rules needs it. TRACKS and
    STATIC_BLOBS are the built-in analysers (agent/analysers/), named like any other analyser: a
    rule may name a plug-in analyser's name as a need too."""

    TRACKS = "tracks"
    STATIC_BLOBS = "static_blobs"
    # The rule's objects are often too small for the full-frame pass (a parked bike 50 px tall in
    # a 1280x720 view): the detector also runs on crops around its zone (agent/tiling.py).
    SMALL_OBJECTS = "small_objects"


@dataclass(frozen=True)
class Observation:
    """Everything the agent knows about one analysed frame; what rules are fed.

    ``inputs`` holds, by analyser name, what the camera's analysers made of the frame: only the
    analysers some rule of the camera needs run. ``tracks`` and ``static_blobs`` read the two
    built-in ones.
    """

    camera: str
    ts: float
    image: np.ndarray
    detections: Detections
    inputs: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def tracks(self) -> Tracks | None:
        """None when no rule of the camera needs tracks."""
        return cast("Tracks | None", self.inputs.get(Need.TRACKS))

    @property
    def static_blobs(self) -> tuple[StaticBlob, ...]:
        return cast("tuple[StaticBlob, ...]", self.inputs.get(Need.STATIC_BLOBS, ()))


@dataclass(frozen=True)
class Alarm:
    """A local alarm (a lift's speaker, a barrier) on ``topic``, raised when ``event``'s ticket
    opens or reopens; the ticket book may decline the event, and then nothing rings."""

    event: RuleEvent
    topic: str


@dataclass(frozen=True)
class RuleOutput:
    """What a rule makes of one frame.

    ``events`` go to the ticket book. ``pictures`` are extra evidence for this frame's opened and
    updated events, by kind, the frame's size (the crowd rule's heat map). ``telemetry`` is the
    rule's current numbers, of which the pipeline sends one every ``telemetry_interval_s``; None:
    the rule has none. ``alarms`` name events of ``events``.
    """

    events: Sequence[RuleEvent] = ()  # kept as a tuple
    pictures: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))
    telemetry: Mapping[str, object] | None = None
    alarms: Sequence[Alarm] = ()  # kept as a tuple

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self.events))
        object.__setattr__(self, "alarms", tuple(self.alarms))
        stray = [a for a in self.alarms if not any(a.event is e for e in self.events)]
        if stray:
            raise ValueError(f"alarm on {stray[0].topic!r} names an event that is not among the output's events")

    def alarm_topic(self, event: RuleEvent) -> str | None:
        """The topic ``event`` raises a local alarm on, if any."""
        return next((a.topic for a in self.alarms if a.event is event), None)
