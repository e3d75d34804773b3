"""Fake Telnyx webhook sender: Ed25519-signed JSON events, as Call Control v2 delivers them.

Built from Telnyx's webhook documentation and the official ``telnyx`` SDK (its
``lib/webhook_verification.py`` and its ``*_webhook_event.py`` models); nothing here imports
``agentic_fast``. The rules (docs/telnyx-protocol.md, "Webhooks"):

* A webhook is an HTTP ``POST`` with a JSON body (``Content-Type: application/json``)::

      {"data": {"record_type": "event", "id": "<uuid>", "event_type": "call.answered",
                "occurred_at": "2026-01-01T12:00:00.000000Z", "payload": {...}},
       "meta": {"attempt": 1, "delivered_to": "<the webhook URL>"}}

* Headers ``telnyx-timestamp`` (Unix seconds, decimal) and ``telnyx-signature-ed25519``:
  base64 of the 64-byte Ed25519 signature of ``f"{timestamp}|{raw_body}"`` (UTF-8) made with
  the account's private key. Receivers verify with the account's public key (base64 of the
  32 raw bytes, shown in the portal) and reject timestamps more than 300 s from now.
* The receiver must answer 2xx; anything else counts as a failed delivery.

Public API::

    keys = TelnyxKeyPair.generate()              # keys.public_key_b64 -> our config
    headers = keys.sign(body_bytes, timestamp)   # the two signature headers
    keys.verify(body_bytes, headers)             # True/False (cross-check, tamper tests)
    env = event_envelope("call.initiated", {...}, delivered_to=url)   # SDK-validated
    sender = TelnyxWebhookSender(session, keys, clock=time.time)
    delivery = await sender.post(url, env)       # WebhookDelivery(status, body, ...)
    sender.deliveries                            # every delivery, in order
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
TIMESTAMP_TOLERANCE_S = 300
USER_AGENT = "telnyx-webhooks"


@dataclass(frozen=True, slots=True)
class TelnyxKeyPair:
    """The account's Ed25519 key pair: Telnyx signs with the private half."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> TelnyxKeyPair:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_key_b64(self) -> str:
        """The public key as the portal shows it: base64 of the 32 raw bytes."""
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    def signature(self, body: bytes, timestamp: int | str) -> str:
        """base64(Ed25519(f"{timestamp}|{body}"))."""
        signed = str(timestamp).encode("ascii") + b"|" + body
        return base64.b64encode(self.private_key.sign(signed)).decode("ascii")

    def sign(self, body: bytes, timestamp: int | str) -> dict[str, str]:
        """The two headers Telnyx adds to a webhook with this body and timestamp."""
        return {TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: self.signature(body, timestamp)}

    def verify(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """Check a signature the way the SDK's ``verify_webhook_signature`` does (minus the
        clock check, which is the receiver's replay policy)."""
        lower = {k.lower(): v for k, v in headers.items()}
        ts, sig = lower.get(TIMESTAMP_HEADER), lower.get(SIGNATURE_HEADER)
        if not ts or not sig:
            return False
        try:
            raw = base64.b64decode(sig, validate=True)
            self.public_key.verify(raw, ts.encode("ascii") + b"|" + body)
        except (ValueError, InvalidSignature):
            return False
        return True


def new_call_control_id() -> str:
    """An id shaped like Telnyx's (``v3:`` + url-safe base64)."""
    raw = base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes[:10])
    return "v3:" + raw.decode("ascii").rstrip("=")


def iso_now() -> str:
    """``occurred_at``: ISO 8601 UTC with microseconds and ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _event_models() -> dict[str, type[BaseModel]]:
    from telnyx.types.call_answered_webhook_event import CallAnsweredWebhookEvent
    from telnyx.types.call_bridged_webhook_event import CallBridgedWebhookEvent
    from telnyx.types.call_hangup_webhook_event import CallHangupWebhookEvent
    from telnyx.types.call_initiated_webhook_event import CallInitiatedWebhookEvent
    from telnyx.types.call_recording_saved_webhook_event import (
        CallRecordingSavedWebhookEvent,
    )
    from telnyx.types.call_speak_ended_webhook_event import CallSpeakEndedWebhookEvent
    from telnyx.types.call_speak_started_webhook_event import CallSpeakStartedWebhookEvent
    from telnyx.types.call_streaming_failed_webhook_event import (
        CallStreamingFailedWebhookEvent,
    )
    from telnyx.types.call_streaming_started_webhook_event import (
        CallStreamingStartedWebhookEvent,
    )
    from telnyx.types.call_streaming_stopped_webhook_event import (
        CallStreamingStoppedWebhookEvent,
    )
    return {
        "call.initiated": CallInitiatedWebhookEvent,
        "call.answered": CallAnsweredWebhookEvent,
        "call.hangup": CallHangupWebhookEvent,
        "call.bridged": CallBridgedWebhookEvent,
        "call.recording.saved": CallRecordingSavedWebhookEvent,
        "call.speak.started": CallSpeakStartedWebhookEvent,
        "call.speak.ended": CallSpeakEndedWebhookEvent,
        "streaming.started": CallStreamingStartedWebhookEvent,
        "streaming.stopped": CallStreamingStoppedWebhookEvent,
        "streaming.failed": CallStreamingFailedWebhookEvent,
    }


EVENT_MODELS: dict[str, type[BaseModel]] = _event_models()


def event_envelope(event_type: str, payload: Mapping[str, Any], *, delivered_to: str = "",
                   attempt: int = 1, event_id: str | None = None,
                   occurred_at: str | None = None) -> dict[str, Any]:
    """A webhook body, validated against the SDK's model for ``event_type`` (pydantic raises
    on a wrong ``event_type``, enum value or field type)."""
    env: dict[str, Any] = {
        "data": {
            "record_type": "event",
            "event_type": event_type,
            "id": event_id or str(uuid.uuid4()),
            "occurred_at": occurred_at or iso_now(),
            "payload": dict(payload),
        },
        "meta": {"attempt": attempt, "delivered_to": delivered_to},
    }
    model = EVENT_MODELS.get(event_type)
    if model is None:
        raise ValueError(f"no SDK model known for event_type {event_type!r}")
    model.model_validate(env)
    return env


@dataclass(slots=True)
class WebhookDelivery:
    """One webhook POST as sent, and the receiver's answer (``status`` None: no answer)."""

    url: str
    event_type: str
    body: bytes
    headers: dict[str, str]
    status: int | None = None
    response: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def envelope(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class TelnyxWebhookSender:
    """POSTs signed webhooks; ``clock`` gives the ``telnyx-timestamp`` (Unix seconds)."""

    session: aiohttp.ClientSession
    keys: TelnyxKeyPair
    clock: Callable[[], float] = time.time
    deliveries: list[WebhookDelivery] = field(default_factory=list)

    async def post(self, url: str, envelope: Mapping[str, Any], *,
                   timestamp: int | None = None, signature: str | None = None,
                   body: bytes | None = None) -> WebhookDelivery:
        """Sign and POST ``envelope`` (or ``body`` verbatim); ``signature`` overrides the real
        one (to test rejection). Never raises on a refused or failed delivery."""
        raw = body if body is not None else json.dumps(envelope, separators=(",", ":")).encode()
        ts = int(self.clock()) if timestamp is None else timestamp
        headers = self.keys.sign(raw, ts)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = USER_AGENT
        event_type = str(envelope.get("data", {}).get("event_type", ""))
        delivery = WebhookDelivery(url, event_type, raw, headers)
        self.deliveries.append(delivery)
        try:
            async with self.session.post(url, data=raw, headers=headers) as resp:
                delivery.status = resp.status
                delivery.response = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        return delivery
