"""What the call store loses, and does not lose, when its backend fails: Redis killed
mid-write and restarted, the SQLite file locked by another connection, the disk full."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentic_fast.core import metrics
from agentic_fast.store import (
    CallCreated,
    StatusChanged,
    StoreUnavailable,
    StoreWriter,
    TranscriptAdded,
)
from agentic_fast.store.redis import RedisCallStore
from agentic_fast.store.sqlite import SQLiteCallStore
from tests.fakes.redis_server import RedisServer, RedisUnavailable

T0 = 1_800_000_000.0
WAIT_S = 20.0  # bound on every wait (a hung test fails instead of hanging)


@pytest.fixture(autouse=True)
def _metrics() -> None:
    metrics.reset()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it gets killed), appendonly so that what it
    acknowledged survives the kill."""
    try:
        server = RedisServer(tmp_path, appendonly=True)
        server.start()
    except RedisUnavailable as exc:
        pytest.skip(f"real Redis unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _line(i: int) -> TranscriptAdded:
    return TranscriptAdded("c1", T0 + i, "caller", f"line {i}")


async def test_redis_killed_mid_call_nothing_lost_within_the_queue_bound(
        own_redis: RedisServer) -> None:
    store = RedisCallStore(own_redis.url, timeout_s=0.5, connect_timeout_s=0.5)
    await store.open()
    writer = StoreWriter(store, queue_size=20, batch_max=5, interval_s=0.01,
                         retry_initial_s=0.01, retry_max_s=0.05)
    writer.start()
    try:
        writer.append(CallCreated("c1", T0, "inbound", "+1555", "+1666", status="ringing"))
        for i in range(5):
            writer.append(_line(i))
        await asyncio.wait_for(writer.flush(), WAIT_S)

        own_redis.kill()  # mid-call: the next writes find no server
        # a status (a Lua script: the restarted server has none cached) and 24 lines:
        # 25 events, 20 fit in the queue, 5 dropped
        writer.append(StatusChanged("c1", T0 + 5, "in-progress"))
        for i in range(5, 29):
            writer.append(_line(i))
        await asyncio.wait_for(writer.wait_failing(), WAIT_S)
        assert not await store.health()
        with pytest.raises(StoreUnavailable):
            await store.claim_nonce("n1", 60)  # a new call would be refused politely
        assert writer.dropped == 5
        assert metrics.get("store.write.dropped.queue_full") == 5
        assert metrics.get("store.write.retry") >= 1

        own_redis.start()  # same port, same dir: the append-only file is replayed
        await asyncio.wait_for(writer.flush(), WAIT_S)
        assert not writer.failing and await store.health()
        record = await store.get("c1")
        assert record is not None and record.status == "in-progress"
        texts = [line.text for line in record.transcript]
        # before the kill: all; during: the first 20 queued (the batch in flight is kept)
        assert texts == [f"line {i}" for i in range(24)]
        assert writer.written == 26 and writer.failed == 0
    finally:
        assert await writer.close(1.0) == 0
        await store.close()


async def test_sqlite_locked_by_another_connection_retries_then_succeeds(
        tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    store = SQLiteCallStore(path, busy_timeout_s=0.05)
    await store.open()
    writer = StoreWriter(store, interval_s=0.01, retry_initial_s=0.01, retry_max_s=0.05)
    writer.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        writer.append(CallCreated("c1", T0, "inbound", "+1555", "+1666"))
        writer.append(StatusChanged("c1", T0 + 1, "in-progress"))
        await asyncio.wait_for(writer.wait_failing(), WAIT_S)
        assert writer.pending == 2
        other.execute("COMMIT")  # the lock is released: the kept batch goes in
        await asyncio.wait_for(writer.flush(), WAIT_S)
        record = await store.get("c1")
        assert record is not None and record.status == "in-progress"
        assert metrics.get("store.write.retry") >= 1
        assert writer.dropped == writer.failed == 0 and writer.written == 2
    finally:
        other.close()
        assert await writer.close(1.0) == 0
        await store.close()


async def test_sqlite_disk_full_keeps_the_batch_drops_beyond_the_bound(
        tmp_path: Path) -> None:
    """SQLITE_FULL (a quota of max_page_count pages standing in for a full disk):
    the failing batch is kept and retried, new events queue up to the bound and beyond
    it are dropped and counted; when space comes back the queue is written in order."""
    store = SQLiteCallStore(tmp_path / "calls.db", max_bytes=160 * 1024)
    await store.open()
    await store.write_batch([CallCreated("c1", T0, "inbound", "+1555", "+1666")])
    big = "x" * 2000
    with pytest.raises(StoreUnavailable, match="full"):
        for i in range(1000):  # fill the quota
            await store.write_batch([TranscriptAdded("c1", T0 + i, "caller", big)])
    stored = len((await store.get("c1")).transcript)  # type: ignore[union-attr]

    writer = StoreWriter(store, queue_size=10, batch_max=4, interval_s=0.01,
                         retry_initial_s=0.01, retry_max_s=0.05)
    writer.start()
    try:
        for i in range(12):  # 10 queued, 2 dropped
            writer.append(TranscriptAdded("c1", T0 + 5000 + i, "agent", f"{i} {big}"))
        await asyncio.wait_for(writer.wait_failing(), WAIT_S)
        assert writer.pending == 10
        assert metrics.get("store.write.dropped.queue_full") == 2
        assert await store.health()  # reads still work on a full disk

        await store.set_max_bytes(None)  # space freed
        await asyncio.wait_for(writer.flush(), WAIT_S)
        record = await store.get("c1")
        assert record is not None
        assert [t.text.split()[0] for t in record.transcript[stored:]] == [
            str(i) for i in range(10)]
        assert writer.failed == 0
    finally:
        assert await writer.close(1.0) == 0
        await store.close()


async def test_close_while_the_store_is_down_reports_what_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    store = SQLiteCallStore(path, busy_timeout_s=0.01)
    await store.open()
    writer = StoreWriter(store, interval_s=0.01, retry_initial_s=0.01, retry_max_s=0.02)
    writer.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        for i in range(3):
            writer.append(_line(i))
        await asyncio.wait_for(writer.wait_failing(), WAIT_S)
        assert await writer.close(timeout_s=0.05) == 3
        assert metrics.get("store.write.lost.shutdown") == 3
        assert not writer.append(_line(9))  # closed: refused and counted
    finally:
        other.close()
        await store.close()
