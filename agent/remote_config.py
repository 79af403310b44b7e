"""The ``config`` command: the platform replaces one camera's file, or adds a camera.

Four steps; each failure leaves the box as it was and the reply says why:

1. **Stage.** The live config directory (the one holding ``edge.toml``) is mirrored into
   ``<storage>/config-staging``: symlinks to the live entries, so models and calibrations cost
   nothing, except the new camera file and an ``edge.toml`` naming it, which are real files. The
   whole box config is validated from there with the code of ``edge-agent check``
   (:func:`agent.config_check.checked_config`). A refusal (``invalid_config``) names the live
   file, the key and the reason.
2. **Persist.** The new text replaces the live camera file by ``os.replace`` (a crash leaves the
   old file or the new one), the old one kept as ``<file>.previous``; a new camera is added to
   ``edge.toml``'s ``cameras`` the same way.
3. **Apply.** Only that camera's worker is stopped, its parts rebuilt and its worker started
   (:meth:`agent.camera_set.CameraSet.swap`); the other cameras go on.
4. **Prove.** The camera must analyse a frame within ``[commands] config_apply_timeout_s``; if it
   does not (its url does not open, its stream never decodes), the previous files and the
   previous camera come back and the reply is ``rolled_back``, with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from agent.camera_set import CameraSet
from agent.config import BoxConfig, ConfigError, load_config, read_toml
from agent.config_check import checked_config
from agent.files import write_atomically
from agent.logs import log_event
from agent.redact import redact

log = logging.getLogger("agent.remote_config")

STAGING_DIR = "config-staging"  # in the storage dir, which the agent may always write
PREVIOUS = ".previous"
# A new camera's file is <camera id>.toml: the id must make a plain file name.
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
CAMERAS_ARRAY = re.compile(r"^cameras\s*=\s*\[[^\]]*\]", re.MULTILINE)


class ConfigRefused(Exception):
    """The change was not made: ``code`` for the reply, the file and key when a config is at fault."""

    def __init__(self, code: str, message: str, file: Path | str | None = None, key: str | None = None):
        super().__init__(message)
        self.code, self.file, self.key = code, file, key

    def reply(self) -> dict:
        error = {"code": self.code, "message": redact(str(self))}
        if self.file is not None:
            error["file"] = str(self.file)
        if self.key:
            error["key"] = self.key
        return {"ok": False, "error": error}


@dataclass(frozen=True)
class Change:
    """Where one camera's new text goes."""

    camera_id: str
    edge_file: Path  # the live edge.toml
    camera_file: Path  # the live camera file, new or replaced
    is_new: bool
    edge_text: str
    entries: list[str]  # edge.toml's cameras, as written there

    @property
    def config_dir(self) -> Path:
        return self.edge_file.parent


@dataclass(frozen=True)
class Written:
    path: Path
    had_previous: bool  # False: the file is new, undone by removing it


class RemoteConfig:
    def __init__(self, edge_file: Path, cameras: CameraSet, staging: Path, models_dir: Path, apply_timeout_s: float):
        """``models_dir``: where model commands installed models, so the check loads what would run."""
        self.edge_file, self.cameras, self.staging = _absolute(edge_file), cameras, _absolute(staging)
        self.models_dir, self.apply_timeout_s = models_dir, apply_timeout_s

    def apply(self, camera_id: str, text: str) -> dict:
        """Carry out one ``config`` command; returns the reply's result fields."""
        try:
            change = self._plan(camera_id)
            secret = self._validate(change, text)
            written = _persist(change, text, secret)
        except ConfigRefused as refused:
            log_event(log, "config_refused", level=logging.WARNING, camera=camera_id, code=refused.code,
                      reason=redact(str(refused)))
            return refused.reply()
        return self._run(change, written)

    def _plan(self, camera_id: str) -> Change:
        try:
            edge = read_toml(self.edge_file)
        except ConfigError as exc:
            raise ConfigRefused("invalid_config", str(exc), exc.source, exc.key) from None
        entries = edge.get("cameras")
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigRefused("invalid_config", f"{self.edge_file}: cameras: not a list of file names",
                                self.edge_file, "cameras")
        parts = self.cameras.parts(camera_id)
        if parts is not None:
            camera_file = _absolute(parts.camera.source_file)
        else:
            camera_file = self._new_camera_file(camera_id)
        if not camera_file.is_relative_to(self.edge_file.parent):
            raise ConfigRefused("config_not_writable", f"camera file {camera_file} lies outside the config "
                                f"directory {self.edge_file.parent}: change it there by hand")
        for folder in {camera_file.parent} | ({self.edge_file.parent} if parts is None else set()):
            if not os.access(folder, os.W_OK):
                raise ConfigRefused("config_not_writable", f"{folder} is not writable by the agent "
                                    "(docs/update.md#configuration)", folder)
        return Change(camera_id, self.edge_file, camera_file, parts is None, self.edge_file.read_text(), entries)

    def _new_camera_file(self, camera_id: str) -> Path:
        """<camera id>.toml beside the box's first camera file (or edge.toml, for the first camera)."""
        if not FILE_NAME.fullmatch(camera_id):
            raise ConfigRefused("invalid_config", f"camera id {camera_id!r} cannot name a file "
                                "(letters, digits, '_', '-', '.')", key="id")
        configs = self.cameras.configs()
        folder = _absolute(configs[0].source_file).parent if configs else self.edge_file.parent
        path = folder / f"{camera_id}.toml"
        if path.exists():
            raise ConfigRefused("invalid_config", f"{path} exists but is no camera of {self.edge_file}: "
                                "remove it or name it in cameras by hand", path)
        return path

    def _validate(self, change: Change, text: str) -> bool:
        """Check the box with ``text`` as the camera's file, as ``check`` would; returns whether
        the file holds a secret (a password in its url)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            staged_file, box = self._check_staged(change, text)
        except ConfigRefused:
            raise
        except ConfigError as exc:
            file = self._live(exc.source)
            raise ConfigRefused("invalid_config", str(ConfigError(file, exc.key, self._live(exc.reason))),
                                file, exc.key) from None
        except Exception as exc:  # noqa: BLE001 - a calibration's or a model's own error: still a refusal
            raise ConfigRefused("invalid_config", f"{type(exc).__name__}: {self._live(str(exc))}",
                                change.camera_file) from None
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        camera = next(c for c in box.cameras if _absolute(c.source_file) == staged_file)
        if camera.id != change.camera_id:
            raise ConfigRefused("invalid_config", f"{change.camera_file}: id: is {camera.id!r}, but the command "
                                f"is for camera {change.camera_id!r}", change.camera_file, "id")
        return camera.password_in_file

    def _check_staged(self, change: Change, text: str) -> tuple[Path, BoxConfig]:
        """The staging mirror with ``text`` as the camera's file, and the box config checked from
        there; returns the staged file and that config."""
        staged_file = self.staging / change.camera_file.relative_to(change.config_dir)
        _mirror(change.config_dir, self.staging, {change.edge_file, change.camera_file})
        staged_file.write_text(text)
        entries = [str(staged_file) if _absolute(change.config_dir / e) == change.camera_file else e
                   for e in change.entries] + ([str(staged_file)] if change.is_new else [])
        staged_edge = self.staging / change.edge_file.name
        staged_edge.write_text(_with_cameras(change.edge_text, entries))
        return staged_file, checked_config(staged_edge, self.models_dir)

    def _live(self, text: str) -> str:
        """``text`` with staged paths shown as the live files they stand for."""
        return text.replace(str(self.staging), str(self.edge_file.parent))

    def _run(self, change: Change, written: list[Written]) -> dict:
        camera_id = change.camera_id
        try:
            camera = load_config(change.edge_file).camera(camera_id)
            old = self.cameras.swap(camera)
        except Exception:
            _undo(written)  # the box keeps running as it did: its files must say so too
            raise
        failure = self.cameras.wait_analysed(camera_id, self.apply_timeout_s)
        if failure is None:
            log_event(log, "config_applied", camera=camera_id, file=change.camera_file, new=change.is_new)
            return {"ok": True, "result": "applied", "camera_id": camera_id}
        self.cameras.restore(camera_id, old)
        _undo(written)
        log_event(log, "config_rolled_back", level=logging.WARNING, camera=camera_id, file=change.camera_file,
                  reason=redact(failure))
        return {"ok": False, "result": "rolled_back", "camera_id": camera_id,
                "error": {"code": "camera_failed", "message": redact(failure)}}


def _absolute(path: Path | str) -> Path:
    """``path`` absolute and without ``..``; symlinks are kept (the staging mirror is made of them)."""
    return Path(os.path.abspath(path))


def _mirror(live: Path, staging: Path, real: set[Path]) -> None:
    """``staging`` as ``live``: a symlink per entry, but real folders on the way to the files in
    ``real``, which are left out for the caller to write."""
    staging.mkdir(parents=True)
    for entry in live.iterdir():
        if entry in real:
            continue
        if any(entry in path.parents for path in real):
            _mirror(entry, staging / entry.name, real)
        else:
            (staging / entry.name).symlink_to(entry)


def _with_cameras(edge_text: str, entries: list[str]) -> str:
    """``edge_text`` with its ``cameras = [...]`` array holding ``entries``; the rest of the file,
    comments included, as it was."""
    array = "cameras = [" + ", ".join(json.dumps(e, ensure_ascii=False) for e in entries) + "]"
    text, count = CAMERAS_ARRAY.subn(lambda _: array, edge_text, count=1)
    try:
        parsed = tomllib.loads(text).get("cameras") if count else None
    except tomllib.TOMLDecodeError:
        parsed = None
    if parsed != entries:
        raise ConfigRefused("invalid_config", "cannot rewrite its cameras array (it must start a line, "
                            "cameras = [...]): add the camera by hand", key="cameras")
    return text


def _persist(change: Change, text: str, secret: bool) -> list[Written]:
    """Write the change into the live config; the files written, to :func:`_undo` them."""
    written: list[Written] = []
    try:
        # The camera file first, so that edge.toml never names a file that is not there.
        written.append(_replace(change.camera_file, text, secret))
        if change.is_new:
            entry = os.path.relpath(change.camera_file, change.config_dir)
            written.append(_replace(change.edge_file, _with_cameras(change.edge_text, change.entries + [entry])))
    except (OSError, ConfigRefused) as exc:
        _undo(written)
        if isinstance(exc, ConfigRefused):
            raise
        raise ConfigRefused("config_not_writable", f"cannot write {exc.filename}: {exc.strerror}",
                            exc.filename) from None
    return written


def _replace(path: Path, text: str, secret: bool = False) -> Written:
    """``path`` holds ``text`` now, in the old file's mode (0644 for a new one; readable by its
    owner only if ``text`` is a secret), its old content kept as <path>.previous."""
    had_previous = path.exists()
    mode = stat.S_IMODE(path.stat().st_mode) if had_previous else 0o644
    if secret:
        mode &= 0o600
    if had_previous:
        shutil.copy2(path, _previous(path))
    write_atomically(path, text.encode("utf-8"), mode)
    return Written(path, had_previous)


def _undo(written: list[Written]) -> None:
    for item in reversed(written):
        if item.had_previous:
            os.replace(_previous(item.path), item.path)
        else:
            item.path.unlink(missing_ok=True)


def _previous(path: Path) -> Path:
    return path.with_name(path.name + PREVIOUS)
