"""``edge-agent``: run the agent, check a box's config, replay footage through a camera's rules."""

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

from agent.app import Agent, load_detectors, precision_risks
from agent.clock import ManualClock
from agent.config import BoxConfig, load_config
from agent.logs import setup_logging
from agent.redact import redact
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
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
        setup_logging(config.agent.log_level, config.agent.log_format.value)
        return {"run": cmd_run, "check": cmd_check, "replay": cmd_replay}[args.command](config, args)
    except ConfigError as exc:
        print(f"edge-agent: config error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG


def print_ticket(doc: dict) -> None:
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
    for key, path in config.secret_files():
        mode = path.stat().st_mode
        if mode & stat.S_IROTH:
            print(f"  warning: {key} {path} is readable by every user on the box "
                  f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    print(f"storage: {config.storage.dir}")
    for cam in config.cameras:
        print(f"camera {cam.id}: {redact(cam.url)} model {cam.model} at {cam.analysis_fps:g} fps, "
              f"grid {cam.grid_code} ({cam.lat}, {cam.lon})")
        for zc in cam.zones:
            params = ", ".join(f"{f.name}={_show(getattr(zc.params, f.name))}"
                               for f in dataclasses.fields(zc.params))
            print(f"  zone {zc.zone.id}: {len(zc.zone.polygon)} points, rule {zc.rule_type} ({params})")
            assumed = [name for name in zc.defaulted if name in SCENE_DEPENDENT]
            if assumed:
                print(f"    assumes the defaults {', '.join(f'{n}={_show(getattr(zc.params, n))}' for n in assumed)}: "
                      "short, for a camera over a quiet street; set them in the camera file where "
                      "people wait, deliver or set things down for a while")
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
