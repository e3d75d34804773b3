"""The call store's interface: what every backend (SQLite, Redis) offers, and its value types.

Writes are *events* (``CallCreated``, ``StatusChanged``, ``TranscriptAdded``...). Callers never
await a write: they hand events to :class:`agentic_fast.store.writer.StoreWriter`, which
applies them in batches with :meth:`CallStore.write_batch` off the event loop. Applying the
same batch twice gives the same state (each appended item carries a unique ``event_id``), so
a batch whose outcome is unknown (a connection lost during the reply) is simply retried.

The operations a new call needs *now* (claim the stream-token nonce, own the call) are
awaited and raise :class:`StoreUnavailable` when the store cannot answer: the caller then
refuses the call politely. Reads (``get``, ``list_records``) raise it too.

Statuses and directions are plain strings (our ``CallStatus`` / ``CallDirection`` values);
``completed`` and ``failed`` are terminal: once a record has one, a later status is kept in
the history but no longer changes the record's status.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agentic_fast.core.errors import InvalidCursor, StoreError, StoreUnavailable

__all__ = [
    "CALL_FIELDS",
    "TERMINAL_STATUSES",
    "CallCreated",
    "CallEvent",
    "CallFieldsSet",
    "CallRecord",
    "CallStore",
    "CommandAnswered",
    "CommandRecord",
    "CommandSent",
    "InvalidCursor",
    "RecordFilter",
    "RecordPage",
    "StatusChanged",
    "StatusEntry",
    "StoreError",
    "StoreEvent",
    "StoreUnavailable",
    "TranscriptAdded",
    "TranscriptLine",
    "decode_cursor",
    "encode_cursor",
    "new_event_id",
]

TERMINAL_STATUSES = frozenset({"completed", "failed"})
#: Record fields that :class:`CallFieldsSet` may set (anything else is a programming error).
CALL_FIELDS = frozenset({"call_sid", "answered_by", "duration_s", "end_reason", "reason",
                         "provider", "carrier"})
#: Status given to a dead owner's live calls by ``reclaim`` (with the caller's reason).
RECLAIMED_STATUS = "failed"


# -- event ids: unique across processes and machines, cheap ---------------------------------

_id_prefix = os.urandom(6).hex()
_id_counter = itertools.count()


def _reseed() -> None:  # a forked worker must not repeat its parent's ids
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(6).hex()
    _id_counter = itertools.count()


os.register_at_fork(after_in_child=_reseed)


def new_event_id() -> str:
    """A short id unique to this process run (random prefix + counter)."""
    return f"{_id_prefix}{next(_id_counter):x}"


# -- write events ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CallCreated:
    """A new call record. ``ts`` is wall-clock epoch seconds."""

    call_id: str
    ts: float
    direction: str
    from_number: str
    to_number: str
    provider: str = ""
    carrier: str = ""
    call_sid: str | None = None
    status: str = "initiating"
    event_id: str = field(default_factory=new_event_id)


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """A status transition: appended to the history; sets the record's status unless it is
    already terminal. ``in-progress`` sets ``answered_at``; a terminal status ``ended_at``."""

    call_id: str
    ts: float
    status: str
    reason: str | None = None
    event_id: str = field(default_factory=new_event_id)


@dataclass(frozen=True, slots=True)
class CallFieldsSet:
    """Set record fields known later (``call_sid``, ``answered_by``, ``duration_s``,
    ``end_reason``...; keys in :data:`CALL_FIELDS`)."""

    call_id: str
    ts: float
    fields: Mapping[str, str | float | None]
    event_id: str = field(default_factory=new_event_id)

    def __post_init__(self) -> None:
        unknown = set(self.fields) - CALL_FIELDS
        if unknown:
            raise ValueError(f"CallFieldsSet.fields: unknown record fields {sorted(unknown)} "
                             f"(allowed: {', '.join(sorted(CALL_FIELDS))})")


@dataclass(frozen=True, slots=True)
class TranscriptAdded:
    """One transcript line; ``role`` is ``caller`` or ``agent``."""

    call_id: str
    ts: float
    role: str
    text: str
    event_id: str = field(default_factory=new_event_id)


@dataclass(frozen=True, slots=True)
class CommandSent:
    """A command sent to the agent (``command_id`` unique within the call)."""

    call_id: str
    ts: float
    command_id: str
    text: str
    event_id: str = field(default_factory=new_event_id)


@dataclass(frozen=True, slots=True)
class CommandAnswered:
    """The agent's answer to a command (``status``: ok, error, timeout, aborted...)."""

    call_id: str
    ts: float
    command_id: str
    answer: str
    duration_s: float
    status: str = "ok"
    event_id: str = field(default_factory=new_event_id)


@dataclass(frozen=True, slots=True)
class CallEvent:
    """A call-control fact: ``kind`` like ``recording``, ``transfer``, ``end``; ``data`` is
    JSON-able (recording URL and duration, transfer target, who ended the call)."""

    call_id: str
    ts: float
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=new_event_id)


StoreEvent = (CallCreated | StatusChanged | CallFieldsSet | TranscriptAdded | CommandSent
              | CommandAnswered | CallEvent)


# -- read types -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StatusEntry:
    ts: float
    status: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    ts: float
    role: str
    text: str


@dataclass(frozen=True, slots=True)
class CommandRecord:
    command_id: str
    sent_at: float | None
    text: str
    answered_at: float | None = None
    answer: str | None = None
    duration_s: float | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A call as stored. ``list_records`` fills the summary fields only (the tuples stay
    empty); ``get`` fills everything. ``owner`` is the worker/instance holding it live."""

    call_id: str
    created_at: float
    updated_at: float
    status: str
    direction: str = ""
    from_number: str = ""
    to_number: str = ""
    provider: str = ""
    carrier: str = ""
    call_sid: str | None = None
    reason: str | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    duration_s: float | None = None
    answered_by: str | None = None
    end_reason: str | None = None
    owner: str | None = None
    statuses: tuple[StatusEntry, ...] = ()
    transcript: tuple[TranscriptLine, ...] = ()
    commands: tuple[CommandRecord, ...] = ()
    events: tuple[CallEvent, ...] = ()

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """``list_records`` filters (all optional, combined with AND). ``number`` matches the
    from or the to number; ``since`` is epoch seconds (records created at or after)."""

    status: str | None = None
    direction: str | None = None
    number: str | None = None
    since: float | None = None

    def matches(self, record: CallRecord) -> bool:
        return ((self.status is None or record.status == self.status)
                and (self.direction is None or record.direction == self.direction)
                and (self.number is None
                     or self.number in (record.from_number, record.to_number))
                and (self.since is None or record.created_at >= self.since))


@dataclass(frozen=True, slots=True)
class RecordPage:
    """Newest first. ``next_cursor`` is None on the last page; a page may be shorter than
    asked even when more follow (a bounded scan), so page until the cursor is None."""

    records: tuple[CallRecord, ...]
    next_cursor: str | None


def encode_cursor(created_at: float, call_id: str) -> str:
    """The opaque cursor after the record (``created_at``, ``call_id``)."""
    return f"{created_at!r}:{call_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    ts, sep, call_id = cursor.partition(":")
    try:
        value = float(ts)
    except ValueError:
        value = float("nan")
    if not sep or not call_id or value != value:
        raise InvalidCursor(f"cursor: not a cursor from this store: {cursor[:80]!r}")
    return value, call_id


# -- the interface ----------------------------------------------------------------------------

@runtime_checkable
class CallStore(Protocol):
    """A shared call store. Every method may raise :class:`StoreUnavailable`, except
    ``health`` (False instead) and ``close``."""

    backend: str

    async def open(self) -> None:
        """Connect / open the file, create or migrate the schema."""

    async def close(self) -> None:
        """Release connections and threads; idempotent."""

    async def health(self) -> bool:
        """True when the store answers a trivial query within its timeout."""

    async def write_batch(self, events: Sequence[StoreEvent]) -> None:
        """Apply ``events`` in order, all or nothing (one transaction / pipeline);
        idempotent. ``StoreUnavailable``: retry later; ``StoreError``: will not succeed."""

    async def claim_nonce(self, nonce: str, ttl_s: float) -> bool:
        """True the first time ``nonce`` is claimed (on any worker or machine), False after,
        until ``ttl_s`` has passed."""

    async def claim_call(self, call_id: str, owner: str, lease_s: float) -> bool:
        """Make ``owner`` the owner of live call ``call_id`` (True), unless another owner
        holds it (False). Also renews ``owner``'s lease."""

    async def heartbeat(self, owner: str, lease_s: float) -> None:
        """``owner`` is alive for ``lease_s`` more seconds."""

    async def release_call(self, call_id: str, owner: str) -> None:
        """The call ended on ``owner``: no longer live (no-op if someone else owns it)."""

    async def live_calls(self, owner: str | None = None) -> dict[str, str]:
        """Live call id -> owner, of ``owner`` only if given."""

    async def reclaim(self, owner: str | None = None, *, reason: str = "owner_lost") -> list[str]:
        """Take the live calls of ``owner`` (known dead), or of every owner whose lease has
        run out: each is released and marked ``failed`` with ``reason``. Returns their ids
        (each reclaimed once, whoever else reclaims at the same time)."""

    async def get(self, call_id: str) -> CallRecord | None:
        """The record with its status history, transcript, commands and events."""

    async def list_records(self, filters: RecordFilter | None = None, *, limit: int = 50,
                           cursor: str | None = None) -> RecordPage:
        """Record summaries, newest first; ``cursor`` from the previous page."""

    async def prune(self, older_than: float) -> int:
        """Delete ended records created before ``older_than`` (epoch s) and expired nonces;
        returns the number of records deleted."""
