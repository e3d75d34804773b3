"""The inbound policy and the call rates (``agentic_fast.call.admission``), on an injected clock."""

from __future__ import annotations

from textwrap import dedent

import pytest

from agentic_fast.call.admission import Admission, caller_tag, mask_number
from agentic_fast.core import metrics
from agentic_fast.core.config import Config

OWNER = "+15551230000"
FRIEND = "+15551239999"
STRANGER = "+15557770000"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(text: str = "", clock: Clock | None = None) -> Admission:
    config = Config.from_text(dedent(text), source="test.yaml", env={})
    return Admission(config.calls, clock=clock or Clock(), tag_key=b"k" * 32)


NO_RATES = "  rate_limits: {per_caller_per_minute: 0, global_per_second: 0}\n"


def test_allowlist_admits_listed_callers_only() -> None:
    a = admission(f"calls:\n  inbound_numbers: ['{OWNER}', '{FRIEND}']\n" + NO_RATES)
    assert a.admit(OWNER) is None and a.admit(FRIEND) is None
    assert a.admit(f" {OWNER} ") is None  # surrounding blanks are not part of a number
    for caller in (STRANGER, "", "anonymous", "client:alice", OWNER + "0", OWNER[1:]):
        refusal = a.admit(caller)
        assert refusal is not None and refusal.reason == "not_allowed" and not refusal.busy


def test_allowlist_defaults_to_the_brains_allowed_callers() -> None:
    a = admission(f"brain:\n  allowed_callers: ['{OWNER}']\ncalls:\n" + NO_RATES)
    assert a.admit(OWNER) is None
    assert a.admit(STRANGER) is not None


def test_allowlist_with_no_numbers_admits_nobody() -> None:
    a = admission()
    assert a.mode == "allowlist"
    assert all(a.admit(n) is not None for n in (OWNER, STRANGER, ""))


def test_disabled_refuses_everyone_even_listed_callers() -> None:
    a = admission(f"calls:\n  inbound: disabled\n  inbound_numbers: ['{OWNER}']\n" + NO_RATES)
    refusal = a.admit(OWNER)
    assert refusal is not None and refusal.reason == "inbound_disabled"


def test_open_admits_anyone() -> None:
    a = admission("calls:\n  inbound: open\n" + NO_RATES)
    assert all(a.admit(n) is None for n in (OWNER, STRANGER, "", "anonymous", "sip:x@y"))


def test_per_caller_rate_is_a_sliding_minute() -> None:
    clock = Clock()
    a = admission("calls:\n  inbound: open\n  rate_limits:\n"
                  "    per_caller_per_minute: 2\n    global_per_second: 0\n", clock)
    assert a.admit(OWNER) is None
    clock.now += 30
    assert a.admit(OWNER) is None
    refusal = a.admit(OWNER)
    assert refusal is not None and refusal.reason == "rate_per_caller" and refusal.busy
    assert a.admit(STRANGER) is None  # another caller has a window of their own
    clock.now += 29.9
    assert a.admit(OWNER) is not None  # the first call is still within the minute
    clock.now += 0.1
    assert a.admit(OWNER) is None  # 60 s after the first: one slot free again
    assert a.admit(OWNER) is not None


def test_refused_attempts_do_not_use_up_the_rate() -> None:
    clock = Clock()
    a = admission("calls:\n  inbound: open\n  rate_limits:\n"
                  "    per_caller_per_minute: 1\n    global_per_second: 0\n", clock)
    assert a.admit(OWNER) is None
    for _ in range(100):  # redialling while refused
        clock.now += 0.5
        assert a.admit(OWNER) is not None
    clock.now += 10  # 60 s after the one admitted call
    assert a.admit(OWNER) is None


def test_global_rate_is_a_sliding_second() -> None:
    clock = Clock()
    a = admission("calls:\n  inbound: open\n  rate_limits:\n"
                  "    per_caller_per_minute: 0\n    global_per_second: 3\n", clock)
    assert [a.admit(f"+1555000000{i}") for i in range(3)] == [None] * 3
    refusal = a.admit("+15550000009")
    assert refusal is not None and refusal.reason == "rate_global" and refusal.busy
    clock.now += 0.999
    assert a.admit("+15550000009") is not None
    clock.now += 0.001
    assert a.admit("+15550000009") is None


def test_a_call_refused_by_the_global_rate_costs_its_caller_nothing() -> None:
    clock = Clock()
    a = admission("calls:\n  inbound: open\n  rate_limits:\n"
                  "    per_caller_per_minute: 1\n    global_per_second: 1\n", clock)
    assert a.admit(STRANGER) is None
    assert a.admit(OWNER).reason == "rate_global"  # type: ignore[union-attr]
    clock.now += 1
    assert a.admit(OWNER) is None


def test_rates_apply_after_the_policy() -> None:
    a = admission(f"calls:\n  inbound_numbers: ['{OWNER}']\n  rate_limits:\n"
                  "    per_caller_per_minute: 0\n    global_per_second: 1\n")
    for _ in range(5):  # strangers are refused by the policy and use up no rate
        assert a.admit(STRANGER).reason == "not_allowed"  # type: ignore[union-attr]
    assert a.admit(OWNER) is None


def test_per_caller_state_is_dropped_once_its_window_passed() -> None:
    clock = Clock()
    a = admission("calls:\n  inbound: open\n  rate_limits:\n"
                  "    per_caller_per_minute: 3\n    global_per_second: 0\n", clock)
    for i in range(1000):
        clock.now += 0.01
        assert a.admit(f"+1555{i:07d}") is None
    assert a.tracked_callers == 1000
    clock.now += 60
    assert a.admit(OWNER) is None
    assert a.tracked_callers == 1  # the other 1000 windows had passed


def test_per_caller_state_is_bounded_by_max_tracked_callers() -> None:
    clock = Clock()
    a = admission("calls:\n  inbound: open\n  rate_limits:\n    per_caller_per_minute: 1\n"
                  "    global_per_second: 0\n    max_tracked_callers: 100\n", clock)
    before = metrics.get("calls.rate_limit.callers_evicted")
    for i in range(10_000):  # spoofed numbers, all within one minute
        assert a.admit(f"+1555{i:07d}") is None
    assert a.tracked_callers == 100
    assert metrics.get("calls.rate_limit.callers_evicted") == before + 9_900
    assert a.admit("+15550009999") is not None  # the most recent ones are still limited


def test_long_caller_ids_are_cut_as_rate_keys() -> None:
    a = admission("calls:\n  inbound: open\n  rate_limits:\n"
                  "    per_caller_per_minute: 1\n    global_per_second: 0\n")
    assert a.admit("client:" + "a" * 10_000) is None
    assert a.admit("client:" + "a" * 10_000 + "b") is not None  # same first 64 characters
    assert a.tracked_callers == 1


@pytest.mark.parametrize(("number", "masked"), [
    ("+15551230000", "+15*******00"),
    ("+447700900123", "+44********23"),
    ("", "(none)"),
    ("anonymous", "(not e164)"),
    ("client:alice", "(client:...)"),
    ("sip:alice@example.com", "(sip:...)"),
    ("tel:+15551230000", "(not e164)"),
])
def test_mask_number_hides_the_number(number: str, masked: str) -> None:
    assert mask_number(number) == masked


def test_caller_tag_is_stable_per_key_and_hides_the_number() -> None:
    tag = caller_tag(b"key-1", OWNER)
    assert tag == caller_tag(b"key-1", OWNER) and len(tag) == 12
    assert tag != caller_tag(b"key-1", FRIEND)
    assert tag != caller_tag(b"key-2", OWNER)
    assert "5551230000" not in tag
