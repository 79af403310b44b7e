"""Evidence clips cut from the compressed packets a camera already has in memory.

Each camera keeps a :class:`PacketRing`: the last ``keep_s`` seconds of its demuxed video packets,
copied out of PyAV's buffers so they outlive the connection they came from. When a rule needs a
clip, :func:`cut_clip` writes the packets from the keyframe at or before the clip's start to its
end into a browser-playable MP4. H.264 and H.265 are remuxed (no decode, no encode: a cut costs
milliseconds of CPU); other codecs, and every clip whose pictures must be changed (people hidden,
agent/privacy.py), are transcoded to H.264, see :func:`cut_clip`.

Time. Packets are placed on the agent's timeline (``ts``, seconds, the same values rules see):
``ts = ts_offset + pts * time_base`` (:func:`packet_ts`), where ``ts_offset`` is the agent time of
the stream's media time 0:

- files: ``started + loop_offset``, exactly what ingest adds to a frame's media time;
- live streams: ``clock.now() - pts * time_base`` of the first packet with a pts, fixed for the
  connection. Stamping the frames of that connection with the same offset puts rules and clips
  on one timeline; a reconnect takes a new offset.

The offset is passed rather than each packet's ``ts`` because with B-frames the decode and
presentation times of a packet differ, and both must move together onto the agent's timeline.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DEFAULT_MAX_BYTES = 64 * 2**20
# Codecs copied as they are, with the MP4 sample entry browsers accept (Safari plays H.265 only
# as hvc1, FFmpeg's default is hev1).
REMUX_TAGS = {"h264": "avc1", "hevc": "hvc1"}
TRANSCODE_PRESET = "veryfast"


def packet_ts(pts: int, time_base: Fraction, ts_offset: float) -> float:
    """The agent time of a packet or frame timestamp ``pts`` of a stream whose media time 0 is at
    ``ts_offset`` (see the module docstring for the offset of files and live streams)."""
    return ts_offset + float(pts * time_base)


class ClipUnavailable(LookupError):
    """The ring holds nothing of the requested span."""


@dataclass(frozen=True)
class SourceParams:
    """What an MP4 track needs to carry the packets of one camera connection."""

    codec: str  # decoder name, e.g. "h264", "hevc", "msmpeg4"
    width: int
    height: int
    time_base: Fraction
    extradata: bytes | None
    # A copy of the input stream's codec parameters for add_stream_from_template: the input stream
    # itself dies with its container, which a reconnect closes while its packets are still needed.
    template: av.stream.Stream = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class StoredPacket:
    data: bytes
    pts: int
    dts: int
    duration: int  # in the source's time base; 0 when the demuxer did not know
    is_keyframe: bool
    ts_offset: float
    ts: float  # agent time of presentation
    decode_ts: float  # agent time of decoding: differs from ts with B-frames


@dataclass(frozen=True)
class ClipPackets:
    """Packets of one clip in decode order, starting at a keyframe."""

    source: SourceParams
    packets: tuple[StoredPacket, ...]


@dataclass(frozen=True)
class ClipInfo:
    path: Path
    duration_s: float
    frames: int
    sha256: str
    size: int
    start_ts: float  # agent time of the clip's first frame: at or before the requested start


@dataclass
class _Gop:
    packets: list[StoredPacket]
    nbytes: int = 0


class PacketRing:
    """The recent compressed video packets of one camera, bounded by time and by bytes.

    It always starts at a keyframe and keeps from the last keyframe at or before
    ``newest_ts - keep_s``, so a clip can start ``keep_s`` back (make ``keep_s`` the pre-roll plus
    a margin). If the packets exceed ``max_bytes`` the oldest GOPs go first. Thread-safe: the
    camera thread appends while another thread cuts clips.
    """

    def __init__(self, keep_s: float, max_bytes: int = DEFAULT_MAX_BYTES):
        self.keep_s, self.max_bytes = keep_s, max_bytes
        self._lock = threading.Lock()
        self._gops: deque[_Gop] = deque()
        self._nbytes = 0
        self._count = 0
        self._source: SourceParams | None = None
        # False until a keyframe arrives: packets before it reference pictures the ring lacks.
        self._synced = False
        self._newest_ts = -math.inf
        self._last_decode_ts = -math.inf

    def start_source(self, stream: av.video.stream.VideoStream) -> None:
        """Call once per opened connection, before its packets. History survives a reconnect
        whose codec parameters are unchanged; otherwise it is dropped, as one MP4 track cannot
        hold both."""
        params = _source_params(stream)
        with self._lock:
            if params != self._source:
                self._clear()
            self._source = params
            self._synced = False

    def append(self, packet: av.Packet, ts_offset: float) -> None:
        """Store a copy of ``packet`` (from ``container.demux``), placed on the agent's timeline
        by ``ts_offset``; then drop what ``keep_s`` and ``max_bytes`` no longer allow."""
        if packet.size == 0:  # the demuxer's end-of-stream packet
            return
        pts = packet.pts if packet.pts is not None else packet.dts
        with self._lock:
            if self._source is None:
                raise RuntimeError("PacketRing.start_source() must come before append()")
            if pts is None:  # cannot be placed in time (RTSP's first packet can lack one)
                self._synced = False
                return
            dts = packet.dts if packet.dts is not None else pts
            time_base = self._source.time_base
            ts, decode_ts = packet_ts(pts, time_base, ts_offset), packet_ts(dts, time_base, ts_offset)
            if decode_ts <= self._last_decode_ts:
                # Time went back (a source restarting its clock): an MP4 track needs increasing dts.
                self._clear()
            if packet.is_keyframe:
                self._gops.append(_Gop([]))
                self._synced = True
            elif not self._synced:
                return
            stored = StoredPacket(bytes(packet), pts, dts, packet.duration or 0, packet.is_keyframe,
                                  ts_offset, ts, decode_ts)
            gop = self._gops[-1]
            gop.packets.append(stored)
            gop.nbytes += len(stored.data)
            self._nbytes += len(stored.data)
            self._count += 1
            self._newest_ts = max(self._newest_ts, ts)
            self._last_decode_ts = decode_ts
            self._trim()

    def select(self, start_ts: float, end_ts: float) -> ClipPackets:
        """The packets from the keyframe at or before ``start_ts`` (or the oldest one) through
        the last one presented at or before ``end_ts``, plus those it needs to be decoded."""
        if end_ts < start_ts:
            raise ValueError(f"clip ends before it starts: [{start_ts}, {end_ts}]")
        with self._lock:
            if not self._gops or end_ts < self._gops[0].packets[0].ts:
                raise ClipUnavailable(f"no packets for [{start_ts}, {end_ts}]")
            first = max((i for i, gop in enumerate(self._gops) if gop.packets[0].ts <= start_ts),
                        default=0)
            from_start = itertools.chain.from_iterable(
                gop.packets for gop in itertools.islice(self._gops, first, None))
            chosen = list(itertools.takewhile(lambda p: p.decode_ts <= end_ts, from_start))
            source = self._source
        assert source is not None  # append() takes packets only after start_source()
        keyframe_ts = chosen[0].ts
        last = max(i for i, p in enumerate(chosen) if p.ts <= end_ts)
        # Open-GOP leading pictures (presented before their keyframe) reference the GOP before
        # the clip and cannot be decoded.
        packets = tuple(p for p in chosen[:last + 1] if p.ts >= keyframe_ts)
        return ClipPackets(source, packets)

    @property
    def newest_ts(self) -> float | None:
        with self._lock:
            return self._newest_ts if self._gops else None

    @property
    def oldest_ts(self) -> float | None:
        with self._lock:
            return self._gops[0].packets[0].ts if self._gops else None

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def _trim(self) -> None:
        cutoff = self._newest_ts - self.keep_s
        while len(self._gops) > 1 and self._gops[1].packets[0].ts <= cutoff:
            self._drop_oldest()
        while self._nbytes > self.max_bytes:
            if len(self._gops) == 1:
                # One GOP outgrew the budget: nothing decodable fits, wait for the next keyframe.
                self._clear()
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        gop = self._gops.popleft()
        self._nbytes -= gop.nbytes
        self._count -= len(gop.packets)

    def _clear(self) -> None:
        self._gops.clear()
        self._nbytes = self._count = 0
        self._synced = False
        self._newest_ts = self._last_decode_ts = -math.inf


PictureFilter = Callable[[np.ndarray, float], np.ndarray]  # (BGR picture, agent time) -> picture


def cut_clip(ring: PacketRing, start_ts: float, end_ts: float, out_path: Path,
             picture_filter: PictureFilter | None = None) -> ClipInfo:
    """Write the clip ``[start_ts, end_ts]`` (agent time) of ``ring`` to ``out_path`` as an MP4
    (``+faststart``, browser-playable), durably: temp file, fsync, rename.

    H.264/H.265 are remuxed from the keyframe at or before ``start_ts``, so the clip may start up
    to one GOP early. Any other codec (e.g. MPEG-4 part 2) cannot play in a browser's MP4, and a
    ``picture_filter`` (hiding people) must see every picture, so then the clip's packets are
    decoded, filtered and encoded with libx264 (``veryfast``, yuv420p): that costs real CPU, in
    the calling thread, and the clip starts at the frame at or before ``start_ts``. Call it once
    the ring holds ``end_ts`` (``ring.newest_ts >= end_ts``); before that the clip ends at the
    newest packet.
    """
    clip = ring.select(start_ts, end_ts)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        with av.open(str(tmp), "w", format="mp4", container_options={"movflags": "+faststart"}) as out:
            if clip.source.codec in REMUX_TAGS and picture_filter is None:
                muxed = _remux(clip, out)
            else:
                muxed = _transcode(clip, start_ts, end_ts, out, picture_filter)
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ClipInfo(out_path, muxed.duration_s, muxed.frames, digest.hexdigest(), out_path.stat().st_size,
                    muxed.start_ts)


@dataclass
class _Muxed:
    """What went into the file, counted before the muxer rescales each packet to its own clock."""

    start_ts: float
    frames: int = 0
    first_s: float = math.inf
    end_s: float = -math.inf

    def mux(self, out: av.container.OutputContainer, packet: av.Packet) -> None:
        time_base = packet.time_base
        assert packet.pts is not None  # the encoder stamps every packet it returns
        self.first_s = min(self.first_s, float(packet.pts * time_base))
        self.end_s = max(self.end_s, float((packet.pts + (packet.duration or 0)) * time_base))
        self.frames += 1
        out.mux(packet)

    @property
    def duration_s(self) -> float:
        return max(self.end_s - self.first_s, 0.0)


def _timeline(clip: ClipPackets) -> list[tuple[int, int]]:
    """(pts, dts) of each packet on one clock starting at 0, across loops and reconnects."""
    first = clip.packets[0]
    time_base = clip.source.time_base
    shifted = []
    for p in clip.packets:
        shift = round((p.ts_offset - first.ts_offset) / time_base) - first.pts
        shifted.append((p.pts + shift, p.dts + shift))
    return shifted


def _source_packets(clip: ClipPackets, stream: av.stream.Stream | None = None) -> Iterator[av.Packet]:
    for p, (pts, dts) in zip(clip.packets, _timeline(clip)):
        packet = av.Packet(p.data)
        packet.pts, packet.dts, packet.duration = pts, dts, p.duration
        packet.time_base = clip.source.time_base
        packet.is_keyframe = p.is_keyframe
        if stream is not None:
            packet.stream = stream
        yield packet


def _remux(clip: ClipPackets, out: av.container.OutputContainer) -> _Muxed:
    stream = out.add_stream_from_template(clip.source.template, codec_tag=REMUX_TAGS[clip.source.codec])
    muxed = _Muxed(clip.packets[0].ts)
    for packet in _source_packets(clip, stream):
        muxed.mux(out, packet)
    return muxed


def _transcode(clip: ClipPackets, start_ts: float, end_ts: float, out: av.container.OutputContainer,
               picture_filter: PictureFilter | None) -> _Muxed:
    source = clip.source
    stream = out.add_stream("libx264", options={"preset": TRANSCODE_PRESET})
    stream.width, stream.height, stream.pix_fmt = source.width, source.height, "yuv420p"
    stream.time_base = stream.codec_context.time_base = source.time_base
    muxed: _Muxed | None = None
    first_pts = 0
    for frame, ts in _frames_in_span(clip, start_ts, end_ts):
        pts = frame.pts
        assert pts is not None  # _frames_in_span placed it in time by its pts
        if muxed is None:
            muxed, first_pts = _Muxed(ts), pts
        if picture_filter is not None:
            time_base = frame.time_base
            frame = av.VideoFrame.from_ndarray(picture_filter(frame.to_ndarray(format="bgr24"), ts), format="bgr24")
            frame.time_base = time_base
        frame.pts = pts - first_pts
        for packet in stream.encode(frame):
            muxed.mux(out, packet)
    if muxed is None:
        raise ClipUnavailable(f"no frame decoded for [{start_ts}, {end_ts}]")
    for packet in stream.encode(None):
        muxed.mux(out, packet)
    return muxed


def _frames_in_span(clip: ClipPackets, start_ts: float,
                    end_ts: float) -> Iterator[tuple[av.VideoFrame, float]]:
    """Decoded frames with their agent time, from the one shown at ``start_ts`` (the last at or
    before it) through ``end_ts``."""
    decoder = av.CodecContext.create(clip.source.codec, "r")
    assert isinstance(decoder, av.VideoCodecContext)  # the ring keeps a video stream's packets
    decoder.extradata = clip.source.extradata
    # Some codecs (MS MPEG-4) carry the picture size only in the container, not in the stream.
    decoder.width, decoder.height = clip.source.width, clip.source.height
    held = None
    packets = itertools.chain(_source_packets(clip), [None])  # None flushes the decoder
    for frame in itertools.chain.from_iterable(decoder.decode(p) for p in packets):
        assert frame.pts is not None  # the ring stores only packets with a pts
        ts = clip.packets[0].ts + float(frame.pts * clip.source.time_base)
        if ts <= start_ts:
            held = (frame, ts)
            continue
        if held:
            yield held
            held = None
        if ts > end_ts:
            return
        yield frame, ts
    if held:
        yield held


def _source_params(stream: av.video.stream.VideoStream) -> SourceParams:
    # Never written: the matroska muxer only holds the template (it accepts every codec).
    holder = av.open(io.BytesIO(), "w", format="matroska")
    template = holder.add_stream_from_template(stream)
    ctx = stream.codec_context
    assert stream.time_base is not None  # every demuxed stream has one
    return SourceParams(ctx.name, ctx.width, ctx.height, stream.time_base, ctx.extradata, template)
