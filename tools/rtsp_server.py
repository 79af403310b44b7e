#!/usr/bin/python3
"""A small RTSP server that plays H.264 MP4 files as endless "cameras".

Runs under the SYSTEM python (it needs GStreamer's introspection bindings,
which are not in the venv):

    /usr/bin/python3 tools/rtsp_server.py --port 8554 \
        --mount /cam1 --file .cache/footage/vtest.mp4 \
        [--mount /cam2 --file other.mp4] [--host 127.0.0.1] [--shared]

When every mount is being served it prints, one line per mount, flushed:

    READY rtsp://127.0.0.1:8554/cam1

``--port 0`` binds a free port chosen by the kernel; the READY lines carry
the real one.  SIGTERM or SIGINT stop it cleanly (exit status 0).

The H.264 is served as it is in the file, never re-encoded: at start each
file is demuxed once (``filesrc ! qtdemux ! h264parse ! appsink``) into
memory, and every RTSP media is ``appsrc ! rtph264pay name=pay0 pt=96
config-interval=1`` fed from that list in an endless loop, each pass shifted
by the clip's length so timestamps keep increasing (no seek, no EOS, no
discontinuity for the client).  Both RTP over UDP and RTP interleaved in the
RTSP TCP connection work.  By default every client gets its own pipeline and
starts at the first frame (a keyframe); ``--shared`` makes all clients of a
mount share one pipeline, like a real camera.

Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-base (appsrc/appsink) gstreamer1.0-plugins-good
(qtdemux, rtph264pay, udp, rtpbin) gstreamer1.0-plugins-bad (h264parse).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
from dataclasses import dataclass, field

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
except (ImportError, ValueError) as _e:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"rtsp_server: ERROR: GStreamer RTSP bindings not available under {sys.executable} ({_e}).\n"
        "Run it with /usr/bin/python3 after: apt-get install python3-gi "
        "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
        "gstreamer1.0-plugins-bad\n")
    sys.exit(2)


def log(msg: str) -> None:
    sys.stderr.write(f"rtsp_server: {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- the clip

@dataclass
class Clip:
    path: str
    caps: Gst.Caps
    # (buffer, pts, dts, duration) in file order, timestamps relative to the start
    frames: list[tuple[Gst.Buffer, int, int, int]] = field(default_factory=list)
    period: int = 0  # ns: one pass of the file

    @property
    def seconds(self) -> float:
        return self.period / Gst.SECOND


def load_clip(path: str) -> Clip:
    """Demux an H.264 MP4 into memory (no decoding)."""
    pipeline = Gst.parse_launch(
        "filesrc name=src ! qtdemux name=demux ! h264parse ! "
        "video/x-h264,stream-format=avc,alignment=au ! "
        "appsink name=sink sync=false max-buffers=0 emit-signals=false")
    pipeline.get_by_name("src").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    raw: list[Gst.Buffer] = []
    caps = None
    err = None
    pipeline.set_state(Gst.State.PLAYING)
    try:
        while True:
            msg = bus.pop_filtered(Gst.MessageType.ERROR)
            if msg is not None:
                gerr, dbg = msg.parse_error()
                err = f"{gerr.message} ({dbg})"
                break
            sample = sink.emit("try-pull-sample", Gst.SECOND // 2)
            if sample is None:
                if sink.get_property("eos"):
                    break
                if pipeline.get_state(0)[1] == Gst.State.NULL:
                    break
                continue
            if caps is None:
                caps = sample.get_caps()
            raw.append(sample.get_buffer())
    finally:
        pipeline.set_state(Gst.State.NULL)
    if err:
        raise RuntimeError(f"{path}: cannot demux as H.264 MP4: {err}")
    if caps is None or not raw:
        raise RuntimeError(f"{path}: no H.264 video frames found")

    none = Gst.CLOCK_TIME_NONE
    pts = [b.pts for b in raw]
    if any(p == none for p in pts):
        raise RuntimeError(f"{path}: frames without timestamps")
    dts = [b.dts if b.dts != none else b.pts for b in raw]
    sorted_pts = sorted(pts)
    steps = sorted(b - a for a, b in itertools.pairwise(sorted_pts) if b > a)
    step = steps[len(steps) // 2] if steps else Gst.SECOND // 10
    durs = [b.duration if b.duration != none and b.duration > 0 else step for b in raw]
    t0 = min(min(pts), min(dts))
    end = max(p + d for p, d in zip(pts, durs))
    clip = Clip(path=path, caps=caps, period=end - min(pts))
    for b, p, d, du in zip(raw, pts, dts, durs):
        clip.frames.append((b, p - t0, d - t0, du))
    return clip


# --------------------------------------------------------------------------- feeding

_COPY = (Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.TIMESTAMPS
         | Gst.BufferCopyFlags.META | Gst.BufferCopyFlags.MEMORY)


class Feeder:
    """Pushes a clip into one media's appsrc forever, shifting each pass."""

    BATCH = 8

    def __init__(self, clip: Clip, mount: str):
        self.clip = clip
        self.mount = mount
        self.index = 0
        self.offset = 0  # ns added to this pass
        self.passes = 0

    def on_need_data(self, appsrc: Gst.Element, _length: int) -> None:
        frames = self.clip.frames
        for _ in range(self.BATCH):
            buf, pts, dts, dur = frames[self.index]
            out = buf.copy_region(_COPY, 0, buf.get_size())
            out.pts = pts + self.offset
            out.dts = dts + self.offset
            out.duration = dur
            if self.index == 0 and self.passes == 0:
                out.set_flags(Gst.BufferFlags.DISCONT)
            elif self.index == 0:
                out.unset_flags(Gst.BufferFlags.DISCONT)
            ret = appsrc.emit("push-buffer", out)
            if ret != Gst.FlowReturn.OK:
                return  # flushing / shutting down
            self.index += 1
            if self.index == len(frames):
                self.index = 0
                self.offset += self.clip.period
                self.passes += 1


class LoopFactory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, mount: str, clip: Clip, shared: bool):
        super().__init__()
        self.mount = mount
        self.clip = clip
        self.set_launch(
            "( appsrc name=src format=time is-live=false do-timestamp=false "
            "stream-type=stream max-bytes=4000000 "
            "! rtph264pay name=pay0 pt=96 config-interval=1 )")
        self.set_shared(shared)
        self.connect("media-configure", self._on_media_configure)

    def _on_media_configure(self, _factory, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.clip.caps)
        feeder = Feeder(self.clip, self.mount)
        appsrc.connect("need-data", feeder.on_need_data)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Serve H.264 MP4 files over RTSP, looping forever.")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8554, help="RTSP port; 0 = any free port")
    ap.add_argument("--mount", action="append", default=[], help="mount path, e.g. /cam1")
    ap.add_argument("--file", action="append", default=[], help="H.264 MP4 for the mount before it")
    ap.add_argument("--shared", action="store_true",
                    help="all clients of a mount share one pipeline (live-camera style)")
    args = ap.parse_args(argv)
    if not args.mount or len(args.mount) != len(args.file):
        ap.error("give --mount PATH --file FILE pairs (at least one)")
    if len(set(args.mount)) != len(args.mount):
        ap.error("duplicate --mount")
    for m in args.mount:
        if not m.startswith("/") or len(m) < 2:
            ap.error(f"mount must look like /name: {m!r}")
    for f in args.file:
        if not os.path.isfile(f):
            ap.error(f"no such file: {f}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)

    clips = []
    for mount, path in zip(args.mount, args.file):
        try:
            clip = load_clip(os.path.abspath(path))
        except RuntimeError as e:
            log(f"ERROR: {e}")
            return 1
        log(f"{mount}: {path}: {len(clip.frames)} frames, {clip.seconds:.2f} s per loop")
        clips.append((mount, clip))

    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for mount, clip in clips:
        mounts.add_factory(mount, LoopFactory(mount, clip, args.shared))

    if server.attach(None) == 0:
        log(f"ERROR: cannot listen on {args.host}:{args.port}")
        return 1
    port = server.get_bound_port()

    # Drop sessions of clients that vanished without TEARDOWN.
    def _cleanup() -> bool:
        server.get_session_pool().cleanup()
        return True

    GLib.timeout_add_seconds(2, _cleanup)

    stopping: dict[str, int | None] = {"sig": None}

    def _stop(signum: int) -> bool:
        stopping["sig"] = signum
        loop.quit()
        return False

    for s in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, s, _stop, s)

    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    for mount, _clip in clips:
        sys.stdout.write(f"READY rtsp://{url_host}:{port}{mount}\n")
    sys.stdout.flush()

    loop.run()
    log(f"stopping on signal {stopping['sig']}")
    # Close client connections so clients see the server go away at once.
    server.client_filter(lambda _srv, _client, *_: GstRtspServer.RTSPFilterResult.REMOVE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
