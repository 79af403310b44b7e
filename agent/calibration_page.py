"""``edge-agent calibrate-ui``: the technician's web page to draw zones and ground points on the
live picture, pick each zone's rule, and watch what the agent sees before leaving the site.

A standard-library ``ThreadingHTTPServer``, no framework; the page is plain HTML, CSS and
JavaScript shipped in ``agent/webui/``. It is a separate process from ``edge-agent run``, which
still listens on nothing (docs/security.md, "Local surfaces").

Who may use it: bound to a loopback address (the default, ``127.0.0.1``) it is the box's own
user's, reached over an SSH tunnel; bound to any other address it refuses to start without a
token (a file or ``EDGE_UI_TOKEN``, never TOML), and every request must carry it: an
``Authorization: Bearer`` header, or the cookie set once from ``/?token=...``. Comparisons are
constant-time. Without a token, requests must name a loopback ``Host`` (a web page elsewhere
cannot reach the box through a DNS name it rebinds to 127.0.0.1), and every POST must be JSON,
which a cross-site form cannot send without the browser asking first.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import ipaddress
import itertools
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from agent import calibration as ground, camera_calibration, camera_file
from agent.clock import SystemClock
from agent.config import BoxConfig, CameraConfig, ConfigError, is_loopback, load_camera, read_toml
from agent.ingest import grab_frame
from agent.logs import log_event
from agent.preview import Preview
from agent.rules import rule_types
from agent.typedtoml import describe

log = logging.getLogger("agent.calibration_page")

WEBUI = Path(__file__).resolve().parent / "webui"
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
TOKEN_ENV = "EDGE_UI_TOKEN"
COOKIE = "edge_ui_token"
MAX_BODY = 1 << 20
ZONE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class PageSettings:
    """Where the page listens and who may use it; ``token`` is read from a file or the environment."""

    bind: str = "127.0.0.1"
    port: int = 8088
    token: str | None = dataclasses.field(default=None, repr=False)
    cameras: tuple[str, ...] = ()  # empty: every camera of the box

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port: must be 0..65535, got {self.port}")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the token must have at least {MIN_TOKEN_CHARS} characters "
                             "(openssl rand -hex 16)")
        if not is_loopback(self.bind) and self.token is None:
            raise ValueError(f"--bind {self.bind}: the page can change the box's config, so outside "
                             f"loopback it needs a token (--token-file F, mode 0600, or {TOKEN_ENV})")


def read_token(token_file: Path | None) -> str | None:
    """The token from ``token_file`` (first line) or the environment; None when neither gives one."""
    if token_file is not None:
        try:
            lines = token_file.read_text().splitlines()
            mode = stat.S_IMODE(token_file.stat().st_mode)
        except OSError as exc:
            raise ValueError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise ValueError(f"--token-file: {token_file} is empty")
        if mode & 0o077:  # as `check` says of the box's other secrets
            log_event(log, "secret_readable", level=logging.WARNING, file=token_file, mode=f"{mode:04o}",
                      hint="chmod 600 it")
        return lines[0].strip()
    return os.environ.get(TOKEN_ENV) or None


class CameraState:
    """One camera as the page edits it: its config (reloaded after each save), the current frame
    zones are drawn on, and the preview while the page shows it."""

    def __init__(self, camera: CameraConfig):
        self.camera = camera
        self.lock = threading.Lock()
        self.frame: np.ndarray | None = None
        self.preview: Preview | None = None

    def current_frame(self, refresh: bool = False) -> np.ndarray:
        with self.lock:
            if self.frame is None or refresh:
                self.frame = grab_frame(self.camera, SystemClock()).image
            return self.frame

    def stop_preview(self) -> None:
        with self.lock:
            if self.preview is not None:
                self.preview.stop.set()
                self.preview = None


class PageError(Exception):
    """A request the page cannot serve, with the status and the message it shows."""

    def __init__(self, status: HTTPStatus, message: str, key: str = ""):
        super().__init__(message)
        self.status, self.message, self.key = status, message, key


class CalibrationPage:
    """The page's state and actions, apart from HTTP."""

    def __init__(self, config: BoxConfig, settings: PageSettings):
        self.config, self.settings = config, settings
        chosen = settings.cameras or tuple(c.id for c in config.cameras)
        self.cameras = {cid: CameraState(config.camera(cid)) for cid in chosen}
        self.work_dir = Path(tempfile.mkdtemp(prefix="edge-calibrate-ui-"))
        self._previews = itertools.count(1)

    def state(self, camera_id: str) -> CameraState:
        if camera_id not in self.cameras:
            raise PageError(HTTPStatus.NOT_FOUND, f"no camera {camera_id!r}")
        return self.cameras[camera_id]

    def rules(self) -> dict:
        """Every rule type's parameters, described from its Params dataclass."""
        out = {}
        for name, rule in sorted(rule_types().items()):
            doc = (sys.modules[rule.rule.__module__].__doc__ or "").strip().split("\n\n")[0]
            out[name] = {"doc": " ".join(doc.split()), "fields": describe(rule.params)}
        return out

    def camera_doc(self, camera_id: str) -> dict:
        """What the page edits: zones in pixels of the current frame, grid code, calibration."""
        state = self.state(camera_id)
        height, width = state.current_frame().shape[:2]
        raw = read_toml(state.camera.source_file)
        drawn = raw.get("frame_size") or [width, height]
        sx, sy = width / drawn[0], height / drawn[1]
        zones = {zid: {"polygon": [[x * sx, y * sy] for x, y in z.get("polygon", [])], "rule": z.get("rule", {})}
                 for zid, z in raw.get("zones", {}).items()}
        return {"id": state.camera.id, "name": state.camera.name, "frame_size": [width, height],
                "grid_code": raw.get("location", {}).get("grid_code", ""), "zones": zones,
                "calibration": self._calibration_doc(state.camera)}

    def _calibration_doc(self, camera: CameraConfig) -> dict | None:
        path = camera_calibration.calibration_path(camera)
        if not path.is_file():
            return None
        doc = read_toml(path)
        return {key: doc.get(key) for key in ("version", "datum", "origin", "frame_size", "points", "rms_px")}

    def save_zones(self, camera_id: str, body: dict) -> dict:
        """Write the zones and grid code the page sends into the camera file, validated."""
        state = self.state(camera_id)
        height, width = state.current_frame().shape[:2]
        path = state.camera.source_file
        raw = read_toml(path)
        old = raw.get("zones", {})
        zones = {}
        for zid, zone in _table(body, "zones").items():
            if not isinstance(zone, dict):
                raise PageError(HTTPStatus.BAD_REQUEST, f"zones.{zid}: expected an object", f"zones.{zid}")
            if not ZONE_ID.fullmatch(zid):
                raise PageError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{path}: zones.{zid}: a zone id is letters, "
                                "digits, _ and - (it goes into topics and tickets)", f"zones.{zid}")
            kept = dict(old.get(zone.get("from", zid), {}))  # schedule, category, privacy stay as they were
            kept["polygon"] = _polygon(zone.get("polygon"), f"zones.{zid}.polygon")
            kept["rule"] = _table(zone, "rule", f"zones.{zid}.rule")
            zones[zid] = kept
        raw["frame_size"] = [width, height]
        if "grid_code" in body:
            raw.setdefault("location", {})["grid_code"] = body["grid_code"]
        raw["zones"] = zones
        self._save(state, raw)
        return {"saved": str(path), "backup": str(path.with_name(path.name + ".bak")), "zones": sorted(zones)}

    def _save(self, state: CameraState, raw: dict) -> None:
        try:
            camera = camera_file.save(state.camera.source_file, raw, self.config.source_file)
        except ConfigError as exc:
            raise PageError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc), exc.key) from None
        state.stop_preview()  # the next preview runs the new zones
        state.camera = camera
        log_event(log, "camera_file_saved", camera=camera.id, path=camera.source_file)

    def fit_calibration(self, camera_id: str, body: dict) -> dict:
        """Fit the ground homography to the clicked points, save it as a new version, and keep the
        frame it was clicked on as the view check's reference."""
        state = self.state(camera_id)
        frame = state.current_frame()
        height, width = frame.shape[:2]
        try:
            points = [ground.GroundPoint(_pair(p.get("pixel"), f"points[{i}].pixel"),
                                         _pair(p.get("ground"), f"points[{i}].ground"))
                      for i, p in enumerate(body.get("points") or [])]
            datum = body.get("datum", "WGS-84")
            origin = _pair(body["origin"], "origin") if body.get("origin") is not None else None
            fitted = ground.fit(points, datum, origin, (width, height))
        except ground.CalibrationError as exc:
            raise PageError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc), "points") from None
        # The calibration file, the camera file's key and the view reference, as `calibrate` does.
        try:
            stored = camera_calibration.store(self.config, state.camera, fitted, frame)
        except ConfigError as exc:
            raise PageError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc), exc.key) from None
        state.stop_preview()  # the preview's tickets carry the new ground positions
        state.camera = load_camera(state.camera.source_file, self.config.source_file)
        log_event(log, "calibration_saved", camera=camera_id, path=stored.path,
                  version=stored.calibration.version, rms_px=round(fitted.rms_px, 2))
        return {"file": str(stored.path), "version": stored.calibration.version,
                "errors_px": [float(e) for e in fitted.errors_px], "rms_px": float(fitted.rms_px),
                "reference": str(stored.reference)}

    def preview(self, camera_id: str) -> dict:
        state = self.state(camera_id)
        with state.lock:
            if state.preview is None or not state.preview.is_alive() and state.preview.error is None:
                state.preview = Preview(self.config, state.camera,
                                        self.work_dir / f"preview-{camera_id}-{next(self._previews)}")
                state.preview.start()
            preview = state.preview
        if preview.error is not None:
            state.stop_preview()
            raise PageError(HTTPStatus.BAD_GATEWAY, f"preview: {preview.error}")
        latest = preview.latest()
        if latest is None:
            return {"ready": False}
        return {"ready": True, "ts": latest.ts, "states": latest.states,
                "image": "data:image/jpeg;base64," + base64.b64encode(latest.jpeg).decode()}

    def close(self) -> None:
        for state in self.cameras.values():
            preview = state.preview
            state.stop_preview()
            if preview is not None:  # let it leave the detector before the interpreter goes
                preview.join(timeout=10)
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _table(body, key: str, where: str | None = None) -> dict:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, dict):
        raise PageError(HTTPStatus.BAD_REQUEST, f"{where or key}: expected an object")
    return value


def _pair(value, key: str) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise PageError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{key}: expected two numbers, got {value!r}", key)
    return float(value[0]), float(value[1])


def _polygon(value, key: str) -> list[list[float]]:
    if not isinstance(value, list):
        raise PageError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{key}: expected a list of points", key)
    # A tenth of a pixel is finer than a mouse: keep the file readable.
    def tidy(v: float) -> float | int:
        v = round(v, 1)
        return int(v) if v.is_integer() else v

    return [[tidy(x), tidy(y)] for x, y in (_pair(p, f"{key}[{i}]") for i, p in enumerate(value))]


class Handler(BaseHTTPRequestHandler):
    server: PageServer
    server_version = "edge-agent-calibrate-ui"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("http %s", format % args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            if not self._allowed(url):
                return
            parts = [p for p in url.path.split("/") if p]
            body = self._json_body() if method == "POST" else None
            self._route(method, parts, body)
        except PageError as exc:
            self._send_json({"error": exc.message, "key": exc.key}, exc.status)
        except ConfigError as exc:  # a camera or calibration file broken on disk
            self._send_json({"error": str(exc), "key": exc.key}, HTTPStatus.UNPROCESSABLE_ENTITY)
        except (OSError, ValueError) as exc:  # a camera that cannot be read
            log_event(log, "page_request_failed", level=logging.WARNING, path=url.path, reason=str(exc))
            self._send_json({"error": f"{type(exc).__name__}: {exc}", "key": ""}, HTTPStatus.BAD_GATEWAY)
        except Exception as exc:  # a bug: said on the page and in the log, the server goes on
            log.exception("page_request_failed", extra={"fields": {"path": url.path}})
            self._send_json({"error": f"{type(exc).__name__}: {exc}", "key": ""}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _route(self, method: str, parts: list[str], body: dict | None) -> None:
        page = self.server.page
        if method == "GET" and not parts:
            return self._send_static("index.html")
        if method == "GET" and len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC:
            return self._send_static(parts[1])
        if parts == ["api", "cameras"] and method == "GET":
            return self._send_json({"cameras": [{"id": s.camera.id, "name": s.camera.name}
                                                for s in page.cameras.values()]})
        if parts == ["api", "rules"] and method == "GET":
            return self._send_json(page.rules())
        if len(parts) not in (3, 4) or parts[:2] != ["api", "cameras"]:
            raise PageError(HTTPStatus.NOT_FOUND, "not found")
        camera_id, route = parts[2], (method, *parts[3:])
        posted = body if body is not None else {}  # None only for a GET, whose routes read none
        actions = {
            ("GET",): lambda: self._send_json(page.camera_doc(camera_id)),
            ("GET", "frame.jpg"): lambda: self._send_jpeg(page.state(camera_id).current_frame()),
            ("POST", "frame"): lambda: self._send_json(
                {"frame_size": list(page.state(camera_id).current_frame(refresh=True).shape[1::-1])}),
            ("POST", "zones"): lambda: self._send_json(page.save_zones(camera_id, posted)),
            ("POST", "calibration"): lambda: self._send_json(page.fit_calibration(camera_id, posted)),
            ("GET", "preview"): lambda: self._send_json(page.preview(camera_id)),
        }
        if route not in actions:
            raise PageError(HTTPStatus.NOT_FOUND, "not found")
        actions[route]()

    # ---------------------------------------------------------------- who may ask
    def _allowed(self, url) -> bool:
        token = self.server.page.settings.token
        if token is None:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            if not is_loopback(host):
                self._send_json({"error": f"Host {host!r} is not this machine", "key": ""}, HTTPStatus.FORBIDDEN)
                return False
            return True
        given = parse_qs(url.query).get("token")
        if given and _same(given[0], token):
            # Once: the token moves into a cookie and out of the address bar and the history.
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", url.path or "/")
            self.send_header("Set-Cookie", f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and _same(auth[len("Bearer "):].strip(), token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            cookie = SimpleCookie()
        if COOKIE in cookie and _same(cookie[COOKIE].value, token):
            return True
        self.send_response(HTTPStatus.UNAUTHORIZED)
        self.send_header("WWW-Authenticate", "Bearer")
        body = b"token required: open /?token=... or send Authorization: Bearer ...\n"
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return False

    def _json_body(self) -> dict:
        if self.headers.get_content_type() != "application/json":
            raise PageError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "POST bodies are application/json")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise PageError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PageError(HTTPStatus.BAD_REQUEST, f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise PageError(HTTPStatus.BAD_REQUEST, "expected a JSON object")
        return body

    # ---------------------------------------------------------------- answers
    def _send(self, data: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, doc, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(doc, ensure_ascii=False).encode(), "application/json; charset=utf-8", status)

    def _send_static(self, name: str) -> None:
        self._send((WEBUI / name).read_bytes(), STATIC[name])

    def _send_jpeg(self, image: np.ndarray) -> None:
        _ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        self._send(jpeg.tobytes(), "image/jpeg")


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


class PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, page: CalibrationPage):
        self.page = page
        settings = page.settings
        try:
            is_v6 = ipaddress.ip_address(settings.bind).version == 6
        except ValueError:  # a name (localhost)
            is_v6 = False
        self.address_family = socket.AF_INET6 if is_v6 else socket.AF_INET
        super().__init__((settings.bind, settings.port), Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def serve(config: BoxConfig, settings: PageSettings, ready=None, stop: threading.Event | None = None) -> None:
    """Serve the page until interrupted (or ``stop`` is set); ``ready(server)`` once listening."""
    page = CalibrationPage(config, settings)
    server = PageServer(page)
    log_event(log, "calibration_page", url=server.url, cameras=",".join(page.cameras),
              token="required" if settings.token else "none (loopback only)")
    print(f"calibration page: {server.url}" + ("" if settings.token is None else "?token=..."), flush=True)
    if ready is not None:
        ready(server)
    if stop is not None:
        def shut_down_when_stopped() -> None:
            stop.wait()
            server.shutdown()
        threading.Thread(target=shut_down_when_stopped, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        page.close()
