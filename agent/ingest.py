"""Reading cameras: RTSP streams and video files, sampled at the analysis cadence.

Why PyAV and not cv2.VideoCapture or an ffmpeg pipe: measured on this kind of box, PyAV decodes
in-process for ~10% of a core per 1080p25 stream (an ffmpeg subprocess piping BGR costs ~22%),
returns from a frozen stream after ~2x its read timeout (cv2 ~3x, ffmpeg pipe ~4x, and with no
timeout each blocks for minutes), hands us the compressed packets (clips can be cut from them
without re-encoding) and can decode keyframes only. Frames that are not analysed are decoded (the
codec needs them) but never converted to BGR, which is the larger cost.

A camera whose rules are all STATIC (agent/rules: litter, bikes, shop fronts, crowds) and whose
keyframes come often enough for its ``analysis_fps`` decodes keyframes only (``skip_frame =
NONKEY``): measured here on a 1080p25 GOP 50 RTSP stream, ~2% of a core to receive and decode
(0.6% of it the demuxing alone) instead of 12-16%. A GOP too long for the cadence asked falls
back to decoding every frame and dropping, so the cadence holds.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field

import av

from agent.backoff import Backoff
from agent.clips import PacketRing, packet_ts
from agent.clock import Clock
from agent.config import CameraConfig, DecodeMode
from agent.health import CameraHealth
from agent.logs import log_event
from agent.redact import redact
from agent.rules import Cadence
from agent.threads import name_native_thread
from agent.types import Frame

log = logging.getLogger("agent.ingest")

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
# Keyframes up to 1.25 analysis periods apart are enough: a camera asked for 0.5 fps then gets at
# least 0.4, four fifths of its rate; a longer GOP sends the decoder back to every frame.
GOP_TOLERANCE = 1.25


class StreamEnded(Exception):
    """A file reached its end and the camera does not loop."""


@dataclass
class Sampler:
    """Picks frames at ``fps`` by media time: the first frame, then one per period."""

    fps: float
    next_due: float | None = None
    # How early a frame may come and still be taken: keyframes of a live stream drift by a few
    # milliseconds, and one 1.98 s after the last must not wait for the next at 3.98 s.
    slack_s: float = 0.0

    def take(self, media_time: float) -> bool:
        if self.next_due is not None and media_time < self.next_due - self.slack_s:
            return False
        period = 1.0 / self.fps
        # After a stall, do not try to catch up with a burst of frames.
        self.next_due = media_time + period if self.next_due is None or media_time - self.next_due > period \
            else self.next_due + period
        return True


@dataclass
class DecodePlan:
    """Whether the decoder skips the frames between keyframes. Decided at each keyframe from the
    keyframe intervals seen so far: switching mid-GOP would decode P-frames without their
    references."""

    mode: DecodeMode
    period_s: float  # the analysis period asked
    live: bool  # the camera's rules are LIVE: every frame, always (in AUTO)
    keyframes_only: bool = False
    _last_key: float | None = None
    _gaps: deque = field(default_factory=lambda: deque(maxlen=3))

    def at_keyframe(self, media_time: float) -> bool:
        """Note a keyframe at ``media_time``; True when the decoder should skip non-keyframes
        from this keyframe on. AUTO decodes everything until two GOPs have been measured."""
        if self._last_key is not None and media_time > self._last_key:
            self._gaps.append(media_time - self._last_key)
        self._last_key = media_time
        if self.mode is DecodeMode.AUTO:
            self.keyframes_only = (not self.live and len(self._gaps) >= 2
                                   and max(self._gaps) <= self.period_s * GOP_TOLERANCE)
        else:
            self.keyframes_only = self.mode is DecodeMode.KEYFRAMES
        return self.keyframes_only

    @property
    def keyframe_interval_s(self) -> float | None:
        return max(self._gaps) if self._gaps else None


class CameraReader:
    """Opens one camera and yields its sampled frames until the stream fails or ends."""

    def __init__(self, camera: CameraConfig, clock: Clock, health: CameraHealth, ring: PacketRing | None = None,
                 realtime: bool | None = None):
        self.camera, self.clock, self.health, self.ring = camera, clock, health, ring
        self.realtime = camera.realtime if realtime is None else realtime

    def _open(self) -> av.container.InputContainer:
        options = {}
        timeout = self.camera.read_timeout_s
        if self.camera.url.startswith("rtsp"):
            options["rtsp_transport"] = "tcp"  # UDP loses packets on busy links; TCP survives NAT
            # FFmpeg's own socket timeout (microseconds) ends a blocked read from inside the demuxer,
            # sooner than PyAV's interrupt callback alone.
            options["timeout"] = str(int(timeout * 1_000_000))
        return av.open(self.camera.url, options=options, timeout=(max(timeout, 5.0), timeout))

    def frames(self, stop: threading.Event):
        """Yield sampled :class:`Frame` objects; raise on stream failure or :class:`StreamEnded`.

        Every compressed packet also goes into the camera's packet ring (clips), stamped on the
        same timeline as the frames: for files the start time plus media time; for live streams
        the wall time of the connection's first packet plus the stream's own clock, so that a burst
        of buffered packets does not shift clips against the frames rules saw.
        """
        sampler = Sampler(self.camera.analysis_fps)
        plan = DecodePlan(self.camera.decode, 1.0 / self.camera.analysis_fps, self.camera.cadence is Cadence.LIVE)
        live = not self.camera.is_file
        with self._open() as container:
            stream = container.streams.video[0]
            self.health.connected(stream.codec_context.name, stream.width, stream.height)
            log_event(log, "camera_connected", camera=self.camera.id, url=redact(self.camera.url),
                      codec=stream.codec_context.name, size=f"{stream.width}x{stream.height}")
            if self.ring is not None:
                self.ring.start_source(stream)
            started = self.clock.now()
            loop_offset = 0.0
            live_offset: float | None = None
            while not stop.is_set():
                last_time = 0.0
                for packet in container.demux(stream):
                    if stop.is_set():
                        return
                    if live and live_offset is None and packet.pts is not None:
                        live_offset = self.clock.now() - packet_ts(packet.pts, packet.time_base, 0.0)
                    offset = live_offset if live else started + loop_offset
                    if self.ring is not None and offset is not None:
                        self.ring.append(packet, offset)
                    if packet.is_keyframe and packet.pts is not None:
                        self._plan_decoding(plan, loop_offset + packet_ts(packet.pts, packet.time_base, 0.0),
                                            stream, sampler)
                    for frame in self._decode(packet):
                        self.health.frame_decoded(self.clock.now())
                        media_time = loop_offset + (frame.time or 0.0)
                        last_time = media_time
                        if not sampler.take(media_time):
                            continue
                        if live:
                            ts = (packet_ts(frame.pts, frame.time_base, live_offset)
                                  if live_offset is not None and frame.pts is not None and frame.time_base is not None
                                  else self.clock.now())
                        else:
                            ts = started + media_time
                            if self.realtime:
                                self.clock.sleep_until(ts, stop)
                        yield Frame(self.camera.id, ts, frame.to_ndarray(format="bgr24"))
                if live:
                    raise ConnectionError("stream ended")
                if not self.camera.loop:
                    raise StreamEnded()
                container.seek(0)
                loop_offset = last_time + 1.0 / max(float(stream.average_rate or 25), 1.0)

    def _plan_decoding(self, plan: DecodePlan, media_time: float, stream: av.video.stream.VideoStream,
                       sampler: Sampler) -> None:
        was = plan.keyframes_only
        if plan.at_keyframe(media_time) == was:
            return
        stream.codec_context.skip_frame = "NONKEY" if plan.keyframes_only else "DEFAULT"
        sampler.slack_s = 0.25 * plan.period_s if plan.keyframes_only else 0.0
        mode = "keyframes" if plan.keyframes_only else "all"
        self.health.decoding(mode, plan.keyframe_interval_s)
        log_event(log, "decode_mode", camera=self.camera.id, decode=mode,
                  keyframe_interval_s=round(plan.keyframe_interval_s or 0.0, 2),
                  analysis_period_s=round(plan.period_s, 2))

    def _decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        """A corrupt packet costs its frames, not the connection: count it and go on."""
        try:
            return packet.decode()
        except av.error.InvalidDataError as exc:
            self.health.decode_failed(str(exc))
            return []


def grab_frame(camera: CameraConfig, clock: Clock) -> Frame:
    """One picture from the camera now (a file's first frame), for snapshots and calibration;
    ConnectionError says why there is none."""
    reader = CameraReader(camera, clock, CameraHealth(camera.id, camera.model), realtime=False)
    try:
        with closing(reader.frames(threading.Event())) as frames:
            return next(frames)
    except (StreamEnded, StopIteration):
        raise ConnectionError(f"camera {camera.id}: the stream ended before a frame") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise ConnectionError(redact(f"camera {camera.id}: no frame: {type(exc).__name__}: {exc}")) from None


class CameraWorker(threading.Thread):
    """Reads one camera forever: reconnects with capped, jittered exponential backoff, never gives up."""

    def __init__(self, camera: CameraConfig, clock: Clock, health: CameraHealth,
                 on_frame: Callable[[Frame], None], stop: threading.Event, ring: PacketRing | None = None):
        super().__init__(name=f"camera-{camera.id}", daemon=True)
        self.camera, self.clock, self.health = camera, clock, health
        self.on_frame, self.stop = on_frame, stop
        # The ring belongs to the worker, not a connection: clips can span a reconnect.
        self.reader = CameraReader(camera, clock, health, ring)

    def run(self) -> None:
        name_native_thread()
        backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
        while not self.stop.is_set():
            try:
                for frame in self.reader.frames(self.stop):
                    self.on_frame(frame)
                    backoff.reset()
                return
            except StreamEnded:
                log_event(log, "camera_ended", camera=self.camera.id)
                self.health.disconnected("ended")
                return
            except (av.error.FFmpegError, OSError, ConnectionError) as exc:
                reason = redact(f"{type(exc).__name__}: {exc}")
                self.health.disconnected(reason)
                wait = backoff.next_wait()
                log_event(log, "camera_dropped", level=logging.WARNING, camera=self.camera.id,
                          reason=reason, retry_in_s=round(wait, 1))
                if self.stop.wait(wait):
                    return
            log_event(log, "camera_reconnecting", camera=self.camera.id)

