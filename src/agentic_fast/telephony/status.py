"""Call and stream status callbacks (protocols.md 1.7, 1.8), sans-I/O.

Twilio's ``CallStatus`` values fold onto our lifecycle::

    queued, initiated      -> initiating
    ringing                -> ringing
    in-progress, answered  -> in-progress
    completed              -> completed                  (reason "completed")
    busy, no-answer,
    canceled, failed       -> failed                     (reason = the Twilio value)

Callbacks can arrive late, twice, or out of order: :func:`should_apply` says whether a
callback still moves a call forward (never past a terminal state, never backwards in
``SequenceNumber``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from agentic_fast.telephony.media import TwilioProtocolError

__all__ = [
    "CallStatusCallback",
    "LifecycleStatus",
    "StatusMapping",
    "StreamStatusCallback",
    "map_call_status",
    "parse_status_callback",
    "parse_stream_status_callback",
    "should_apply",
]


class LifecycleStatus(StrEnum):
    """Our call lifecycle status as far as Twilio reports it."""

    INITIATING = "initiating"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StatusMapping:
    """A Twilio ``CallStatus`` seen as our status; ``reason`` is set on terminal ones."""

    status: LifecycleStatus
    reason: str | None
    terminal: bool


_L = LifecycleStatus
_MAPPING: dict[str, StatusMapping] = {
    "queued": StatusMapping(_L.INITIATING, None, False),
    "initiated": StatusMapping(_L.INITIATING, None, False),
    "ringing": StatusMapping(_L.RINGING, None, False),
    "in-progress": StatusMapping(_L.IN_PROGRESS, None, False),
    "answered": StatusMapping(_L.IN_PROGRESS, None, False),
    "completed": StatusMapping(_L.COMPLETED, "completed", True),
    "busy": StatusMapping(_L.FAILED, "busy", True),
    "no-answer": StatusMapping(_L.FAILED, "no-answer", True),
    "canceled": StatusMapping(_L.FAILED, "canceled", True),
    "failed": StatusMapping(_L.FAILED, "failed", True),
}

#: ``CallStatus`` values Twilio may send.
TWILIO_CALL_STATUSES = frozenset(_MAPPING)


def map_call_status(call_status: str) -> StatusMapping:
    """Our status for a Twilio ``CallStatus``; unknown values raise ``unknown_call_status``."""
    mapping = _MAPPING.get(call_status)
    if mapping is None:
        raise TwilioProtocolError(f"unknown CallStatus {call_status!r:.40}",
                                  reason="unknown_call_status", field="CallStatus")
    return mapping


@dataclass(frozen=True, slots=True)
class CallStatusCallback:
    """One call status callback, parsed."""

    call_sid: str
    account_sid: str | None
    call_status: str  # Twilio's value, as sent
    status: LifecycleStatus
    reason: str | None
    terminal: bool
    sequence_number: int | None
    timestamp: datetime | None
    call_duration_s: int | None
    answered_by: str | None
    direction: str | None
    from_number: str | None
    to_number: str | None
    sip_response_code: int | None

    @property
    def answered_by_machine(self) -> bool:
        """AMD says a machine or fax answered (``machine_*``, ``fax``)."""
        return self.answered_by is not None and (
            self.answered_by.startswith("machine") or self.answered_by == "fax")


def _first(form: Mapping[str, str], key: str) -> str | None:
    value = form.get(key)
    if isinstance(value, list | tuple):  # parse_qs style
        value = value[0] if value else None
    if value is None or value == "":
        return None
    return str(value)


def _required(form: Mapping[str, str], key: str) -> str:
    value = _first(form, key)
    if value is None:
        raise TwilioProtocolError(f"status callback is missing {key}", reason="missing_field",
                                  field=key)
    return value


def _int(form: Mapping[str, str], key: str) -> int | None:
    value = _first(form, key)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise TwilioProtocolError(f"{key} must be a non-negative integer, got {value!r:.40}",
                                  reason="bad_type", field=key)
    return int(value)


def _rfc2822(form: Mapping[str, str], key: str) -> datetime | None:
    value = _first(form, key)
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError) as exc:
        raise TwilioProtocolError(f"{key} is not an RFC 2822 date: {value!r:.60}",
                                  reason="bad_type", field=key) from exc


def parse_status_callback(form: Mapping[str, str]) -> CallStatusCallback:
    """Parse a call status callback form (a dict or multidict of its fields)."""
    call_status = _required(form, "CallStatus")
    mapping = map_call_status(call_status)
    return CallStatusCallback(
        call_sid=_required(form, "CallSid"),
        account_sid=_first(form, "AccountSid"),
        call_status=call_status,
        status=mapping.status,
        reason=mapping.reason,
        terminal=mapping.terminal,
        sequence_number=_int(form, "SequenceNumber"),
        timestamp=_rfc2822(form, "Timestamp"),
        call_duration_s=_int(form, "CallDuration"),
        answered_by=_first(form, "AnsweredBy"),
        direction=_first(form, "Direction"),
        from_number=_first(form, "From"),
        to_number=_first(form, "To"),
        sip_response_code=_int(form, "SipResponseCode"),
    )


def should_apply(previous: CallStatusCallback | None, new: CallStatusCallback) -> bool:
    """Whether ``new`` should update a call whose last applied callback was ``previous``.

    No after a terminal status; no for a ``SequenceNumber`` not above the last one (a
    duplicate or a late arrival); yes otherwise (also when either number is missing).
    """
    if previous is None:
        return True
    if previous.terminal:
        return False
    if new.terminal:
        return True
    prev_seq, new_seq = previous.sequence_number, new.sequence_number
    if prev_seq is not None and new_seq is not None:
        return new_seq > prev_seq
    return True


@dataclass(frozen=True, slots=True)
class StreamStatusCallback:
    """A ``<Stream statusCallback>`` request: the only report of a failed handshake."""

    call_sid: str
    stream_sid: str | None
    stream_event: str  # stream-started | stream-stopped | stream-error
    stream_name: str | None
    stream_error: str | None
    account_sid: str | None
    timestamp: str | None  # ISO 8601, kept as sent


def parse_stream_status_callback(form: Mapping[str, str]) -> StreamStatusCallback:
    """Parse a stream status callback form."""
    return StreamStatusCallback(
        call_sid=_required(form, "CallSid"),
        stream_sid=_first(form, "StreamSid"),
        stream_event=_required(form, "StreamEvent"),
        stream_name=_first(form, "StreamName"),
        stream_error=_first(form, "StreamError"),
        account_sid=_first(form, "AccountSid"),
        timestamp=_first(form, "Timestamp"),
    )
