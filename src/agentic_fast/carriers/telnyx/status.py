"""Telnyx Call Control webhooks, sans-I/O: the envelope, and event types -> our CallStatus.

A webhook body (docs/telnyx-protocol.md, "Webhooks")::

    {"data": {"record_type": "event", "id": UUID, "event_type": "call.answered",
              "occurred_at": ISO, "payload": {"call_control_id", "client_state", ...}},
     "meta": {...}}

:func:`parse_webhook` validates the fields we use and returns a :class:`TelnyxWebhook`;
:func:`map_event` says what an event means for the call's lifecycle (``None``: nothing).
``call.hangup``'s ``hangup_cause`` gives the end reason: before the call was answered a
busy / no answer / rejected / cancelled call *failed* with our unanswered reasons
(``busy``, ``no-answer``, ``canceled``); after it, the call *completed*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from agentic_fast.call.status import CallStatus
from agentic_fast.carriers.base import StatusChange
from agentic_fast.core.errors import TelnyxWebhookError
from agentic_fast.core.jsonfields import JsonFields

__all__ = ["TelnyxWebhook", "map_event", "map_status", "parse_webhook"]

_MAX_FIELD = 256


@dataclass(frozen=True, slots=True)
class TelnyxWebhook:
    """The fields of one webhook event that the server uses."""

    event_id: str
    event_type: str
    call_control_id: str
    client_state: str | None
    direction: str
    from_number: str
    to_number: str
    hangup_cause: str
    hangup_source: str
    failure_reason: str
    payload: dict[str, Any]
    #: ``call.speak.ended``'s ``status`` (completed, call_hangup, ...); "" for other events
    speak_status: str = ""


_FIELDS = JsonFields(TelnyxWebhookError)


def _text(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    """``obj[key]``: a string (non-empty where ``required``; "" when absent otherwise),
    at most ``_MAX_FIELD`` characters (``client_state`` excepted: it is checked by its
    decoder)."""
    value = (_FIELDS.get_nonempty_str(obj, key, where) if required
             else _FIELDS.get_opt_str(obj, key, where) or "")
    if len(value) > _MAX_FIELD and key != "client_state":
        _FIELDS.fail("bad_value", f"{where}{key} is longer than {_MAX_FIELD} characters",
                     where + key)
    return value


def parse_webhook(body: bytes) -> TelnyxWebhook:
    """Parse a (signature-checked) webhook body; raises :class:`TelnyxWebhookError`."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TelnyxWebhookError(f"body is not JSON: {exc}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise TelnyxWebhookError("body has no 'data' object", field="data")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise TelnyxWebhookError("data.payload must be an object", field="data.payload")
    event_type = _text(data, "event_type", "data.", required=True)
    p = "data.payload."
    state = _text(payload, "client_state", p) or None
    if state is not None and len(state) > 4096:
        raise TelnyxWebhookError("client_state is too long", field=p + "client_state")
    return TelnyxWebhook(
        event_id=_text(data, "id", "data.", required=True), event_type=event_type,
        call_control_id=_text(payload, "call_control_id", p, required=True),
        client_state=state, direction=_text(payload, "direction", p),
        from_number=_text(payload, "from", p), to_number=_text(payload, "to", p),
        hangup_cause=_text(payload, "hangup_cause", p),
        hangup_source=_text(payload, "hangup_source", p),
        failure_reason=_text(payload, "failure_reason", p)[:200], payload=payload,
        speak_status=(_text(payload, "status", p) if event_type == "call.speak.ended"
                      else ""))


#: ``hangup_cause`` of a call that was never answered -> our unanswered failure reason.
_UNANSWERED = {
    "user_busy": "busy", "call_rejected": "busy",
    "timeout": "no-answer", "no_answer": "no-answer", "originator_cancel": "canceled",
}


def map_event(event: TelnyxWebhook, answered: bool) -> StatusChange | None:
    """The lifecycle change ``event`` means (``answered``: the call was already answered);
    ``None`` for events that do not move the call (streaming.*, recordings, ...)."""
    kind = event.event_type
    if kind == "call.hangup":
        return _hangup(event.hangup_cause or "normal_clearing", answered)
    return _PROGRESS.get(kind)


_PROGRESS = {"call.initiated": StatusChange(CallStatus.RINGING, None, False),
             "call.answered": StatusChange(CallStatus.IN_PROGRESS, None, False)}


def _hangup(cause: str, answered: bool) -> StatusChange:
    if not answered and cause in _UNANSWERED:
        return StatusChange(CallStatus.FAILED, _UNANSWERED[cause], True)
    if not answered and cause != "normal_clearing":
        return StatusChange(CallStatus.FAILED, f"hangup-{cause}"[:64], True)
    return StatusChange(CallStatus.COMPLETED, f"hangup-{cause}"[:64], True)


def map_status(carrier_status: str) -> StatusChange:
    """``Carrier.map_status`` for Telnyx: ``call.initiated``, ``call.answered``, or
    ``call.hangup:<hangup_cause>`` (as for a call not answered yet) -> our status;
    :class:`TelnyxWebhookError` (reason ``unknown_call_status``) for anything else."""
    kind, _, cause = carrier_status.partition(":")
    if kind == "call.hangup":
        return _hangup(cause or "normal_clearing", answered=False)
    change = _PROGRESS.get(kind)
    if change is None:
        raise TelnyxWebhookError(f"unknown Telnyx call status {carrier_status!r:.60}",
                                 field="event_type", reason="unknown_call_status")
    return change
