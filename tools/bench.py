"""Measure what the agent costs on this box: detector latency, ingest cost per camera, replay speed.

    python tools/bench.py [--footage .cache/footage/vtest.mp4] [--runs 50]

Prints a Markdown table; docs/performance.md holds the last figures and the machine they came from.
Speed is measured here, never asserted by timed tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import onnxruntime

from agent.clock import SystemClock
from agent.config import load_config
from agent.detect import load_detector
from agent.health import CameraHealth
from agent.ingest import CameraReader, StreamEnded

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tools.evaluate import EDGE_TOML  # noqa: E402


def first_frame(path: Path):
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="bgr24")


def bench_detector(manifest: Path, image, threads: int, runs: int) -> tuple[float, float, float]:
    detector = load_detector(manifest, threads=threads)
    for _ in range(5):
        detector.detect(image)
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        detector.detect(image)
        wall.append((time.perf_counter() - w0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return statistics.median(wall), statistics.quantiles(wall, n=10)[-1], statistics.median(cpu)


def bench_models(manifests: list[Path], image, threads: int, runs: int) -> dict[str, tuple[float, float, float, float]]:
    """Per model: bare ``session.run`` median / p90 ms and whole ``detect()`` median / p90 ms.
    The models take turns run by run, so a load that comes and goes on a shared box hits each alike:
    the ratio holds even when the absolute times do not."""
    detectors = {m.stem: load_detector(m, threads=threads) for m in manifests}
    tensors = {name: d.preprocess(image)[0] for name, d in detectors.items()}
    for d in detectors.values():
        for _ in range(5):
            d.detect(image)
    model: dict[str, list[float]] = {name: [] for name in detectors}
    whole: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(runs):
        for name, d in detectors.items():
            started = time.perf_counter()
            d.session.run(None, {d.manifest.input_name: tensors[name]})
            model[name].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            d.detect(image)
            whole[name].append((time.perf_counter() - started) * 1000)
    return {name: (statistics.median(model[name]), statistics.quantiles(model[name], n=10)[-1],
                   statistics.median(whole[name]), statistics.quantiles(whole[name], n=10)[-1]) for name in detectors}


def bench_ingest(camera, fps: float) -> tuple[float, int, float]:
    """CPU seconds per second of video to decode a file and convert the sampled frames."""
    cam = dataclasses.replace(camera, analysis_fps=fps, realtime=False, loop=False)
    health = CameraHealth(cam.id)
    reader = CameraReader(cam, SystemClock(), health)
    c0 = time.process_time()
    sampled = 0
    try:
        for _ in reader.frames(threading.Event()):
            sampled += 1
    except StreamEnded:
        pass
    cpu = time.process_time() - c0
    duration = health.frames_decoded / 10.0  # vtest.mp4 is 10 fps
    return cpu / duration, sampled, duration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--footage", type=Path, default=REPO / ".cache" / "footage" / "vtest.mp4")
    parser.add_argument("--manifest", type=Path, default=REPO / "models" / "nanodet-g-416.toml")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    image = first_frame(args.footage)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"onnxruntime {onnxruntime.__version__}, PyAV {av.__version__}")
    print(f"footage: {args.footage.name} {image.shape[1]}x{image.shape[0]}\n")
    print("| measure | value |\n|---|---|")
    for threads in (1, 2):
        median, p90, cpu = bench_detector(args.manifest, image, threads, args.runs)
        print(f"| NanoDet-g 416, {threads} thread(s): wall median / p90, CPU median | "
              f"{median:.1f} / {p90:.1f} ms, {cpu:.1f} ms |")
    int8 = args.manifest.with_name(f"{args.manifest.stem}-int8.toml")
    if int8.is_file():
        for threads in (1, 2):
            for name, (m50, m90, w50, w90) in bench_models([args.manifest, int8], image, threads, args.runs).items():
                print(f"| {name}, {threads} thread(s), turn about: model only median / p90, detect() median / p90 | "
                      f"{m50:.1f} / {m90:.1f} ms, {w50:.1f} / {w90:.1f} ms |")
    config = load_config(REPO / "edge.toml")
    camera = dataclasses.replace(config.cameras[0], url=str(args.footage))
    for fps in (2.0, 10.0):
        share, sampled, duration = bench_ingest(camera, fps)
        print(f"| ingest {image.shape[1]}x{image.shape[0]} H.264 10 fps, analysis {fps:g} fps: "
              f"CPU per second of video | {share * 100:.1f}% of a core ({sampled} frames of {duration:.0f} s) |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| peak RSS of this benchmark process | {peak:.0f} MiB |")

    models = [args.manifest] + ([int8] if int8.is_file() else [])
    runs: dict[Path, list[tuple[float, float, float]]] = {m: [] for m in models}
    for _ in range(REPLAY_ROUNDS):  # turn about, as for the detector alone
        for manifest in models:
            runs[manifest].append(bench_replay(manifest, args.footage, camera.id))
    for manifest, results in runs.items():
        wall, cpu, rss = (statistics.median(r[i] for r in results) for i in range(3))
        print(f"| `edge-agent replay` of the demo camera over {args.footage.name} (2 fps analysis) with "
              f"{manifest.stem}, median of {REPLAY_ROUNDS}: wall, CPU, peak RSS | {wall:.1f} s, {cpu:.1f} s, {rss:.0f} MiB |")
    return 0


REPLAY_ROUNDS = 3


def bench_replay(manifest: Path, footage: Path, camera_id: str) -> tuple[float, float, float]:
    """One `edge-agent replay` of ``footage`` as the demo camera with ``manifest``'s model, in a
    throwaway box: wall seconds, CPU seconds and peak RSS (MiB) of that process alone."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        edge = Path(tmp) / "edge.toml"
        # The box the evaluation replays in, with the demo camera.
        edge.write_text(EDGE_TOML.format(camera=json.dumps(str(REPO / "camera_config" / "demo-vtest.toml")),
                                         storage=json.dumps(str(Path(tmp) / "var")), model="default",
                                         manifest=json.dumps(str(manifest.resolve()))))
        log = Path(tmp) / "replay.log"
        started = time.perf_counter()
        with log.open("wb") as sink:  # a file, not a pipe: nobody reads a pipe while wait4 waits
            child = subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "replay", str(footage),
                                      "--camera", camera_id], cwd=REPO, stdout=subprocess.DEVNULL, stderr=sink)
            # os.wait4, not child.wait: the rusage of this child alone, not of every child so far.
            _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code  # reaped here, so Popen must not wait for it again
        if code != 0:
            raise SystemExit(f"bench: replay with {manifest} exited with {code}: {log.read_text()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


if __name__ == "__main__":
    raise SystemExit(main())
