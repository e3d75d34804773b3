"""Device identity for the OpenClaw gateway: an Ed25519 key pair kept on disk (protocols.md 5.2).

The device id is the hex SHA-256 of the raw 32-byte public key, so it stays stable as long as
the key file does. The file is a PKCS#8 PEM private key, created on first use with mode 0600
(its folder 0700); a file found with looser permissions is tightened and the fix logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agentic_fast.errors import ConfigError
from agentic_fast.log import get_logger

__all__ = [
    "DeviceIdentity",
    "b64url_decode",
    "b64url_encode",
    "device_id_for",
    "load_or_create_identity",
]

_log = get_logger("gateway.device")
_KEY = "gateway.device_key_path"


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (the gateway's encoding of keys and signatures)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode`; accepts text with or without padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def device_id_for(public_key_raw: bytes) -> str:
    """Device id: lowercase hex SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key_raw).hexdigest()


class DeviceIdentity:
    """An Ed25519 key pair and the ids derived from it; signs handshake payloads."""

    __slots__ = ("_private", "device_id", "public_key_b64url", "public_key_raw")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key_raw: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.device_id: str = device_id_for(self.public_key_raw)
        self.public_key_b64url: str = b64url_encode(self.public_key_raw)

    @classmethod
    def generate(cls) -> DeviceIdentity:
        """A fresh identity held in memory only (tests; use :func:`load_or_create_identity`)."""
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature of ``data``."""
        return self._private.sign(data)

    def sign_text(self, text: str) -> str:
        """Signature of the UTF-8 bytes of ``text``, base64url-encoded."""
        return b64url_encode(self._private.sign(text.encode("utf-8")))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is ours over ``data`` (self-checks and tests)."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key_raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (what the key file holds)."""
        return self._private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())

    def __repr__(self) -> str:
        return f"DeviceIdentity(device_id={self.device_id[:12]}...)"


def load_or_create_identity(path: str | os.PathLike[str]) -> DeviceIdentity:
    """Load the key pair at ``path``, or create it (mode 0600) on first use.

    Safe against two processes creating it at once: the loser of the race loads the
    winner's key, so both end up with the same device id.
    """
    file = Path(path).expanduser()
    if file.exists():
        return _load(file)
    try:
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create folder for the device key {file.parent}: {exc}",
                          key=_KEY) from exc
    identity = DeviceIdentity.generate()
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, identity.private_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, file)  # fails if another process created it meanwhile
        except FileExistsError:
            return _load(file)
    except OSError as exc:
        raise ConfigError(f"cannot write the device key {file}: {exc}", key=_KEY) from exc
    finally:
        tmp.unlink(missing_ok=True)
    _log.info("gateway.device_key.created", path=str(file), device_id=identity.device_id)
    return identity


def _load(file: Path) -> DeviceIdentity:
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
        if mode & 0o077:
            os.chmod(file, 0o600)
            _log.warning("gateway.device_key.permissions_fixed", path=str(file),
                         was=oct(mode), now="0o600")
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the device key {file}: {exc}", key=_KEY) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"device key {file} is not a PEM private key: {exc}",
                          key=_KEY) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"device key {file} is not an Ed25519 key "
                          f"({type(key).__name__})", key=_KEY)
    return DeviceIdentity(key)
