"""Call and stream status callbacks (protocols.md 1.7, 1.8), sans-I/O.

Twilio's ``CallStatus`` values map into our :class:`~agentic_fast.call.status.CallStatus`::

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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from agentic_fast.call.status import CallStatus
from agentic_fast.carriers.base import StatusChange
from agentic_fast.core.errors import TwilioProtocolError

__all__ = [
    "CallStatusCallback",
    "StreamStatusCallback",
    "map_call_status",
    "parse_status_callback",
    "parse_stream_status_callback",
    "should_apply",
]


_L = CallStatus
_MAPPING: dict[str, StatusChange] = {
    "queued": StatusChange(_L.INITIATING, None, False),
    "initiated": StatusChange(_L.INITIATING, None, False),
    "ringing": StatusChange(_L.RINGING, None, False),
    "in-progress": StatusChange(_L.IN_PROGRESS, None, False),
    "answered": StatusChange(_L.IN_PROGRESS, None, False),
    "completed": StatusChange(_L.COMPLETED, "completed", True),
    "busy": StatusChange(_L.FAILED, "busy", True),
    "no-answer": StatusChange(_L.FAILED, "no-answer", True),
    "canceled": StatusChange(_L.FAILED, "canceled", True),
    "failed": StatusChange(_L.FAILED, "failed", True),
}

#: ``CallStatus`` values Twilio may send.
TWILIO_CALL_STATUSES = frozenset(_MAPPING)


def map_call_status(call_status: str) -> StatusChange:
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
    status: CallStatus
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


#: Characters a free-text field may have (``From``, ``AnsweredBy``, ``StreamName``...);
#: ``StreamError`` gets :data:`MAX_ERROR_CHARS`. Twilio's values are far shorter.
MAX_TEXT_CHARS = 256
MAX_ERROR_CHARS = 2048
#: Characters of a ``Timestamp`` (RFC 2822 or ISO 8601: about 30).
MAX_TIMESTAMP_CHARS = 64
#: ``[lo, hi]`` of each integer field; anything outside is ``out_of_range``.
INT_RANGES: dict[str, tuple[int, int]] = {
    "SequenceNumber": (0, 10**9),
    "CallDuration": (0, 10**9),
    "SipResponseCode": (100, 699),
}
#: Twilio SIDs: two letters, then 32 hex digits (ASCII only).
SID_PATTERNS = {prefix: re.compile(prefix + r"[0-9a-fA-F]{32}", re.ASCII)
                for prefix in ("CA", "AC", "MZ")}


def _first(form: Mapping[str, str], key: str, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    value = form.get(key)
    if isinstance(value, list | tuple):  # parse_qs style
        value = value[0] if value else None
    if value is None or value == "":
        return None
    value = str(value)
    if len(value) > max_chars:
        raise TwilioProtocolError(f"{key} is {len(value)} characters long (at most "
                                  f"{max_chars})", reason="too_long", field=key)
    return value


def _required(form: Mapping[str, str], key: str) -> str:
    value = _first(form, key)
    if value is None:
        raise TwilioProtocolError(f"status callback is missing {key}", reason="missing_field",
                                  field=key)
    return value


def _sid(form: Mapping[str, str], key: str, prefix: str) -> str | None:
    value = _first(form, key)
    if value is not None and SID_PATTERNS[prefix].fullmatch(value) is None:
        raise TwilioProtocolError(f"{key} is not a {prefix} SID: {value!r:.40}",
                                  reason="bad_value", field=key)
    return value


def _required_sid(form: Mapping[str, str], key: str, prefix: str) -> str:
    _required(form, key)
    return _sid(form, key, prefix) or ""


def _int(form: Mapping[str, str], key: str) -> int | None:
    value = _first(form, key)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise TwilioProtocolError(f"{key} must be a non-negative integer, got {value!r:.40}",
                                  reason="bad_type", field=key)
    lo, hi = INT_RANGES[key]
    # the length check first: int() of a huge digit string is slow, or a ValueError
    number = int(value) if len(value) <= len(str(hi)) else hi + 1
    if not lo <= number <= hi:
        raise TwilioProtocolError(f"{key} must be in [{lo}, {hi}], got {value!r:.40}",
                                  reason="out_of_range", field=key)
    return number


def _rfc2822(form: Mapping[str, str], key: str) -> datetime | None:
    value = _first(form, key, MAX_TIMESTAMP_CHARS)
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TwilioProtocolError(f"{key} is not an RFC 2822 date: {value!r:.60}",
                                  reason="bad_type", field=key) from exc


def parse_status_callback(form: Mapping[str, str]) -> CallStatusCallback:
    """Parse a call status callback form (a dict or multidict of its fields)."""
    call_status = _required(form, "CallStatus")
    mapping = map_call_status(call_status)
    return CallStatusCallback(
        call_sid=_required_sid(form, "CallSid", "CA"),
        account_sid=_sid(form, "AccountSid", "AC"),
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
        call_sid=_required_sid(form, "CallSid", "CA"),
        stream_sid=_sid(form, "StreamSid", "MZ"),
        stream_event=_required(form, "StreamEvent"),
        stream_name=_first(form, "StreamName"),
        stream_error=_first(form, "StreamError", MAX_ERROR_CHARS),
        account_sid=_sid(form, "AccountSid", "AC"),
        timestamp=_first(form, "Timestamp", MAX_TIMESTAMP_CHARS),
    )
