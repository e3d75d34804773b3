"""Device identity for the OpenClaw gateway: an Ed25519 key pair kept on disk (protocols.md 5.2).

The device id is the hex SHA-256 of the raw 32-byte public key, so it stays stable as long as
the key file does. The file is a PKCS#8 PEM private key, created on first use with mode 0600
(its folder 0700); a file found with looser permissions is tightened and the fix logged.

Once the owner approves the device, the gateway hands it a device token in
``hello-ok.auth.deviceToken``. :class:`DeviceTokenStore` keeps it beside the key
(``<key file>.token``, JSON, 0600, replaced atomically) for the next connects. A token file
that cannot be read or parsed is logged, counted and ignored: never a reason not to start.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agentic_fast.core import metrics
from agentic_fast.core.errors import ConfigError
from agentic_fast.core.log import get_logger

__all__ = [
    "DeviceIdentity",
    "DeviceTokenStore",
    "StoredDeviceToken",
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
        _write_private(tmp, identity.private_pem())
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


# --- device token -------------------------------------------------------------------------

_TOKEN_FORMAT = 1


@dataclass(frozen=True, slots=True)
class StoredDeviceToken:
    """A device token the gateway at ``gateway_url`` issued to ``device_id`` for ``role``."""

    token: str
    device_id: str
    role: str
    gateway_url: str
    scopes: tuple[str, ...] = ()
    issued_at_ms: int | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({
            "version": _TOKEN_FORMAT, "deviceId": self.device_id, "role": self.role,
            "gatewayUrl": self.gateway_url, "scopes": list(self.scopes), "token": self.token,
            "issuedAtMs": self.issued_at_ms, "savedAtMs": int(time.time() * 1000)},
            option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> StoredDeviceToken:
        """Parse the file's content; ``ValueError`` names what is wrong."""
        try:
            obj: Any = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from exc
        if not isinstance(obj, dict) or obj.get("version") != _TOKEN_FORMAT:
            raise ValueError(f"not a version {_TOKEN_FORMAT} device token record")
        fields = {}
        for key in ("token", "deviceId", "role", "gatewayUrl"):
            value = obj.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} must be a non-empty string")
            fields[key] = value
        scopes = obj.get("scopes")
        issued = obj.get("issuedAtMs")
        return cls(token=fields["token"], device_id=fields["deviceId"], role=fields["role"],
                   gateway_url=fields["gatewayUrl"],
                   scopes=tuple(x for x in scopes if isinstance(x, str))
                   if isinstance(scopes, list) else (),
                   issued_at_ms=issued if isinstance(issued, int)
                   and not isinstance(issued, bool) else None)


class DeviceTokenStore:
    """The file that keeps the gateway's device token (``<device key file>.token``).

    Nothing here raises: a token is a convenience on top of the shared gateway token and
    the device key, so a file that cannot be read, parsed or written is logged
    (``gateway.device_token.*``), counted and treated as absent.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()

    @classmethod
    def beside(cls, key_path: str | os.PathLike[str]) -> DeviceTokenStore:
        """The store next to the device key at ``key_path``."""
        key = Path(key_path).expanduser()
        return cls(key.with_name(key.name + ".token"))

    def load(self, *, device_id: str, role: str, gateway_url: str) -> StoredDeviceToken | None:
        """The stored token for this device, role and gateway, else None."""
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._invalid("unreadable", error=str(exc))
            return None
        try:
            if mode & 0o077:
                os.chmod(self.path, 0o600)
                _log.warning("gateway.device_token.permissions_fixed", path=str(self.path),
                             was=oct(mode), now="0o600")
            data = self.path.read_bytes()
        except OSError as exc:
            self._invalid("unreadable", error=str(exc))
            return None
        try:
            record = StoredDeviceToken.from_json(data)
        except ValueError as exc:
            self._invalid("corrupt", error=str(exc))
            return None
        if record.device_id != device_id:
            # the key file was replaced: the token belongs to a device we no longer are
            self._invalid("other_device", stored_device_id=record.device_id[:16],
                          device_id=device_id[:16])
            return None
        if record.role != role or record.gateway_url != gateway_url:
            _log.info("gateway.device_token.not_for_this_gateway", path=str(self.path),
                      stored_url=record.gateway_url, url=gateway_url, role=record.role)
            return None
        return record

    def _invalid(self, why: str, **fields: Any) -> None:
        metrics.incr(f"gateway.device_token.{why}")
        _log.warning(f"gateway.device_token.{why}", path=str(self.path),
                     action="ignored; the device connects without it", **fields)

    def save(self, record: StoredDeviceToken) -> bool:
        """Write ``record`` (mode 0600, atomic replace); False, logged, if that failed."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}."
                                  f"{secrets.token_hex(4)}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_private(tmp, record.to_json())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            metrics.incr("gateway.device_token.save_failed")
            _log.warning("gateway.device_token.save_failed", path=str(self.path),
                         error=str(exc))
            return False
        return True

    def clear(self) -> None:
        """Remove the stored token (the gateway rejected it); logged if that failed."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            metrics.incr("gateway.device_token.clear_failed")
            _log.warning("gateway.device_token.clear_failed", path=str(self.path),
                         error=str(exc))


def _write_private(tmp: Path, data: bytes) -> None:
    """Create ``tmp`` (it must not exist) readable by its owner only, with ``data`` on disk."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some filesystems refuse to open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
