"""The post-call record: what every destination is built from (plain JSON data).

Taken once, when the call ends (``CallManager.on_call_ended``), and serialised at once, so
later in-place updates of the session (a command aborted at hang-up) do not race with it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from agentic_fast.call.manager import CallDirection, CallSession
from agentic_fast.call.status import CallStatus

#: Version of the record's layout (``version`` in the webhook body).
RECORD_VERSION: Final = 1
EVENT_CALL_ENDED: Final = "call.ended"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def call_record(session: CallSession, *, provider: str = "") -> dict[str, Any]:
    """The call (ids, numbers, direction, statuses with times, reason, duration, provider),
    its transcript and the commands sent to the agent."""
    data = session.to_dict()
    first = (CallStatus.RINGING if session.direction is CallDirection.INBOUND
             else CallStatus.INITIATING)
    statuses = [{"status": first.value, "at": _iso(session.created_at)}]
    if session.answered_at is not None:
        statuses.append({"status": CallStatus.IN_PROGRESS.value,
                         "at": _iso(session.answered_at)})
    if session.ended_at is not None:
        statuses.append({"status": session.status.value, "at": _iso(session.ended_at)})
    call = {key: data[key] for key in (
        "call_id", "call_sid", "direction", "from", "to", "status", "reason", "created_at",
        "answered_at", "ended_at", "duration_s", "stream_started", "dtmf", "stream_errors",
        "metadata")}
    call["provider"] = str(session.metadata.get("provider") or provider)
    call["statuses"] = statuses
    return {
        "event": EVENT_CALL_ENDED,
        "version": RECORD_VERSION,
        "call": call,
        "transcript": data["transcript"],
        "transcript_truncated": data["transcript_truncated"],
        "commands": data["commands"],
    }

