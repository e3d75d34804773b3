"""Call status callbacks (protocols.md 1.7) and stream status callbacks (1.8)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agentic_fast.call.status import CallStatus
from agentic_fast.carriers.twilio import status as twilio_status
from agentic_fast.carriers.twilio.status import (
    map_call_status,
    parse_status_callback,
    parse_stream_status_callback,
    should_apply,
)
from agentic_fast.core.errors import TwilioProtocolError
from tests.fakes.twilio_webhooks import status_callback_form, stream_status_form

CA = "CA00000000000000000000000000000002"
L = CallStatus


@pytest.mark.parametrize(("twilio", "status", "reason", "terminal"), [
    ("queued", L.INITIATING, None, False),
    ("initiated", L.INITIATING, None, False),
    ("ringing", L.RINGING, None, False),
    ("in-progress", L.IN_PROGRESS, None, False),
    ("answered", L.IN_PROGRESS, None, False),
    ("completed", L.COMPLETED, "completed", True),
    ("busy", L.FAILED, "busy", True),
    ("no-answer", L.FAILED, "no-answer", True),
    ("canceled", L.FAILED, "canceled", True),
    ("failed", L.FAILED, "failed", True),
])
def test_mapping(twilio: str, status: CallStatus, reason: str | None,
                 terminal: bool) -> None:
    mapping = map_call_status(twilio)
    assert (mapping.status, mapping.reason, mapping.terminal) == (status, reason, terminal)


def test_twilio_maps_into_the_one_call_status() -> None:
    """One CallStatus: Twilio's mapping yields the manager's enum members, no look-alike."""
    assert not hasattr(twilio_status, "LifecycleStatus")
    for value in twilio_status.TWILIO_CALL_STATUSES:
        assert type(map_call_status(value).status) is CallStatus


def test_lifecycle_values_are_plain_strings() -> None:
    assert L.IN_PROGRESS == "in-progress"
    assert f"{L.FAILED}" == "failed"


@pytest.mark.parametrize("value", ["", "Completed", "done"])
def test_unknown_status(value: str) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        map_call_status(value)
    assert info.value.reason == "unknown_call_status"


def test_parse_terminal_callback() -> None:
    form = status_callback_form(call_sid=CA, call_status="completed", sequence_number=3,
                                call_duration=42, answered_by="human",
                                timestamp="Tue, 07 Jan 2025 10:00:00 +0000")
    cb = parse_status_callback(form)
    assert cb.call_sid == CA and cb.call_status == "completed"
    assert (cb.status, cb.reason, cb.terminal) == (L.COMPLETED, "completed", True)
    assert cb.sequence_number == 3 and cb.call_duration_s == 42
    assert cb.timestamp == datetime(2025, 1, 7, 10, 0, tzinfo=UTC)
    assert cb.answered_by == "human" and not cb.answered_by_machine
    assert cb.direction == "outbound-api"
    assert cb.from_number == "+15551230000" and cb.to_number == "+15557654321"
    assert cb.account_sid is not None and cb.account_sid.startswith("AC")


def test_parse_minimal_and_list_values() -> None:
    cb = parse_status_callback({"CallSid": [CA], "CallStatus": ["no-answer"],
                                "CallDuration": ""})
    assert (cb.status, cb.reason) == (L.FAILED, "no-answer")
    assert cb.sequence_number is None and cb.call_duration_s is None and cb.timestamp is None


@pytest.mark.parametrize("answered_by", ["machine_start", "machine_end_beep", "fax"])
def test_machine_answers(answered_by: str) -> None:
    form = status_callback_form(call_sid=CA, call_status="in-progress", sequence_number=1,
                                answered_by=answered_by)
    assert parse_status_callback(form).answered_by_machine


@pytest.mark.parametrize(("drop", "reason"), [("CallSid", "missing_field"),
                                              ("CallStatus", "missing_field")])
def test_missing_required(drop: str, reason: str) -> None:
    form = status_callback_form(call_sid=CA, call_status="ringing", sequence_number=1)
    del form[drop]
    with pytest.raises(TwilioProtocolError) as info:
        parse_status_callback(form)
    assert info.value.reason == reason and info.value.field == drop


@pytest.mark.parametrize(("key", "value"), [("SequenceNumber", "x"), ("CallDuration", "-1"),
                                            ("Timestamp", "yesterday")])
def test_bad_values(key: str, value: str) -> None:
    form = status_callback_form(call_sid=CA, call_status="completed", sequence_number=1)
    form[key] = value
    with pytest.raises(TwilioProtocolError) as info:
        parse_status_callback(form)
    assert info.value.reason == "bad_type" and info.value.field == key


def cb(status: str, seq: int | None) -> object:
    form = status_callback_form(call_sid=CA, call_status=status, sequence_number=seq or 0)
    if seq is None:
        del form["SequenceNumber"]
    return parse_status_callback(form)


def test_should_apply_orders_by_sequence_and_stops_at_terminal() -> None:
    initiated, ringing, answered = cb("initiated", 0), cb("ringing", 1), cb("in-progress", 2)
    completed = cb("completed", 3)
    assert should_apply(None, ringing)
    assert should_apply(initiated, ringing)
    assert not should_apply(answered, ringing)  # late arrival
    assert not should_apply(ringing, cb("ringing", 1))  # duplicate
    assert should_apply(answered, completed)
    assert should_apply(ringing, cb("busy", 0))  # a terminal status always lands...
    assert not should_apply(completed, cb("failed", 9))  # ...once
    assert should_apply(ringing, cb("in-progress", None))


def test_stream_status_callback() -> None:
    form = stream_status_form(call_sid=CA, stream_sid="MZ" + "0" * 32,
                              stream_event="stream-error", stream_error="31920 handshake")
    parsed = parse_stream_status_callback(form)
    assert parsed.call_sid == CA and parsed.stream_event == "stream-error"
    assert parsed.stream_error == "31920 handshake"
    assert parsed.stream_sid == "MZ" + "0" * 32 and parsed.timestamp
    with pytest.raises(TwilioProtocolError):
        parse_stream_status_callback({"CallSid": CA})


# -- every field bounded (issue 12: 5,000-digit numbers were a ValueError -> 500) ------------


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("SequenceNumber", "9" * 5000, "too_long"),
    ("SequenceNumber", "9" * 30, "out_of_range"),
    ("CallDuration", "9" * 5000, "too_long"),
    ("CallDuration", "1" + "0" * 10, "out_of_range"),
    ("SipResponseCode", "99", "out_of_range"),
    ("SipResponseCode", "700", "out_of_range"),
    ("SequenceNumber", "\u0661\u0662", "bad_type"),  # Arabic-Indic digits
    ("Timestamp", "Mon, 01 Jan " + "9" * 5000 + " 00:00:00 +0000", "too_long"),
    ("Timestamp", "Mon, 01 Jan 99999 00:00:00 +0000", "bad_type"),
    ("CallSid", "CA" + "a" * 298, "too_long"),
    ("CallSid", "CA" + "g" * 32, "bad_value"),
    ("AccountSid", "XY" + "0" * 32, "bad_value"),
    ("From", "+1" * 200, "too_long"),
])
def test_out_of_bounds_field_is_a_protocol_error(key: str, value: str, reason: str) -> None:
    form = status_callback_form(call_sid=CA, call_status="ringing", sequence_number=1)
    form[key] = value
    with pytest.raises(TwilioProtocolError) as err:
        parse_status_callback(form)
    assert (err.value.reason, err.value.field) == (reason, key)


def test_bounds_keep_every_real_value() -> None:
    form = status_callback_form(call_sid=CA, call_status="completed", sequence_number=4,
                                call_duration=86_400, SipResponseCode="200")
    cb = parse_status_callback(form)
    assert (cb.sequence_number, cb.call_duration_s, cb.sip_response_code) == (4, 86_400, 200)


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("CallSid", "CA" + "0" * 300, "too_long"),
    ("StreamSid", "MZ123", "bad_value"),
    ("StreamError", "x" * 3000, "too_long"),
    ("Timestamp", "2" * 100, "too_long"),
])
def test_stream_status_fields_are_bounded(key: str, value: str, reason: str) -> None:
    form = stream_status_form(call_sid=CA, stream_sid="MZ" + "0" * 32,
                              stream_event="stream-error", stream_error="31920 handshake")
    form[key] = value
    with pytest.raises(TwilioProtocolError) as err:
        parse_stream_status_callback(form)
    assert (err.value.reason, err.value.field) == (reason, key)
