#!/usr/bin/env python3
"""Soak: hours of simulated street time through the real agent in minutes of wall time.

N file cameras play looped footage as fast as it decodes (``realtime = false``, ``loop = true``),
each analysed at a low ``analysis_fps`` so that N x the simulated hours fit in minutes on the box.
Zones with a short-dwell ``object_dwell`` rule on people, no cooldown and a short clear time make
tickets open and clear all the time, with snapshots and clips; a small evidence quota makes the
storage janitor prune during the run. The soak starts its own mosquitto (persistent, on a free port
of 127.0.0.1), a subscriber with a persistent MQTT 5 session, and the agent as its own process
(``python -m agent.cli -c edge.toml run``), then stops the broker for ``--down-for`` seconds every
``--flap-every`` seconds.

Every ``--sample-every`` seconds it samples the agent's RSS and CPU (/proc/<pid>/status, stat) and
reads per-camera progress from the retained status topic. A worker is stuck when its
``frames_analysed`` does not grow for ``--stuck-after`` seconds of the agent's own status clock.
When every camera has covered ``--simulated-hours`` of media time (frames_analysed / analysis_fps)
it makes sure the broker is up, lets the backlog drain, stops the agent with SIGTERM and checks:

- the agent exited 0 and never crashed;
- every outbox row is delivered (``delivered_at`` set); ticket seqs are 1..N without gaps;
- every stored ticket message reached the subscriber and, deduplicated by (ticket_id, seq), they
  arrived in seq order; every evidence item a ticket names arrived with its sha256;
- no worker was stuck;
- RSS growth after warm-up (the first sample once the slowest camera passed ``--warmup`` of the
  run) stayed within ``--max-growth-mb``.

It prints a Markdown table and writes ``soak.json``, ``soak.md``, ``samples.csv`` and the logs into
``--out``. Exit 0: all checks passed; 1: a check failed; 2: the soak itself could not run.

    .venv/bin/python tools/soak.py --cameras 4 --simulated-hours 1 --analysis-fps 0.5 \\
        --flap-every 60 --down-for 15 --out .cache/soak
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from agent.ticket_store import Status, TicketStore  # noqa: E402
from tools import shipped_manifest  # noqa: E402
from tools.fetch_footage import ensure_footage  # noqa: E402

AGENT_ID = "soak-box"
PREFIX = "cityops"
MANIFEST = shipped_manifest()
HOST = "127.0.0.1"
# CPU cost of one NanoDet-g 416 inference with 2 onnxruntime threads on this project's box
# (tools/bench.py, docs/performance.md), plus what else an analysed frame costs (BGR conversion,
# rules, a view check every 5 s, snapshots): for the wall-time estimate only.
DETECT_CPU_MS = 74.0
ANALYSED_FRAME_OVERHEAD_MS = 60.0
CPU_EFFICIENCY = 0.85  # the share of the cores the agent's threads keep busy when saturated
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Zones: the lower part of each picture, where people walk (bottom-centre anchor).
# The view check stays on for vtest (a fixed camera); bikes.mp4 is filmed by a moving camera, which
# the view check rightly calls "shifted" and then suspends the camera's zones.
FOOTAGE = {
    "vtest.mp4": ("[[0, 330], [768, 330], [768, 576], [0, 576]]", True),
    "bikes.mp4": ("[[0, 120], [640, 120], [640, 272], [0, 272]]", False),
}

CAMERA_TOML = """\
id = "{camera_id}"
name = "soak {camera_id} ({footage})"
url = "{url}"
model = "default"
analysis_fps = {fps}
read_timeout_s = 5
realtime = false
loop = true
view_check = {view_check}

[location]
lat = 31.2304
lon = 121.4737
grid_code = "310101001001"

[zones.street]
polygon = {polygon}

[zones.street.rule]
type = "object_dwell"
classes = ["person"]
min_score = 0.4
min_dwell_s = {dwell}
max_gap_s = {gap}
clear_after_s = {clear}
cooldown_s = 0
"""

EDGE_TOML = """\
cameras = [{cameras}]

[agent]
id = "{agent_id}"

[storage]
dir = "var"
jpeg_quality = 85

[storage.limits]
evidence_quota_mb = {quota}
min_free_mb = 100
keep_delivered_s = {keep}

[models.default]
manifest = "{manifest}"
threads = 2
min_score = 0.35

[mqtt]
host = "{host}"
port = {port}
prefix = "{prefix}"
keepalive_s = 10
status_interval_s = {status_s}
reconnect_min_s = 0.5
reconnect_max_s = 4

[tickets]
reopen_window_s = 0
clips = {clips}
clip_pre_s = 2
clip_post_s = 2
"""


class Interrupted(Exception):
    """SIGTERM or SIGINT to the soak: clean up and report what there is."""


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def terminate(proc: subprocess.Popen | None, timeout: float) -> int | None:
    """SIGTERM the process we started, SIGKILL it if it does not go; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


class Broker:
    """Our own mosquitto on 127.0.0.1:<free port>, persistent across stop/start (as tests/conftest.py),
    with an unbounded per-client queue so the broker itself never drops a lagging subscriber's QoS 1
    messages (mosquitto's default keeps 1000)."""

    def __init__(self, workdir: Path):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise SystemExit("soak: mosquitto is not installed (apt-get install mosquitto)")
        self.exe, self.workdir = exe, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} {HOST}", "allow_anonymous true", "persistence true",
                 f"persistence_location {workdir}/", "max_queued_messages 0", "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice", "log_type information"]
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() comes first"
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; see {self.log}")
            if port_accepts(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept on {HOST}:{self.port} within {timeout} s; see {self.log}")

    def stop(self) -> None:
        terminate(self.proc, timeout=15)


# --------------------------------------------------------------------------- subscriber

@dataclass
class CameraProgress:
    frames_analysed: int = 0
    grew_at: float | None = None  # agent status time when frames_analysed last grew
    max_stall_s: float = 0.0
    max_frame_age_s: float = 0.0
    analysis_errors: int = 0
    decode_errors: int = 0
    disconnects: int = 0
    last_error: str = ""


@dataclass
class Received:
    tickets: list[tuple[str, int, str, str]] = field(default_factory=list)  # (ticket_id, seq, event, camera)
    evidence: set[tuple[str, str]] = field(default_factory=set)  # (topic, sha256) of complete items
    evidence_bad: list[str] = field(default_factory=list)
    messages: int = 0
    status_docs: int = 0


class Subscriber:
    """paho v2, MQTT 5, persistent session: the broker queues for it across its own restarts, so
    nothing the agent had acknowledged is lost to us. Records ticket keys, evidence hashes and the
    latest status; never keeps payloads beyond an incomplete chunked item."""

    def __init__(self, port: int, stuck_after_s: float, start_time: float):
        self.lock = threading.Lock()
        self.got = Received()
        self.cameras: dict[str, CameraProgress] = {}
        self.status: dict | None = None
        self.status_at = 0.0  # monotonic time of the last status received
        self.status_time = 0.0  # the agent's time in the newest status received
        self.stuck_after_s, self.start_time = stuck_after_s, start_time
        self.stuck: dict[str, float] = {}
        self._chunks: dict[tuple[str, str], dict[int, bytes]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"soak-sub-{port}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 1.0)  # type: ignore[arg-type]  # paho sleeps floats; hints say int
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3 * 3600
        self.client.connect(HOST, port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            raise RuntimeError("subscriber: subscription not acknowledged")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe(f"{PREFIX}/{AGENT_ID}/#", qos=1)

    def _on_message(self, client, userdata, msg):
        try:
            self._record(msg)
        except Exception as exc:  # noqa: BLE001 - a bad message must not kill paho's thread
            with self.lock:
                self.got.evidence_bad.append(f"{msg.topic}: {type(exc).__name__}: {exc}")

    def _record(self, msg) -> None:
        topic = msg.topic
        with self.lock:
            self.got.messages += 1
        if topic.endswith("/tickets"):
            doc = json.loads(msg.payload)
            with self.lock:
                self.got.tickets.append((doc["ticket_id"], doc["seq"], doc["event"], doc["camera_id"]))
        elif "/evidence/" in topic:
            user = dict(getattr(msg.properties, "UserProperty", None) or [])
            claimed = user.get("sha256", "")
            payload = bytes(msg.payload)
            with self.lock:
                if "chunk" not in user:
                    actual = hashlib.sha256(payload).hexdigest()
                    if claimed and claimed != actual:
                        self.got.evidence_bad.append(f"{topic}: sha256 {actual} != claimed {claimed}")
                    self.got.evidence.add((topic, actual))
                    return
                if (topic, claimed) in self.got.evidence:
                    return  # a resent chunk of an item already complete
                i, n = (int(x) for x in user["chunk"].split("/"))
                parts = self._chunks.setdefault((topic, claimed), {})
                parts[i] = payload
                if len(parts) == n:
                    del self._chunks[(topic, claimed)]
                    actual = hashlib.sha256(b"".join(parts[k] for k in range(1, n + 1))).hexdigest()
                    if actual != claimed:
                        self.got.evidence_bad.append(f"{topic}: chunks hash {actual} != claimed {claimed}")
                    self.got.evidence.add((topic, actual))
        elif topic.endswith("/status"):
            self._on_status(json.loads(msg.payload))

    def _on_status(self, doc: dict) -> None:
        t = datetime.fromisoformat(doc["time"]).timestamp()
        with self.lock:
            self.got.status_docs += 1
            if t < self.start_time:
                return  # a retained status from before this run
            if self.status is None or t >= datetime.fromisoformat(
                    self.status["time"]).timestamp():
                self.status, self.status_at = doc, time.monotonic()
            self.status_time = max(self.status_time, t)
            for cam in doc.get("cameras", []):
                name = cam.get("camera_id") or cam.get("camera")  # the key was "camera" before
                p = self.cameras.setdefault(name, CameraProgress(grew_at=self.start_time))
                fa = cam.get("frames_analysed") or 0
                if fa > p.frames_analysed:
                    p.frames_analysed, p.grew_at = fa, max(p.grew_at or t, t)
                elif p.grew_at is not None and t > p.grew_at:
                    stall = t - p.grew_at
                    p.max_stall_s = max(p.max_stall_s, stall)
                    if stall > self.stuck_after_s:
                        self.stuck[name] = max(self.stuck.get(name, 0.0), stall)
                age = cam.get("last_frame_age_s")
                if age is not None:
                    p.max_frame_age_s = max(p.max_frame_age_s, age)
                p.analysis_errors = cam.get("analysis_errors", 0)
                p.decode_errors = cam.get("decode_errors", 0)
                p.disconnects = cam.get("disconnects", 0)
                p.last_error = cam.get("last_error", "")

    def ticket_keys(self) -> list[tuple[str, int]]:
        with self.lock:
            return [(t, s) for t, s, _, _ in self.got.tickets]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------- sampling

def proc_sample(pid: int) -> dict | None:
    """RSS (MB), CPU ticks, threads and open fds of one of our processes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    after = stat.rsplit(")", 1)[1].split()
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "hwm_mb": int(fields["VmHWM"].split()[0]) / 1024,
            "threads": int(fields["Threads"]), "fds": fds, "ticks": int(after[11]) + int(after[12])}


def box_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole box: how much of it others used too."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in cpu]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def decode_ms_per_frame(path: Path, frames: int = 150) -> tuple[float, float]:
    """(CPU ms per decoded frame, frames per media second) of a file, measured here."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        n = 0
        t0 = time.process_time()
        for packet in container.demux(stream):
            n += len(packet.decode())
            if n >= frames:
                break
        spent = time.process_time() - t0
    return 1000.0 * spent / max(n, 1), fps


# --------------------------------------------------------------------------- the soak

def write_box(out: Path, args, port: int, footage: dict[str, Path]) -> tuple[Path, list[dict]]:
    cams_dir = out / "cameras"
    cams_dir.mkdir(parents=True, exist_ok=True)
    names = ["vtest.mp4", "bikes.mp4"] if args.footage == "mixed" else ["vtest.mp4"]
    period = 1.0 / args.analysis_fps
    cameras = []
    for i in range(args.cameras):
        name = names[i % len(names)]
        camera_id = f"cam-{i + 1:02d}"
        # Dwell: two analysed frames in a row; gap and clear: survive one missed frame.
        (cams_dir / f"{camera_id}.toml").write_text(CAMERA_TOML.format(
            camera_id=camera_id, footage=name, url=footage[name], fps=f"{args.analysis_fps:g}",
            polygon=FOOTAGE[name][0], view_check=str(FOOTAGE[name][1]).lower(), dwell=f"{period:g}",
            gap=f"{2 * period:g}", clear=f"{2 * period:g}"))
        cameras.append({"id": camera_id, "footage": name})
    edge = out / "edge.toml"
    edge.write_text(EDGE_TOML.format(
        cameras=", ".join(f'"cameras/{c["id"]}.toml"' for c in cameras), agent_id=AGENT_ID,
        quota=f"{args.evidence_quota_mb:g}", keep=f"{args.keep_delivered_s:g}", manifest=MANIFEST, host=HOST,
        port=port, prefix=PREFIX, status_s=f"{args.status_interval:g}", clips=str(not args.no_clips).lower()))
    return edge, cameras


def expected_wall_s(args, cameras: list[dict], footage: dict[str, Path]) -> tuple[float, dict]:
    """CPU the run needs over the cores it has: every source frame is decoded (realtime = false
    reads as fast as decode allows), every sampled frame also goes through the detector."""
    media_s = args.simulated_hours * 3600
    measured = {name: decode_ms_per_frame(footage[name]) for name in {c["footage"] for c in cameras}}
    per_media_s = {name: (ms * fps + args.analysis_fps * (DETECT_CPU_MS + ANALYSED_FRAME_OVERHEAD_MS)) / 1000
                   for name, (ms, fps) in measured.items()}
    cpu_s = sum(media_s * per_media_s[c["footage"]] for c in cameras)
    cores = os.cpu_count() or 1
    # Others may be using the box too: what share of it is idle now.
    busy0, total0 = box_busy()
    time.sleep(2.0)
    busy1, total1 = box_busy()
    idle_share = 1.0 - (busy1 - busy0) / max(total1 - total0, 1)
    wall = cpu_s / (cores * CPU_EFFICIENCY)
    wall_now = cpu_s / max(cores * idle_share * CPU_EFFICIENCY, 0.25)
    return wall, {"decode_ms_per_frame": {k: round(v[0], 2) for k, v in measured.items()},
                  "source_fps": {k: v[1] for k, v in measured.items()},
                  "cpu_s_per_media_s": {k: round(v, 4) for k, v in per_media_s.items()},
                  "cpu_s": round(cpu_s), "cores": cores, "idle_share_at_start": round(idle_share, 2),
                  "expected_wall_min_at_current_load": round(wall_now / 60, 1)}


def progress_h(sub: Subscriber, cameras: list[dict], fps: float) -> dict[str, float]:
    with sub.lock:
        return {c["id"]: sub.cameras.get(c["id"], CameraProgress()).frames_analysed / fps / 3600 for c in cameras}


def outbox_rows(db_path: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, kind, ticket_id, payload, delivered_at FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


def outbox_query(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


class ReadOnlyOutbox:
    """The running agent's outbox file, read from this process (never written): what a
    :class:`TicketStore` reads the agent's tickets through."""

    def __init__(self, db_path: Path):
        self.db_path = db_path

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return outbox_query(self.db_path, sql, params)


def pending_rows(db_path: Path) -> int | None:
    """Rows the agent stored and the broker has not acknowledged: the backlog an outage built."""
    try:
        return outbox_query(db_path, "SELECT COUNT(*) FROM messages WHERE delivered_at IS NULL")[0][0]
    except sqlite3.Error:
        return None


LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def scan_agent_log(path: Path) -> dict:
    """What the agent said about itself: pruning, errors, tracebacks."""
    counts: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    pruned_folders = pruned_rows = 0
    pressure = []
    tracebacks = 0
    examples: dict[str, str] = {}
    if not path.exists():
        return {}
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("Traceback"):
                tracebacks += 1
            if not line.startswith("ts="):
                continue
            kv = dict(LOG_FIELD.findall(line))
            event, level = kv.get("event", "?"), kv.get("level", "?")
            counts[event] += 1
            levels[level] += 1
            if level in ("warning", "error", "critical"):
                examples.setdefault(event, line.strip()[:400])
            if event == "storage_pruned":
                pruned_folders += int(kv.get("evidence_folders", 0))
                pruned_rows += int(kv.get("rows", 0))
                if kv.get("pressure", "-") not in ("-", '"-"'):
                    pressure.append(kv["pressure"].strip('"'))
    return {"events": dict(counts), "levels": dict(levels), "pruned_evidence_folders": pruned_folders,
            "pruned_rows": pruned_rows, "pressure_reports": len(pressure),
            "pressure_example": pressure[-1] if pressure else None, "tracebacks": tracebacks,
            "warning_examples": examples}


def check_delivery(db_path: Path, sub: Subscriber) -> dict:
    rows = outbox_rows(db_path)
    undelivered = [r[0] for r in rows if r[4] is None]
    tickets = [json.loads(r[3]) for r in rows if r[1] == "ticket"]
    stored_keys = [(d["ticket_id"], d["seq"]) for d in tickets]
    seqs = [d["seq"] for d in tickets]
    counter = outbox_query(db_path, "SELECT value FROM counters WHERE name = 'ticket_seq'")
    last_seq = counter[0][0] if counter else 0
    received = sub.ticket_keys()
    first: dict[tuple[str, int], None] = {}
    for key in received:
        first.setdefault(key, None)
    arrived = list(first)
    arrived_seqs = [s for _, s in arrived]
    out_of_order = sum(1 for a, b in itertools.pairwise(arrived_seqs) if b < a)
    missing = [k for k in stored_keys if k not in first]
    with sub.lock:
        evidence = set(sub.got.evidence)
        evidence_bad = list(sub.got.evidence_bad)
    named = {(e["topic"], e["sha256"]) for d in tickets for e in d.get("evidence", [])}
    evidence_missing = sorted(named - evidence)
    events = Counter(d["event"] for d in tickets)
    statuses = TicketStore(ReadOnlyOutbox(db_path)).count_by_status()
    return {
        "messages_stored": len(rows),
        "messages_by_kind": dict(Counter(r[1] for r in rows)),
        "undelivered": len(undelivered),
        "undelivered_ids": undelivered[:20],
        "ticket_messages": len(tickets),
        "tickets": len({d["ticket_id"] for d in tickets}),
        "events": dict(events),
        "tickets_by_status_at_end": statuses,
        "seq_contiguous": seqs == list(range(1, len(seqs) + 1)) and last_seq == len(seqs),
        "seq_last": last_seq,
        "received_ticket_messages_raw": len(received),
        "received_ticket_messages_dedup": len(arrived),
        "duplicates_received": len(received) - len(arrived),
        "missing_at_subscriber": len(missing),
        "missing_examples": missing[:10],
        "unexpected_at_subscriber": len(set(first) - set(stored_keys)),
        "out_of_order": out_of_order,
        "evidence_items_named": len(named),
        "evidence_missing": len(evidence_missing),
        "evidence_missing_examples": [t for t, _ in evidence_missing[:10]],
        "evidence_bad": evidence_bad[:10],
    }


def lifecycle_anomalies(db_path: Path) -> dict:
    """Tickets that never cleared though later tickets of the same zone opened: each zone should
    have at most one open ticket, the current one."""
    tickets = TicketStore(ReadOnlyOutbox(db_path)).all()
    open_by_zone = Counter((t.camera, t.zone) for t in tickets if t.status is Status.OPEN)
    extra = {f"{c}/{z}": n - 1 for (c, z), n in open_by_zone.items() if n > 1}
    return {"open_tickets": sum(open_by_zone.values()), "zones_with_several_open": extra}


def rss_figures(samples: list[dict], warm_index: int) -> dict:
    rss = [s["rss_mb"] for s in samples if s.get("rss_mb") is not None]
    if not rss:
        return {}
    warm_index = min(warm_index, len(rss) - 1)
    warm = rss[warm_index]
    after = rss[warm_index:]
    # Least-squares slope after warm-up, per simulated hour of the slowest camera: a leak shows as
    # a steady positive slope, allocator noise as a flat line with bumps.
    pts = [(s["sim_h_min"], s["rss_mb"]) for s in samples[warm_index:] if s.get("rss_mb") is not None]
    slope = None
    if len(pts) >= 3:
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        den = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / den if den else None
    return {"rss_start_mb": round(rss[0], 1), "rss_warm_mb": round(warm, 1), "rss_max_mb": round(max(after), 1),
            "rss_end_mb": round(rss[-1], 1), "growth_max_mb": round(max(after) - warm, 1),
            "growth_end_mb": round(rss[-1] - warm, 1),
            "slope_mb_per_sim_h": round(slope, 1) if slope is not None else None}


def table(fig: dict) -> str:
    r = fig["rss"]
    d = fig["delivery"]
    rows = [
        ("cameras", (f"{fig['cameras']} ({', '.join(sorted({c['footage'] for c in fig['camera_list']}))}, "
                    f"looped, analysed at {fig['analysis_fps']:g} fps)")),
        ("simulated hours per camera (min / total)",
         f"{fig['simulated_h_min']:.2f} / {fig['simulated_h_total']:.2f}"),
        ("wall minutes (expected)", f"{fig['wall_min']:.1f} ({fig['expected_wall_min']:.1f})"),
        ("speed-up (simulated h per wall h, all cameras)", f"{fig['speedup']:.0f}x"),
        ("tickets / ticket messages", (f"{d['tickets']} / {d['ticket_messages']} "
                                      f"({', '.join(f'{k} {v}' for k, v in sorted(d['events'].items()))})")),
        ("messages stored (all kinds)", (f"{d['messages_stored']} "
                                         f"({', '.join(f'{k} {v}' for k, v in sorted(d['messages_by_kind'].items()))})")),
        ("broker outages (down s each, agent back online after: max s)",
         f"{fig['outages']} ({fig['down_for_s']:g} s, {fig['reconnect_max_s']})"),
        ("outbox backlog when the broker came back (max / sum over outages)",
         f"{fig['backlog_max']} / {fig['backlog_sum']} rows"),
        ("RSS warm-up / max / end (MB)", f"{r.get('rss_warm_mb')} / {r.get('rss_max_mb')} / {r.get('rss_end_mb')}"),
        ("RSS growth after warm-up: max / end (bound)",
         f"{r.get('growth_max_mb')} / {r.get('growth_end_mb')} MB ({fig['max_growth_mb']:g} MB)"),
        ("RSS slope after warm-up", f"{r.get('slope_mb_per_sim_h')} MB per simulated hour"),
        ("agent CPU (mean, % of one core; box busy)", (f"{fig['cpu_mean_pct']:.0f}% ({fig['box_busy_pct']:.0f}% "
                                                       f"of {fig['cores']} cores)")),
        ("threads / open fds (warm-up → end)", f"{fig['threads']} / {fig['fds']}"),
        ("stuck workers (longest stall of frames_analysed)", f"{len(fig['stuck'])} ({fig['max_stall_s']:.0f} s)"),
        ("undelivered outbox rows / missing at subscriber / out of order",
         f"{d['undelivered']} / {d['missing_at_subscriber']} / {d['out_of_order']}"),
        ("evidence items named / missing", f"{d['evidence_items_named']} / {d['evidence_missing']}"),
        ("duplicates received (at-least-once, before dedupe)", str(d["duplicates_received"])),
        ("janitor: evidence folders pruned", str(fig["log"].get("pruned_evidence_folders", 0))),
        ("open tickets at end (zones with more than one)",
         f"{fig['lifecycle']['open_tickets']} ({len(fig['lifecycle']['zones_with_several_open'])})"),
        ("agent exit code / stop took", f"{fig['agent_exit']} / {fig['stop_s']:.1f} s"),
        ("result", "PASS" if fig["passed"] else "FAIL: " + "; ".join(fig["failures"])),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


@dataclass
class Outage:
    """Bookkeeping of the broker flapping: when the next stop is due, the outage under way."""

    next_down: float
    history: list[dict] = field(default_factory=list)
    current: dict | None = None
    up_at: float | None = None  # wall time the broker came back, until the agent's status says it is too
    broker_since: float = 0.0   # monotonic time the broker last started


class Soak:
    """One soak run in phases: :meth:`prepare` the box, :meth:`drive` the agent while flapping the
    broker and sampling, :meth:`wind_down`, then :meth:`report` the checks and figures."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.db_path = self.out / "var" / "outbox.sqlite"
        self.agent: subprocess.Popen | None = None
        self.sub: Subscriber | None = None
        self.samples: list[dict] = []
        self.failures: list[str] = []
        self.agent_exit: int | None = None
        self.stop_s = 0.0
        self.crashed = self.interrupted = self.reached = False
        self.silent_max = 0.0
        self.wall_run = 0.0
        self.started_wall = time.time()
        self.t0 = self.agent_started = time.monotonic()
        self.outage = Outage(next_down=0.0)

    # ------------------------------------------------------------------ setting up
    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        # A fresh box every run: our own files under --out only.
        for name in ("var", "broker", "cameras"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in ("edge.toml", "agent.log", "samples.csv", "soak.json", "soak.md"):
            (self.out / name).unlink(missing_ok=True)
        footage = ensure_footage(log=print)
        self.broker = Broker(self.out / "broker")
        self.edge, self.cameras = write_box(self.out, self.args, self.broker.port, footage)
        self.expected, self.basis = expected_wall_s(self.args, self.cameras, footage)
        a, basis = self.args, self.basis
        print(f"soak: {a.cameras} cameras x {a.simulated_hours:g} simulated h at {a.analysis_fps:g} fps; "
              f"decode {basis['decode_ms_per_frame']} ms/frame measured, detector {DETECT_CPU_MS:g} ms CPU/frame, "
              f"{basis['cores']} cores -> ~{basis['cpu_s']} CPU s, expected wall ~{self.expected / 60:.1f} min on "
              f"an idle box, ~{basis['expected_wall_min_at_current_load']:.1f} min with "
              f"{basis['idle_share_at_start']:.0%} of it idle now (limit {a.max_wall_minutes:g} min)", flush=True)
        if basis["expected_wall_min_at_current_load"] > a.max_wall_minutes:
            print("soak: warning: the expected wall time exceeds --max-wall-minutes; lower --analysis-fps, "
                  "--cameras or --simulated-hours", flush=True)

    def start(self) -> None:
        self.broker.start()
        self.sub = Subscriber(self.broker.port, self.args.stuck_after, self.started_wall)
        with open(self.out / "agent.log", "wb") as agent_log:
            self.agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "-c", str(self.edge), "run"],
                                          cwd=REPO, stdout=agent_log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        print(f"soak: mosquitto pid {self.broker.pid} on {HOST}:{self.broker.port}, agent pid "
              f"{self.agent.pid}, out {self.out}", flush=True)

    @property
    def running_agent(self) -> subprocess.Popen:
        """The agent process: the phases after start() use it."""
        assert self.agent is not None, "start() comes first"
        return self.agent

    @property
    def subscriber(self) -> Subscriber:
        assert self.sub is not None, "start() comes first"
        return self.sub

    # ------------------------------------------------------------------ the run
    def drive(self) -> None:
        """One pass a second until every camera covered the simulated hours, the agent died or
        --max-wall-minutes ran out."""
        args = self.args
        self.agent_started = started = time.monotonic()
        self.outage = Outage(next_down=started + args.flap_every, broker_since=started)
        next_sample, next_print = started, started + 30
        prev: tuple[float, int, int, int] | None = None  # (t, agent ticks, box busy, box total)
        deadline = self.t0 + args.max_wall_minutes * 60
        for _ in range(int(args.max_wall_minutes * 60) + 10):
            now = time.monotonic()
            if now >= deadline:
                self.failures.append(f"did not reach {args.simulated_hours:g} simulated h per camera within "
                                     f"{args.max_wall_minutes:g} min")
                break
            if self.running_agent.poll() is not None:
                self.crashed = True
                self.failures.append(f"agent exited by itself with {self.running_agent.returncode} during the run")
                break
            self._flap(now)
            self._watch_status(now)
            if now >= next_sample:
                next_sample += args.sample_every
                prev = self._sample(now, prev)
                if self.samples[-1]["sim_h_min"] >= args.simulated_hours:
                    self.reached = True
                    break
            if now >= next_print:
                next_print += 30
                self._print_progress(now)
            time.sleep(1.0)
        self.wall_run = time.monotonic() - started

    def _flap(self, now: float) -> None:
        o, started = self.outage, self.agent_started
        if o.current is None and now >= o.next_down:
            self.broker.stop()
            o.current = {"down_at_s": round(now - started, 1),
                         "pending_at_down": (self.subscriber.status or {}).get("outbox", {}).get("pending")}
            o.history.append(o.current)
        elif o.current is not None and now - (started + o.current["down_at_s"]) >= self.args.down_for:
            o.current["pending_at_up"] = pending_rows(self.db_path)
            self.broker.start()
            o.broker_since = time.monotonic()
            o.up_at = time.time()
            o.current["up_at_s"] = round(time.monotonic() - started, 1)
            o.next_down = started + o.current["down_at_s"] + self.args.flap_every
            o.current = None

    def _watch_status(self, now: float) -> None:
        o, sub = self.outage, self.subscriber
        # The agent publishes its status on every connect: the first one stamped after the restart
        # says when it was back.
        if o.up_at is not None and sub.status_time >= o.up_at:
            o.history[-1]["agent_online_after_s"] = round(sub.status_time - o.up_at, 1)
            o.up_at = None
        # A silent status (broker up for a while, nothing from the agent) is a stuck agent too.
        if self.broker.running and now - o.broker_since > self.args.stuck_after and sub.status_at:
            self.silent_max = max(self.silent_max, now - max(sub.status_at, o.broker_since))

    def _sample(self, now: float, prev: tuple[float, int, int, int] | None) -> tuple[float, int, int, int] | None:
        ps = proc_sample(self.running_agent.pid)
        busy, total = box_busy()
        prog = progress_h(self.subscriber, self.cameras, self.args.analysis_fps)
        with self.subscriber.lock:
            st = self.subscriber.status or {}
        row = {"t_s": round(now - self.agent_started, 1), "sim_h_min": round(min(prog.values()), 4),
               "sim_h_total": round(sum(prog.values()), 4), "broker_up": self.broker.running,
               "pending": st.get("outbox", {}).get("pending"), "stored": st.get("outbox", {}).get("stored"),
               "evidence_mb": (st.get("storage") or {}).get("evidence_mb")}
        if ps is not None:
            row.update(rss_mb=round(ps["rss_mb"], 1), threads=ps["threads"], fds=ps["fds"])
            if prev is not None and now > prev[0]:
                row["cpu_pct"] = round(100.0 * (ps["ticks"] - prev[1]) / CLK_TCK / (now - prev[0]), 1)
                row["box_busy_pct"] = round(100.0 * (busy - prev[2]) / max(total - prev[3], 1), 1)
            prev = (now, ps["ticks"], busy, total)
        mps = proc_sample(self.broker.pid) if self.broker.running else None
        row["broker_rss_mb"] = round(mps["rss_mb"], 1) if mps else None
        self.samples.append(row)
        return prev

    def _print_progress(self, now: float) -> None:
        last = self.samples[-1] if self.samples else {}
        print(f"soak: {now - self.agent_started:6.0f} s  simulated h min {last.get('sim_h_min', 0):.2f}/"
              f"{self.args.simulated_hours:g}  rss {last.get('rss_mb')} MB  cpu {last.get('cpu_pct')}%  "
              f"pending {last.get('pending')}  outages {len(self.outage.history)}  broker "
              f"{'up' if self.broker.running else 'DOWN'}  stuck {sorted(self.subscriber.stuck) or '-'}", flush=True)

    # ------------------------------------------------------------------ winding down
    def wind_down(self) -> None:
        """Broker up, let the backlog drain (bounded), SIGTERM, then let the subscriber receive
        what the broker still has for it (bounded)."""
        if self.outage.current is not None:
            self.broker.start()
            self.outage.current.update(up_at_s=round(time.monotonic() - self.agent_started, 1), cut_short=True)
        if self.crashed:
            self.agent_exit = self.running_agent.returncode
        else:
            self._drain()
            stop_started = time.monotonic()
            self.agent_exit = terminate(self.agent, timeout=60)
            self.stop_s = time.monotonic() - stop_started
            if self.agent_exit != 0:
                self.failures.append(f"agent exited with {self.agent_exit} after SIGTERM")
        if self.db_path.exists():
            want = {(json.loads(p)["ticket_id"], json.loads(p)["seq"]) for (p,) in outbox_query(
                self.db_path, "SELECT payload FROM messages WHERE kind = 'ticket' AND delivered_at IS NOT NULL")}
            settle = time.monotonic() + 30
            while time.monotonic() < settle and not want <= set(self.subscriber.ticket_keys()):
                time.sleep(0.5)
            time.sleep(2)  # evidence follows its ticket message

    def _drain(self) -> None:
        args, sub = self.args, self.subscriber
        drain_until = time.monotonic() + args.drain_timeout
        while time.monotonic() < drain_until and self.running_agent.poll() is None:
            with sub.lock:
                st, fresh = sub.status, time.monotonic() - sub.status_at < 2 * args.status_interval
            if st and fresh and (st.get("outbox", {}).get("pending") or 0) <= args.drain_pending:
                return
            time.sleep(0.5)

    def clean_up(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent_exit = terminate(self.agent, timeout=30)
        if self.sub is not None:
            self.sub.close()
        self.broker.stop()

    # ------------------------------------------------------------------ checks and figures
    def check(self, delivery: dict, lifecycle: dict, log_summary: dict, rss: dict, stuck: dict) -> None:
        failures, args = self.failures, self.args
        if not (self.reached or self.interrupted or self.crashed or any("did not reach" in f for f in failures)):
            failures.append("stopped before every camera reached the simulated hours")
        if delivery["undelivered"]:
            failures.append(f"{delivery['undelivered']} outbox rows undelivered")
        if delivery["missing_at_subscriber"]:
            failures.append(f"{delivery['missing_at_subscriber']} ticket messages missing at the subscriber")
        if delivery["out_of_order"]:
            failures.append(f"{delivery['out_of_order']} ticket messages out of seq order")
        if not delivery["seq_contiguous"] and args.keep_delivered_s > self.wall_run:
            failures.append("ticket seqs in the outbox are not 1..N")
        if delivery["evidence_missing"] or delivery["evidence_bad"]:
            failures.append(f"{delivery['evidence_missing']} evidence items missing, "
                            f"{len(delivery['evidence_bad'])} bad")
        if self.silent_max > args.stuck_after:
            failures.append(f"no status from the agent for {self.silent_max:.0f} s while the broker was up")
        if stuck:
            failures.append(f"stuck workers: {', '.join(f'{k} ({v:.0f} s)' for k, v in sorted(stuck.items()))}")
        if rss and rss["growth_max_mb"] > args.max_growth_mb:
            failures.append(f"RSS grew {rss['growth_max_mb']} MB after warm-up (bound {args.max_growth_mb:g} MB)")
        if lifecycle["zones_with_several_open"]:
            failures.append("tickets never cleared: " + ", ".join(
                f"{k} has {v + 1} open" for k, v in sorted(lifecycle["zones_with_several_open"].items())))
        if log_summary.get("tracebacks"):
            failures.append(f"{log_summary['tracebacks']} tracebacks in the agent log")

    def figures(self) -> dict:
        """Every check's input and result, as soak.json holds them."""
        args, samples, outages = self.args, self.samples, self.outage.history
        delivery, lifecycle = check_delivery(self.db_path, self.subscriber), lifecycle_anomalies(self.db_path)
        log_summary = scan_agent_log(self.out / "agent.log")
        prog = progress_h(self.subscriber, self.cameras, args.analysis_fps)
        warm_index = next((i for i, s in enumerate(samples)
                           if s["sim_h_min"] >= args.warmup * args.simulated_hours), 0)
        rss = rss_figures(samples, warm_index)
        with self.subscriber.lock:
            stuck = dict(self.subscriber.stuck)
            cams = {k: vars(v).copy() for k, v in self.subscriber.cameras.items()}
        self.check(delivery, lifecycle, log_summary, rss, stuck)
        cpu = [s["cpu_pct"] for s in samples if "cpu_pct" in s]
        busy = [s["box_busy_pct"] for s in samples if "box_busy_pct" in s]
        after_warm = samples[warm_index:]
        return {
            "command": "python tools/soak.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
                       f"Python {platform.python_version()}",
            "date_utc": datetime.fromtimestamp(self.started_wall, UTC).strftime("%Y-%m-%d %H:%M"),
            "cameras": args.cameras, "camera_list": self.cameras, "analysis_fps": args.analysis_fps,
            "target_simulated_h": args.simulated_hours,
            "simulated_h_min": min(prog.values()), "simulated_h_total": sum(prog.values()),
            "simulated_h_by_camera": {k: round(v, 3) for k, v in prog.items()},
            "wall_min": self.wall_run / 60, "expected_wall_min": self.expected / 60, "expected_basis": self.basis,
            "speedup": sum(prog.values()) * 3600 / max(self.wall_run, 1),
            "outages": len(outages), "outage_list": outages, "down_for_s": args.down_for,
            "flap_every_s": args.flap_every,
            "backlog_max": max((o.get("pending_at_up") or 0 for o in outages), default=0),
            "backlog_sum": sum(o.get("pending_at_up") or 0 for o in outages),
            "reconnect_max_s": max((o.get("agent_online_after_s", 0) for o in outages), default=None),
            "rss": rss, "warm_index": warm_index, "max_growth_mb": args.max_growth_mb,
            "cpu_mean_pct": sum(cpu) / len(cpu) if cpu else 0.0,
            "box_busy_pct": sum(busy) / len(busy) if busy else 0.0, "cores": os.cpu_count(),
            "threads": f"{after_warm[0].get('threads')} → {after_warm[-1].get('threads')}" if after_warm else "-",
            "fds": f"{after_warm[0].get('fds')} → {after_warm[-1].get('fds')}" if after_warm else "-",
            "broker_rss_max_mb": max((s.get("broker_rss_mb") or 0 for s in samples), default=None),
            "evidence_mb_max": max((s.get("evidence_mb") or 0 for s in samples), default=None),
            "evidence_quota_mb": args.evidence_quota_mb,
            "status_silent_max_s": round(self.silent_max, 1), "stuck": stuck,
            "max_stall_s": max((c["max_stall_s"] for c in cams.values()), default=0.0), "camera_health": cams,
            "delivery": delivery, "lifecycle": lifecycle, "log": log_summary,
            "agent_exit": self.agent_exit, "stop_s": self.stop_s,
            "passed": not self.failures, "failures": self.failures,
        }

    def report(self) -> int:
        if not self.db_path.exists() or self.sub is None:
            print("soak: no outbox was written; see", self.out / "agent.log", file=sys.stderr)
            return 2
        fig = self.figures()
        out = self.out
        (out / "soak.json").write_text(json.dumps(fig, indent=2, ensure_ascii=False, default=str))
        with open(out / "samples.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for s in self.samples for k in s}))
            writer.writeheader()
            writer.writerows(self.samples)
        md = table(fig)
        (out / "soak.md").write_text(md + "\n")
        print()
        print(md)
        print(f"\nsoak: figures in {out / 'soak.json'}, samples in {out / 'samples.csv'}, agent log {out / 'agent.log'}")
        if fig["lifecycle"]["zones_with_several_open"]:
            print(f"soak: note: zones with several open tickets at the end: "
                  f"{fig['lifecycle']['zones_with_several_open']}")
        return 0 if fig["passed"] else 1


def run(args) -> int:
    soak = Soak(args)
    soak.prepare()

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        soak.start()
        soak.drive()
        soak.wind_down()
    except Interrupted as exc:
        soak.interrupted = True
        soak.failures.append(f"soak interrupted by {exc}")
        soak.wall_run = time.monotonic() - soak.t0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        soak.clean_up()
    return soak.report()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--simulated-hours", type=float, default=1.0, help="media time every camera must cover")
    p.add_argument("--analysis-fps", type=float, default=0.5)
    p.add_argument("--footage", choices=("mixed", "vtest"), default="mixed",
                   help="mixed: cameras alternate vtest.mp4 and bikes.mp4")
    p.add_argument("--flap-every", type=float, default=60.0, help="seconds from one broker stop to the next")
    p.add_argument("--down-for", type=float, default=15.0, help="seconds the broker stays down each time")
    p.add_argument("--out", default=str(REPO / ".cache" / "soak"))
    p.add_argument("--max-wall-minutes", type=float, default=30.0)
    p.add_argument("--max-growth-mb", type=float, default=50.0, help="RSS growth after warm-up that fails")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the run before the RSS baseline")
    p.add_argument("--stuck-after", type=float, default=60.0, help="seconds without analysed frames: stuck")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--status-interval", type=float, default=5.0, help="the agent's status_interval_s")
    p.add_argument("--evidence-quota-mb", type=float, default=20.0, help="small, so the janitor prunes")
    p.add_argument("--keep-delivered-s", type=float, default=7 * 86400.0,
                   help="outbox rows kept (default: all, so every one is checked)")
    p.add_argument("--no-clips", action="store_true", help="tickets without clips (default: clips on)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="at the end, wait this long for the backlog")
    p.add_argument("--drain-pending", type=int, default=40, help="...until at most this many rows are pending")
    args = p.parse_args(argv)
    if args.flap_every <= args.down_for:
        p.error("--flap-every must be longer than --down-for")
    if args.down_for + args.status_interval >= args.stuck_after:
        p.error("--down-for plus --status-interval must be shorter than --stuck-after (no status while down)")
    if args.cameras < 1 or args.simulated_hours <= 0 or args.analysis_fps <= 0:
        p.error("--cameras, --simulated-hours and --analysis-fps must be positive")
    try:
        return run(args)
    except (RuntimeError, OSError) as exc:  # the soak's own machinery, not a finding about the agent
        print(f"soak: could not run: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
