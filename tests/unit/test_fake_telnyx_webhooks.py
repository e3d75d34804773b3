"""The fake Telnyx's webhook signing and envelopes, and its check of request bodies against
the SDK's Params types."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from telnyx.lib.webhook_verification import SIGNATURE_HEADER as SDK_SIGNATURE_HEADER
from telnyx.lib.webhook_verification import TIMESTAMP_HEADER as SDK_TIMESTAMP_HEADER
from telnyx.types.call_dial_params import CallDialParams
from telnyx.types.calls.action_answer_params import ActionAnswerParams

from tests.fakes.telnyx_params import Issue, check_params
from tests.fakes.telnyx_webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TelnyxKeyPair,
    event_envelope,
)

BODY = json.dumps(event_envelope("call.answered", {"call_control_id": "v3:x"})).encode()


def sdk_style_verify(public_key_b64: str, body: bytes, headers: dict[str, str]) -> None:
    """The SDK's verify_webhook_signature, step for step, minus PyNaCl (not installed):
    base64 32-byte key, base64 64-byte signature, message ``f"{timestamp}|{payload}"``."""
    key = base64.b64decode(public_key_b64)
    sig = base64.b64decode(headers[SDK_SIGNATURE_HEADER])
    assert len(key) == 32 and len(sig) == 64
    message = f"{headers[SDK_TIMESTAMP_HEADER]}|{body.decode('utf-8')}".encode()
    Ed25519PublicKey.from_public_bytes(key).verify(sig, message)


def test_headers_are_the_sdks() -> None:
    assert (SIGNATURE_HEADER, TIMESTAMP_HEADER) == (SDK_SIGNATURE_HEADER, SDK_TIMESTAMP_HEADER)


def test_signature_verifies_with_the_public_key() -> None:
    keys = TelnyxKeyPair.generate()
    headers = keys.sign(BODY, 1_700_000_000)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    sdk_style_verify(keys.public_key_b64, BODY, headers)
    assert keys.verify(BODY, headers)


@pytest.mark.parametrize("tamper", ["body", "timestamp", "key", "signature"])
def test_tampering_breaks_the_signature(tamper: str) -> None:
    keys = TelnyxKeyPair.generate()
    body, headers = BODY, keys.sign(BODY, 1_700_000_000)
    public = keys.public_key_b64
    if tamper == "body":
        body = BODY.replace(b"call.answered", b"call.hangup__")
    elif tamper == "timestamp":
        headers[TIMESTAMP_HEADER] = "1700000001"
    elif tamper == "key":
        public = TelnyxKeyPair.generate().public_key_b64
    else:
        headers[SIGNATURE_HEADER] = base64.b64encode(bytes(64)).decode()
    with pytest.raises(InvalidSignature):
        sdk_style_verify(public, body, headers)
    if tamper != "key":
        assert not keys.verify(body, headers)


def test_envelope_shape_and_sdk_validation() -> None:
    env = event_envelope("call.initiated", {"direction": "incoming", "from": "+15551230000"},
                         delivered_to="https://agent.example.com/telnyx")
    assert env["data"]["record_type"] == "event" and env["data"]["event_type"] == "call.initiated"
    assert env["data"]["occurred_at"].endswith("Z") and env["data"]["id"]
    assert env["meta"] == {"attempt": 1, "delivered_to": "https://agent.example.com/telnyx"}
    with pytest.raises(ValidationError):  # the SDK model's enum
        event_envelope("call.initiated", {"direction": "sideways"})
    with pytest.raises(ValidationError):
        event_envelope("call.hangup", {"hangup_cause": "bored"})
    with pytest.raises(ValueError, match="no SDK model"):
        event_envelope("call.teleported", {})


def test_params_check_follows_the_sdk_types() -> None:
    ok = check_params(CallDialParams, {"connection_id": "1", "from": "+1", "to": ["+2", "+3"],
                                       "stream_bidirectional_sampling_rate": 16000,
                                       "custom_headers": [{"name": "X-A", "value": "b"}]})
    assert ok.ok and ok.unknown == []
    bad = check_params(CallDialParams, {"from_": "+1", "to": 5, "stream_track": "both",
                                        "custom_headers": [{"name": 1, "value": "b"}]})
    assert bad.issues == [
        Issue("/connection_id", "missing"),
        Issue("/from", "missing"),
        Issue("/to", "type", "expected string or array"),
        Issue("/custom_headers/0/name", "type", "expected string"),
        Issue("/stream_track", "enum",
              "must be one of ['inbound_track', 'outbound_track', 'both_tracks']"),
    ]
    assert bad.unknown == ["/from_"]
    # the SDK's answer params have no sampling rate: accepted, recorded as unknown
    answer = check_params(ActionAnswerParams, {"stream_bidirectional_sampling_rate": 16000})
    assert answer.ok and answer.unknown == ["/stream_bidirectional_sampling_rate"]
