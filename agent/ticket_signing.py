"""Tamper-evident tickets: every ticket message is signed with the box's own Ed25519 key.

The key is made on the box's first start (``<storage>/keys/device_ed25519.pem``, mode 0600) and
never leaves it; the platform enrols its public key (``edge-agent key``, or the retained status
document) and from then on accepts only ticket messages that verify against it. The signature
covers the canonical JSON of the whole message without ``signature`` — including each evidence
item's ``sha256`` — so a changed field, or a changed picture or clip in transit, is detected.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.command_auth import canonical_json
from agent.typedtoml import ConfigError

ALG = "Ed25519"
KEY_FILE = Path("keys") / "device_ed25519.pem"  # under the storage dir


def key_id(public: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    return hashlib.sha256(public_raw(public)).hexdigest()[:16]


def public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def load_public(data: bytes | str) -> Ed25519PublicKey:
    """A public key as enrolled on the platform: PEM, or the base64 of its 32 raw bytes."""
    data = data.encode("ascii") if isinstance(data, str) else data
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"not an Ed25519 public key but {type(key).__name__}")
        return key
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(data, validate=True))


class DeviceKey:
    """The box's signing key."""

    def __init__(self, private: Ed25519PrivateKey, path: Path):
        self._private, self.path = private, path
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def load_or_create(cls, path: Path) -> DeviceKey:
        """Load the key at ``path``, or make one there if there is none yet."""
        if not path.exists():
            _create(path)
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            # Never replaced silently: a new key would make the platform reject every ticket.
            raise ConfigError(path, "", f"device key unreadable ({type(exc).__name__}); restore it from "
                                        "backup, or delete it to make a new one and enrol that") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(path, "", f"not an Ed25519 private key but {type(private).__name__}")
        return cls(private, path)

    def describe(self) -> dict:
        """What the status document publishes, for enrolment."""
        return {"alg": ALG, "key_id": self.key_id,
                "public_key": base64.b64encode(public_raw(self.public)).decode("ascii")}

    def sign(self, doc: dict) -> dict:
        """``doc`` with its ``signature``, over the canonical JSON of ``doc`` without one."""
        body = {k: v for k, v in doc.items() if k != "signature"}
        sig = self._private.sign(canonical_json(body))
        return body | {"signature": {"alg": ALG, "key_id": self.key_id, "sig": base64.b64encode(sig).decode("ascii")}}

    def __repr__(self) -> str:
        return f"DeviceKey(key_id={self.key_id}, path={self.path})"


def verify(doc: dict, public: Ed25519PublicKey) -> str | None:
    """None when ``doc``'s signature verifies against ``public``, else why not."""
    signature = doc.get("signature")
    if not isinstance(signature, dict):
        return "no signature"
    if signature.get("alg") != ALG:
        return f"signature alg {signature.get('alg')!r} is not {ALG}"
    if signature.get("key_id") != key_id(public):
        return f"signed by key {signature.get('key_id')!r}, enrolled key is {key_id(public)}"
    try:
        sig = base64.b64decode(signature.get("sig", ""), validate=True)
        public.verify(sig, canonical_json({k: v for k, v in doc.items() if k != "signature"}))
    except (InvalidSignature, ValueError, TypeError):
        return "signature does not verify"
    return None


def _create(path: Path) -> None:
    """Write a new key atomically with mode 0600: a temp file made 0600 from the start (mkstemp),
    fsync, then rename, so no crash or concurrent reader ever sees a partial or readable key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        # link, not replace: if another process made the key meanwhile, keep theirs.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
