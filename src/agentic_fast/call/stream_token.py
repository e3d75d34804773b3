"""Single-use stream tokens: the signed webhook vouches for the Media Stream that follows.

The webhook handler (signature checked) issues a token bound to our ``call_id`` and Twilio's
``CallSid`` and puts it in a TwiML ``<Parameter>``; the Media Streams handler reads it back
from ``start.customParameters`` and checks it against ``start.callSid`` before bridging any
audio (protocols.md 1.4, last paragraph). Verification is stateless (any process with the
secret can check a token); single use is enforced per process by :class:`UsedTokenSet`.

Token layout (URL-safe base64, no padding; ~135 characters for a 32-character call id)::

    version(1) | expiry(4, unix s, big-endian) | nonce(12) | len(call_sid)(1) | call_sid
    | call_id (rest, UTF-8) | HMAC-SHA256(secret, domain | all of the above)[:16]

An empty ``call_sid`` makes an *unbound* token (for TwiML sent before the CallSid exists,
e.g. inline ``Twiml`` on an outbound REST create): it then verifies for any CallSid.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from agentic_fast.core.errors import ConfigError, StreamTokenError

__all__ = [
    "StreamTokenClaims",
    "StreamTokenSigner",
    "UsedTokenSet",
]

_VERSION = 1
_DOMAIN = b"agentic_fast.stream_token.v1\x00"
_HEAD = struct.Struct(">BI12sB")  # version, expiry, nonce, len(call_sid)
_MAC_BYTES = 16
_MIN_SECRET = 16
#: Keeps a token far below the 500-character ``<Parameter>`` limit.
MAX_TOKEN_CHARS = 400


@dataclass(frozen=True, slots=True)
class StreamTokenClaims:
    """What a valid token says."""

    call_id: str
    call_sid: str  # "" for an unbound token
    expires_at: int
    nonce: bytes


class UsedTokenSet:
    """Nonces of consumed tokens, each remembered until its token expires.

    Bounded: when ``max_size`` unexpired nonces are held, a new one is refused
    (``replay_cache_full``) rather than forgetting one early, which would re-open a replay.
    """

    __slots__ = ("_clock", "_expiries", "_heap", "max_size")

    def __init__(self, max_size: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_size = max_size
        self._clock = clock
        self._expiries: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        self._evict(self._clock())
        return len(self._expiries)

    def _evict(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            _, nonce = heapq.heappop(heap)
            self._expiries.pop(nonce, None)

    def consume(self, nonce: bytes, expires_at: int) -> None:
        """Record ``nonce`` as used; raises :class:`StreamTokenError` if it already was."""
        self._evict(self._clock())
        if nonce in self._expiries:
            raise StreamTokenError("stream token already used", reason="replayed")
        if len(self._expiries) >= self.max_size:
            raise StreamTokenError(f"used-token set is full ({self.max_size} live tokens)",
                                   reason="replay_cache_full")
        self._expiries[nonce] = expires_at
        heapq.heappush(self._heap, (expires_at, nonce))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("non-ASCII token")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class StreamTokenSigner:
    """Issues and checks stream tokens with one secret (at least 16 bytes)."""

    __slots__ = ("_clock", "_secret", "ttl_s", "used")

    def __init__(self, secret: bytes, ttl_s: int = 60, clock: Callable[[], float] = time.time,
                 used: UsedTokenSet | None = None) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) < _MIN_SECRET:
            raise ConfigError(f"stream token secret must be at least {_MIN_SECRET} bytes")
        if ttl_s <= 0:
            raise ConfigError(f"stream token ttl must be positive, got {ttl_s!r}")
        self._secret = bytes(secret)
        self.ttl_s = ttl_s
        self._clock = clock
        self.used = used if used is not None else UsedTokenSet(clock=clock)

    def _mac(self, signed: bytes) -> bytes:
        return hmac.new(self._secret, _DOMAIN + signed, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, call_id: str, call_sid: str | None) -> str:
        """A token for ``call_id``, bound to ``call_sid`` (``None``/"" = unbound)."""
        sid = (call_sid or "").encode("utf-8")
        cid = call_id.encode("utf-8")
        if not cid or len(sid) > 255:
            raise ValueError("call_id must be non-empty and call_sid at most 255 bytes")
        expiry = int(self._clock() + self.ttl_s)
        signed = _HEAD.pack(_VERSION, expiry, os.urandom(12), len(sid)) + sid + cid
        token = _b64encode(signed + self._mac(signed))
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError(f"stream token would be {len(token)} characters "
                             f"(call_id too long), limit {MAX_TOKEN_CHARS}")
        return token

    def claims(self, token: str, call_sid: str) -> StreamTokenClaims:
        """Check signature, expiry and CallSid without consuming; returns the claims."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise StreamTokenError("stream token missing or too long", reason="malformed")
        try:
            raw = _b64decode(token)
        except (ValueError, binascii.Error) as exc:
            raise StreamTokenError("stream token is not base64url", reason="malformed") from exc
        if len(raw) < _HEAD.size + 1 + _MAC_BYTES:
            raise StreamTokenError("stream token too short", reason="malformed")
        signed, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(signed)):
            raise StreamTokenError("stream token signature mismatch", reason="bad_signature")
        version, expiry, nonce, sid_len = _HEAD.unpack_from(signed)
        if version != _VERSION:
            raise StreamTokenError(f"stream token version {version} unsupported",
                                   reason="malformed")
        sid_end = _HEAD.size + sid_len
        try:
            sid = signed[_HEAD.size:sid_end].decode("utf-8")
            call_id = signed[sid_end:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StreamTokenError("stream token fields are not UTF-8",
                                   reason="malformed") from exc
        if not call_id:
            raise StreamTokenError("stream token has no call id", reason="malformed")
        if self._clock() > expiry:
            raise StreamTokenError("stream token expired", reason="expired")
        if sid and not hmac.compare_digest(sid.encode(), (call_sid or "").encode()):
            raise StreamTokenError("stream token was issued for another call",
                                   reason="wrong_call")
        return StreamTokenClaims(call_id, sid, expiry, nonce)

    def verify(self, token: str, call_sid: str) -> str:
        """Stateless check; returns the ``call_id``. Does not consume the token."""
        return self.claims(token, call_sid).call_id

    def verify_and_consume(self, token: str, call_sid: str) -> str:
        """Check and mark used (this process); a second use raises ``replayed``."""
        claims = self.claims(token, call_sid)
        self.used.consume(claims.nonce, claims.expires_at)
        return claims.call_id
