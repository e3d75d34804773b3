"""Who may command: allowed callers, PIN via DTMF, held commands (brain/policy.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agentic_fast.brain.policy import (
    CallerPolicy,
    CallGate,
    HeldCommand,
    PinCheck,
    PinResult,
    party_number,
)

OWNER = "+15551230000"


def test_allowed_callers_exact_match() -> None:
    policy = CallerPolicy([OWNER, " +442071234567 "])
    assert policy.allows_anyone
    assert policy.caller_allowed(OWNER)
    assert policy.caller_allowed("+442071234567")
    assert not policy.caller_allowed("+15551230001")
    assert not policy.caller_allowed("")
    assert not policy.caller_allowed(None)


def test_an_empty_allow_list_trusts_nobody() -> None:
    policy = CallerPolicy([])
    assert not policy.allows_anyone
    assert not policy.caller_allowed(OWNER)


def test_party_is_the_caller_inbound_and_the_callee_outbound() -> None:
    inbound = SimpleNamespace(direction="inbound", from_number=OWNER, to_number="+1999")
    outbound = SimpleNamespace(direction="outbound", from_number="+1999", to_number=OWNER)
    assert party_number(inbound) == OWNER
    assert party_number(outbound) == OWNER


def feed(check: PinCheck, keys: str) -> list[PinResult]:
    return [check.feed(k) for k in keys]


def test_no_pin_is_verified_at_once() -> None:
    check = PinCheck("")
    assert check.verified and not check.required
    assert check.feed("1") is PinResult.IGNORED


def test_pin_is_checked_when_as_many_digits_as_it_has_were_pressed() -> None:
    check = PinCheck("2468")
    assert feed(check, "246") == [PinResult.COLLECTING] * 3
    assert not check.verified
    assert check.feed("8") is PinResult.OK
    assert check.verified and not check.required
    assert check.feed("1") is PinResult.IGNORED  # checked once per call


def test_hash_submits_early_and_star_starts_over() -> None:
    check = PinCheck("2468")
    assert feed(check, "13#") == [PinResult.COLLECTING, PinResult.COLLECTING, PinResult.WRONG]
    assert feed(check, "99*2468")[-1] is PinResult.OK


def test_hash_alone_and_other_keys_do_nothing() -> None:
    check = PinCheck("2468")
    assert check.feed("#") is PinResult.COLLECTING
    assert check.feed("A") is PinResult.IGNORED
    assert check.attempts == 0


def test_wrong_pins_lock_the_call_after_three_attempts() -> None:
    check = PinCheck("2468")
    assert feed(check, "1111")[-1] is PinResult.WRONG
    assert feed(check, "2222")[-1] is PinResult.WRONG
    assert feed(check, "3333")[-1] is PinResult.LOCKED
    assert check.locked and not check.verified and not check.required
    assert check.feed("2") is PinResult.IGNORED  # even the right PIN is too late now
    assert feed(check, "468") == [PinResult.IGNORED] * 3


def test_pin_must_be_digits() -> None:
    with pytest.raises(ValueError):
        PinCheck("12ab")


def test_gate_holds_the_latest_command_until_the_pin() -> None:
    gate = CallGate(CallerPolicy([OWNER], pin="2468"), OWNER)
    assert gate.allowed and gate.pin.required
    assert gate.hold("Text Sam.", "transcript", at=1.0)
    assert gate.hold("Call mom.", "tool", at=2.0)
    assert gate.take_held(now=3.0, ttl=60) == HeldCommand("Call mom.", "tool", 2.0)
    assert gate.take_held(now=3.0, ttl=60) is None


def test_a_stale_held_command_is_dropped() -> None:
    gate = CallGate(CallerPolicy([OWNER], pin="2468"), OWNER)
    gate.hold("Text Sam.", "transcript", at=1.0)
    assert gate.take_held(now=100.0, ttl=60) is None
    assert gate.held is None


def test_a_locked_gate_holds_nothing() -> None:
    gate = CallGate(CallerPolicy([OWNER], pin="2468"), OWNER)
    feed(gate.pin, "111122223333")
    assert not gate.hold("Text Sam.", "transcript", at=1.0)
    assert gate.held is None


def test_refusal_is_reported_once_per_call() -> None:
    gate = CallGate(CallerPolicy([OWNER]), "+19990000000")
    assert not gate.allowed
    assert gate.first_refusal()
    assert not gate.first_refusal()
