"""The shared call store: call records, transcripts, agent commands, single-use stream-token
nonces and live-call ownership, behind one interface (:class:`CallStore`) with two backends:
SQLite (one machine, the default) and Redis (many machines). Writes go through
:class:`StoreWriter` (bounded queue, batched, off the event loop)."""

from agentic_fast.core.errors import InvalidCursor, StoreError, StoreUnavailable
from agentic_fast.store.base import (
    CallCreated,
    CallEvent,
    CallFieldsSet,
    CallRecord,
    CallStore,
    CommandAnswered,
    CommandRecord,
    CommandSent,
    RecordFilter,
    RecordPage,
    StatusChanged,
    StatusEntry,
    StoreEvent,
    TranscriptAdded,
    TranscriptLine,
)
from agentic_fast.store.service import StoreService, build_store
from agentic_fast.store.writer import StoreWriter

__all__ = [
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
    "StoreService",
    "StoreUnavailable",
    "StoreWriter",
    "TranscriptAdded",
    "TranscriptLine",
    "build_store",
]
