"""The box's configuration: ``edge.toml`` plus one TOML file per camera.

Everything is parsed into frozen dataclasses and checked once at start: unknown keys, bad types,
out-of-range numbers, polygons with fewer than three points, unknown rule types, cameras naming a
model the box does not define, and model files that are missing. Each failure is a
:class:`ConfigError` whose message is one line: ``file: key: reason``.

Relative paths in ``edge.toml`` are resolved against the directory holding ``edge.toml``, so the
box's files move together.

Secrets (the MQTT password) are never in the TOML: it names a file or an environment variable, read
once here at start, and the value is registered with :mod:`agent.redact` so it is masked wherever
it might be quoted.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from agent import calibration
from agent.analysers import analyser_types
from agent.analysis_params import ChangeGateParams, PrivacyParams, SceneParams, TamperParams
from agent.calibration import CalibrationError, GroundCalibration
from agent.command_auth import CommandKey, CommandsSection, load_key
from agent.detect.manifest import load_manifest
from agent.fault_kinds import DEFAULT_CATEGORIES, Fault
from agent.redact import add_secret, redact
from agent.rules import Cadence, Category, Need, camera_cadence, rule_types
from agent.schedule import DAYS, Schedule, Window, parse_hhmm
from agent.storage import StorageLimits
from agent.tiling import TilingParams, ZoneCropParams
from agent.track import TrackerParams
from agent.typedtoml import ConfigError, load_dataclass, read_toml, setting
from agent.zones import Zone

__all__ = ["BoxConfig", "CameraConfig", "ConfigError", "load_config", "read_toml"]


def is_loopback(host: str) -> bool:
    """``host`` is this machine: ``localhost`` or a literal loopback address. A host name is not
    resolved, so that a DNS answer cannot make a remote host "local"."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LogFormat(str, Enum):
    LOGFMT = "logfmt"
    JSON = "json"


@dataclass(frozen=True)
class AgentSection:
    id: str = setting(help="This box's id, unique in the city; part of every topic and ticket")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")
    log_format: LogFormat = setting(LogFormat.LOGFMT, help="logfmt for people, json for log shippers")
    timezone: str = setting("Asia/Shanghai", help="IANA time zone of zone schedules (business hours)")

    def __post_init__(self):
        if not self.id or "/" in self.id or "+" in self.id or "#" in self.id:
            raise ValueError(f"id: must be non-empty without '/', '+' or '#', got {self.id!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level: must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None


@dataclass(frozen=True)
class TicketsSection:
    reopen_window_s: float = setting(
        600.0, ge=0, help="A condition back in the same zone within this long reopens the old ticket")
    reject_mute_s: float = setting(
        3600.0, ge=0, help="After the platform rejects a ticket, its zone's rule opens nothing for this long")
    clip_pre_s: float = setting(5.0, ge=0, le=60, help="Clip seconds before a ticket opens")
    clip_post_s: float = setting(5.0, ge=0, le=60, help="Clip seconds after a ticket opens")
    clips: bool = setting(True, help="Attach an H.264 clip to opened tickets")
    offline_grace_s: float = setting(
        60.0, ge=0, help="A camera without frames this long opens a camera_offline ticket")


@dataclass(frozen=True)
class CategorySection:
    major: str = setting(help="Major class, e.g. 市容环境")
    minor: str = setting(help="Minor class, e.g. 暴露垃圾")
    code: str = setting(help="The platform's code for it")

    def category(self) -> Category:
        return Category(self.major, self.minor, self.code)


@dataclass(frozen=True)
class ScheduleSection:
    start: str = setting(help="HH:MM local time")
    end: str = setting(help="HH:MM; earlier than start means the window runs past midnight")
    days: list[str] = setting(factory=lambda: list(DAYS), help="mon ... sun")

    def __post_init__(self):
        for key in ("start", "end"):
            try:
                parse_hhmm(getattr(self, key))
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        unknown = [d for d in self.days if d not in DAYS]
        if unknown:
            raise ValueError(f"days: unknown day {unknown[0]!r} (use {', '.join(DAYS)})")

    def window(self) -> Window:
        return Window(frozenset(DAYS.index(d) for d in self.days), parse_hhmm(self.start), parse_hhmm(self.end))


@dataclass(frozen=True)
class StorageSection:
    dir: Path = setting(Path("var"), help="Outbox database and evidence folder live here")
    jpeg_quality: int = setting(85, ge=30, le=100, help="Quality of evidence snapshots")
    limits: StorageLimits = setting(factory=StorageLimits, help="Evidence quota, free-disk floor, retention")


@dataclass(frozen=True)
class MqttSection:
    host: str = setting(help="Broker host name or address")
    port: int = setting(1883, ge=1, le=65535)
    prefix: str = setting("cityops", help="Topic prefix: <prefix>/<agent id>/...")
    client_id: str | None = setting(None, help="Defaults to edge-<agent id>")
    tls: bool = setting(False, help="TLS to the broker, verifying its certificate (brokers listen on 8883)")
    tls_ca: Path | None = setting(
        None, help="CA certificate(s), PEM, the broker's certificate must chain to; default: the system's")
    tls_cert: Path | None = setting(None, help="Client certificate, PEM, for mutual TLS; needs tls_key")
    tls_key: Path | None = setting(None, help="The client certificate's private key, PEM; keep it mode 0600")
    tls_insecure: bool = setting(
        False, help="Allow a transport open to eavesdropping: TLS without verifying the broker, or plain "
                    "MQTT to a host that is not loopback. Logged as a WARNING at every start")
    username: str | None = setting(None)
    password_file: Path | None = setting(None, help="File whose first line is the MQTT password; mode 0600")
    password_env: str | None = setting(None, help="Name of the environment variable holding the MQTT password")
    keepalive_s: int = setting(30, ge=5, le=3600)
    status_interval_s: float = setting(30.0, ge=1, help="How often the retained status is refreshed")
    chunk_bytes: int = setting(
        256 * 1024, ge=1024, help="Evidence larger than this goes out in several messages")
    reconnect_min_s: float = setting(1.0, gt=0, help="First reconnect delay; doubles up to reconnect_max_s")
    reconnect_max_s: float = setting(60.0, gt=0)
    max_inflight: int = setting(20, ge=1, le=1000, help="Messages published and not yet acknowledged")

    REFUSED_KEYS: ClassVar[dict[str, str]] = {
        "password": "a password does not belong in a TOML file that may be committed; put it in a file "
                    "(password_file, mode 0600) or the environment (password_env)"}

    def __post_init__(self):
        if not self.tls:
            given = [k for k in ("tls_ca", "tls_cert", "tls_key") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{given[0]}: needs tls = true")
            if not self.loopback and not self.tls_insecure:
                raise ValueError(f"plain MQTT to {self.host!r} crosses a network anyone on it can read and "
                                 "forge: set tls = true (and port = 8883), or tls_insecure = true to accept that")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: give both for a client certificate, or neither")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("password_file and password_env: give one of them")
        if (self.password_file is not None or self.password_env is not None) and not self.username:
            raise ValueError("username: a password needs a username")

    @property
    def loopback(self) -> bool:
        """The broker runs on this box: its traffic never leaves the machine."""
        return is_loopback(self.host)

    def insecure(self) -> str | None:
        """Why this transport can be read or impersonated on the network; None when it cannot."""
        if self.tls and self.tls_insecure:
            return "TLS without verifying the broker's certificate (tls_insecure = true)"
        if not self.tls and not self.loopback:
            return f"plain MQTT to {self.host} (tls_insecure = true): anyone on the path can read and forge it"
        return None

    def mode(self) -> str:
        """The transport in one phrase, for ``check`` and the start log."""
        if (reason := self.insecure()) is not None:
            return f"INSECURE: {reason}"
        if not self.tls:
            return "plain MQTT to a loopback broker"
        text = f"TLS verified against {self.tls_ca or 'the system CAs'}"
        if self.tls_cert is not None:
            text = f"mTLS (client certificate {self.tls_cert}), {text}"
        return text


class DecodeMode(str, Enum):
    """``decode`` of a camera file: which frames the decoder produces (agent/ingest.py)."""

    AUTO = "auto"  # keyframes only when the camera's rules are STATIC and its GOP fits the cadence
    ALL = "all"  # every frame (the codec's cost in full), sampled to the cadence
    KEYFRAMES = "keyframes"  # keyframes only, whatever cadence that gives


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9108`` for IPv6) as (host, port); the host is ``localhost`` or an
    address literal, so what the agent binds to is what the file says."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port with a port 1-65535, e.g. 127.0.0.1:9108, got {text!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address or localhost (in {text!r})") from None
    return host, int(port)


@dataclass(frozen=True)
class MetricsSection:
    listen: str = setting(
        "127.0.0.1:9108", help="host:port of the Prometheus /metrics and JSON /healthz endpoint (docs/monitor.md); "
                               "they need no login, so an address other than loopback shows them to that network")

    def __post_init__(self):
        try:
            parse_listen(self.listen)
        except ValueError as exc:
            raise ValueError(f"listen: {exc}") from None

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address[0])


@dataclass(frozen=True)
class ModelSection:
    manifest: Path = setting(help="The model's manifest TOML (file, sha256, input, classes)")
    threads: int = setting(2, ge=1, le=64, help="onnxruntime intra-op threads")
    min_score: float = setting(0.3, ge=0, le=1, help="Detections below this are dropped by the decoder")
    nms_iou: float = setting(0.5, gt=0, le=1, help="Per-class non-maximum suppression IoU")
    providers: list[str] = setting(
        factory=lambda: ["CPUExecutionProvider"],
        help="onnxruntime execution providers in order of preference, e.g. [\"OpenVINOExecutionProvider\"]; "
             "those this onnxruntime build lacks are skipped, and the CPU is always the last resort")


@dataclass(frozen=True)
class InferenceSection:
    workers: int = setting(
        2, ge=1, le=64, help="Threads analysing frames for all cameras (agent/scheduler.py): lift cameras first, "
                             "then the static camera whose frame is due soonest; one per core is plenty, as "
                             "each model's own threads parallelise inside the detector")


@dataclass(frozen=True)
class ModelsUpdateSection:
    allowed_hosts: list[str] = setting(
        factory=list, help="Hosts a `model` command may download from (the platform's own file server), "
                           "as its URL writes them: a name or an address, any port; empty: every model "
                           "update is refused (a `rollback` is still carried out)")
    max_bytes: int = setting(
        256 * 1024 * 1024, ge=1024, help="A model file larger than this is refused, before or while it downloads")
    timeout_s: float = setting(
        30.0, gt=0, le=600, help="A download that sends nothing for this long fails")
    tls_ca: Path | None = setting(
        None, help="CA certificate(s), PEM, an https model server's certificate must chain to; "
                   "default: the system's")

    def __post_init__(self):
        for host in self.allowed_hosts:
            if not host or any(c in host for c in "/:@ ") and not _is_ipv6(host):
                raise ValueError(f"allowed_hosts: {host!r} is not a bare host name or address "
                                 "(no scheme, port, path or user)")

    def allows(self, host: str) -> bool:
        return host.lower() in {h.lower() for h in self.allowed_hosts}


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


@dataclass(frozen=True)
class EdgeFile:
    agent: AgentSection = setting(help="Who this box is and how it logs")
    cameras: list[Path] = setting(help="Camera config files, one per camera")
    models: dict[str, ModelSection] = setting(factory=dict, help="Detector models by name; cameras pick one")
    storage: StorageSection = setting(factory=StorageSection, help="Where tickets and evidence are kept")
    mqtt: MqttSection | None = setting(None, help="Leave out to store tickets locally only")
    commands: CommandsSection | None = setting(
        None, help="The key platform commands are signed with; leave out and every command is refused")
    models_update: ModelsUpdateSection | None = setting(
        None, help="Where signed `model` commands may fetch models from (docs/update.md); leave out "
                   "and every model download is refused")
    tickets: TicketsSection = setting(factory=TicketsSection, help="Ticket lifecycle and evidence")
    metrics: MetricsSection | None = setting(
        None, help="Local Prometheus metrics and JSON health endpoint; leave out for none")
    inference: InferenceSection = setting(factory=InferenceSection, help="How the cameras share the detector")
    categories: dict[str, CategorySection] = setting(
        factory=dict, help="Per rule type or camera fault: the platform case class its tickets carry")
    plugins: list[str] = setting(
        factory=list, help="Python modules imported at start, before the camera files are checked: the rules and "
                           "analysers they register are then known to zones, e.g. [\"acme_flooding\"] "
                           "(docs/architecture.md, Adding a scenario)")

    def __post_init__(self):
        bad = next((name for name in self.plugins if not all(part.isidentifier() for part in name.split("."))), None)
        if bad is not None:
            raise ValueError(f"plugins: {bad!r} is not a Python module name (dotted identifiers, e.g. acme.flooding)")


class Datum(str, Enum):
    """The coordinate system a camera file's lat/lon are in, carried into its tickets: positions read
    off Chinese web maps (Amap, Tencent) are GCJ-02, GPS receivers and survey points give WGS-84.
    Spelled as the ground calibration spells its datum."""

    WGS84 = calibration.WGS84
    GCJ02 = "GCJ-02"


@dataclass(frozen=True)
class LocationSection:
    lat: float = setting(ge=-90, le=90)
    lon: float = setting(ge=-180, le=180)
    grid_code: str = setting(help="The city grid (网格) code the camera looks at")
    datum: Datum | None = setting(
        None, help="WGS-84 or GCJ-02: the datum of lat/lon, carried into tickets as location.datum; a calibrated "
                   "camera's must be its calibration's (WGS-84). Leave out and tickets say nothing of it")


GB28181_CODE = re.compile(r"[0-9]{20}")


@dataclass(frozen=True)
class Gb28181Section:
    """The camera as the platform's GB/T 28181 video network knows it, so a ticket leads to its live
    picture. Codes are the 20 digits the platform's device directory lists; the agent never speaks SIP."""

    device_id: str = setting(help="20-digit code of the device registered with the platform (the camera or its NVR)")
    channel_id: str | None = setting(
        None, help="20-digit code of the camera's channel on that device; leave out when the device is the camera")

    def __post_init__(self):
        for key in ("device_id", "channel_id"):
            value = getattr(self, key)
            if value is not None and not GB28181_CODE.fullmatch(value):
                raise ValueError(f"{key}: a GB/T 28181 code is 20 digits, got {value!r}")

    def as_dict(self) -> dict:
        return {"device_id": self.device_id} | ({"channel_id": self.channel_id} if self.channel_id else {})


@dataclass(frozen=True)
class ZoneSection:
    polygon: list[tuple[float, float]] = setting(
        help="[[x, y], ...] in pixels of the picture the zone was drawn on (the camera's frame_size)")
    rule: dict[str, Any] = setting(help="Table with type = <rule type> and that rule's parameters")
    category: CategorySection | None = setting(None, help="This zone's case class, if not the rule's")
    schedule: list[ScheduleSection] | None = setting(
        None, help="Weekly windows when the zone is watched; leave out to watch always")
    privacy: PrivacyParams | None = setting(
        None, help="How this zone's ticket pictures hide people, if not as the camera's [privacy] says "
                   "(the whole table: keys left out take the defaults, not the camera's values)")


@dataclass(frozen=True)
class CameraFile:
    id: str = setting(help="Camera id, unique on the box; part of topics and tickets")
    url: str = setting(help="rtsp://user@host/... or a video file path (relative to the camera file); "
                            "its password goes in password_file or password_env")
    location: LocationSection = setting(help="Where the camera looks: lat, lon, grid_code")
    gb28181: Gb28181Section | None = setting(
        None, help="The camera's GB/T 28181 device and channel codes, carried into its tickets; leave out for none")
    calibration: Path | None = setting(
        None, help="Ground calibration file (<camera>.calibration.toml, relative to the camera file): "
                   "tickets then carry the object's lat/lon and crowd zones their area in m²")
    password_file: Path | None = setting(
        None, help="File whose first line is the camera's password, put into the url at start; mode 0600")
    password_env: str | None = setting(None, help="Name of the environment variable holding the camera's password")
    model: str = setting("default", help="Name of a [models.<name>] table of edge.toml")
    name: str = setting("", help="A human name for the camera")
    frame_size: tuple[int, int] | None = setting(
        None, help="[width, height] of the picture the zone polygons were drawn on: they are scaled to "
                   "the stream's real size at connect (a sub-stream keeps its zones); leave out and "
                   "polygons are pixels of the stream as it is")
    analysis_fps: float = setting(2.0, gt=0, le=30, help="Frames analysed per second")
    decode: DecodeMode = setting(
        DecodeMode.AUTO, help="auto: keyframes only when every rule of the camera is static and keyframes come "
                              "at least every 1.25 analysis periods (e.g. GOP 50 at 25 fps for analysis_fps = 0.5), "
                              "else every frame; all; keyframes")
    read_timeout_s: float = setting(
        5.0, gt=0, help="A stream that delivers nothing this long is dropped and reconnected")
    realtime: bool = setting(
        True, help="Files only: pace reading to the file's own clock, like a live camera")
    loop: bool = setting(False, help="Files only: start again at the end")
    telemetry_interval_s: float = setting(10.0, ge=1, help="How often rules with telemetry (crowd) publish it")
    zones: dict[str, ZoneSection] = setting(factory=dict, help="Zones by id, each with its rule")
    view_check: bool = setting(True, help="Compare the view with the calibration reference (moved, covered)")
    reference_image: Path | None = setting(
        None, help="Calibration reference frame; default: the first frame seen, saved in storage")
    tamper: TamperParams = setting(factory=TamperParams, help="Thresholds of the view check")
    tracker: TrackerParams = setting(factory=TrackerParams, help="Tracking, for rules that need it")
    scene: SceneParams = setting(factory=SceneParams, help="Static new-object model, for rules that need it")
    change_gate: ChangeGateParams = setting(
        factory=ChangeGateParams, help="Skip the detector on frames where no zone changed (agent/change_gate.py)")
    tiling: TilingParams | None = setting(None, help="Detect on overlapping tiles now and then (small objects)")
    zone_crops: ZoneCropParams = setting(
        factory=ZoneCropParams, help="Detect also on crops around zones whose rules look for small objects")
    privacy: PrivacyParams = setting(
        factory=PrivacyParams, help="How people are hidden in every picture and clip that leaves the box")

    def __post_init__(self):
        if not self.id or any(c in self.id for c in "/+#"):
            raise ValueError(f"id: must be non-empty without '/', '+' or '#', got {self.id!r}")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("password_file and password_env: give one of them")
        if self.frame_size is not None and min(self.frame_size) < 1:
            raise ValueError(f"frame_size: width and height must be positive, got {list(self.frame_size)}")


@dataclass(frozen=True)
class ZoneConfig:
    zone: Zone
    rule_type: str
    params: Any  # the rule module's Params
    category: Category
    schedule: Schedule | None  # None: always watched
    defaulted: tuple[str, ...] = ()  # the rule's keys the camera file left out: the defaults hold
    privacy: PrivacyParams | None = None  # None: the camera's


@dataclass(frozen=True)
class CameraConfig:
    id: str
    name: str
    url: str = dataclasses.field(repr=False)  # may hold the camera's password
    source_file: Path
    model: str
    analysis_fps: float
    read_timeout_s: float
    realtime: bool
    loop: bool
    lat: float
    lon: float
    grid_code: str
    zones: tuple[ZoneConfig, ...]
    datum: Datum | None = None  # of lat/lon; None: not configured, tickets say nothing of it
    gb28181: Gb28181Section | None = None
    telemetry_interval_s: float = 10.0
    decode: DecodeMode = DecodeMode.AUTO
    view_check: bool = True
    reference_image: Path | None = None
    tamper: TamperParams = TamperParams()
    tracker: TrackerParams = TrackerParams()
    scene: SceneParams = SceneParams()
    change_gate: ChangeGateParams = ChangeGateParams()
    tiling: TilingParams | None = None
    zone_crops: ZoneCropParams = ZoneCropParams()
    privacy: PrivacyParams = PrivacyParams()
    password_file: Path | None = None  # the camera's password comes from here
    password_in_file: bool = False  # the camera file's url itself holds a password: that file is a secret
    calibration: GroundCalibration | None = None  # pixels -> ground; None: tickets carry the camera's lat/lon
    calibration_file: Path | None = None  # the camera file's ``calibration``, resolved
    frame_size: tuple[int, int] | None = None  # the picture the polygons were drawn on; None: the stream's

    def privacy_for(self, zone_id: str | None) -> PrivacyParams:
        """How pictures about ``zone_id`` hide people: the zone's override, else the camera's
        (also for camera faults and spot checks, ``None``)."""
        for zc in self.zones:
            if zc.zone.id == zone_id and zc.privacy is not None:
                return zc.privacy
        return self.privacy

    @property
    def is_file(self) -> bool:
        return "://" not in self.url

    @property
    def cadence(self) -> Cadence:
        """LIVE when any of the camera's rules is (agent/rules): full decode, analysed first."""
        return camera_cadence(zc.rule_type for zc in self.zones)

    @property
    def hides_people(self) -> bool:
        """Some picture of this camera hides people: its model must find them."""
        return any(p.active for p in [self.privacy] + [zc.privacy for zc in self.zones if zc.privacy is not None])


@dataclass(frozen=True)
class BoxConfig:
    source_file: Path
    agent: AgentSection
    storage: StorageSection
    mqtt: MqttSection | None
    models: dict[str, ModelSection]
    cameras: tuple[CameraConfig, ...]
    tickets: TicketsSection
    fault_categories: dict[Fault, Category]
    commands: CommandsSection | None = None
    command_key: CommandKey | None = None  # loaded from commands.key_file; None: no command is accepted
    models_update: ModelsUpdateSection | None = None  # None: no model is downloaded
    mqtt_password: str | None = dataclasses.field(default=None, repr=False)  # read at load, never in TOML
    metrics: MetricsSection | None = None  # None: no /metrics and /healthz endpoint
    inference: InferenceSection = InferenceSection()

    def secret_files(self) -> list[tuple[str, Path]]:
        """(what, path) of the files holding this box's secrets, for the permission check: the
        MQTT password and client key, the command key, and camera files whose URL carries a
        password. (The device key lives in storage; `check` adds it once it exists.)"""
        mqtt = self.mqtt
        files = [] if mqtt is None else [
            (f"mqtt.{key}", path) for key, path in (("password_file", mqtt.password_file), ("tls_key", mqtt.tls_key))
            if path is not None]
        if self.commands is not None:
            files.append(("commands.key_file", self.commands.key_file))
        for cam in self.cameras:
            if cam.password_file is not None:
                files.append((f"camera {cam.id} password_file", cam.password_file))
            if cam.password_in_file:
                files.append((f"camera {cam.id} (its url holds a password)", cam.source_file))
        return files

    def camera(self, camera_id: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise ConfigError(self.source_file, "cameras", f"no camera with id {camera_id!r} "
                          f"(known: {', '.join(c.id for c in self.cameras)})")


def load_config(path: str | Path, strict_calibration: bool = True) -> BoxConfig:
    """``strict_calibration=False`` takes a camera whose calibration file is missing or broken as
    uncalibrated, for ``edge-agent calibrate``: a broken calibration must not stop its own repair."""
    path = Path(path)
    edge = _load_edge(path)
    for name, model in edge.models.items():
        if not model.manifest.is_file():
            raise ConfigError(path, f"models.{name}.manifest", f"file not found: {model.manifest}")
        manifest = load_manifest(model.manifest)
        if not manifest.file.is_file():
            raise ConfigError(model.manifest, "file", f"model file not found: {manifest.file}")
    cameras = tuple(_load_camera(p, edge, path, strict_calibration) for p in edge.cameras)
    seen: set[str] = set()
    for cam in cameras:
        if cam.id in seen:
            raise ConfigError(cam.source_file, "id", f"camera id {cam.id!r} is used twice")
        seen.add(cam.id)
    fault_categories = {f: edge.categories[f.value].category() if f.value in edge.categories else c
                        for f, c in DEFAULT_CATEGORIES.items()}
    if edge.models_update is not None and edge.models_update.tls_ca is not None:
        _read_file(edge.models_update.tls_ca, path, "models_update.tls_ca")  # at start, not at the first update
    password = _mqtt_password(edge.mqtt, path) if edge.mqtt else None
    add_secret(password)
    # Read at load, so a missing or short key stops the agent at start, not at its first command.
    command_key = load_key(edge.commands.key_file, path) if edge.commands else None
    return BoxConfig(path, edge.agent, edge.storage, edge.mqtt, edge.models, cameras, edge.tickets,
                     fault_categories, edge.commands, command_key, models_update=edge.models_update,
                     mqtt_password=password, metrics=edge.metrics, inference=edge.inference)


def load_camera(path: str | Path, edge_path: str | Path) -> CameraConfig:
    """One camera file checked exactly as :func:`load_config` checks the box's cameras: the
    calibration page validates a camera file before it replaces the one in use."""
    edge_path = Path(edge_path)
    return _load_camera(Path(path), _load_edge(edge_path), edge_path)


def _load_edge(path: Path) -> EdgeFile:
    """``edge.toml``, with its plug-ins imported: the camera files may name their rules."""
    edge = load_dataclass(EdgeFile, read_toml(path), path, base_dir=path.parent)
    for name in edge.plugins:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - whatever a plug-in raises at import, the box must say which one
            raise ConfigError(path, "plugins", f"cannot import {name!r}: {type(exc).__name__}: {exc}") from None
    return edge


def _mqtt_password(mqtt: MqttSection, path: Path) -> str | None:
    """Check the TLS files are readable and read the password, so a box that cannot connect says
    why at start rather than on each reconnect."""
    for key in ("tls_ca", "tls_cert", "tls_key"):
        file = getattr(mqtt, key)
        if file is not None:
            _read_file(file, path, f"mqtt.{key}")
    return _read_secret(mqtt.password_file, mqtt.password_env, path, "mqtt.")


def _read_secret(file: Path | None, env: str | None, path: Path, prefix: str = "") -> str | None:
    """The password a config names by ``password_file`` (its first line) or ``password_env``."""
    if file is not None:
        lines = _read_file(file, path, f"{prefix}password_file").splitlines()
        if not lines or not lines[0]:
            raise ConfigError(path, f"{prefix}password_file", f"{file} is empty")
        return lines[0]
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(path, f"{prefix}password_env", f"environment variable {env} is not set")
        return value
    return None


def _read_file(file: Path, path: Path, key: str) -> str:
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, key, f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None


def _load_camera(path: Path, edge: EdgeFile, edge_path: Path, strict_calibration: bool = True) -> CameraConfig:
    raw = load_dataclass(CameraFile, read_toml(path), path, base_dir=path.parent)
    if raw.model not in edge.models:
        raise ConfigError(path, "model", f"no [models.{raw.model}] in {edge_path} "
                          f"(defined: {', '.join(edge.models) or 'none'})")
    url = raw.url
    if "://" not in url and not Path(url).is_absolute():
        url = os.path.normpath(path.parent / url)
    password_in_file = redact(url) != url
    password = _read_secret(raw.password_file, raw.password_env, path)
    if password is not None:
        url = _with_password(url, password, path)
        add_secret(password)
    known = rule_types()
    unknown = sorted(set(edge.categories) - set(known) - {f.value for f in Fault})
    if unknown:
        names = sorted(known) + [f.value for f in Fault]
        raise ConfigError(edge_path, f"categories.{unknown[0]}", f"unknown rule or fault (known: {', '.join(names)})")
    tz = ZoneInfo(edge.agent.timezone)
    try:
        ground = _load_calibration(raw.calibration, path)
    except ConfigError:
        if strict_calibration:
            raise
        ground = None
    _check_datum(raw.location.datum, ground, path)
    zones = tuple(_load_zone(path, zone_id, section, edge, tz, ground, raw.frame_size)
                  for zone_id, section in raw.zones.items())
    return CameraConfig(
        id=raw.id, name=raw.name or raw.id, url=url, source_file=path, model=raw.model,
        analysis_fps=raw.analysis_fps, read_timeout_s=raw.read_timeout_s, realtime=raw.realtime,
        loop=raw.loop, lat=raw.location.lat, lon=raw.location.lon,
        grid_code=raw.location.grid_code, datum=raw.location.datum, gb28181=raw.gb28181, zones=zones,
        view_check=raw.view_check,
        telemetry_interval_s=raw.telemetry_interval_s, decode=raw.decode,
        reference_image=raw.reference_image, tamper=raw.tamper, tracker=raw.tracker, scene=raw.scene,
        change_gate=raw.change_gate,
        tiling=raw.tiling, zone_crops=raw.zone_crops, privacy=raw.privacy,
        password_file=raw.password_file, password_in_file=password_in_file, calibration=ground,
        calibration_file=raw.calibration, frame_size=raw.frame_size,
    )


def _check_datum(datum: Datum | None, ground: GroundCalibration | None, path: Path) -> None:
    """A ticket's lat/lon come from the calibration on a calibrated camera and from the camera file
    otherwise, under one ``location.datum``: the two must agree."""
    if datum is None or ground is None or datum is Datum.WGS84:
        return
    # A local-m calibration's origin is a lat/lon too, and the calibration file says WGS-84 for it.
    raise ConfigError(path, "location.datum", f"{datum.value}, but the ground calibration's lat/lon are "
                      f"{calibration.WGS84}: give the camera's position in {calibration.WGS84} too")


def _load_calibration(file: Path | None, path: Path) -> GroundCalibration | None:
    if file is None:
        return None
    if not file.is_file():
        raise ConfigError(path, "calibration", f"file not found: {file}")
    return calibration.load(file)  # its own errors name that file and its key


def _with_password(url: str, password: str, path: Path) -> str:
    """``scheme://user@host/...`` with the password put in, quoted as a URL needs it."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not parts.scheme or "://" not in url or not at or not userinfo:
        raise ConfigError(path, "url", "a camera password needs a url with a user: rtsp://user@host/...")
    if ":" in userinfo:
        raise ConfigError(path, "url", "holds a password as well as password_file/password_env: keep one "
                                       "(the file or the environment)")
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{quote(password, safe='')}@{hostport}"))


def _load_zone(path: Path, zone_id: str, section: ZoneSection, edge: EdgeFile, tz: ZoneInfo,
               ground: GroundCalibration | None, frame_size: tuple[int, int] | None) -> ZoneConfig:
    key = f"zones.{zone_id}"
    if len(section.polygon) < 3:
        raise ConfigError(path, f"{key}.polygon", f"needs at least 3 points, got {len(section.polygon)}")
    if frame_size is not None:
        # Drawn on that picture, a point cannot lie off it: frame_size or the polygon is wrong.
        width, height = frame_size
        off = next(((x, y) for x, y in section.polygon if not (0 <= x <= width and 0 <= y <= height)), None)
        if off is not None:
            raise ConfigError(path, f"{key}.polygon", f"zone {zone_id!r}: point [{off[0]:g}, {off[1]:g}] lies "
                              f"outside frame_size {width}x{height}")
    rule = dict(section.rule)
    rule_type = rule.pop("type", None)
    known = rule_types()
    if rule_type not in known:
        raise ConfigError(path, f"{key}.rule.type",
                          f"unknown rule {rule_type!r} (known: {', '.join(sorted(known))})")
    _check_needs(path, f"{key}.rule.type", rule_type, known[rule_type].needs)
    polygon = np.asarray(section.polygon, dtype=np.float32)
    if ground is not None:
        rule = _with_ground_area(rule, known[rule_type].params, polygon, ground, path, key)
    params = load_dataclass(known[rule_type].params, rule, path, f"{key}.rule", base_dir=path.parent)
    if section.category is not None:
        category = section.category.category()
    elif rule_type in edge.categories:
        category = edge.categories[rule_type].category()
    else:
        category = known[rule_type].category
    schedule = Schedule(tuple(w.window() for w in section.schedule), tz) if section.schedule else None
    defaulted = tuple(f.name for f in dataclasses.fields(params) if f.name not in section.rule)
    return ZoneConfig(Zone(zone_id, polygon), rule_type, params, category, schedule, defaulted, section.privacy)


def _check_needs(path: Path, key: str, rule_type: str, needs: frozenset) -> None:
    """Every need of the rule is the detection step's or an analyser's that some module registers."""
    analysers = analyser_types()
    missing = sorted(str(getattr(n, "value", n)) for n in needs if n != Need.SMALL_OBJECTS and n not in analysers)
    if missing:
        known = sorted(str(getattr(n, "value", n)) for n in analysers)
        raise ConfigError(path, key, f"rule {rule_type!r} needs the analyser {missing[0]!r}, which no module "
                          f"registers (known: {', '.join(known)}); name its module in edge.toml's plugins")


def _with_ground_area(rule: dict, params: type, polygon: np.ndarray, ground: GroundCalibration,
                      path: Path, key: str) -> dict:
    """The rule's table with the zone's ground area from the calibration, for rules whose Params
    name a ``GROUND_AREA`` key (crowd's area_m2), unless the zone gives that key itself. The
    flat-ground guesses it supersedes (``GROUND_AREA_REPLACES``, crowd's px_per_m2) give way.

    The polygon and the calibration points are pixels of the same picture: the calibration's
    ``frame_size`` (the calibration page draws both on one frame)."""
    area_key = getattr(params, "GROUND_AREA", None)
    if area_key is None or area_key in rule:
        return rule
    try:
        area = ground.area_m2(polygon)
    except CalibrationError as exc:
        raise ConfigError(path, f"{key}.polygon", f"no ground area from the calibration: {exc}") from None
    replaced = getattr(params, "GROUND_AREA_REPLACES", ())  # a ClassVar beside GROUND_AREA, as crowd's
    kept = {k: v for k, v in rule.items() if k not in replaced}
    return kept | {area_key: area}
