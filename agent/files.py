"""Writing a file whole or not at all: what evidence, view references and calibrations need."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a temp file beside it, fsynced and renamed over it: a crash
    leaves the old file or the new one, never half of either."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
