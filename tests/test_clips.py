"""Evidence clips: remuxed from ring-buffered packets (H.264, H.265, B-frames, loops, a live RTSP
stream), transcoded only for a codec browsers cannot play in MP4, and a ring that stays bounded."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from agent.clips import ClipInfo, ClipUnavailable, PacketRing, cut_clip, packet_ts
from agent.clock import SystemClock

T0 = 1_700_000_000.0  # agent time of the files' media time 0


def ring_of(path: Path) -> PacketRing:
    """A ring holding all of ``path``; the container is closed before any clip is cut from it."""
    ring = PacketRing(keep_s=300.0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ring.start_source(stream)
        for packet in container.demux(stream):
            ring.append(packet, T0)
    return ring


def decoded(path: Path) -> tuple[av.video.stream.VideoStream, float, list[av.VideoFrame]]:
    """The clip's video stream, container duration in seconds, and every frame (raises on errors)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return stream, container.duration / 1e6, frames


def assert_browser_mp4(info: ClipInfo, codec: str = "h264", tag: str = "avc1") -> list[av.VideoFrame]:
    data = info.path.read_bytes()
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert data.index(b"moov") < data.index(b"mdat"), "moov first (+faststart): playable while loading"
    stream, duration_s, frames = decoded(info.path)
    assert stream.codec_context.name == codec and stream.codec_tag == tag
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert len(frames) == info.frames
    assert frames[0].key_frame
    assert duration_s == pytest.approx(info.duration_s, abs=0.05)
    if shutil.which("ffprobe"):
        probed = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                 "stream=codec_name", "-of", "csv=p=0", str(info.path)],
                                capture_output=True, text=True, check=True)
        assert probed.stdout.strip() == codec
    return frames


def test_h264_clip_is_remuxed_from_the_keyframe_before_the_pre_roll(footage, tmp_path):
    ring = ring_of(footage["vtest.mp4"])
    event_ts, pre, post = T0 + 30.3, 5.0, 5.0
    info = cut_clip(ring, event_ts - pre, event_ts + post, tmp_path / "clip.mp4")
    assert_browser_mp4(info)
    gop_s = 2.0  # vtest.mp4: a keyframe every 20 frames at 10 fps
    assert event_ts - pre - gop_s < info.start_ts <= event_ts - pre
    assert pre + post <= info.duration_s <= pre + post + gop_s
    assert not (tmp_path / "clip.mp4.tmp").exists()
    with pytest.raises(ClipUnavailable):
        cut_clip(ring, T0 - 20.0, T0 - 10.0, tmp_path / "before.mp4")


def test_b_frame_clip_decodes_fully_and_matches_the_source_frames(footage, tmp_path):
    ring = ring_of(footage["bikes.mp4"])
    start, end = T0 + 4.0, T0 + 8.0
    info = cut_clip(ring, start, end, tmp_path / "bikes.mp4")
    frames = assert_browser_mp4(info)
    assert start - 2.5 < info.start_ts <= start  # bikes.mp4: GOPs of 1.2 to 2.4 s
    assert end - info.start_ts <= info.duration_s <= end - info.start_ts + 0.2
    assert frames[-1].time >= end - info.start_ts - 0.04  # the last requested frame (25 fps) is there
    # Remuxed, not re-encoded: every picture is bit-identical to the source's at the same time.
    with av.open(str(footage["bikes.mp4"])) as container:
        source = {round(f.time, 3): f.to_ndarray() for f in container.decode(video=0)
                  if info.start_ts - T0 - 1e-6 <= f.time <= end - T0 + 0.2}
    for frame in frames:
        assert np.array_equal(frame.to_ndarray(), source[round(info.start_ts - T0 + frame.time, 3)])


def test_ring_stays_bounded_over_ten_minutes_of_a_looped_file_and_starts_at_a_keyframe(footage, tmp_path):
    by_time = PacketRing(keep_s=12.0)
    by_bytes = PacketRing(keep_s=600.0, max_bytes=2_000_000)
    below_one_gop = PacketRing(keep_s=60.0, max_bytes=50_000)  # vtest.mp4's keyframes are ~60-100 kB
    rings = (by_time, by_bytes, below_one_gop)
    longest = dict.fromkeys(rings, 0)
    join_clip = None
    loop_offset = 0.0
    with av.open(str(footage["vtest.mp4"])) as container:
        stream = container.streams.video[0]
        file_s = float(stream.frames / stream.average_rate)
        for ring in rings:
            ring.start_source(stream)
        while loop_offset < 600.0:
            for packet in container.demux(stream):  # as ingest loops a file: seek(0), shifted offset
                for ring in rings:
                    ring.append(packet, T0 + loop_offset)
                    assert ring.nbytes <= ring.max_bytes
                    longest[ring] = max(longest[ring], len(ring))
                if join_clip is None and by_bytes.newest_ts >= T0 + file_s + 3.0:
                    # Across the first loop's join: timestamps must continue over the seek.
                    join = T0 + file_s
                    join_clip = cut_clip(by_bytes, join - 3.0, join + 3.0, tmp_path / "join.mp4")
            container.seek(0)
            loop_offset += file_s
    assert longest[by_time] <= (12.0 + 2.0) * 10 + 1  # keep_s + one GOP at 10 fps
    assert 12.0 <= by_time.newest_ts - by_time.oldest_ts <= 12.0 + 2.0
    assert 100 < longest[by_bytes] < 400  # 2 MB of ~10 kB packets, never the 600 s asked for
    assert len(below_one_gop) == 0 or below_one_gop.select(0, float("inf")).packets[0].is_keyframe
    for ring in (by_time, by_bytes):
        kept = ring.select(0, float("inf")).packets
        assert kept[0].is_keyframe and kept[0].ts == ring.oldest_ts
    assert_browser_mp4(join_clip)
    assert 6.0 <= join_clip.duration_s <= 8.0


def test_reconnect_keeps_history_when_the_codec_parameters_match(footage, tmp_path):
    ring = PacketRing(keep_s=300.0)
    for connection, ts_offset in enumerate((T0, T0 + 20.0)):  # second connection: 20 s later
        with av.open(str(footage["vtest.mp4"])) as container:
            stream = container.streams.video[0]
            ring.start_source(stream)
            for packet in container.demux(stream):
                if packet.pts is not None and packet.pts * packet.time_base >= 10 + 5 * connection:
                    break
                ring.append(packet, ts_offset)
    assert ring.oldest_ts == T0 and ring.newest_ts == pytest.approx(T0 + 20.0 + 14.9, abs=1e-3)
    info = cut_clip(ring, T0 + 5.0, T0 + 25.0, tmp_path / "across.mp4")
    assert_browser_mp4(info)  # the 10 s gap is a long frame, not an error
    assert 20.0 <= info.duration_s <= 22.0
    with av.open(str(footage["bikes.mp4"])) as container:
        ring.start_source(container.streams.video[0])
    assert len(ring) == 0 and ring.nbytes == 0


def test_mpeg4_part2_source_is_transcoded_to_h264(footage, tmp_path):
    ring = ring_of(footage["vtest.avi"])
    assert ring.select(0, float("inf")).source.codec == "msmpeg4"
    info = cut_clip(ring, T0 + 30.05, T0 + 40.05, tmp_path / "avi.mp4")
    frames = assert_browser_mp4(info)
    # Starts at the frame shown at start_ts, not at the keyframe before it (25 s).
    assert info.start_ts == pytest.approx(T0 + 30.0, abs=1e-3)
    assert info.duration_s == pytest.approx(10.0, abs=0.15)
    assert len(frames) == 101  # 30.0 .. 40.0 at 10 fps


def encode_moving_bar(path: Path, codec: str, options: dict[str, str]) -> Path:
    """4 s of a 320x240 25 fps picture that changes every frame, so encoders use P- and B-frames."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(100):
            image = np.zeros((240, 320, 3), np.uint8)
            image[:, 3 * i:3 * i + 20] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def test_h265_clip_is_remuxed_as_hvc1(tmp_path):
    source = encode_moving_bar(tmp_path / "hevc.mkv", "libx265",
                               {"preset": "ultrafast", "x265-params": "keyint=25:log-level=error"})
    ring = ring_of(source)
    info = cut_clip(ring, T0 + 1.5, T0 + 3.5, tmp_path / "hevc.mp4")
    assert_browser_mp4(info, codec="hevc", tag="hvc1")
    assert info.start_ts == pytest.approx(T0 + 1.0, abs=1e-3) and 2.5 <= info.duration_s <= 2.6


def test_open_gop_leading_pictures_of_the_clips_first_keyframe_are_left_out(tmp_path):
    source = encode_moving_bar(tmp_path / "open-gop.mkv", "libx264", {
        "preset": "veryfast",
        "x264-params": "open-gop=1:keyint=24:min-keyint=24:bframes=3:b-adapt=0:scenecut=0:log-level=error"})
    ring = ring_of(source)
    keyframe = ring.select(T0 + 1.0, T0 + 3.0).packets[0]
    with av.open(str(source)) as container:
        in_decode_order = [p for p in container.demux(video=0) if p.size]
    following = in_decode_order[[p.pts for p in in_decode_order].index(keyframe.pts) + 1]
    assert following.pts < keyframe.pts, "the source has leading pictures after this keyframe"
    info = cut_clip(ring, T0 + 1.0, T0 + 3.0, tmp_path / "open-gop.mp4")
    assert_browser_mp4(info)  # every packet in the file decodes: none references the GOP before


def test_clip_of_a_live_rtsp_stream_cut_while_packets_keep_arriving(footage, rtsp_server, tmp_path):
    server = rtsp_server({"/cam": footage["vtest.mp4"]})
    ring = PacketRing(keep_s=10.0)
    clock = SystemClock()
    stop = threading.Event()
    failure: list[BaseException] = []

    def camera_thread():  # what ingest does per packet, before decoding it
        try:
            url = server.urls["/cam"]
            with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10, 5)) as container:
                stream = container.streams.video[0]
                ring.start_source(stream)
                ts_offset = None
                for packet in container.demux(stream):
                    if stop.is_set():
                        return
                    if ts_offset is None and packet.pts is not None:
                        ts_offset = clock.now() - packet_ts(packet.pts, packet.time_base, 0.0)
                    if ts_offset is not None:
                        ring.append(packet, ts_offset)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            failure.append(exc)

    reader = threading.Thread(target=camera_thread, daemon=True)
    reader.start()
    deadline = time.monotonic() + 25
    try:
        while not failure and time.monotonic() < deadline:
            if ring.oldest_ts is not None and ring.newest_ts - ring.oldest_ts >= ring.keep_s:
                break  # ~12 s read: the first GOP is lost (its keyframe comes without a pts)
            time.sleep(0.1)
        assert not failure, failure
        newest = ring.newest_ts
        assert newest is not None and newest - ring.oldest_ts >= 10.0, "no 10 s of live packets within 25 s"
        info = cut_clip(ring, newest - 8.0, newest, tmp_path / "live.mp4")
    finally:
        stop.set()
        reader.join(timeout=10)
    assert_browser_mp4(info)
    assert newest - 8.0 - 2.0 < info.start_ts <= newest - 8.0
    assert 8.0 <= info.duration_s <= 10.1
