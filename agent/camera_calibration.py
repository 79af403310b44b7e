"""Saving a camera's ground calibration: what ``edge-agent calibrate`` and the calibration page
both do once the technician accepts a fit.

In this order: the calibration file (its next version, the old file kept as ``.bak``); the camera
file's ``calibration`` key, when it has none; and the frame the points were clicked on, as the
camera's view reference (agent/faults.py), so the view check compares with the view the
calibration is true for. A running agent takes all three at its next start or reload (SIGHUP).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent import calibration
from agent.calibration import GroundCalibration
from agent.config import BoxConfig, CameraConfig, ConfigError, load_config
from agent.faults import REFERENCE_DIR, save_reference, saved_reference
from agent.files import write_atomically


@dataclass(frozen=True)
class Stored:
    calibration: GroundCalibration  # as saved: with its version and time
    path: Path  # the calibration file
    backup: Path | None  # the previous calibration file, if there was one
    camera_file_changed: bool  # the camera file got its calibration key
    reference: Path  # the view reference now


def calibration_path(camera: CameraConfig) -> Path:
    """The camera's calibration file: the one it names, else ``<camera file>.calibration.toml``."""
    return camera.calibration_file or camera.source_file.with_name(f"{camera.source_file.stem}.calibration.toml")


def store(config: BoxConfig, camera: CameraConfig, fitted: GroundCalibration, frame: np.ndarray) -> Stored:
    path = calibration_path(camera)
    had = path.exists()
    saved = calibration.save(path, fitted, calibration.next_version(path))
    changed = camera.calibration_file is None
    if changed:
        name_in_camera_file(camera.source_file, path, config.source_file)
    reference = camera.reference_image or saved_reference(config.storage.dir / REFERENCE_DIR, camera.id)
    save_reference(reference, frame)
    return Stored(saved, path, path.with_name(path.name + ".bak") if had else None, changed, reference)


def name_in_camera_file(camera_file: Path, calibration_file: Path, edge_path: Path) -> None:
    """Add ``calibration = "<file>"`` to the camera file with the least change: one line among
    its top-level keys, before the first table and the comments heading it; the rest of the file
    stays as written. Written atomically, the old file kept as ``.bak``, and put back if the box's
    config no longer loads (a ConfigError then says why)."""
    text = camera_file.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if re.match(r"\s*\[", line)), len(lines))
    while at > 0 and (not lines[at - 1].strip() or lines[at - 1].lstrip().startswith("#")):
        at -= 1
    if at > 0 and not lines[at - 1].endswith("\n"):
        lines[at - 1] += "\n"
    # A JSON string is a valid TOML basic string.
    lines.insert(at, f"calibration = {json.dumps(os.path.relpath(calibration_file, camera_file.parent))}\n")
    write_atomically(camera_file.with_name(camera_file.name + ".bak"), text.encode("utf-8"))
    write_atomically(camera_file, "".join(lines).encode("utf-8"))
    try:
        load_config(edge_path)
    except ConfigError:
        write_atomically(camera_file, text.encode("utf-8"))
        raise
