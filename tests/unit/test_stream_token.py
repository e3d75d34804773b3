"""Single-use stream tokens: signature, expiry, CallSid binding, replay, bounded memory."""

from __future__ import annotations

import base64

import pytest

from agentic_fast.call.stream_token import MAX_TOKEN_CHARS, StreamTokenSigner, UsedTokenSet
from agentic_fast.core.errors import ConfigError, StreamTokenError

SECRET = b"0123456789abcdef0123456789abcdef"
CA = "CA0123456789abcdef0123456789abcdef"
CALL_ID = "c_5f2b8e0c9a4d4c0f8a1b2c3d4e5f6a7b"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> StreamTokenSigner:
    return StreamTokenSigner(SECRET, ttl_s=60, clock=clock)


def reason(fn: object, *args: object) -> str:
    with pytest.raises(StreamTokenError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.reason


def test_round_trip_and_compact(signer: StreamTokenSigner) -> None:
    token = signer.issue(CALL_ID, CA)
    assert signer.verify(token, CA) == CALL_ID
    assert len(token) < 200 and len(CALL_ID) + len("sessionToken") + len(token) < 500
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_tokens_are_unique(signer: StreamTokenSigner) -> None:
    assert signer.issue(CALL_ID, CA) != signer.issue(CALL_ID, CA)


def test_stateless_across_processes(signer: StreamTokenSigner, clock: Clock) -> None:
    token = signer.issue(CALL_ID, CA)
    other_process = StreamTokenSigner(SECRET, clock=clock)
    assert other_process.verify_and_consume(token, CA) == CALL_ID


def test_expiry(signer: StreamTokenSigner, clock: Clock) -> None:
    token = signer.issue(CALL_ID, CA)
    clock.now += 60
    assert signer.verify(token, CA) == CALL_ID
    clock.now += 1.5
    assert reason(signer.verify, token, CA) == "expired"


def test_wrong_call_sid(signer: StreamTokenSigner) -> None:
    token = signer.issue(CALL_ID, CA)
    assert reason(signer.verify, token, "CA" + "f" * 32) == "wrong_call"
    assert reason(signer.verify, token, "") == "wrong_call"


def test_unbound_token_accepts_any_call(signer: StreamTokenSigner) -> None:
    token = signer.issue(CALL_ID, None)
    assert signer.verify(token, CA) == CALL_ID
    assert signer.claims(token, CA).call_sid == ""


def test_bad_signature(signer: StreamTokenSigner, clock: Clock) -> None:
    token = signer.issue(CALL_ID, CA)
    other = StreamTokenSigner(b"another secret of 16+ bytes", clock=clock)
    assert reason(other.verify, token, CA) == "bad_signature"
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[2] ^= 0x01  # push the expiry forward by flipping a bit: the MAC catches it
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert reason(signer.verify, forged, CA) == "bad_signature"


@pytest.mark.parametrize("token", ["", "!!!!", "abc", "a" * (MAX_TOKEN_CHARS + 1), "ü" * 8,
                                   None])
def test_malformed(signer: StreamTokenSigner, token: object) -> None:
    assert reason(signer.verify, token, CA) == "malformed"


def test_replay_is_rejected(signer: StreamTokenSigner) -> None:
    token = signer.issue(CALL_ID, CA)
    assert signer.verify_and_consume(token, CA) == CALL_ID
    assert reason(signer.verify_and_consume, token, CA) == "replayed"
    assert signer.verify(token, CA) == CALL_ID  # the stateless check alone does not consume


def test_used_set_forgets_expired_nonces(clock: Clock) -> None:
    used = UsedTokenSet(max_size=2, clock=clock)
    used.consume(b"a", int(clock.now) + 10)
    used.consume(b"b", int(clock.now) + 20)
    assert len(used) == 2
    assert reason(used.consume, b"c", int(clock.now) + 30) == "replay_cache_full"
    assert reason(used.consume, b"a", int(clock.now) + 10) == "replayed"
    clock.now += 11
    assert len(used) == 1
    used.consume(b"c", int(clock.now) + 30)
    clock.now += 100
    assert len(used) == 0


def test_signer_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        StreamTokenSigner(b"short")
    with pytest.raises(ConfigError):
        StreamTokenSigner("a str secret of 16+ chars")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        StreamTokenSigner(SECRET, ttl_s=0)


def test_issue_checks_arguments(signer: StreamTokenSigner) -> None:
    with pytest.raises(ValueError):
        signer.issue("", CA)
    with pytest.raises(ValueError):
        signer.issue("x" * 400, CA)
