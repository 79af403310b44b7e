"""``replay --annotate out.mp4``: the analysed frames as the rules saw them, for people.

Each frame shows the zones (scaled to the picture, as the rules use them), every detection with
its class and score, the scene model's static objects, and per zone its rule's state ("candidate
2.5 s / 3 s", or why the zone is not watched). H.264 in MP4 through PyAV, as clips are
(agent/clips.py), at the analysis rate: one video frame per analysed frame.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.stream import VideoStream

from agent.evidence import ZONE_COLOUR, annotate_detections
from agent.track import Tracks
from agent.types import Need, Observation

BLOB_COLOUR = (255, 255, 0)  # BGR cyan: static objects, apart from the detector's red boxes
TRACK_COLOUR = (255, 160, 40)  # BGR light blue: track ids under their boxes
PRESET = "veryfast"


def zone_states(pipeline) -> dict[str, str]:
    """Per zone, its rule's state after the last analysed frame ("object_dwell: candidate 2.5 s /
    3 s"), or why the zone is not watched."""
    return {zr.config.zone.id: pipeline.accounts[(zr.config.zone.id, zr.config.rule_type)].state()
            if zr.inactive is None else f"{zr.config.rule_type}: {zr.inactive}" for zr in pipeline.zone_rules}


def annotate_frame(obs: Observation, pipeline) -> np.ndarray:
    """``obs`` as the rules of ``pipeline`` (a CameraPipeline) saw it: zones, detections, track
    ids, static objects and the part of the picture the scene model watches, each zone's state.
    Also the calibration page's live preview (agent/preview.py)."""
    zone_rules = pipeline.zone_rules
    picture = annotate_detections(obs.image, [zr.config.zone for zr in zone_rules], obs.detections)
    if isinstance(obs.tracks, Tracks):
        for track_id, (x0, _, _, y1) in zip(obs.tracks.ids, obs.tracks.xyxy.astype(int)):
            cv2.putText(picture, f"#{track_id}", (x0, y1 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TRACK_COLOUR, 1,
                        cv2.LINE_AA)
    blobs = pipeline.analysers.get(Need.STATIC_BLOBS)
    region = blobs.region if blobs is not None else None
    if region is not None:
        cv2.rectangle(picture, region[:2], region[2:], BLOB_COLOUR, 1, cv2.LINE_4)
    for blob in obs.static_blobs:
        x0, y0, x1, y1 = blob.xyxy.astype(int)
        cv2.rectangle(picture, (x0, y0), (x1, y1), BLOB_COLOUR, 1)
        cv2.putText(picture, f"static {obs.ts - blob.static_since:.0f} s", (x0, max(12, y0 - 3)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, BLOB_COLOUR, 1, cv2.LINE_AA)
    states = zone_states(pipeline)
    for zr in zone_rules:
        x, y, _, _ = zr.config.zone.bounds()
        cv2.putText(picture, states[zr.config.zone.id], (x + 4, y + 38), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    ZONE_COLOUR, 1, cv2.LINE_AA)
    return picture


class AnnotatedVideo:
    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self._out = av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"})
        self._stream: VideoStream | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, obs: Observation, pipeline) -> None:
        """One analysed frame with what ``pipeline`` (a CameraPipeline) knows about it."""
        self._encode(annotate_frame(obs, pipeline))

    def _encode(self, picture: np.ndarray) -> None:
        height, width = picture.shape[:2]
        if self._stream is None:
            # yuv420p needs even sides; a picture-size change later is drawn into the first size.
            self._size = (width - width % 2, height - height % 2)
            self._stream = self._out.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000),
                                                options={"preset": PRESET})
            self._stream.width, self._stream.height = self._size
            self._stream.pix_fmt = "yuv420p"
        if (width, height) != self._size:
            picture = cv2.resize(picture, self._size)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="bgr24")
        frame.pts = self.frames
        self.frames += 1
        for packet in self._stream.encode(frame):
            self._out.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
        self._out.close()
