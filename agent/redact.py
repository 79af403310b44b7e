"""One place that hides credentials before text leaves the process.

Camera URLs carry passwords (``rtsp://admin:S3cret@cam``) and FFmpeg, PyAV and our own messages
quote them back in error text. That text travels: to the log, to the retained status and the
``camera_offline`` ticket on the city broker, to command replies and to ``edge-agent check``. Every
one of those paths calls :func:`redact`, and the log formatters call it once more on the finished
line as a last line of defence, so a path someone adds later leaks nothing to the log at least.

Two things are masked: the password part of any ``scheme://user:password@host`` (the user name is
kept: it helps an operator and is no secret), and every secret value the agent has read at start
(:func:`add_secret`, e.g. the MQTT password), wherever it appears.
"""

from __future__ import annotations

import json
import re
import threading

MASK = "***"

# scheme://user:password@ — the password runs to the last '@' before the path, so a password with an
# unescaped '@' is masked whole. Any scheme: rtsp, rtsps, http(s), mqtt(s) and whatever comes next.
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*):[^/?#\s]*@")

_secrets: set[str] = set()
_lock = threading.Lock()
# Short values would mask ordinary words and numbers all over the log, and are not worth guessing at.
MIN_SECRET_LEN = 4


def add_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in redacted text from now on."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _lock:
            # Also as it appears inside a JSON string (the JSON log format), quotes and
            # backslashes escaped.
            _secrets.update({value, json.dumps(value, ensure_ascii=False)[1:-1]})


def redact(text: str) -> str:
    """``text`` without URL passwords and without the secrets registered with :func:`add_secret`."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # a secret inside a longer one: the longer first
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text

