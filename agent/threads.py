"""Thread names the operating system shows (``top -H``, ``/proc/<pid>/task/*/comm``).

Python before 3.14 names its threads for itself only; an operator looking for the camera that eats a
core, and tools/bench_cameras.py splitting the agent's CPU into decoding and analysis, need the
kernel to know them too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

PR_SET_NAME = 15
_LIBC_NAME = ctypes.util.find_library("c")  # None where there is no C library to ask (not Linux)
_libc = ctypes.CDLL(_LIBC_NAME, use_errno=True) if _LIBC_NAME else None


def name_native_thread() -> None:
    """Give the calling OS thread its Python thread's name (the kernel keeps 15 bytes)."""
    if _libc is not None:
        _libc.prctl(PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
