"""The writer writes a lone event without being flushed (an idle flusher wakes up)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentic_fast.store.base import StatusChanged, StoreEvent
from agentic_fast.store.writer import StoreWriter

pytestmark = pytest.mark.asyncio


class _Store:
    backend = "test"

    def __init__(self) -> None:
        self.batches: list[list[StoreEvent]] = []
        self.wrote = asyncio.Event()

    async def write_batch(self, events: Sequence[StoreEvent]) -> None:
        self.batches.append(list(events))
        self.wrote.set()


async def test_one_event_is_written_within_the_interval_without_flush() -> None:
    store = _Store()
    writer = StoreWriter(store, interval_s=0.01)  # type: ignore[arg-type]
    writer.start()
    try:
        writer.append(StatusChanged("c1", 1.0, "ringing"))
        await writer.flush()  # the flusher is idle now, waiting for work
        store.wrote.clear()
        writer.append(StatusChanged("c1", 2.0, "in-progress"))
        await asyncio.wait_for(store.wrote.wait(), 5)
        assert [len(b) for b in store.batches] == [1, 1]
    finally:
        await writer.close()
