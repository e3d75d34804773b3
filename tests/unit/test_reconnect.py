"""Backoff: exponential growth, cap, full jitter and the attempt/total-time bounds.

Randomness and time are injected, so every assertion is exact (no sleeps, no timing).
"""

from __future__ import annotations

import pytest

from agentic_fast.core.backoff import Backoff
from agentic_fast.providers.reconnect import ChunkBacklog, carry_over_summary


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_grow_exponentially_then_cap() -> None:
    policy = Backoff(base_s=0.5, factor=2.0, max_delay_s=3.0, max_attempts=7, max_total_s=1e9,
                     rand=lambda: 1.0, first_immediate=False)
    assert list(policy.start()) == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_first_attempt_is_immediate_by_default() -> None:
    policy = Backoff(base_s=0.25, max_delay_s=10.0, max_attempts=4, max_total_s=1e9,
                     rand=lambda: 1.0)
    assert list(policy.start()) == [0.0, 0.25, 0.5, 1.0]


def test_full_jitter_stays_within_zero_and_the_ceiling() -> None:
    values = iter([0.0, 0.999, 0.5, 0.25, 0.75])
    policy = Backoff(base_s=1.0, factor=2.0, max_delay_s=5.0, max_attempts=5, max_total_s=1e9,
                     rand=lambda: next(values), first_immediate=False)
    delays = list(policy.start())
    ceilings = [policy.ceiling(n) for n in range(1, 6)]
    assert ceilings == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert delays == pytest.approx([0.0, 0.999 * 2.0, 0.5 * 4.0, 0.25 * 5.0, 0.75 * 5.0])
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_real_random_jitter_is_bounded() -> None:
    policy = Backoff(base_s=0.1, factor=3.0, max_delay_s=2.0, max_attempts=50, max_total_s=1e9,
                     first_immediate=False)
    for n, delay in enumerate(policy.start(), start=1):
        assert 0.0 <= delay <= policy.ceiling(n) <= 2.0


def test_attempt_bound() -> None:
    run = Backoff(max_attempts=3, max_total_s=1e9, rand=lambda: 0.0).start()
    assert [run.next_delay() for _ in range(5)] == [0.0, 0.0, 0.0, None, None]
    assert run.attempts == 3


def test_total_time_bound_counts_time_spent_in_attempts() -> None:
    clock = Clock()
    policy = Backoff(base_s=1.0, factor=2.0, max_delay_s=8.0, max_attempts=100,
                     max_total_s=10.0, rand=lambda: 1.0, clock=clock)
    run = policy.start()
    assert run.next_delay() == 0.0      # immediate first attempt
    clock.now += 3.0                    # the attempt itself took 3 s (connect timeout)
    assert run.next_delay() == 1.0      # 3 + 1 <= 10
    clock.now += 1.0 + 3.0
    assert run.next_delay() == 2.0      # 7 + 2 <= 10
    clock.now += 2.0
    assert run.elapsed == pytest.approx(9.0)
    assert run.next_delay() is None     # 9 + 4 > 10: the next attempt would start too late
    assert run.attempts == 3


def test_runs_are_independent() -> None:
    policy = Backoff(max_attempts=2, max_total_s=1e9, rand=lambda: 1.0)
    first = policy.start()
    assert list(first) == [0.0, 0.25]
    assert list(policy.start()) == [0.0, 0.25]


def test_huge_attempt_counts_do_not_overflow() -> None:
    policy = Backoff(base_s=1.0, factor=10.0, max_delay_s=30.0, max_attempts=10_000,
                     max_total_s=1e12, rand=lambda: 1.0)
    assert policy.ceiling(5000) == 30.0


@pytest.mark.parametrize("kwargs", [
    {"base_s": -1.0}, {"max_delay_s": -0.1}, {"factor": 0.5}, {"max_attempts": 0},
    {"max_total_s": 0.0}, {"jitter": 1.5}, {"jitter": -0.1},
])
def test_invalid_policy_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_endless_policy_never_gives_up_and_scales_by_its_jitter() -> None:
    """The gateway's behaviour: ``base_s`` first (not immediate), doubling to the cap, each
    delay scaled by ``1 +- jitter``, no attempt or time bound."""
    clock = Clock()
    low = Backoff.endless(1.0, 30.0, jitter=0.2, rand=lambda: 0.0)
    high = Backoff.endless(1.0, 30.0, jitter=0.2, rand=lambda: 1.0)
    object.__setattr__(low, "clock", clock)
    run = low.start()
    first = [run.next_delay() for _ in range(7)]
    assert first == pytest.approx([0.8, 1.6, 3.2, 6.4, 12.8, 24.0, 24.0])
    clock.now += 1e9
    assert run.next_delay() == pytest.approx(24.0)
    highs = high.delays()
    assert [next(highs) for _ in range(7)] == pytest.approx([1.2, 2.4, 4.8, 9.6, 19.2, 30.0,
                                                               30.0])


# --------------------------------------------------------------------------- ChunkBacklog


def test_backlog_keeps_the_newest_chunks_within_the_bound() -> None:
    backlog = ChunkBacklog(max_chars=10)
    assert [backlog.push(c) for c in ("aaaa", "bbbb", "cc")] == [0, 0, 0]
    assert backlog.push("dddd") == 1          # 14 chars > 10: the oldest goes
    assert backlog.push("eeeeeeeeeeee") == 3  # one oversized chunk: kept alone
    assert backlog.dropped == 4 and len(backlog) == 1
    assert backlog.drain() == ["eeeeeeeeeeee"]
    assert len(backlog) == 0 and not backlog
    assert backlog.push("ff") == 0 and backlog.drain() == ["ff"]


# --------------------------------------------------------------------------- summary


def test_carry_over_summary_keeps_recent_lines_in_order_and_is_bounded() -> None:
    assert carry_over_summary([]) is None
    short = carry_over_summary([("user", "A table for two."), ("assistant", "What time?")])
    assert short is not None
    assert "Caller: A table for two.\nAssistant: What time?" in short
    lines = [("user", f"line {i} " + "x" * 50) for i in range(100)]
    text = carry_over_summary(lines, "Call Bob about his appointment.", max_chars=300)
    assert text is not None
    assert "Call Bob about his appointment." in text and "line 99 " in text
    assert "line 0 " not in text and len(text) < 800
    assert carry_over_summary([], "Call Bob.") is not None
