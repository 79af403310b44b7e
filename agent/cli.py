"""``edge-agent``: run the agent, check a box's config, replay footage through a camera's rules,
print the box's public key for enrolment on the platform; for technicians without the page,
calibrate a camera's ground from a table of points and take an annotated snapshot."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import signal
import stat
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import av
import cv2

from agent import __version__, calibration
from agent.annotated_video import AnnotatedVideo
from agent.app import Agent, precision_risks
from agent.calibration import LOCAL_M, WGS84, CalibrationError, GroundPoint
from agent.camera_calibration import store
from agent.clock import ManualClock, SystemClock
from agent.config import BoxConfig, CameraConfig, ZoneConfig, load_config
from agent.config_check import check_privacy, checked_detectors, load_detectors
from agent.detect import Detector
from agent.evidence import spot_check
from agent.ingest import grab_frame
from agent.logs import setup_logging
from agent.migrations import MIGRATIONS, DatabaseSchemaError
from agent.model_update import MODELS_DIR
from agent.pipeline import camera_tiler, scaled_zones
from agent.privacy import PrivacyParams
from agent.redact import redact
from agent.sdnotify import ServiceNotifier
from agent.service import AgentService
from agent.ticket_signing import KEY_FILE, DeviceKey, public_pem
from agent.typedtoml import ConfigError

EXIT_CONFIG = 2
EXIT_FAILED = 1
# Ground point tables: the header names the datum.
CSV_COLUMNS = {("x_px", "y_px", "lat", "lon"): WGS84, ("x_px", "y_px", "x_m", "y_m"): LOCAL_M}
# Rule keys whose right value depends on the street more than on the rule: `check` names them
# when a camera file leaves them at their defaults.
SCENE_DEPENDENT = frozenset({"min_dwell_s", "clear_after_s"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("-c", "--config", type=Path, default=Path("edge.toml"), help="the box's edge.toml")
    parser.add_argument("--version", action="version",
                        version=f"edge-agent {__version__} (database schema {MIGRATIONS[-1].version})")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent (SIGTERM stops it, SIGHUP reloads the config)")
    run.add_argument("--print-tickets", action="store_true", help="also print each ticket as JSON on stdout")
    sub.add_parser("check", help="validate config and models, print what would run")
    replay = sub.add_parser("replay", help="run one camera's rules over a video file as fast as possible")
    replay.add_argument("file", type=Path)
    replay.add_argument("--camera", required=True, help="camera id whose zones and rules to use")
    replay.add_argument("--store", type=Path, help="keep outbox and evidence here (default: a temp dir)")
    replay.add_argument("--start-time", type=_utc, default=None, metavar="ISO8601",
                        help="wall time of the file's first frame (default: now); fixes ticket times, "
                             "e.g. for comparing with ground truth")
    replay.add_argument("--annotate", type=Path, metavar="OUT.mp4",
                        help="also write the analysed frames with zones, detections, static objects and "
                             "each rule's state as an H.264 video")
    replay.add_argument("--progress-every", type=float, default=30.0, metavar="S",
                        help="say how far the replay is on stderr every 10%% of the file or every S "
                             "seconds, whichever comes first (default: 30)")
    page = sub.add_parser("calibrate-ui", help="serve the technician's calibration page (zones, rules, ground "
                                                "points, live preview); loopback only unless given a token")
    page.add_argument("--camera", action="append", default=[], metavar="ID", help="only this camera (repeatable)")
    page.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1); any other "
                                                          "needs a token")
    page.add_argument("--port", type=int, default=8088)
    page.add_argument("--token-file", type=Path, help="file whose first line is the page's token (mode 0600); "
                                                      "default: the EDGE_UI_TOKEN environment variable")
    sub.add_parser("key", help="print the box's public signing key (made if there is none yet) to enrol it "
                               "on the platform")
    calibrate = sub.add_parser("calibrate", help="fit a camera's ground calibration from a table of points, "
                                                 "save it and the frame as the view reference")
    calibrate.add_argument("camera", help="camera id")
    calibrate.add_argument("--points", type=Path, required=True,
                           help="CSV with a header: x_px,y_px,lat,lon or x_px,y_px,x_m,y_m")
    calibrate.add_argument("--datum", choices=calibration.DATUMS, help="default: what the header names")
    calibrate.add_argument("--origin", type=_lat_lon, metavar="LAT,LON",
                           help="lat,lon of the local frame's (0, 0); needed for x_m,y_m points")
    snapshot = sub.add_parser("snapshot", help="one frame from a camera with its zones and detections, people "
                                               "hidden as in evidence")
    snapshot.add_argument("camera", help="camera id")
    snapshot.add_argument("--out", type=Path, required=True, help="picture to write (.jpg or .png)")
    args = parser.parse_args(argv)

    try:
        # A broken calibration must not stop its own repair.
        config = load_config(args.config, strict_calibration=args.command not in ("calibrate", "calibrate-ui"))
        setup_logging(config.agent.log_level, config.agent.log_format.value)
        commands = {"run": cmd_run, "check": cmd_check, "replay": cmd_replay, "key": cmd_key,
                    "calibrate": cmd_calibrate, "snapshot": cmd_snapshot, "calibrate-ui": cmd_calibrate_ui}
        return commands[args.command](config, args)
    except ConfigError as exc:
        print(f"edge-agent: config error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except (CalibrationError, ConnectionError, DatabaseSchemaError) as exc:
        print(f"edge-agent: {args.command}: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED


_PRINT_LOCK = threading.Lock()  # messages come from camera, clipper and command threads


def print_ticket(doc: dict) -> None:
    with _PRINT_LOCK:
        print(json.dumps(doc, ensure_ascii=False), flush=True)


def cmd_run(config: BoxConfig, args) -> int:
    on_ticket = print_ticket if args.print_tickets else None
    service = AgentService(config, lambda box: Agent(box, on_ticket=on_ticket), ServiceNotifier.from_env())
    return service.run()


def cmd_check(config: BoxConfig, args) -> int:
    """What a SIGHUP's reload checks too (:func:`agent.service.reload_config`), printed."""
    detectors = checked_detectors(config)
    print(f"config {config.source_file}: agent {config.agent.id}")
    _print_models(detectors)
    _print_delivery(config)
    _print_secrets(config)
    for cam in config.cameras:
        _print_camera(cam)
    return 0


def _print_models(detectors: dict[str, Detector]) -> None:
    risks = precision_risks(detectors)
    for name, det in detectors.items():
        print(f"model {name}: {det.manifest.file.name} sha256 {det.sha256[:12]}… ok, "
              f"{len(det.class_names)} classes, input {det.manifest.input_size[0]}x{det.manifest.input_size[1]}, "
              f"{det.manifest.precision.value}, runs on {det.providers[0]}")
        if det.missing_providers:
            print(f"  warning: {', '.join(det.missing_providers)} not in this onnxruntime build; "
                  f"running on {det.providers[0]}")
        if name in risks:
            print(f"  warning: {risks[name]}")


def _print_delivery(config: BoxConfig) -> None:
    """Where messages go, where they wait, and who may command the box."""
    mqtt = config.mqtt
    print(f"mqtt: {mqtt.host}:{mqtt.port} prefix {mqtt.prefix}, {mqtt.mode()}" if mqtt
          else "mqtt: none (store locally only)")
    if mqtt and mqtt.insecure():
        print(f"  WARNING: {mqtt.insecure()}; messages can be read or forged on the network")
    print(f"storage: {config.storage.dir}")
    if config.commands:
        print(f"commands: signed with the key in {config.commands.key_file}, max skew {config.commands.max_skew_s:g} s")
    else:
        print("commands: no [commands] key_file, every command is refused")
        if mqtt:
            print("  warning: the platform cannot ack, verify or mute anything on this box")


def _print_secrets(config: BoxConfig) -> None:
    """The device key, and a warning for each secret file other users can read."""
    device_key = config.storage.dir / KEY_FILE
    secrets = config.secret_files()
    if device_key.is_file():
        print(f"device key: {device_key} (edge-agent key prints its public half)")
        secrets.append(("device key", device_key))
    else:
        print(f"device key: made on first start at {device_key}")
    for what, path in secrets:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:  # a secret is its owner's alone: group members are other users too
            print(f"  warning: {what} {path} is readable by other users (mode {mode:04o}); chmod 600 it")


def _print_camera(cam: CameraConfig) -> None:
    print(f"camera {cam.id}: {redact(cam.url)} model {cam.model} at {cam.analysis_fps:g} fps, "
          f"grid {cam.grid_code} ({cam.lat}, {cam.lon}), people in evidence: {_privacy(cam.privacy)}")
    if cam.calibration is not None:
        cal = cam.calibration
        print(f"  ground calibration: {cam.calibration_file} version {cal.version}, {len(cal.points)} points "
              f"on {cal.frame_size[0]}x{cal.frame_size[1]}, rms {cal.rms_px:.2f} px")
    if cam.password_in_file:
        print("  warning: its url holds the camera's password: move it to password_file or password_env, "
              "camera files get copied and committed")
    if cam.frame_size is not None:
        width, height = cam.frame_size
        print(f"  zones drawn on {width}x{height}, scaled to the stream's picture at connect")
    elif cam.zones:
        print("  warning: no frame_size: zone polygons are pixels of the stream as it comes, and a sub-stream "
              "or another resolution moves every zone; set frame_size = [width, height] of the picture "
              "they were drawn on")
    for zc in cam.zones:
        _print_zone(zc)


def _print_zone(zc: ZoneConfig) -> None:
    params = ", ".join(f"{f.name}={_show(getattr(zc.params, f.name))}" for f in dataclasses.fields(zc.params))
    print(f"  zone {zc.zone.id}: {len(zc.zone.polygon)} points, rule {zc.rule_type} ({params})")
    if zc.privacy is not None:
        print(f"    people in its tickets' evidence: {_privacy(zc.privacy)}")
    assumed = [name for name in zc.defaulted if name in SCENE_DEPENDENT]
    if assumed:
        print(f"    assumes the defaults {', '.join(f'{n}={_show(getattr(zc.params, n))}' for n in assumed)}: "
              "short, for a camera over a quiet street; set them in the camera file where "
              "people wait, deliver or set things down for a while")


def _privacy(params: PrivacyParams) -> str:
    return f"{params.mode.value} (block {params.block_px} px, margin {params.margin:g})" if params.active else "kept"


def cmd_key(config: BoxConfig, args) -> int:
    """The public half only, PEM on stdout (``edge-agent key > box.pub.pem``); the private key
    never leaves the box."""
    key = DeviceKey.load_or_create(config.storage.dir / KEY_FILE)
    print(f"edge-agent {config.agent.id}: device key {key.key_id} (Ed25519), {key.path}", file=sys.stderr)
    print(public_pem(key.public), end="")
    return 0


def cmd_calibrate_ui(config: BoxConfig, args) -> int:
    from agent.calibration_page import PageSettings, read_token, serve

    try:
        settings = PageSettings(args.bind, args.port, read_token(args.token_file), tuple(args.camera))
        for camera_id in settings.cameras:
            config.camera(camera_id)
    except ValueError as exc:
        print(f"edge-agent: calibrate-ui: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(config, settings, stop=stop)
    return 0


def _utc(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _show(value) -> str:
    return json.dumps(sorted(value)) if isinstance(value, frozenset) else str(value)


def cmd_replay(config: BoxConfig, args) -> int:
    """Tickets on stdout (one JSON message a line, every one the outbox stores); progress, the
    totals and the per-zone account on stderr."""
    if not args.file.is_file():
        raise ConfigError(args.file, "", "replay file not found")
    camera = dataclasses.replace(config.camera(args.camera), url=str(args.file), realtime=False, loop=False)
    config = dataclasses.replace(config, cameras=(camera,), mqtt=None)
    tickets = []

    def collect(doc: dict) -> None:
        tickets.append(doc)
        print_ticket(doc)

    with tempfile.TemporaryDirectory(prefix="edge-replay-") as tmp:
        clock = ManualClock(args.start_time) if args.start_time is not None else None
        agent = Agent(config, clock=clock, on_ticket=collect, storage_dir=args.store or Path(tmp))
        pipeline = agent.pipelines[camera.id]
        progress = _Progress(_duration_s(args.file), args.progress_every, tickets)
        video = AnnotatedVideo(args.annotate, camera.analysis_fps) if args.annotate else None

        def analysed(obs) -> None:
            if video is not None:
                video.write(obs, pipeline)
            progress.tick(obs.ts)

        pipeline.on_analysed = analysed
        started = time.monotonic()
        try:
            agent.run(threading.Event())
        finally:
            if video is not None:
                video.close()
        health = agent.health[camera.id].snapshot(time.time())
    elapsed = time.monotonic() - started
    print(f"replay: {health['frames_decoded']} frames decoded, {health['frames_analysed']} analysed, "
          f"{len(tickets)} ticket messages in {elapsed:.1f} s", file=sys.stderr)
    for account in pipeline.accounts.values():
        print(account.summary(), file=sys.stderr)
    if video is not None:
        print(f"replay: {video.frames} annotated frames in {args.annotate}", file=sys.stderr)
    return 0 if health["analysis_errors"] == 0 else 1


def cmd_calibrate(config: BoxConfig, args) -> int:
    """Fit, show the error of every point, save the calibration (next version, old one kept as
    .bak), name it in the camera file if it is not yet, and keep the frame as the view reference."""
    cam = config.camera(args.camera)
    points, datum = _read_points(args.points, args.datum)
    frame = grab_frame(cam, SystemClock())
    height, width = frame.image.shape[:2]
    fitted = calibration.fit(points, datum, args.origin, (width, height))
    print(f"calibrate {cam.id}: {len(points)} points on its {width}x{height} picture, datum {datum}")
    for i, (point, error) in enumerate(zip(fitted.points, fitted.errors_px), 1):
        print(f"  point {i}: pixel ({point.pixel[0]:g}, {point.pixel[1]:g}) ground "
              f"({point.ground[0]:g}, {point.ground[1]:g}) error {error:.2f} px")
    print(f"  rms {fitted.rms_px:.2f} px")
    stored = store(config, cam, fitted, frame.image)
    print(f"saved {stored.path} version {stored.calibration.version}"
          + (f" (the old one: {stored.backup.name})" if stored.backup else ""))
    if stored.camera_file_changed:
        print(f"{cam.source_file}: calibration = {stored.path.name!r} added (the old file: {cam.source_file.name}.bak)")
    print(f"view reference: {stored.reference} (a running agent takes both at its next start or reload, SIGHUP)")
    return 0


def _lat_lon(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not lat,lon: {text!r}") from None
    return lat, lon


def _read_points(path: Path, datum: str | None) -> tuple[list[GroundPoint], str]:
    """The CSV's points and the datum its header names (which --datum, if given, must agree with)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    header = tuple(c.strip() for c in rows[0]) if rows else ()
    if header not in CSV_COLUMNS:
        raise ConfigError(path, "line 1", f"header must be {' or '.join(','.join(c) for c in CSV_COLUMNS)}, "
                                          f"got {','.join(header) or 'nothing'}")
    if datum is not None and datum != CSV_COLUMNS[header]:
        raise ConfigError(path, "line 1", f"--datum {datum} but the header names {CSV_COLUMNS[header]} columns")
    points = []
    for line, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        try:
            x, y, a, b = (float(c) for c in row)
        except ValueError:
            raise ConfigError(path, f"line {line}", f"expected 4 numbers, got {','.join(row)}") from None
        points.append(GroundPoint((x, y), (a, b)))
    return points, CSV_COLUMNS[header]


def cmd_snapshot(config: BoxConfig, args) -> int:
    """What the agent sees now: the frame with zones and the detector's boxes, people hidden as
    the camera's privacy says (as the platform's snapshot command does)."""
    cam = config.camera(args.camera)
    one_camera = dataclasses.replace(config, cameras=(cam,))
    detector = load_detectors(one_camera, config.storage.dir / MODELS_DIR)[cam.model]
    check_privacy(cam, detector)
    frame = grab_frame(cam, SystemClock())
    height, width = frame.image.shape[:2]
    zones = scaled_zones(cam, (width, height))
    detections = camera_tiler(cam, detector, zones).detect(detector, frame.image, frame.ts)
    picture = spot_check(frame.image, [zc.zone for zc in zones], detections, cam.privacy)
    if not cv2.imwrite(str(args.out), picture):
        raise ConfigError(args.out, "", "cannot write the picture (is the folder there, the suffix .jpg or .png?)")
    print(f"snapshot {cam.id}: {args.out} ({width}x{height}), {len(detections)} detections, "
          f"{len(cam.zones)} zones")
    return 0


def _duration_s(path: Path) -> float | None:
    """The file's length in seconds, None when its container does not say."""
    try:
        with av.open(str(path)) as container:
            return container.duration / av.time_base if container.duration else None
    except av.error.FFmpegError:
        return None  # the replay itself will say what is wrong with the file


class _Progress:
    """How far a replay is, on stderr: at every further 10% of the file's length, and at least
    every ``every_s`` seconds of wall time (a file of unknown length gets the latter only)."""

    def __init__(self, duration_s: float | None, every_s: float, tickets: list):
        self.duration_s, self.every_s, self.tickets = duration_s, every_s, tickets
        self.first_ts: float | None = None
        self.frames = 0
        self.started = self.said_at = time.monotonic()
        self.next_tenth = 1

    def tick(self, ts: float) -> None:
        self.frames += 1
        self.first_ts = ts if self.first_ts is None else self.first_ts
        media_s, now = ts - self.first_ts, time.monotonic()
        share = media_s / self.duration_s if self.duration_s else None
        if share is not None and share * 10 >= self.next_tenth:
            self.next_tenth = int(share * 10) + 1
        elif now - self.said_at < self.every_s:
            return
        self.said_at = now
        where = (f"{100 * share:.0f}% ({media_s:.0f} of {self.duration_s:.0f} s)" if share is not None
                 else f"{media_s:.0f} s of video")
        print(f"replay: {where}, {self.frames} frames analysed, {len(self.tickets)} ticket messages, "
              f"{now - self.started:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
