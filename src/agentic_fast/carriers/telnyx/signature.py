"""Telnyx webhook signatures: Ed25519 over ``f"{telnyx-timestamp}|{raw body}"``.

Telnyx signs every webhook with the account's Ed25519 key: ``telnyx-signature-ed25519`` is
the base64 of the 64-byte signature, ``telnyx-timestamp`` Unix seconds. The public key
(``telnyx.public_key``, base64 of 32 raw bytes, from the Mission Control portal) verifies
it. A timestamp further than ``telnyx.webhook_tolerance_s`` from now is refused (the SDK
uses 300 s); within the window a replay is caught by the event id (see ``routes``).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentic_fast.core.errors import ConfigError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TelnyxSignatureVerifier",
    "WebhookCheck",
    "load_public_key",
]

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
#: A timestamp header longer than this is not Unix seconds (keeps ``int()`` cheap).
_MAX_TS_DIGITS = 12
_MAX_SIGNATURE_CHARS = 200


def load_public_key(value: str, key: str = "telnyx.public_key") -> Ed25519PublicKey:
    """The Ed25519 public key from its base64 text; ``ConfigError`` naming ``key``."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{key}: must be the base64 of a 32-byte Ed25519 public key "
                          "(Mission Control > Keys & Credentials > Public Key)", key=key) from None
    if len(raw) != 32:
        raise ConfigError(f"{key}: an Ed25519 public key is 32 bytes, this one decodes to "
                          f"{len(raw)}", key=key)
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, slots=True)
class WebhookCheck:
    """The verdict on one webhook; falsy when refused. ``reason`` (for counters):
    ``ok``, ``missing_signature``, ``missing_timestamp``, ``bad_timestamp``, ``stale``,
    ``bad_signature``."""

    ok: bool
    reason: str
    timestamp: int | None = None

    def __bool__(self) -> bool:
        return self.ok


class TelnyxSignatureVerifier:
    """Checks ``telnyx-signature-ed25519`` + ``telnyx-timestamp`` of a raw webhook body."""

    __slots__ = ("_clock", "_key", "tolerance_s")

    def __init__(self, public_key: str, *, tolerance_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = load_public_key(public_key)
        self.tolerance_s = tolerance_s
        self._clock = clock

    def check(self, body: bytes, headers: Mapping[str, str]) -> WebhookCheck:
        """Verify ``body`` against the headers (a case-insensitive mapping, as aiohttp's)."""
        signature = headers.get(SIGNATURE_HEADER)
        stamp = headers.get(TIMESTAMP_HEADER)
        if not signature:
            return WebhookCheck(False, "missing_signature")
        if not stamp:
            return WebhookCheck(False, "missing_timestamp")
        stamp = stamp.strip()
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= _MAX_TS_DIGITS):
            return WebhookCheck(False, "bad_timestamp")
        ts = int(stamp)
        if abs(self._clock() - ts) > self.tolerance_s:
            return WebhookCheck(False, "stale", ts)
        if len(signature) > _MAX_SIGNATURE_CHARS:
            return WebhookCheck(False, "bad_signature", ts)
        try:
            sig = base64.b64decode(signature.strip(), validate=True)
            self._key.verify(sig, stamp.encode("ascii") + b"|" + body)
        except (binascii.Error, ValueError, InvalidSignature):
            return WebhookCheck(False, "bad_signature", ts)
        return WebhookCheck(True, "ok", ts)
