"""Tracks: the detections associated across frames, with stationary state (agent/track.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.analysers import register_analyser
from agent.track import Tracker, Tracks
from agent.types import Detections, Frame, Need
from agent.zones import Zone

if TYPE_CHECKING:
    from agent.config import CameraConfig


@register_analyser(Need.TRACKS)
class TrackAnalyser:
    """Over the whole picture, whichever zones asked: a track is followed in and out of them."""

    def __init__(self, camera: CameraConfig, zones: list[Zone]):
        self.tracker = Tracker(camera.tracker)

    def update(self, frame: Frame, detections: Detections) -> Tracks:
        return self.tracker.update(frame.ts, detections)
