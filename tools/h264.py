"""The one H.264 stream the tools write: libx264, yuv420p, a keyframe every ``gop`` frames exactly,
no B-frames and no scene-cut keyframes -- what IP cameras send, what the agent's clips and the RTSP
test server expect, and what makes seeks and cuts land on a known grid. (tools/fetch_footage.py writes the same stream
from its own RECIPE: it runs before the venv has the project on its path, with only the stdlib and
PyAV.)"""

from __future__ import annotations

from fractions import Fraction

import av


def add_fixed_gop_stream(output: av.container.OutputContainer, fps: int | Fraction, gop: int, width: int,
                         height: int, crf: int, preset: str = "veryfast") -> av.video.stream.VideoStream:
    stream = output.add_stream("libx264", rate=fps, options={
        "preset": preset, "crf": str(crf), "bf": "0", "g": str(gop), "keyint_min": str(gop),
        "sc_threshold": "0",
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
    })
    stream.pix_fmt, stream.width, stream.height = "yuv420p", width, height
    stream.time_base = stream.codec_context.time_base = 1 / Fraction(fps)
    return stream
