"""Writing a file whole or not at all: what evidence, view references and calibrations need."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o666) -> None:
    """``data`` into ``path`` through a temp file beside it, fsynced and renamed over it: a crash
    leaves the old file or the new one, never half of either. ``mode``: the new file's (before
    the umask), from its creation on, so a secret is never readable by others in between."""
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
