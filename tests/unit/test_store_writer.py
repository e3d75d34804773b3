"""StoreWriter against a scripted in-memory store: batching, order, bounds, retry and
drop rules (the real backends are in tests/integration/test_store_*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentic_fast.core import metrics
from agentic_fast.store import StoreError, StoreEvent, StoreUnavailable, StoreWriter
from agentic_fast.store.base import CallFieldsSet, TranscriptAdded


class ScriptedStore:
    """Records batches; raises the queued errors first (one per attempt)."""

    backend = "scripted"

    def __init__(self) -> None:
        self.batches: list[list[StoreEvent]] = []
        self.errors: list[Exception] = []

    async def write_batch(self, events: Sequence[StoreEvent]) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.batches.append(list(events))


def _line(i: int) -> TranscriptAdded:
    return TranscriptAdded(f"c{i % 3}", float(i), "caller", f"line {i}")


@pytest.fixture(autouse=True)
def _metrics() -> None:
    metrics.reset()


def _writer(store: ScriptedStore, delays: list[float] | None = None,
            **kw: object) -> StoreWriter:
    async def sleep(s: float) -> None:
        if delays is not None:
            delays.append(s)
    return StoreWriter(store, sleep=sleep, **kw)  # type: ignore[arg-type]


async def test_batches_are_bounded_and_keep_order() -> None:
    store = ScriptedStore()
    writer = _writer(store, batch_max=4, interval_s=0.001)
    writer.start()
    for i in range(10):
        assert writer.append(_line(i))
    await asyncio.wait_for(writer.flush(), 5)
    assert [len(b) for b in store.batches] == [4, 4, 2]
    assert [e.ts for b in store.batches for e in b] == [float(i) for i in range(10)]
    assert writer.written == 10 and metrics.get("store.write.batches") == 3
    assert await writer.close() == 0


async def test_full_queue_drops_new_events_and_counts_them() -> None:
    store = ScriptedStore()
    writer = _writer(store, queue_size=3, batch_max=3)
    results = [writer.append(_line(i)) for i in range(5)]  # flusher not started
    assert results == [True, True, True, False, False]
    assert writer.dropped == 2 and metrics.get("store.write.dropped.queue_full") == 2
    writer.start()
    await asyncio.wait_for(writer.flush(), 5)
    assert [e.ts for e in store.batches[0]] == [0.0, 1.0, 2.0]
    await writer.close()


async def test_unavailable_keeps_the_batch_with_bounded_backoff() -> None:
    store = ScriptedStore()
    store.errors = [StoreUnavailable("down", backend="scripted") for _ in range(8)]
    delays: list[float] = []
    writer = _writer(store, delays, retry_initial_s=0.1, retry_max_s=1.0, max_attempts=2)
    writer.start()
    writer.append(_line(0))
    await asyncio.wait_for(writer.flush(), 5)
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]  # never given up
    assert [len(b) for b in store.batches] == [1] and not writer.failing
    assert metrics.get("store.write.retry") == 8
    await writer.close()


async def test_a_rejected_batch_is_dropped_after_max_attempts() -> None:
    store = ScriptedStore()
    store.errors = [StoreError("bad row"), StoreError("bad row"), StoreError("bad row")]
    writer = _writer(store, [], batch_max=2, max_attempts=3, interval_s=0.001)
    writer.start()
    for i in range(4):
        writer.append(_line(i))
    await asyncio.wait_for(writer.flush(), 5)
    assert writer.failed == 2 and metrics.get("store.write.dropped.failed") == 2
    assert [[e.ts for e in b] for b in store.batches] == [[2.0, 3.0]]  # the next one went in
    await writer.close()


def test_unknown_record_field_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="color"):
        CallFieldsSet("c1", 0.0, {"color": "red"})
