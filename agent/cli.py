"""``edge-agent``: run the agent, check a box's config, replay footage through a camera's rules,
print the box's public key for enrolment on the platform."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import stat
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from agent.app import Agent, check_privacy, load_detectors, precision_risks
from agent.clock import ManualClock
from agent.config import BoxConfig, load_config
from agent.logs import setup_logging
from agent.privacy import PrivacyParams
from agent.redact import redact
from agent.ticket_signing import KEY_FILE, DeviceKey, public_pem
from agent.typedtoml import ConfigError

EXIT_CONFIG = 2
# Rule keys whose right value depends on the street more than on the rule: `check` names them
# when a camera file leaves them at their defaults.
SCENE_DEPENDENT = frozenset({"min_dwell_s", "clear_after_s"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("-c", "--config", type=Path, default=Path("edge.toml"), help="the box's edge.toml")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--print-tickets", action="store_true", help="also print each ticket as JSON on stdout")
    sub.add_parser("check", help="validate config and models, print what would run")
    replay = sub.add_parser("replay", help="run one camera's rules over a video file as fast as possible")
    replay.add_argument("file", type=Path)
    replay.add_argument("--camera", required=True, help="camera id whose zones and rules to use")
    replay.add_argument("--store", type=Path, help="keep outbox and evidence here (default: a temp dir)")
    replay.add_argument("--start-time", type=_utc, default=None, metavar="ISO8601",
                        help="wall time of the file's first frame (default: now); fixes ticket times, "
                             "e.g. for comparing with ground truth")
    sub.add_parser("key", help="print the box's public signing key (made if there is none yet) to enrol it "
                               "on the platform")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
        setup_logging(config.agent.log_level, config.agent.log_format.value)
        commands = {"run": cmd_run, "check": cmd_check, "replay": cmd_replay, "key": cmd_key}
        return commands[args.command](config, args)
    except ConfigError as exc:
        print(f"edge-agent: config error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG


_PRINT_LOCK = threading.Lock()  # messages come from camera, clipper and command threads


def print_ticket(doc: dict) -> None:
    with _PRINT_LOCK:
        print(json.dumps(doc, ensure_ascii=False), flush=True)


def cmd_run(config: BoxConfig, args) -> int:
    agent = Agent(config, on_ticket=print_ticket if args.print_tickets else None)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.run(stop)
    return 0


def cmd_check(config: BoxConfig, args) -> int:
    detectors = load_detectors(config)
    for cam in config.cameras:
        check_privacy(cam, detectors[cam.model])
    print(f"config {config.source_file}: agent {config.agent.id}")
    risks = precision_risks(detectors)
    for name, det in detectors.items():
        print(f"model {name}: {det.manifest.file.name} sha256 {det.sha256[:12]}… ok, "
              f"{len(det.class_names)} classes, input {det.manifest.input_size[0]}x{det.manifest.input_size[1]}, "
              f"{det.manifest.precision.value}")
        if name in risks:
            print(f"  warning: {risks[name]}")
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
    for cam in config.cameras:
        print(f"camera {cam.id}: {redact(cam.url)} model {cam.model} at {cam.analysis_fps:g} fps, "
              f"grid {cam.grid_code} ({cam.lat}, {cam.lon}), people in evidence: {_privacy(cam.privacy)}")
        if cam.password_in_file:
            print("  warning: its url holds the camera's password: move it to password_file or password_env, "
                  "camera files get copied and committed")
        if cam.frame_size is not None:
            print(f"  zones drawn on {cam.frame_size[0]}x{cam.frame_size[1]}, scaled to the stream's picture at connect")
        elif cam.zones:
            print("  warning: no frame_size: zone polygons are pixels of the stream as it comes, and a sub-stream "
                  "or another resolution moves every zone; set frame_size = [width, height] of the picture "
                  "they were drawn on")
        for zc in cam.zones:
            params = ", ".join(f"{f.name}={_show(getattr(zc.params, f.name))}"
                               for f in dataclasses.fields(zc.params))
            print(f"  zone {zc.zone.id}: {len(zc.zone.polygon)} points, rule {zc.rule_type} ({params})")
            if zc.privacy is not None:
                print(f"    people in its tickets' evidence: {_privacy(zc.privacy)}")
            assumed = [name for name in zc.defaulted if name in SCENE_DEPENDENT]
            if assumed:
                print(f"    assumes the defaults {', '.join(f'{n}={_show(getattr(zc.params, n))}' for n in assumed)}: "
                      "short, for a camera over a quiet street; set them in the camera file where "
                      "people wait, deliver or set things down for a while")
    return 0


def _privacy(params: PrivacyParams) -> str:
    return f"{params.mode.value} (block {params.block_px} px, margin {params.margin:g})" if params.active else "kept"


def cmd_key(config: BoxConfig, args) -> int:
    """The public half only, PEM on stdout (``edge-agent key > box.pub.pem``); the private key
    never leaves the box."""
    key = DeviceKey.load_or_create(config.storage.dir / KEY_FILE)
    print(f"edge-agent {config.agent.id}: device key {key.key_id} (Ed25519), {key.path}", file=sys.stderr)
    print(public_pem(key.public), end="")
    return 0


def _utc(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _show(value) -> str:
    return json.dumps(sorted(value)) if isinstance(value, frozenset) else str(value)


def cmd_replay(config: BoxConfig, args) -> int:
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
        started = time.monotonic()
        agent.run(threading.Event())
        health = agent.health[camera.id].snapshot(time.time())
    elapsed = time.monotonic() - started
    print(f"replay: {health['frames_decoded']} frames decoded, {health['frames_analysed']} analysed, "
          f"{len(tickets)} ticket messages in {elapsed:.1f} s", file=sys.stderr)
    return 0 if health["analysis_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
