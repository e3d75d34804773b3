"""CallSession lifecycle table and CallManager registry (manual clock, no sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from agentic_fast.call.manager import (
    DTMF_LIMIT,
    STREAM_ERROR_CHARS,
    STREAM_ERRORS_LIMIT,
    TRANSCRIPT_TEXT_CHARS,
    CallDirection,
    CallManager,
    CallSession,
)
from agentic_fast.call.status import (
    TERMINAL_STATES,
    TRANSITIONS,
    CallStatus,
    Transition,
    check_transition,
)
from agentic_fast.core import metrics
from agentic_fast.core.errors import CallLimitError, CallRefusedError, DrainingError

S = CallStatus


class ManualClock:
    """Time that moves only when the test says so."""

    def __init__(self, mono: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.mono = mono
        self.wall = wall

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture(autouse=True)
def _reset_metrics() -> None:
    metrics.reset()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ended() -> list[CallSession]:
    return []


@pytest.fixture
def manager(clock: ManualClock, ended: list[CallSession]) -> CallManager:
    return CallManager(max_concurrent_calls=3, stream_timeout_s=10.0, answer_timeout_s=60.0,
                       history_size=2, clock=clock, on_end=ended.append)


# -- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), [
    (S.INITIATING, S.RINGING),
    (S.INITIATING, S.IN_PROGRESS),  # answered before the ringing callback arrived
    (S.INITIATING, S.FAILED),
    (S.INITIATING, S.COMPLETED),
    (S.RINGING, S.IN_PROGRESS),
    (S.RINGING, S.COMPLETED),  # terminal callback overtook "answered"
    (S.RINGING, S.FAILED),
    (S.IN_PROGRESS, S.COMPLETED),
    (S.IN_PROGRESS, S.FAILED),
])
def test_forward_moves_apply(current: CallStatus, target: CallStatus) -> None:
    assert check_transition(current, target) is Transition.APPLY


@pytest.mark.parametrize(("current", "target"), [
    (S.RINGING, S.RINGING),  # duplicate
    (S.RINGING, S.INITIATING),  # late "initiated"
    (S.IN_PROGRESS, S.RINGING),
    (S.COMPLETED, S.IN_PROGRESS),
    (S.COMPLETED, S.COMPLETED),
    (S.COMPLETED, S.FAILED),
    (S.FAILED, S.COMPLETED),
])
def test_backward_or_repeated_moves_are_stale(current: CallStatus, target: CallStatus) -> None:
    assert check_transition(current, target) is Transition.STALE


def test_terminal_states_are_absorbing() -> None:
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == frozenset()
    assert set(TRANSITIONS) == set(CallStatus)


@pytest.mark.parametrize("reason", ["busy", "no-answer", "canceled"])
def test_unanswered_reasons_only_before_answer(reason: str) -> None:
    assert check_transition(S.RINGING, S.FAILED, reason) is Transition.APPLY
    assert check_transition(S.INITIATING, S.FAILED, reason) is Transition.APPLY
    assert check_transition(S.IN_PROGRESS, S.FAILED, reason) is Transition.INVALID
    assert check_transition(S.IN_PROGRESS, S.FAILED, "stream-timeout") is Transition.APPLY


# -- transitions through the manager ---------------------------------------------------------


def test_outbound_full_lifecycle(manager: CallManager, clock: ManualClock,
                                 ended: list[CallSession]) -> None:
    s = manager.create_outbound("+15557654321", "be nice", {"k": "v"}, from_number="+15551230000")
    assert s.status is S.INITIATING and s.direction is CallDirection.OUTBOUND
    manager.attach_call_sid(s, "CA1")
    assert manager.get_by_sid("CA1") is s and manager.get(s.call_id) is s
    assert manager.apply_status("CA1", "ringing", sequence=1)
    clock.advance(2)
    assert manager.apply_status("CA1", "in-progress", sequence=2)
    assert s.answered_mono == clock.mono
    clock.advance(30)
    assert s.duration == 30
    assert manager.apply_status("CA1", "completed", sequence=3)
    clock.advance(100)
    assert s.duration == 30 and s.ended and s.ended_mono is not None
    assert ended == [s]
    assert manager.active_count == 0
    assert metrics.get("calls.ended.completed") == 1


def test_late_and_duplicate_callbacks_are_ignored(manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    assert manager.apply_status("CA1", "completed", sequence=3)
    # Out of order: the "answered" callback (seq 2) arrives after the terminal one.
    assert not manager.apply_status("CA1", "in-progress", sequence=2)
    assert not manager.apply_status("CA1", "completed", sequence=3)
    assert not manager.apply_status("CA1", "failed", reason="busy")
    assert s.status is S.COMPLETED and s.reason is None
    assert metrics.get("calls.status.stale") == 3


def test_stale_sequence_is_ignored_even_if_forward(manager: CallManager) -> None:
    s = manager.create_outbound("+15557654321")
    manager.attach_call_sid(s, "CA1")
    assert manager.apply_status("CA1", "ringing", sequence=5)
    assert not manager.apply_status("CA1", "in-progress", sequence=4)
    assert s.status is S.RINGING


def test_invalid_transition_is_logged_and_counted(manager: CallManager,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    s = manager.create_inbound("CA9", "+15550001111", "+15550002222")
    manager.mark_stream_started(s)
    with caplog.at_level("WARNING", logger="agentic_fast.calls"):
        assert not manager.fail(s, "busy")
    assert s.status is S.IN_PROGRESS
    assert metrics.get("calls.status.invalid") == 1
    line = next(r.getMessage() for r in caplog.records if "call.status.invalid" in r.getMessage())
    assert f"call_id={s.call_id}" in line and "call_sid=CA9" in line


def test_unknown_status_and_unknown_sid_do_not_raise(manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    assert not manager.transition(s, "queued")
    assert not manager.apply_status("CA-nope", "completed")
    assert metrics.get("calls.status.unknown") == 1
    assert metrics.get("calls.status.unknown_sid") == 1


# -- registry --------------------------------------------------------------------------------


def test_inbound_is_idempotent_on_call_sid(manager: CallManager) -> None:
    a = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    b = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    assert a is b and a.status is S.RINGING
    assert manager.active_count == 1
    manager.complete(a)
    assert manager.create_inbound("CA1", "+15550001111", "+15550002222") is a  # from history
    assert manager.active_count == 0


def test_concurrency_limit(manager: CallManager) -> None:
    sessions = [manager.create_inbound(f"CA{i}", "+15550001111", "+15550002222")
                for i in range(3)]
    with pytest.raises(CallLimitError) as info:
        manager.create_outbound("+15557654321")
    assert info.value.limit == 3 and isinstance(info.value, CallRefusedError)
    assert "max_concurrent_calls=3" in str(info.value)
    # A replay of a known call is not a new call: still answered.
    assert manager.create_inbound("CA0", "+15550001111", "+15550002222") is sessions[0]
    manager.fail(sessions[0], "error")
    manager.create_outbound("+15557654321")
    assert metrics.get("calls.refused.limit") == 1


def test_draining_refuses_new_calls(manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    manager.drain()
    assert manager.draining
    with pytest.raises(DrainingError):
        manager.create_inbound("CA2", "+15550001111", "+15550002222")
    with pytest.raises(DrainingError):
        manager.create_outbound("+15557654321")
    assert manager.create_inbound("CA1", "+15550001111", "+15550002222") is s
    assert metrics.get("calls.refused.draining") == 2


async def test_wait_idle(manager: CallManager) -> None:
    assert await manager.wait_idle(timeout=0)
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    waiter = asyncio.ensure_future(manager.wait_idle())
    await asyncio.sleep(0)
    assert not waiter.done()
    manager.complete(s)
    assert await waiter is True


def test_stream_token_lookup(manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    manager.bind_stream_token(s, "tok-1")
    assert manager.get_by_stream_token("tok-1") is s
    manager.complete(s)
    assert manager.get_by_stream_token("tok-1") is None  # a stream for an ended call: refuse


def test_bounded_history(manager: CallManager) -> None:
    sessions = []
    for i in range(4):
        s = manager.create_inbound(f"CA{i}", "+15550001111", "+15550002222")
        manager.complete(s)
        sessions.append(s)
    assert manager.get(sessions[0].call_id) is None
    assert manager.get_by_sid("CA0") is None
    assert manager.get(sessions[1].call_id) is None
    assert manager.get(sessions[2].call_id) is sessions[2]
    assert manager.get(sessions[3].call_id) is sessions[3]
    assert metrics.get("calls.history.evicted") == 2


# -- stream errors (Twilio's <Stream statusCallback>) ----------------------------------------


def test_stream_error_before_the_stream_fails_the_call_now(manager: CallManager,
                                                           ended: list[CallSession]) -> None:
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    assert manager.stream_error(s, "31920 handshake", code="31920", stream_sid="MZ1")
    assert s.status is S.FAILED and s.reason == "stream-error-31920" and ended == [s]
    assert s.to_dict()["stream_errors"] == [{"ts": "2023-11-14T22:13:20+00:00",
                                             "code": "31920", "error": "31920 handshake",
                                             "stream_sid": "MZ1"}]
    # a later report is still recorded on the ended call, which stays as it was
    assert not manager.stream_error(s, "no code")
    assert s.reason == "stream-error-31920" and len(s.stream_errors) == 2
    other = manager.create_inbound("CA2", "+15550001111", "+15550002222")
    manager.stream_error(other, "something")
    assert other.reason == "stream-error"


def test_stream_error_during_the_stream_is_only_recorded(manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    manager.mark_stream_started(s)
    for i in range(STREAM_ERRORS_LIMIT + 3):
        assert not manager.stream_error(s, "x" * 1000, code="31951", stream_sid=f"MZ{i}")
    assert s.status is S.IN_PROGRESS
    assert len(s.stream_errors) == STREAM_ERRORS_LIMIT  # bounded, the oldest dropped...
    assert s.stream_errors[0]["stream_sid"] == "MZ3"
    assert metrics.get("calls.stream_errors.dropped") == 3  # ...and counted
    assert len(s.stream_errors[-1]["error"]) == STREAM_ERROR_CHARS


# -- timeouts ----------------------------------------------------------------------------------


def test_inbound_stream_timeout(manager: CallManager, clock: ManualClock,
                                ended: list[CallSession]) -> None:
    late = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    ok = manager.create_inbound("CA2", "+15550001111", "+15550002222")
    assert manager.mark_stream_started(ok)
    clock.advance(9.9)
    assert manager.sweep() == 0
    clock.advance(0.1)
    assert manager.sweep() == 1
    assert late.status is S.FAILED and late.reason == "stream-timeout"
    assert ended == [late]
    assert manager.active_count == 1 and ok.status is S.IN_PROGRESS
    assert manager.sweep() == 0
    assert not manager.mark_stream_started(late)  # the stream came too late: refused


def test_outbound_answer_then_stream_timeout(manager: CallManager, clock: ManualClock) -> None:
    s = manager.create_outbound("+15557654321")
    manager.attach_call_sid(s, "CA1")
    clock.advance(50)  # ringing for a while is fine (answer_timeout_s=60)
    manager.apply_status("CA1", "in-progress")
    clock.advance(15)
    assert manager.sweep() == 1
    assert s.reason == "stream-timeout"


def test_outbound_never_answered_is_reaped(manager: CallManager, clock: ManualClock) -> None:
    s = manager.create_outbound("+15557654321")
    clock.advance(60)
    assert manager.sweep() == 1
    assert s.status is S.FAILED and s.reason == "answer-timeout"
    assert metrics.get("calls.timeout.answer-timeout") == 1


async def test_sweeper_task_start_close(clock: ManualClock) -> None:
    manager = CallManager(clock=clock, stream_timeout_s=1.0, sweep_interval_s=0.001)
    manager.start()
    manager.start()  # idempotent: still a single task
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    clock.advance(5)
    assert await manager.wait_idle(timeout=5)  # the sweeper reaped it
    assert s.reason == "stream-timeout"
    await manager.close()
    await manager.close()


def test_on_end_error_is_contained(clock: ManualClock) -> None:
    def boom(_: CallSession) -> None:
        raise RuntimeError("bridge close failed")

    manager = CallManager(clock=clock, on_end=boom)
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222")
    assert manager.complete(s)
    assert manager.active_count == 0
    assert metrics.get("calls.on_end.error") == 1


# -- session data --------------------------------------------------------------------------


def test_to_dict(manager: CallManager, clock: ManualClock) -> None:
    s = manager.create_inbound("CA1", "+15550001111", "+15550002222", prompt="p",
                               metadata={"crm": 7})
    manager.mark_stream_started(s)
    s.add_transcript("caller", "hello")
    s.add_dtmf("12")
    s.add_dtmf("#")
    s.add_command({"text": "book a table"})
    clock.advance(3)
    d = s.to_dict()
    assert d["call_id"] == s.call_id and d["call_sid"] == "CA1"
    assert d["direction"] == "inbound" and d["status"] == "in-progress"
    assert d["from"] == "+15550001111" and d["to"] == "+15550002222"
    assert d["metadata"] == {"crm": 7} and d["prompt"] == "p"
    assert d["duration_s"] == 3.0 and d["ended_at"] is None
    assert d["created_at"] == "2023-11-14T22:13:20+00:00"
    assert d["transcript"] == [
        {"role": "caller", "text": "hello", "ts": "2023-11-14T22:13:20+00:00"}]
    assert d["dtmf"] == "12#" and d["commands"] == [{"text": "book a table"}]
    assert "bridge" not in d


def test_session_has_slots() -> None:
    s = CallSession(CallDirection.INBOUND, "+1", "+2")
    assert not hasattr(s, "__dict__")
    assert s.duration == 0.0 and len(s.call_id) == 36


# -- bounded records and paging (issue 12) ------------------------------------------------


def test_dtmf_is_bounded_and_the_overflow_counted(manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+1", "+2")
    for _ in range(300_000 // 100):
        s.add_dtmf("1" * 99 + "#")
    assert len(s.dtmf) == DTMF_LIMIT and s.dtmf.endswith("1#")
    assert s.dtmf_dropped == 300_000 - DTMF_LIMIT
    assert metrics.get("calls.dtmf.dropped") == 300_000 - DTMF_LIMIT
    assert s.to_dict()["dtmf_dropped"] == 300_000 - DTMF_LIMIT


def test_long_utterance_is_cut_and_counted(manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+1", "+2")
    s.add_transcript("agent", "a" * (TRANSCRIPT_TEXT_CHARS + 10))
    assert len(s.transcript[0].text) == TRANSCRIPT_TEXT_CHARS
    assert metrics.get("calls.transcript.truncated") == 1


def test_to_dict_keeps_the_latest_transcript_entries_and_says_so(
        manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+1", "+2")
    for i in range(10):
        s.add_transcript("caller", f"t{i}")
    d = s.to_dict(transcript_limit=3)
    assert [e["text"] for e in d["transcript"]] == ["t7", "t8", "t9"]
    assert d["transcript_total"] == 10 and d["transcript_truncated"] is True
    assert s.to_dict(transcript_limit=0)["transcript"] == []
    full = s.to_dict()
    assert len(full["transcript"]) == 10 and full["transcript_truncated"] is False


def test_summary_has_no_transcript_prompt_or_metadata(manager: CallManager) -> None:
    s = manager.create_inbound("CA1", "+1", "+2", prompt="secret plan", metadata={"a": 1})
    s.add_transcript("caller", "hello")
    summary = s.summary()
    assert summary["transcript_turns"] == 1 and summary["call_id"] == s.call_id
    assert not {"transcript", "prompt", "metadata", "commands"} & summary.keys()


def test_active_page_walks_every_call_once_while_calls_come_and_go(
        clock: ManualClock) -> None:
    manager = CallManager(max_concurrent_calls=20, clock=clock)
    calls = [manager.create_inbound(f"CA{i}", "+1", "+2") for i in range(7)]
    page, cursor = manager.active_page(0, 3)
    assert page == calls[:3] and cursor == calls[2].serial
    manager.fail(calls[1], "gone")  # already listed
    manager.fail(calls[4], "gone")  # not yet listed: not shown
    late = manager.create_inbound("CA-late", "+1", "+2")
    assert cursor is not None
    page, cursor = manager.active_page(cursor, 3)
    assert page == [calls[3], calls[5], calls[6]] and cursor is not None
    page, cursor = manager.active_page(cursor, 3)
    assert page == [late] and cursor is None
    assert manager.active_page(0, 100) == (
        [calls[0], calls[2], calls[3], calls[5], calls[6], late], None)
