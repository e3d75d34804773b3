"""The shared call store seen through the HTTP API: record JSON in the shapes the in-memory
views use (``CallSession.summary`` / ``to_dict``, extended), the ``GET /calls`` filters, and
the cross-process part of ``GET /calls`` (live calls of every process and instance, recent
records with a cursor)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agentic_fast.call.manager import CallDirection, CallManager
from agentic_fast.call.status import CallStatus
from agentic_fast.store.base import CallRecord, RecordFilter
from agentic_fast.store.recorder import StoreRecorder

__all__ = ["parse_since", "record_summary", "record_view", "records_page",
           "store_call_filter"]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def record_summary(record: CallRecord) -> dict[str, Any]:
    """A stored record as ``CallSession.summary()`` keys, plus the store's own fields
    (``transcript_turns`` is None: list pages do not count lines)."""
    duration = record.duration_s
    if duration is None and record.answered_at is not None:
        duration = (record.ended_at or record.updated_at) - record.answered_at
    return {
        "call_id": record.call_id, "call_sid": record.call_sid,
        "direction": record.direction, "from": record.from_number, "to": record.to_number,
        "status": record.status, "reason": record.reason,
        "created_at": _iso(record.created_at), "answered_at": _iso(record.answered_at),
        "ended_at": _iso(record.ended_at), "duration_s": round(max(0.0, duration or 0.0), 3),
        "stream_started": record.answered_at is not None, "transcript_turns": None,
        "provider": record.provider, "carrier": record.carrier,
        "answered_by": record.answered_by, "end_reason": record.end_reason,
        "owner": record.owner, "source": "store",
    }


def record_view(record: CallRecord, *, transcript_limit: int | None = None) -> dict[str, Any]:
    """``GET /calls/{id}`` for a stored record: the summary, status history, transcript
    (the latest ``transcript_limit`` lines), agent commands and call events."""
    lines = list(record.transcript)
    total = len(lines)
    if transcript_limit is not None and total > transcript_limit:
        lines = lines[total - transcript_limit:] if transcript_limit > 0 else []
    return {
        **record_summary(record),
        "transcript_turns": total,
        "statuses": [{"ts": _iso(s.ts), "status": s.status, "reason": s.reason}
                     for s in record.statuses],
        "transcript": [{"role": t.role, "text": t.text, "ts": _iso(t.ts)} for t in lines],
        "transcript_total": total,
        "transcript_truncated": len(lines) < total,
        "commands": [{"command_id": c.command_id, "command": c.text,
                      "started_at": _iso(c.sent_at), "ended_at": _iso(c.answered_at),
                      "answer": c.answer, "duration_s": c.duration_s, "status": c.status}
                     for c in record.commands],
        "events": [{"ts": _iso(e.ts), "kind": e.kind, "data": dict(e.data)}
                   for e in record.events],
    }


def parse_since(raw: str) -> float | str:
    """``since`` as epoch seconds (a number or an ISO 8601 time with a zone), or the 400
    message."""
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return "'since' must be epoch seconds or an ISO 8601 time"
    if parsed.tzinfo is None:
        return "'since' needs a time zone (e.g. 2026-01-01T10:00:00+00:00)"
    return parsed.timestamp()


def store_call_filter(query: Mapping[str, str]) -> RecordFilter | str:
    """``status``, ``direction``, ``number`` (from or to), ``since``; or the 400 message."""
    status, direction = query.get("status") or None, query.get("direction") or None
    if status is not None and status not in {s.value for s in CallStatus}:
        return f"'status' must be one of {', '.join(s.value for s in CallStatus)}"
    if direction is not None and direction not in {d.value for d in CallDirection}:
        return f"'direction' must be one of {', '.join(d.value for d in CallDirection)}"
    number = query.get("number") or None
    if number is not None and len(number) > 32:
        return "'number' is too long"
    since = parse_since(query["since"]) if query.get("since") else None
    if isinstance(since, str):
        return since
    return RecordFilter(status=status, direction=direction, number=number, since=since)


async def records_page(recorder: StoreRecorder, manager: CallManager, wanted: RecordFilter,
                       limit: int, cursor: str | None) -> dict[str, Any]:
    """Live calls of every process and instance (owner from the store; this process's own
    from memory), and a page of records newest first. Raises ``StoreError``."""
    store = recorder.store
    owners = await store.live_calls()
    live: list[dict[str, Any]] = []
    for call_id, owner in sorted(owners.items()):
        if len(live) == limit:
            break
        session = manager.get(call_id)
        if session is not None:
            summary = {**session.summary(), "owner": owner, "source": "live"}
            record: CallRecord | None = None
        else:
            record = await store.get(call_id)
            if record is None:
                continue
            summary = record_summary(record)
        if record is not None and not wanted.matches(record):
            continue
        if session is not None and not _session_matches(wanted, summary, session.created_at):
            continue
        live.append(summary)
    page = await store.list_records(wanted, limit=limit, cursor=cursor)
    return {"instance": recorder.owner, "live": live, "live_count": len(owners),
            "calls": [record_summary(r) for r in page.records],
            "calls_next_cursor": page.next_cursor}


def _session_matches(wanted: RecordFilter, summary: dict[str, Any], created_at: float) -> bool:
    return ((wanted.status is None or summary["status"] == wanted.status)
            and (wanted.direction is None or summary["direction"] == wanted.direction)
            and (wanted.number is None or wanted.number in (summary["from"], summary["to"]))
            and (wanted.since is None or created_at >= wanted.since))
