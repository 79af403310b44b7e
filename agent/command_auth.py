"""Command authentication: only commands the platform signed are carried out.

The platform and the agent share one secret per agent (``[commands] key_file``). Each command
carries ``auth = {"ts", "nonce", "sig"}``; ``sig`` is the hex HMAC-SHA256 under that key of
:func:`signed_bytes` — the topic, the command without ``auth``, ``ts`` and ``nonce`` — so a
signature cannot be moved to another topic (another verb or agent), another body, or another
time. A command is refused, before anything changes, when it is

* ``unsigned``: no ``auth`` object;
* ``bad_signature``: ``auth`` malformed or its MAC wrong (compared in constant time);
* ``stale``: ``ts`` more than ``max_skew_s`` from the agent's clock;
* ``replayed``: its nonce was already used within that window.

Nonces are remembered in the agent's SQLite database, so a restart does not reopen the window
for a replay. A nonce can only be accepted while its ``ts`` is fresh, so it is forgotten once
``ts`` is older than ``max_skew_s``: by then the command is stale anyway.

The key is a secret: it never appears in logs, status, tickets or replies, nor does a MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path

from agent.outbox import Outbox
from agent.typedtoml import ConfigError, setting

MIN_KEY_BYTES = 32  # the HMAC-SHA256 block of security; shorter keys are guessable in principle
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
SIG = re.compile(r"^[0-9a-f]{64}$")
DOMAIN = b"edge-agent/command/1\n"  # a MAC made for anything else never verifies as a command

CONFIG_APPLY_TIMEOUT_S = 30.0  # an RTSP camera connects, decodes and is analysed well within it

# Its table (command_nonces) is made, and changed between versions, by agent/migrations.py.


@dataclass(frozen=True)
class CommandsSection:
    key_file: Path = setting(
        help="File holding this agent's command key, shared with the platform: at least 32 random "
             "bytes as hex (openssl rand -hex 32), mode 0600")
    max_skew_s: float = setting(
        120.0, gt=0, le=3600, help="A command whose ts is further than this from the box's clock is stale")
    config_apply_timeout_s: float = setting(
        CONFIG_APPLY_TIMEOUT_S, gt=0, le=600,
        help="A camera changed by a remote config command that analyses no frame this long is rolled back "
             "to its previous file (docs/update.md)")


class CommandKey:
    """The shared secret. Its repr hides it, so no config dump or traceback can print it."""

    def __init__(self, secret: bytes):
        self._secret = secret

    def mac(self, data: bytes) -> str:
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "CommandKey(<secret>)"


def load_key(path: Path, source: str | Path, key: str = "commands.key_file") -> CommandKey:
    """Read a hex key file; a missing, unreadable, malformed or short key is a ConfigError."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(source, key, f"command key file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, key, f"command key file {path} is unreadable: {type(exc).__name__}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(source, key, f"command key file {path} must hold the key as hex digits") from None
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigError(source, key, f"command key in {path} is {len(secret)} bytes; at least "
                                       f"{MIN_KEY_BYTES} are needed (openssl rand -hex 32)")
    return CommandKey(secret)


def canonical_json(doc: dict) -> bytes:
    """The one byte form both sides compute: sorted keys, no spaces, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signed_bytes(topic: str, command: dict, ts: int, nonce: str) -> bytes:
    """What the MAC covers. ``command`` without ``auth``; every part on its own line, and the
    topic and nonce cannot hold a newline (MQTT topic levels here, and the nonce's pattern), so
    no two different inputs give the same bytes."""
    body = {k: v for k, v in command.items() if k != "auth"}
    return b"".join((DOMAIN, topic.encode("utf-8"), b"\n", canonical_json(body), b"\n",
                     str(ts).encode(), b"\n", nonce.encode()))


def sign(key: CommandKey, topic: str, command: dict, ts: int, nonce: str) -> dict:
    """``command`` with its ``auth``: what the platform sends."""
    body = {k: v for k, v in command.items() if k != "auth"}
    return body | {"auth": {"ts": ts, "nonce": nonce, "sig": key.mac(signed_bytes(topic, body, ts, nonce))}}


class AuthError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class CommandAuth:
    """Checks a command's ``auth`` and consumes its nonce."""

    def __init__(self, key: CommandKey, max_skew_s: float, outbox: Outbox):
        self.key, self.max_skew_s, self.outbox = key, max_skew_s, outbox

    def check(self, topic: str, command: dict, now: float) -> None:
        """Raise AuthError unless ``command`` is signed, fresh and new; on success its nonce is
        stored, so the same command is refused from now on."""
        auth = command.get("auth")
        if auth is None:
            raise AuthError("unsigned", f"command on {topic} carries no auth")
        if not isinstance(auth, dict) or set(auth) != {"ts", "nonce", "sig"}:
            raise AuthError("bad_signature", "auth must be an object of exactly ts, nonce and sig")
        ts, nonce, sig = auth["ts"], auth["nonce"], auth["sig"]
        if not (isinstance(ts, int) and not isinstance(ts, bool) and isinstance(nonce, str) and NONCE.match(nonce)
                and isinstance(sig, str) and SIG.match(sig)):
            raise AuthError("bad_signature", "auth: ts must be integer Unix seconds, nonce 16-128 of "
                                             "[A-Za-z0-9_-], sig 64 lower-case hex digits")
        # The MAC first: without the key nobody learns anything about our clock or nonces.
        if not hmac.compare_digest(self.key.mac(signed_bytes(topic, command, ts, nonce)), sig):
            raise AuthError("bad_signature", f"signature does not verify for {topic}")
        skew = now - ts
        if abs(skew) > self.max_skew_s:
            raise AuthError("stale", f"ts is {skew:+.0f} s from the agent's clock (allowed ±{self.max_skew_s:g} s)")
        with self.outbox.transaction(now) as tx:
            tx.execute("DELETE FROM command_nonces WHERE ts < ?", (now - self.max_skew_s,))
            if tx.execute("INSERT OR IGNORE INTO command_nonces (nonce, ts) VALUES (?, ?)",
                          (nonce, ts)).rowcount == 0:
                raise AuthError("replayed", f"nonce {nonce} was used before")
