"""The signed post-call webhook (``notify.webhook_url``).

``POST`` of JSON (``Content-Type: application/json``): the call record of
``record.call_record`` (``event``, ``version``, ``call``: ids, numbers, direction,
``statuses`` with times, reason, duration, provider; ``transcript``; ``commands``) plus
``summary``; the same bytes on every retry. Headers:

- ``X-AgenticFast-Event: call.ended``
- ``X-AgenticFast-Delivery: <id>``: the same on every retry of one delivery (dedupe on it).
- ``X-AgenticFast-Timestamp: <unix seconds>``: when this attempt was signed.
- ``X-AgenticFast-Signature: v1=<hex>``: HMAC-SHA256, keyed by ``notify.webhook_secret``
  (UTF-8), over ``f"{timestamp}.{body}"`` (the raw body bytes, as received).

A receiver verifies (see :func:`verify_signature`, or do the same in any language):

1. recompute the HMAC over ``timestamp + "." + raw body`` and compare it with the ``v1=``
   value in constant time (reject: 401);
2. reject a timestamp more than a tolerance (300 s is a good default) from its own clock:
   a captured request replayed later fails here;
3. within the tolerance, reject a ``X-AgenticFast-Delivery`` it has already processed (a
   replay, or our retry after a lost answer), answering 2xx so we stop retrying.

Each attempt is signed afresh (new timestamp), so retries hours later still verify.
Answers: 2xx delivered; 408, 429 and 5xx (and timeouts, refused connections, 401/403/404
while a receiver is being deployed) are retried with backoff (``Retry-After`` seconds are
honoured); 400, 410, 413 and 422 mean the request itself will never be taken: the
delivery is dead-lettered. Redirects are not followed (dead-lettered: fix the URL).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp

from agentic_fast.core.errors import SignatureError
from agentic_fast.notify.base import Delivery, Outcome
from agentic_fast.notify.record import EVENT_CALL_ENDED

SIGNATURE_HEADER: Final = "X-AgenticFast-Signature"
TIMESTAMP_HEADER: Final = "X-AgenticFast-Timestamp"
DELIVERY_HEADER: Final = "X-AgenticFast-Delivery"
EVENT_HEADER: Final = "X-AgenticFast-Event"
#: The receiver's default tolerance between our timestamp and its clock.
DEFAULT_TOLERANCE_S: Final = 300
_PERMANENT: Final = frozenset({400, 410, 413, 422})
_MAX_RETRY_AFTER_S: Final = 3600.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, *,
                     tolerance_s: float = DEFAULT_TOLERANCE_S,
                     now: float | None = None) -> int:
    """Check a received webhook (for receivers written in Python); returns its timestamp.

    Raises ``SignatureError`` for a missing or bad signature, or a timestamp outside
    ``tolerance_s``. Dedupe ``X-AgenticFast-Delivery`` ids within the tolerance on top.
    """
    stamp, given = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if not stamp or not given:
        raise SignatureError("missing timestamp or signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("timestamp is not an integer") from None
    expected = sign(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, part.strip()) for part in given.split(",")):
        raise SignatureError("signature does not match")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp is {round(now - timestamp)} s off (replay?)")
    return timestamp


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the HTTP-date form is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(0.0, seconds), _MAX_RETRY_AFTER_S)


class WebhookDestination:
    """POSTs the record, signed, to ``url``."""

    name: Final = "webhook"

    def __init__(self, url: str, secret: str, *, timeout_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("a webhook secret is required")
        self.url = url
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.clock = clock

    async def deliver(self, delivery: Delivery, http: aiohttp.ClientSession) -> Outcome:
        body = json.dumps({**delivery.record, "summary": delivery.summary},
                          ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(self.clock())
        headers = {"Content-Type": "application/json", "User-Agent": "agentic-fast-notify",
                   EVENT_HEADER: EVENT_CALL_ENDED, DELIVERY_HEADER: str(delivery.id),
                   TIMESTAMP_HEADER: str(timestamp),
                   SIGNATURE_HEADER: sign(self.secret, timestamp, body)}
        try:
            async with http.post(self.url, data=body, headers=headers, timeout=self.timeout,
                                 allow_redirects=False) as response:
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                await response.read()
        except TimeoutError:
            return Outcome(False, "timeout")
        except aiohttp.ClientError as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= status < 300:
            return Outcome(True)
        if 300 <= status < 400:
            return Outcome(False, f"HTTP {status}: redirects are not followed (fix "
                                  "notify.webhook_url)", permanent=True)
        if status in _PERMANENT:
            return Outcome(False, f"HTTP {status}", permanent=True)
        return Outcome(False, f"HTTP {status}", retry_after=retry_after)
