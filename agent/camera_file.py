"""Writing a camera file: the calibration page's one way to change a camera's config.

A camera file is replaced only by one that the same loader as ``edge-agent check`` accepts
(:func:`agent.config.load_camera`), so a technician cannot leave a box that refuses to start. The
new text goes to a temporary file beside the old one (same directory: relative paths in it resolve
the same, and the rename stays on one file system), is fsynced, checked, and renamed over the old
file, whose previous content is kept as ``<file>.bak``. A crash at any point leaves either the old
file or the new one, never half of one.

The text is TOML in a clean, stable form: keys in the order of the document (which is the order of
the old file, since the page edits what ``tomllib`` read), scalars before tables. Comments inside
the file are lost, as no TOML writer in the standard library keeps them; the comment block at the
top of the old file, which says what the camera is, is kept.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import stat
from pathlib import Path

from agent.config import CameraConfig, ConfigError, load_camera

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps(doc: dict, header: str = "") -> str:
    """``doc`` as TOML text; ``header`` (comment lines) goes first."""
    lines = [header.rstrip("\n")] if header.strip() else []
    _table(doc, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def header_comments(text: str) -> str:
    """The comment lines a TOML file starts with."""
    head = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    return "\n".join(head)


def save(path: Path, doc: dict, edge_path: Path) -> CameraConfig:
    """Replace the camera file ``path`` with ``doc`` once it validates; return what it loads as.

    Raises :class:`ConfigError` naming ``path`` and the key when ``doc`` is refused; the old file
    is then untouched.
    """
    path = Path(path)
    old_text = path.read_text() if path.exists() else ""
    text = dumps(doc, header_comments(old_text))
    tmp = path.with_name(f".{path.name}.new")
    # A camera file may hold a password (its url): the new one is no more readable than the old.
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            camera = load_camera(tmp, edge_path)
        except ConfigError as exc:
            raise ConfigError(path, exc.key, exc.reason) from None
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            shutil.copy2(path, backup)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return dataclasses.replace(camera, source_file=path)


def _fsync_dir(folder: Path) -> None:
    """The rename itself reaches the disk only with its directory."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _key(name: str) -> str:
    return name if BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _is_table_array(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(table: dict, where: list[str], lines: list[str]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)]
    for k, v in scalars:
        lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        inner = where + [_key(k)]
        if isinstance(v, dict):
            # A table holding only tables needs no header of its own ([zones] before [zones.a]).
            if any(not isinstance(x, dict) for x in v.values()) or not v:
                lines += ["", f"[{'.'.join(inner)}]"]
            _table(v, inner, lines)
        elif _is_table_array(v):
            for item in v:
                lines += ["", f"[[{'.'.join(inner)}]]"]
                _table(item, inner, lines)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")
