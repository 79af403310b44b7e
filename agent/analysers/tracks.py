"""Tracks: the detections associated across frames, with stationary state (agent/track.py)."""

from __future__ import annotations

from agent.analysers import register_analyser
from agent.track import Tracker, Tracks
from agent.types import Detections, Frame, Need


@register_analyser(Need.TRACKS)
class TrackAnalyser:
    def __init__(self, camera, zones):
        self.tracker = Tracker(camera.tracker)

    def update(self, frame: Frame, detections: Detections) -> Tracks:
        return self.tracker.update(frame.ts, detections)
