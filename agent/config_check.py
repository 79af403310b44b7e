"""What ``edge-agent check`` validates beyond parsing the config: each model loads (sha256 too),
and each camera that hides people has a model that finds them.

The one code path of ``check``, of a SIGHUP reload (:func:`agent.service.reload_config`) and of a
remote ``config`` command (:mod:`agent.remote_config`), so that what one accepts the others do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.config import BoxConfig, CameraConfig, ConfigError, load_config
from agent.detect import Detector
from agent.logs import log_event
from agent.model_update import MODELS_DIR, ActiveModels, load_model
from agent.privacy import PEOPLE

log = logging.getLogger("agent.config_check")


def load_detectors(config: BoxConfig, models_dir: Path | None = None) -> dict[str, Detector]:
    """The models the cameras use, each loaded once and shared (sha256 checked at load): those
    model commands installed in ``models_dir`` where they did, else edge.toml's."""
    used = {cam.model for cam in config.cameras}
    active = ActiveModels(models_dir) if models_dir is not None else None
    detectors = {name: load_model(name, m, active) for name, m in config.models.items() if name in used}
    for name, detector in detectors.items():
        if detector.missing_providers:
            log_event(log, "model_provider_missing", level=logging.WARNING, model=name,
                      missing=",".join(detector.missing_providers), running_on=detector.providers[0])
    return detectors


def check_privacy(camera: CameraConfig, detector: Detector) -> None:
    """A camera that hides people needs a model that finds them: otherwise nobody would be hidden,
    silently. Class names are known only once the model is loaded (they may be in its metadata)."""
    if camera.hides_people and not PEOPLE & set(detector.class_names):
        raise ConfigError(camera.source_file, "privacy",
                          f"model {detector.name!r} has no class {'/'.join(sorted(PEOPLE))}: nobody could be "
                          f"hidden (set mode = \"off\" to send people as seen)")


def checked_detectors(config: BoxConfig, models_dir: Path | None = None) -> dict[str, Detector]:
    """The loaded models of ``config``, once each passed the checks above: those of ``models_dir``
    (default: the config's storage) where model commands installed them, what `run` would run."""
    detectors = load_detectors(config, models_dir or config.storage.dir / MODELS_DIR)
    for cam in config.cameras:
        check_privacy(cam, detectors[cam.model])
    return detectors


def checked_config(path: Path, models_dir: Path | None = None) -> BoxConfig:
    """The config at ``path`` as ``check`` accepts it; raises :class:`ConfigError` (or a model's,
    a calibration's own error) naming the file and the key when it does not pass."""
    config = load_config(path)
    checked_detectors(config, models_dir)
    return config
