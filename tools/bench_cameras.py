"""Many cameras on one box: the agent beside the pipeline a user would write, in one run.

    python tools/bench_cameras.py [--cameras 40] [--fps 0.5] [--seconds 90] [--lift] [--naive 4]

What it does, all on loopback with real parts:

1. Builds the street scene (tools/bench_recipes/litter_lawn_late.toml, tools/scenario_kit.py: real
   footage, a real piece of plastic dropped at 25 s) and transcodes it once to 1080p25 H.264 with a keyframe every 50
   frames, the stream most city cameras send; with ``--lift`` also the ``lift_ebike_car`` one
   (its own size, 25 fps, GOP 50). Cached in .cache/bench.
2. Serves N copies over RTSP (tools/rtsp_server.py, GStreamer; one pipeline per mount, each
   starting at the clip's first frame when the agent connects), plus the lift mount.
3. Runs ``edge-agent run`` on N static litter cameras at ``--fps`` (and the lift camera at 5 fps),
   with the documented defaults otherwise, and measures over ``--seconds`` once every camera is
   connected: per camera the analysis rate achieved (from the agent's own /metrics counters), the
   process CPU and its split by thread (decoding vs analysis), RSS, and the ticket latency from the
   scenario's ground truth (first ``opened`` ticket minus connect time + the truth's start).
4. Runs a 1-camera agent for the RSS of one more camera.
5. Runs the naive baselines on the same server: ``cv2.VideoCapture`` reading every frame of
   ``--naive`` cameras and the same detector on one frame in 1/(fps) seconds; and one camera with
   the detector on every frame, whose cost to keep up is extrapolated from the frames it managed.

Prints a Markdown table (docs/performance.md keeps the last one) and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from agent.rules import rule_types  # noqa: E402
from tools.h264 import add_fixed_gop_stream  # noqa: E402
from tools.scenario_kit import Composite, camera_toml, ensure_built, load_recipe  # noqa: E402
from tools.soak import box_busy, free_port, proc_sample  # noqa: E402

CACHE = REPO / ".cache" / "bench"
MANIFEST = REPO / "models" / "nanodet-g-416-int8.toml"
RTSP_SERVER = REPO / "tools" / "rtsp_server.py"
TICK = os.sysconf("SC_CLK_TCK")
OUT_FPS, OUT_GOP = 25, 50
LIFT_FPS = 5.0


def transcode(src: Path, dst: Path, size: tuple[int, int] | None) -> Path:
    """``src`` as H.264 at 25 fps (frames repeated as the source's clock says), a keyframe every 50
    frames, no B-frames, scaled to ``size`` (None: as it is). Written once, then reused."""
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(f".{dst.name}.{os.getpid()}.part.mp4")
    with av.open(str(src)) as source, av.open(str(part), "w") as out:
        video = source.streams.video[0]
        assert video.average_rate is not None, f"{src}: no frame rate"
        src_fps = float(video.average_rate)
        width, height = size or (video.width, video.height)
        stream = add_fixed_gop_stream(out, OUT_FPS, OUT_GOP, width, height, crf=23)
        index = 0
        for n, frame in enumerate(source.decode(video)):
            decoded = frame.to_ndarray(format="bgr24")
            picture: np.ndarray = cv2.resize(decoded, (width, height), interpolation=cv2.INTER_LINEAR)
            while index / OUT_FPS < (n + 1) / src_fps:
                out_frame = av.VideoFrame.from_ndarray(picture, format="bgr24")
                out_frame.pts = index
                out.mux(stream.encode(out_frame))
                index += 1
        out.mux(stream.encode(None))
    os.replace(part, dst)
    return dst


@dataclass
class Scene:
    composite: Composite
    video: Path  # the composite transcoded for the stream
    camera: dict  # the recipe's camera table
    composite_size: tuple[int, int]  # what the zones were drawn on
    truth_start_s: float
    dwell_s: float


def prepare_scene(recipe_path: str, size: tuple[int, int] | None) -> Scene:
    recipe = load_recipe(REPO / recipe_path)
    composite = ensure_built(recipe, CACHE / "scenarios")
    tag = f"{size[0]}x{size[1]}" if size else "native"
    video = transcode(composite.video, CACHE / f"{recipe.name}-{tag}-{OUT_FPS}p-gop{OUT_GOP}.mp4", size)
    rule = next(iter(recipe.camera["zones"].values()))["rule"]
    dwell = rule.get("min_dwell_s", _default(rule["type"], "min_dwell_s"))
    with av.open(str(composite.video)) as container:
        drawn = (container.streams.video[0].width, container.streams.video[0].height)
    return Scene(composite, video, dict(recipe.camera), drawn, recipe.truth[0].start_s, float(dwell))


def _default(rule_type: str, key: str):
    return next(f.default for f in dataclasses.fields(rule_types()[rule_type].params) if f.name == key)


class RtspServer:
    """tools/rtsp_server.py under the system python, serving ``mounts`` {"/name": file}."""

    def __init__(self, mounts: dict[str, Path]):
        args = ["/usr/bin/python3", str(RTSP_SERVER), "--port", "0"]
        for mount, path in mounts.items():
            args += ["--mount", mount, "--file", str(path)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.urls: dict[str, str] = {}
        ready = self.proc.stdout
        assert ready is not None  # stdout=PIPE
        while len(self.urls) < len(mounts):
            line = ready.readline()
            if not line:
                raise RuntimeError("rtsp_server exited before it was ready")
            if line.startswith("READY "):
                url = line.split()[1]
                self.urls["/" + url.rsplit("/", 1)[1]] = url

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=15)


def write_box(out: Path, cameras: dict[str, tuple[Scene, str, float]], metrics_port: int) -> Path:
    """edge.toml and one camera file per camera {id: (scene, url, analysis_fps)}; defaults otherwise."""
    files = []
    for camera_id, (scene, url, fps) in cameras.items():
        table = scene.camera | {"id": camera_id, "url": url, "analysis_fps": fps,
                                "frame_size": [scene.composite_size[0], scene.composite_size[1]]}
        path = out / f"{camera_id}.toml"
        path.write_text(camera_toml(table))
        files.append(str(path))
    edge = out / "edge.toml"
    edge.write_text(camera_toml({
        "cameras": files,
        "agent": {"id": "bench"},
        "storage": {"dir": str(out / "var")},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "models": {"default": {"manifest": str(MANIFEST)}},
    }))
    return edge


def scrape(port: int) -> dict[str, dict[str, float]]:
    """{metric sample name: {camera: value}} of the agent's camera counters."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "camera" in sample.labels and sample.name.endswith("_total"):
                values.setdefault(sample.name, {})[sample.labels["camera"]] = sample.value
    return values


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks by thread kind: camera readers (decoding), analysis workers, the rest."""
    kinds: dict[str, int] = {"decode": 0, "analysis": 0, "other": 0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            after = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        kind = "decode" if name.startswith("camera-") else "analysis" if name.startswith("analysis-") else "other"
        kinds[kind] += int(after[11]) + int(after[12])
    return kinds


def connected_at(log: Path) -> dict[str, float]:
    """Wall time each camera first connected, from the agent's log."""
    times: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if "event=camera_connected" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        ts = datetime.fromisoformat(fields["ts"]).timestamp()
        times.setdefault(fields["camera"], ts)
    return times


def first_openings(db: Path) -> dict[str, float]:
    """Wall time the first ``opened`` ticket of each camera was stored."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT payload, created_at FROM messages WHERE kind = 'ticket' ORDER BY id").fetchall()
    opened: dict[str, float] = {}
    for payload, created_at in rows:
        doc = json.loads(payload)
        if doc.get("event") == "opened":
            opened.setdefault(doc["camera_id"], created_at)
    return opened


@dataclass
class AgentRun:
    cameras: int
    seconds: float
    cpu_cores: float  # process CPU over the window, in cores
    by_thread: dict[str, float]  # cores by thread kind
    rss_mb: float  # median over the window
    server_cpu_cores: float
    box_cpu_cores: float  # the whole box over the window: what else ran beside the agent and server
    rates: dict[str, float] = field(default_factory=dict)  # analysed frames per second, per camera
    superseded: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, float] = field(default_factory=dict)  # detections reused, share of analysed
    latency_s: dict[str, float | None] = field(default_factory=dict)  # from the truth's start


def wait_connected(proc: subprocess.Popen, log: Path, cameras: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(connected_at(log)) < cameras:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"agent: {len(connected_at(log))} of {cameras} cameras connected; see {log}")
        time.sleep(0.5)


def run_agent(cameras: dict[str, tuple[Scene, str, float]], seconds: float, server: RtspServer,
              work: Path) -> AgentRun:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    edge = write_box(work, cameras, port)
    log = work / "agent.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(edge), "run"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_connected(proc, log, len(cameras))
        time.sleep(5.0)  # the first GOPs: decode plans settle, the scene models start
        before, threads0, server0, t0 = scrape(port), thread_ticks(proc.pid), live_sample(server.proc.pid), time.monotonic()
        ticks0, box0 = live_sample(proc.pid)["ticks"], box_busy()
        rss = []
        while time.monotonic() - t0 < seconds:
            time.sleep(2.0)
            rss.append(live_sample(proc.pid)["rss_mb"])
        after, threads1, server1, t1 = scrape(port), thread_ticks(proc.pid), live_sample(server.proc.pid), time.monotonic()
        ticks1, box1 = live_sample(proc.pid)["ticks"], box_busy()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    span = t1 - t0
    run = AgentRun(len(cameras), span, (ticks1 - ticks0) / TICK / span,
                   {k: (threads1[k] - threads0[k]) / TICK / span for k in threads0}, statistics.median(rss),
                   (server1["ticks"] - server0["ticks"]) / TICK / span,
                   (box1[0] - box0[0]) / (box1[1] - box0[1]) * (os.cpu_count() or 1))
    delta = {name: {cam: after[name][cam] - before[name].get(cam, 0.0) for cam in after[name]} for name in after}
    analysed = delta["edge_camera_frames_analysed_total"]
    run.rates = {cam: n / span for cam, n in analysed.items()}
    run.superseded = {cam: n / span for cam, n in delta["edge_camera_frames_superseded_total"].items()}
    run.skipped = {cam: n / max(analysed[cam], 1) for cam, n in delta["edge_camera_detections_skipped_total"].items()}
    connected, opened = connected_at(log), first_openings(work / "var" / "outbox.sqlite")
    for cam, (scene, _, _) in cameras.items():
        run.latency_s[cam] = (opened[cam] - connected[cam] - scene.truth_start_s) if cam in opened else None
    return run


def naive_worker(urls: list[str], seconds: float, detect_every: int) -> dict:
    """The pipeline a user would write: per camera a thread reading every frame with
    cv2.VideoCapture and running the detector on one frame in ``detect_every``. Measured after a
    warm-up of 5 s; returns frames read and detected per second and the process CPU in cores."""
    from agent.detect import load_detector

    detector = load_detector(MANIFEST, threads=2)
    counts = {url: [0, 0] for url in urls}
    stop = threading.Event()

    def read(url: str) -> None:
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        while not stop.is_set():
            ok, frame = capture.read()
            if not ok:
                break
            counts[url][0] += 1
            if counts[url][0] % detect_every == 0:
                detector.detect(frame)
                counts[url][1] += 1
        capture.release()

    threads = [threading.Thread(target=read, args=(url,), daemon=True) for url in urls]
    for thread in threads:
        thread.start()
    time.sleep(5.0)
    usage0, read0, t0 = resource.getrusage(resource.RUSAGE_SELF), {u: list(c) for u, c in counts.items()}, time.monotonic()
    time.sleep(seconds)
    usage1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(timeout=10)  # a thread killed inside cv2's read at exit aborts the process
    span = t1 - t0
    cpu = (usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime) / span
    return {"cameras": len(urls), "cpu_cores": cpu,
            "read_fps": [(counts[u][0] - read0[u][0]) / span for u in urls],
            "detect_fps": [(counts[u][1] - read0[u][1]) / span for u in urls]}


def run_naive(urls: list[str], seconds: float, detect_every: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--naive-worker", json.dumps(urls), "--seconds", str(seconds),
                          "--detect-every", str(detect_every)], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def live_sample(pid: int) -> dict:
    """proc_sample() of a process the benchmark keeps running."""
    sample = proc_sample(pid)
    if sample is None:
        raise RuntimeError(f"process {pid} ended during the benchmark")
    return sample


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(run: AgentRun, statics: list[str], asked_fps: float, dwell_s: float) -> dict:
    rates = [run.rates.get(cam, 0.0) for cam in statics]
    latencies = [latency for cam in statics if (latency := run.latency_s.get(cam)) is not None]
    return {
        "cameras": len(statics), "asked_fps": asked_fps,
        "rate_min": min(rates), "rate_mean": statistics.fmean(rates),
        "at_least_asked_share": sum(r >= 0.95 * asked_fps for r in rates) / len(rates),
        "cpu_cores": run.cpu_cores, "by_thread": run.by_thread, "rss_mb": run.rss_mb,
        "server_cpu_cores": run.server_cpu_cores, "box_cpu_cores": run.box_cpu_cores,
        "superseded_per_s": sum(run.superseded.get(cam, 0.0) for cam in statics),
        "detections_skipped_share": statistics.fmean(run.skipped.get(cam, 0.0) for cam in statics),
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p95_s": percentile(latencies, 0.95) if latencies else None,
        "latency_max_s": max(latencies) if latencies else None,
        "tickets_missing": len(statics) - len(latencies), "dwell_s": dwell_s,
    }


def main_run(args) -> dict:
    street = prepare_scene("tools/bench_recipes/litter_lawn_late.toml", (1920, 1080))
    lift = prepare_scene("scenarios/lift_ebike_car.toml", None) if args.lift else None
    statics = [f"street{i:02d}" for i in range(args.cameras)]
    mounts = {f"/{cam}": street.video for cam in statics + ["single"]}
    mounts |= {f"/naive{i}": street.video for i in range(args.naive + 1)}
    if lift:
        mounts |= {"/lift": lift.video, "/liftalone": lift.video}
    server = RtspServer(mounts)
    figures: dict = {"args": vars(args)}
    tmp = args.work or Path(tempfile.mkdtemp(prefix="bench-cameras-"))
    try:
        cams = {cam: (street, server.urls[f"/{cam}"], args.fps) for cam in statics}
        if lift:
            cams["lift"] = (lift, server.urls["/lift"], LIFT_FPS)
        main = run_agent(cams, args.seconds, server, Path(tmp) / "main")
        figures["agent"] = summary(main, statics, args.fps, street.dwell_s)
        if lift:
            figures["agent"]["lift_rate"] = main.rates.get("lift", 0.0)
            alone = run_agent({"lift": (lift, server.urls["/liftalone"], LIFT_FPS)}, 30.0, server, Path(tmp) / "lift")
            figures["lift_alone"] = {"rate": alone.rates.get("lift", 0.0), "cpu_cores": alone.cpu_cores,
                                     "by_thread": alone.by_thread}
        one = run_agent({"single": (street, server.urls["/single"], args.fps)}, 30.0, server, Path(tmp) / "one")
        figures["agent_one_camera"] = summary(one, ["single"], args.fps, street.dwell_s)
        every = round(OUT_FPS / args.fps)
        naive_urls = [server.urls[f"/naive{i}"] for i in range(args.naive)]
        figures["naive_cadence"] = run_naive(naive_urls, 30.0, every)
        figures["naive_every_frame"] = run_naive([server.urls[f"/naive{args.naive}"]], 30.0, 1)
    finally:
        server.stop()
        if args.work is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return figures


def ratios(fig: dict) -> dict:
    """Per camera against the naive pipelines. The agent's figure is its one-camera run, analysed
    at the cadence asked like the naive one; on a loaded box an agent camera costs less because it
    is analysed less often, which would flatter the ratio."""
    agent, one = fig["agent"], fig["agent_one_camera"]
    per_camera = one["cpu_cores"]
    naive = fig["naive_cadence"]["cpu_cores"] / fig["naive_cadence"]["cameras"]
    every = fig["naive_every_frame"]
    # It cannot keep up with 25 fps on this box: the cost of keeping up, from the frames it managed.
    every_cost = every["cpu_cores"] * OUT_FPS / max(every["detect_fps"][0], 1e-6)
    return {"agent_cpu_per_camera": per_camera,
            "agent_cpu_share_loaded": agent["cpu_cores"] / (agent["cameras"] + (1 if "lift_rate" in agent else 0)),
            "naive_cpu_per_camera": naive, "naive_every_frame_cost": every_cost,
            "ratio_naive": naive / per_camera, "ratio_every_frame": every_cost / per_camera,
            "rss_per_added_camera_mb": (agent["rss_mb"] - one["rss_mb"]) / max(agent["cameras"] - 1, 1)}


def table(fig: dict) -> str:
    a, r = fig["agent"], fig["ratios"]
    lat = (f"p50 {a['latency_p50_s']:.1f} s, p95 {a['latency_p95_s']:.1f} s, max {a['latency_max_s']:.1f} s"
           if a["latency_p95_s"] is not None else "no ticket")
    rows = [
        ("static 1080p25 cameras (litter, GOP 50)", f"{a['cameras']} at {a['asked_fps']} fps asked"),
        ("analysis rate achieved", (f"min {a['rate_min']:.2f}, mean {a['rate_mean']:.2f} fps; "
                                    f"{a['at_least_asked_share']:.0%} of cameras at >= 95% of asked")),
        ("agent CPU (cores)", (f"{a['cpu_cores']:.2f} = decode {a['by_thread']['decode']:.2f} + analysis "
                               f"{a['by_thread']['analysis']:.2f} + other {a['by_thread']['other']:.2f}")),
        ("agent CPU per camera: one camera alone at the cadence asked; share when loaded",
         f"{100 * r['agent_cpu_per_camera']:.1f}% of a core; {100 * r['agent_cpu_share_loaded']:.1f}%"),
        ("detections reused (change gate)", f"{a['detections_skipped_share']:.0%} of analysed frames"),
        ("RSS", f"{a['rss_mb']:.0f} MB; {r['rss_per_added_camera_mb']:.1f} MB per added camera"),
        ("ticket latency from truth (dwell {:.0f} s)".format(a["dwell_s"]),
         f"{lat}; {a['tickets_missing']} cameras without a ticket"),
        ("RTSP server CPU (not the agent's); whole box", (f"{a['server_cpu_cores']:.2f} cores; box busy "
                                                           f"{a['box_cpu_cores']:.2f} of {os.cpu_count()} cores")),
        ("naive: cv2.VideoCapture every frame + detector at the same cadence",
         (f"{100 * r['naive_cpu_per_camera']:.1f}% of a core per camera ({fig['naive_cadence']['cameras']} "
          f"cameras): **{r['ratio_naive']:.1f}x** the agent's")),
        ("naive: detector on every frame (cost to keep up at 25 fps)",
         f"{100 * r['naive_every_frame_cost']:.0f}% of a core per camera: **{r['ratio_every_frame']:.0f}x** the agent's"),
    ]
    if "lift_alone" in fig:
        rows.insert(2, ("lift camera (5 fps, full decode) among them", f"{a['lift_rate']:.2f} fps achieved"))
        la = fig["lift_alone"]
        rows.insert(3, ("lift camera alone", f"{la['rate']:.2f} fps, {100 * la['cpu_cores']:.1f}% of a core"))
    return "| measure | result |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=40)
    parser.add_argument("--fps", type=float, default=0.5, help="analysis fps of the static cameras")
    parser.add_argument("--seconds", type=float, default=90.0, help="measuring window of the main run")
    parser.add_argument("--lift", action="store_true", help="add a lift camera at 5 fps")
    parser.add_argument("--naive", type=int, default=4, help="cameras of the naive same-cadence baseline")
    parser.add_argument("--naive-worker", help=argparse.SUPPRESS)
    parser.add_argument("--detect-every", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help="where the runs' files go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=CACHE / "bench_cameras.json")
    args = parser.parse_args(argv)
    if args.naive_worker:
        print(json.dumps(naive_worker(json.loads(args.naive_worker), args.seconds, args.detect_every)))
        return 0
    started = time.time()
    figures = main_run(args)
    figures["ratios"] = ratios(figures)
    figures["machine"] = {"cores": os.cpu_count(), "when": datetime.now().isoformat(timespec="seconds"),
                          "took_s": round(time.time() - started)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2, default=str))
    print(table(figures))
    print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
