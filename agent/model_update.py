"""Model updates: a signed ``model`` command replaces the model of one ``[models.<name>]`` while
the agent runs.

The agent downloads the ONNX file the command names, from a host on ``[models_update]
allowed_hosts`` only, into a staging folder, hashing it while it streams; a byte cap stops an
oversized or endless body, and a file whose sha256 is not the command's is deleted. Installed
under a versioned name, the model must then load, run on a reference frame (the camera's last
picture, else a generated one) and know every class the cameras' zones look for, before anything
the cameras use changes. Only then does the pointer file (``<storage>/models/active.json``,
replaced atomically) name it, and the cameras of that model, and no other, switch to it between
two frames. The agent reads the pointer at start, so an update survives a restart. The model it
replaced is kept for one rollback: the command's ``rollback``, or automatic when the active
model no longer loads at start.

Every failure is a :class:`ModelUpdateError` ``(code, reason)`` and leaves the running model, the
pointer and the installed files as they were. See docs/update.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.client
import json
import logging
import os
import ssl
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from agent.config import BoxConfig, CameraConfig, ModelSection, ModelsUpdateSection
from agent.detect import Detector, load_detector
from agent.detect.manifest import ModelManifest, load_manifest
from agent.files import write_atomically
from agent.logs import log_event
from agent.pipeline import CameraPipeline
from agent.privacy import PEOPLE
from agent.tickets import ModelInfo, TicketBook
from agent.typedtoml import ConfigError, load_dataclass, read_toml

log = logging.getLogger("agent.model_update")

MODELS_DIR = "models"  # under the storage dir
POINTER_FILE = "active.json"
STAGING_DIR = "staging"
BLOCK_BYTES = 64 * 1024
# Without a camera picture yet, the model runs on this: noise has no objects, but it exercises
# every layer with values the model's input normalisation expects.
REFERENCE_SHAPE = (576, 768, 3)


class ModelUpdateError(Exception):
    """A refused update; ``code`` is the reply's error code (reply.schema.json)."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class ActiveEntry:
    manifest: Path  # what runs
    previous: Path | None  # what a rollback goes back to; None: nothing
    config_manifest: Path  # edge.toml's manifest at install time: an edge.toml edited since wins


class ActiveModels:
    """The pointer file: which manifest each updated model name runs, and the one before it.

    Paths inside the models folder are stored relative to it, so the storage dir can move."""

    def __init__(self, models_dir: Path):
        self.dir = models_dir
        self.path = models_dir / POINTER_FILE

    def entries(self) -> dict[str, ActiveEntry]:
        try:
            doc = json.loads(self.path.read_text())
            return {name: ActiveEntry(self.dir / e["manifest"], self.dir / e["previous"] if e["previous"] else None,
                                      Path(e["config_manifest"])) for name, e in doc["models"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # An unattended box must still start: on edge.toml's models, loudly.
            log_event(log, "model_pointer_unreadable", level=logging.ERROR, file=self.path,
                      reason=f"{type(exc).__name__}: {exc}", action="running the models edge.toml names")
            return {}

    def entry(self, name: str, config_manifest: Path) -> ActiveEntry | None:
        """The update ``name`` runs, None when edge.toml's own manifest applies."""
        entry = self.entries().get(name)
        return entry if entry is not None and entry.config_manifest == config_manifest else None

    def running(self, name: str, config_manifest: Path) -> Path:
        entry = self.entry(name, config_manifest)
        return entry.manifest if entry is not None else config_manifest

    def install(self, name: str, manifest: Path, config_manifest: Path) -> None:
        previous = self.running(name, config_manifest)
        self._save(name, ActiveEntry(manifest, previous, config_manifest))

    def roll_back(self, name: str, config_manifest: Path) -> ActiveEntry | None:
        """Point ``name`` at its previous model; returns the new entry, None for edge.toml's own."""
        entry = self.entry(name, config_manifest)
        back = None
        if entry is not None and entry.previous is not None and entry.previous != config_manifest:
            back = ActiveEntry(entry.previous, None, config_manifest)
        self._save(name, back)
        return back

    def prune(self, name: str) -> None:
        """Delete the installed files of ``name`` that neither run nor are kept for a rollback."""
        entry = self.entries().get(name)
        keep = {p.stem for p in (entry.manifest, entry.previous) if p is not None} if entry else set()
        for file in (self.dir / name).glob("*"):
            if file.stem not in keep:
                file.unlink(missing_ok=True)

    def _save(self, name: str, entry: ActiveEntry | None) -> None:
        doc = {n: e for n, e in self.entries().items() if n != name}
        if entry is not None:
            doc[name] = entry
        models = {n: {"manifest": self._stored(e.manifest), "previous": self._stored(e.previous),
                      "config_manifest": str(e.config_manifest)} for n, e in doc.items()}
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps({"models": models}, indent=2).encode())

    def _stored(self, path: Path | None) -> str | None:
        if path is None:
            return None
        return str(path.relative_to(self.dir)) if path.is_relative_to(self.dir) else str(path)


def open_detector(manifest: Path, section: ModelSection) -> Detector:
    return load_detector(manifest, section.threads, section.min_score, section.nms_iou, section.providers)


def load_model(name: str, section: ModelSection, active: ActiveModels | None) -> Detector:
    """The detector of ``[models.<name>]``: the update the pointer names, else edge.toml's. An
    update that no longer loads (a file deleted or damaged on disk) is rolled back, loudly."""
    if active is None:
        return open_detector(section.manifest, section)
    installed = active.entries().get(name)
    if installed is not None and installed.config_manifest != section.manifest:
        log_event(log, "model_update_superseded", level=logging.WARNING, model=name,
                  reason=f"edge.toml now names {section.manifest}, not {installed.config_manifest}")
    entry = active.entry(name, section.manifest)
    while entry is not None:
        try:
            return open_detector(entry.manifest, section)
        except ConfigError as exc:
            entry = active.roll_back(name, section.manifest)
            log_event(log, "model_rolled_back", level=logging.ERROR, model=name, reason=str(exc),
                      now_running=entry.manifest if entry else section.manifest)
    return open_detector(section.manifest, section)


def check_url(url: str, settings: ModelsUpdateSection) -> str:
    """The URL's host, if the box may download from it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelUpdateError("host_not_allowed", f"url must be http(s)://<host>/..., got scheme {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise ModelUpdateError("host_not_allowed", "url carries a user or password: the model server must "
                                                   "serve models without credentials in the URL")
    if not settings.allows(parts.hostname):
        raise ModelUpdateError("host_not_allowed", f"host {parts.hostname!r} is not in [models_update] "
                                                   f"allowed_hosts ({', '.join(settings.allowed_hosts) or 'empty'})")
    return parts.hostname


class _RefuseRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could lead off the allowed hosts: the command must name the file itself."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise ModelUpdateError("download_failed", f"{urlsplit(req.full_url).hostname} answered {code} "
                                                  "(a redirect): give the file's own URL")


def download(url: str, sha256: str, settings: ModelsUpdateSection, dest: Path) -> int:
    """Stream ``url`` into ``dest``, at most ``max_bytes``, and check its sha256; returns its size.
    ``dest`` is left for the caller to delete on failure."""
    host = check_url(url, settings)
    # No proxy from the environment: the allow list is about where the bytes come from.
    tls = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls),
                                         _RefuseRedirect())
    digest, size = hashlib.sha256(), 0
    try:
        with opener.open(url, timeout=settings.timeout_s) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > settings.max_bytes:
                raise _too_large(f"{host} announces {int(length)} bytes")
            while block := response.read(BLOCK_BYTES):
                size += len(block)
                if size > settings.max_bytes:
                    raise _too_large(f"{host} sent more")
                digest.update(block)
                out.write(block)
    except urllib.error.HTTPError as exc:
        raise ModelUpdateError("download_failed", f"{host} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelUpdateError("download_failed", f"download from {host} failed: {reason}") from None
    if digest.hexdigest() != sha256:
        raise ModelUpdateError("bad_hash", f"the file from {host} ({size} bytes) has sha256 {digest.hexdigest()}, "
                                           f"the command says {sha256}")
    return size


def _too_large(what: str) -> ModelUpdateError:
    return ModelUpdateError("too_large", f"{what}, over [models_update] max_bytes")


def manifest_text(doc: dict) -> str:
    """``doc`` (a manifest as JSON gives it) as TOML: keys, then tables, then arrays of tables."""
    lines: list[str] = []

    def emit(table: dict, prefix: str) -> None:
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        arrays = {k: v for k, v in table.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
        for key, value in table.items():
            if key not in nested and key not in arrays:
                lines.append(f"{json.dumps(key)} = {json.dumps(value, ensure_ascii=False, allow_nan=False)}")
        for key, value in nested.items():
            lines.extend(["", f"[{prefix}{json.dumps(key)}]"])
            emit(value, f"{prefix}{json.dumps(key)}.")
        for key, items in arrays.items():
            for item in items:
                lines.extend(["", f"[[{prefix}{json.dumps(key)}]]"])
                emit(item, f"{prefix}{json.dumps(key)}.")

    try:
        emit(doc, "")
        text = "\n".join(lines) + "\n"
        same = tomllib.loads(text) == doc
    except (ValueError, TypeError) as exc:  # NaN, null, a mixed array: nothing TOML can say
        raise ModelUpdateError("bad_manifest", f"manifest cannot be written as TOML: {exc}") from None
    if not same:
        raise ModelUpdateError("bad_manifest", "manifest cannot be written as TOML (null or mixed arrays?)")
    return text


def classes_needed(cameras: list[CameraConfig], current: Detector) -> set[str]:
    """The classes the cameras' zones look for (``classes``, ``mover_classes``, a person for
    privacy) that the current model has: a new model must keep them. A name the current model
    lacks was never matched (lift_ebike's ``ebike`` on a COCO model), so it is not asked for."""
    wanted: set[str] = set()
    for cam in cameras:
        for zc in cam.zones:
            for f in dataclasses.fields(zc.params):
                if f.name == "classes" or f.name.endswith("_classes"):
                    wanted |= set(getattr(zc.params, f.name))
        if cam.hides_people:
            wanted |= PEOPLE
    return wanted & set(current.class_names)


def reference_frame(pipelines: list[CameraPipeline]) -> np.ndarray:
    """What the new model is tried on: a camera's last analysed picture, else generated noise."""
    for pipeline in pipelines:
        if (obs := pipeline.latest) is not None:
            return obs.image
    return np.random.default_rng(0).integers(0, 256, REFERENCE_SHAPE, dtype=np.uint8)


def verify(manifest: Path, section: ModelSection, frame: np.ndarray, needed: set[str]) -> Detector:
    """The model loads (its sha256 checked again on disk), runs on ``frame`` and knows ``needed``."""
    try:
        detector = open_detector(manifest, section)
    except ConfigError as exc:
        raise ModelUpdateError("bad_model", str(exc)) from None
    try:
        detector.detect(frame)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors, a decoder's shape mismatch
        raise ModelUpdateError("bad_model", f"{detector.name} fails on a reference frame: "
                                            f"{type(exc).__name__}: {exc}") from None
    missing = sorted(needed - set(detector.class_names))
    if missing:
        raise ModelUpdateError("classes_missing", f"{detector.name} has no class {', '.join(map(repr, missing))}, "
                                                  "which zones of its cameras look for")
    return detector


class ModelUpdater:
    """Carries out ``model`` commands on the running agent's shared detectors, pipelines and
    ticket books (updated in place: the Agent and the command handler hold the same dicts)."""

    def __init__(self, config: BoxConfig, models_dir: Path, detectors: dict[str, Detector],
                 pipelines: dict[str, CameraPipeline], books: dict[str, TicketBook],
                 cameras: Callable[[], Iterable[CameraConfig]]):
        """``cameras``: those running now, which a ``config`` command may have changed since the
        agent started with ``config`` (agent/camera_set.py)."""
        self.config, self.active, self.cameras = config, ActiveModels(models_dir), cameras
        self.detectors, self.pipelines, self.books = detectors, pipelines, books
        # Commands come from one thread, but a camera's first frame on a new model may roll it back.
        self._lock = threading.Lock()

    def handle(self, command: dict) -> dict:
        name = command["model"]
        if name not in self.detectors:
            raise ModelUpdateError("unknown_model", f"no camera of agent {self.config.agent.id} uses a model "
                                                    f"{name!r} (in use: {', '.join(self.detectors)})")
        if command.get("rollback"):
            return self.roll_back(name)
        return self.install(name, command)

    def install(self, name: str, command: dict) -> dict:
        settings = self.config.models_update
        if settings is None:
            raise ModelUpdateError("host_not_allowed", "no [models_update] in edge.toml: this box downloads no model")
        host = check_url(command["url"], settings)
        section, sha256 = self.config.models[name], command["sha256"]
        stem = f"{sha256[:12]}-{command['command_id']}"
        onnx, manifest = self.active.dir / name / f"{stem}.onnx", self.active.dir / name / f"{stem}.toml"
        if manifest.exists():
            raise ModelUpdateError("not_allowed", f"command_id {command['command_id']} already installed "
                                                  f"{manifest.name}")
        doc = self._manifest_doc(name, command.get("manifest"), onnx, sha256)
        staged = self.active.dir / STAGING_DIR / f"{stem}.onnx.part"
        for folder in (staged.parent, onnx.parent):
            folder.mkdir(parents=True, exist_ok=True)
        try:
            size = download(command["url"], sha256, settings, staged)
            os.replace(staged, onnx)
            write_atomically(manifest, manifest_text(doc).encode("utf-8"))
            detector = verify(manifest, section, reference_frame(self._pipelines_of(name)),
                              classes_needed(self._cameras_of(name), self.detectors[name]))
        except BaseException:
            for file in (staged, onnx, manifest):
                file.unlink(missing_ok=True)
            raise
        with self._lock:
            fallback = self.detectors[name]
            self.active.install(name, manifest, section.manifest)
            self._use(name, detector, fallback)
        log_event(log, "model_installed", model=name, manifest=manifest.name, sha256=sha256, host=host, bytes=size,
                  cameras=",".join(c.id for c in self._cameras_of(name)))
        return self._reply("model_installed", name, detector)

    def roll_back(self, name: str) -> dict:
        section = self.config.models[name]
        entry = self.active.entry(name, section.manifest)
        if entry is None or entry.previous is None:
            raise ModelUpdateError("no_previous", f"model {name!r} runs {self.active.running(name, section.manifest)}, "
                                                  "with nothing kept to go back to")
        # The previous model is tried like a new one: a rollback must not break the cameras either.
        detector = verify(entry.previous, section, reference_frame(self._pipelines_of(name)), set())
        with self._lock:
            self.active.roll_back(name, section.manifest)
            self._use(name, detector)
        log_event(log, "model_rolled_back", model=name, now_running=entry.previous, reason="rollback command")
        return self._reply("model_rolled_back", name, detector)

    def _manifest_doc(self, name: str, given: dict | None, onnx: Path, sha256: str) -> dict:
        """The new manifest: the command's keys, or (none given) those of the manifest running now."""
        if given is not None and {"file", "sha256"} & set(given):
            raise ModelUpdateError("bad_manifest", "manifest: file and sha256 come from the command's url and "
                                                   "sha256, not the manifest")
        if given is None:
            given = read_toml(self.active.running(name, self.config.models[name].manifest))
        kept = {k: v for k, v in given.items() if k not in ("file", "sha256")}
        doc = kept | {"file": onnx.name, "sha256": sha256}
        try:
            load_dataclass(ModelManifest, doc, "command manifest", base_dir=onnx.parent)
        except ConfigError as exc:
            raise ModelUpdateError("bad_manifest", str(exc)) from None
        return doc

    def _use(self, name: str, detector: Detector, fallback: Detector | None = None) -> None:
        """Swap ``detector`` in for the cameras of ``name`` only, then delete what is no longer kept.
        With a ``fallback``, a camera whose first frame on ``detector`` fails brings that back."""
        self.detectors[name] = detector
        for cam in self._cameras_of(name):
            first_use = functools.partial(self._first_use, name, cam.id, fallback) if fallback else None
            self.pipelines[cam.id].use_detector(detector, first_use)
            self.books[cam.id].model = ModelInfo(detector.name, detector.sha256)
        self.active.prune(name)

    def _first_use(self, name: str, camera: str, fallback: Detector, detector: Detector,
                   error: Exception | None) -> None:
        """Told on the camera's thread: the reference frame passed, yet the camera's own frame failed."""
        if error is None:
            return
        with self._lock:
            if self.detectors.get(name) is not detector:
                return  # another camera of the model already brought the fallback back
            self.active.roll_back(name, self.config.models[name].manifest)
            self._use(name, fallback)
        log_event(log, "model_rolled_back", level=logging.ERROR, model=name, now_running=fallback.name,
                  reason=f"failed at first use on camera {camera}: {type(error).__name__}: {error}")

    def _reply(self, result: str, name: str, detector: Detector) -> dict:
        entry = self.active.entry(name, self.config.models[name].manifest)
        previous = load_manifest(entry.previous).sha256.lower() if entry and entry.previous else None
        return {"ok": True, "result": result,
                "model": {"name": name, "manifest_name": detector.name, "sha256": detector.sha256,
                          "previous_sha256": previous, "cameras": [c.id for c in self._cameras_of(name)]}}

    def _cameras_of(self, name: str) -> list[CameraConfig]:
        return [cam for cam in self.cameras() if cam.model == name]

    def _pipelines_of(self, name: str) -> list[CameraPipeline]:
        return [self.pipelines[cam.id] for cam in self._cameras_of(name)]
