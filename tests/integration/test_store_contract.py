"""The call store's contract, run against both backends: SQLite (a real file) and Redis (a
real redis-server on loopback)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentic_fast.core import metrics
from agentic_fast.store import (
    CallCreated,
    CallEvent,
    CallFieldsSet,
    CallStore,
    CommandSent,
    InvalidCursor,
    RecordFilter,
    StatusChanged,
    StoreUnavailable,
    StoreWriter,
    TranscriptAdded,
)
from agentic_fast.store.redis import RedisCallStore
from agentic_fast.store.sqlite import SQLiteCallStore
from tests.fakes.redis_server import free_port
from tests.integration.store_support import (
    BACKENDS,
    Clock,
    StoreFactory,
    realistic_call,
    store_factory,
)

T0 = 1_800_000_000.0
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> StoreFactory:
    return store_factory(request.param, tmp_path, request, clock)


@pytest.fixture
async def store(make: StoreFactory) -> AsyncIterator[CallStore]:
    s = make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_backends_implement_the_protocol(store: CallStore) -> None:
    assert isinstance(store, CallStore)
    assert await store.health()


async def test_record_with_transcript_commands_and_events(store: CallStore) -> None:
    writer = StoreWriter(store, interval_s=0.01)
    writer.start()
    for event in realistic_call("c1", T0, statuses=4, lines=5, commands=2):
        assert writer.append(event)
    writer.append(CommandSent("c1", T0 + 100, "cmd9", "call mom"))  # never answered
    writer.append(CallEvent("c1", T0 + 175, "transfer", {"to": "+15550001111"}))
    writer.append(CallFieldsSet("c1", T0 + 1, {"call_sid": "CA" + "0" * 32}))
    await writer.flush()
    assert await writer.close() == 0

    record = await store.get("c1")
    assert record is not None
    assert (record.direction, record.from_number, record.to_number) == (
        "inbound", "+15551230000", "+15559870000")
    assert (record.provider, record.carrier, record.call_sid) == ("openai", "twilio",
                                                                  "CA" + "0" * 32)
    assert record.status == "completed" and record.reason == "caller-hangup"
    assert record.created_at == T0 and record.answered_at == T0 + 1
    assert record.ended_at == T0 + 179
    assert (record.duration_s, record.end_reason, record.answered_by) == (
        178.0, "caller-hangup", "human")
    assert [(s.status, s.ts) for s in record.statuses] == [
        ("ringing", T0), ("in-progress", T0 + 1), ("in-progress", T0 + 2),
        ("completed", T0 + 179)]
    assert [line.role for line in record.transcript] == ["caller", "agent"] * 2 + ["caller"]
    assert record.transcript[0].text.startswith("line 0: ")
    assert [(c.command_id, c.text, c.answer, c.duration_s) for c in record.commands] == [
        ("cmd0", "check my calendar for tomorrow", "You have two meetings tomorrow.", 5.0),
        ("cmd1", "check my calendar for tomorrow", "You have two meetings tomorrow.", 5.0),
        ("cmd9", "call mom", None, None)]
    assert [(e.kind, dict(e.data)) for e in record.events] == [
        ("recording", {"url": "https://example.invalid/rec/RE1", "duration_s": 170}),
        ("transfer", {"to": "+15550001111"})]
    assert await store.get("nope") is None


async def test_terminal_status_is_final_and_history_keeps_late_ones(store: CallStore) -> None:
    await store.write_batch([
        CallCreated("c1", T0, "outbound", "+15551230000", "+15559870000"),
        StatusChanged("c1", T0 + 1, "failed", "no-answer"),
        StatusChanged("c1", T0 + 2, "in-progress"),  # a late, out-of-order callback
    ])
    record = await store.get("c1")
    assert record is not None
    assert (record.status, record.reason, record.ended_at) == ("failed", "no-answer", T0 + 1)
    assert record.answered_at is None
    assert [s.status for s in record.statuses] == ["initiating", "failed", "in-progress"]


async def test_a_replayed_batch_adds_nothing_twice(store: CallStore) -> None:
    batch = realistic_call("c1", T0, statuses=4, lines=6, commands=1)
    await store.write_batch(batch)
    await store.write_batch(batch)  # the outcome of the first was unknown: retried
    record = await store.get("c1")
    assert record is not None
    assert (len(record.statuses), len(record.transcript), len(record.commands),
            len(record.events)) == (4, 6, 1, 1)


async def test_events_before_the_record_still_land(store: CallStore) -> None:
    """Webhook on one worker, stream on another: the stream's writes may come first."""
    await store.write_batch([StatusChanged("c1", T0 + 5, "in-progress"),
                             TranscriptAdded("c1", T0 + 6, "caller", "hello")])
    await store.write_batch([CallCreated("c1", T0, "inbound", "+15551230000",
                                         "+15559870000", status="ringing")])
    record = await store.get("c1")
    assert record is not None
    assert (record.status, record.created_at, record.direction) == ("in-progress", T0,
                                                                     "inbound")
    assert record.answered_at == T0 + 5 and len(record.transcript) == 1
    page = await store.list_records()
    assert [r.call_id for r in page.records] == ["c1"]


async def test_paging_newest_first_and_filters(store: CallStore) -> None:
    events = []
    for i in range(25):
        direction = "inbound" if i % 2 else "outbound"
        ts = T0 + (i // 3)  # ties: three calls share each second
        number = "+15550000001" if i % 5 == 0 else f"+1555100{i:04d}"
        events.append(CallCreated(f"c{i:02d}", ts, direction, number, "+15559870000"))
        if i % 4 == 0:
            events.append(StatusChanged(f"c{i:02d}", ts + 60, "completed"))
    await store.write_batch(events)

    seen, cursor, pages = [], None, 0
    while True:
        page = await store.list_records(limit=7, cursor=cursor)
        assert len(page.records) <= 7
        seen += [(r.created_at, r.call_id) for r in page.records]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 4 and len(seen) == 25 and len(set(seen)) == 25
    assert seen == sorted(seen, reverse=True)
    assert all(r.transcript == () for r in page.records)  # summaries only

    async def ids(f: RecordFilter) -> set[str]:
        out, cur = set(), None
        while True:
            page = await store.list_records(f, limit=4, cursor=cur)
            out |= {r.call_id for r in page.records}
            if (cur := page.next_cursor) is None:
                return out
    assert await ids(RecordFilter(status="completed")) == {f"c{i:02d}" for i in range(0, 25, 4)}
    assert await ids(RecordFilter(direction="inbound")) == {f"c{i:02d}" for i in range(1, 25, 2)}
    assert await ids(RecordFilter(number="+15550000001")) == {
        f"c{i:02d}" for i in range(0, 25, 5)}
    assert await ids(RecordFilter(number="+15559870000")) == {f"c{i:02d}" for i in range(25)}
    assert await ids(RecordFilter(since=T0 + 7)) == {f"c{i:02d}" for i in range(21, 25)}
    assert await ids(RecordFilter(status="completed", direction="outbound",
                                  since=T0 + 2)) == {"c08", "c12", "c16", "c20", "c24"}
    assert await ids(RecordFilter(status="ringing")) == set()
    with pytest.raises(InvalidCursor):
        await store.list_records(cursor="garbage")
    with pytest.raises(ValueError, match="limit"):
        await store.list_records(limit=0)


async def test_nonce_single_use_across_instances(store: CallStore, make: StoreFactory,
                                                 clock: Clock) -> None:
    other = make()
    await other.open()
    try:
        first = await asyncio.gather(*(s.claim_nonce(f"n{i}", 60) for i in range(20)
                                       for s in (store, other)))
        assert sum(first) == 20  # each nonce: exactly one of the two instances won
        assert not await store.claim_nonce("n3", 60)
        assert not await other.claim_nonce("n3", 60)
    finally:
        await other.close()
    if isinstance(store, SQLiteCallStore):  # expiry on the injected clock
        clock.now += 61
        assert await store.claim_nonce("n3", 60)


async def test_sqlite_nonce_single_use_across_processes(tmp_path: Path) -> None:
    """Three processes race for the same 200 nonces on one file: each is won once."""
    path = tmp_path / "calls.db"
    await (s := SQLiteCallStore(path)).open()
    await s.close()
    code = textwrap.dedent(f"""
        import asyncio, json, sys
        from agentic_fast.store.sqlite import SQLiteCallStore
        async def main():
            store = SQLiteCallStore({str(path)!r}, busy_timeout_s=10)
            await store.open()
            won = [n for n in range(200) if await store.claim_nonce(f"n{{n}}", 60)]
            await store.close()
            print(json.dumps(won))
        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env,
                                                  stdout=asyncio.subprocess.PIPE)
             for _ in range(3)]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    won = [n for out, _ in outputs for n in json.loads(out)]
    assert sorted(won) == list(range(200))


async def test_ownership_lease_and_reclaim(store: CallStore, make: StoreFactory,
                                           clock: Clock) -> None:
    await store.write_batch([CallCreated(c, T0, "inbound", "+1555", "+1666", status="ringing")
                             for c in ("c1", "c2", "c3")])
    assert await store.claim_call("c1", "w1", lease_s=15)
    assert await store.claim_call("c2", "w1", lease_s=15)
    assert await store.claim_call("c3", "w2", lease_s=15)
    assert not await store.claim_call("c1", "w2", lease_s=15)
    assert await store.claim_call("c1", "w1", lease_s=15)  # already ours
    assert await store.live_calls("w1") == {"c1": "w1", "c2": "w1"}
    await store.release_call("c2", "w2")  # not w2's: nothing happens
    assert await store.live_calls() == {"c1": "w1", "c2": "w1", "c3": "w2"}
    await store.release_call("c2", "w1")
    assert await store.live_calls() == {"c1": "w1", "c3": "w2"}
    record = await store.get("c1")
    assert record is not None and record.owner == "w1"

    clock.now += 10
    await store.heartbeat("w2", lease_s=15)
    assert await store.reclaim() == []  # w1's lease runs to T0 + 15
    clock.now += 10  # w1 stopped beating: its lease ran out; w2's runs to T0 + 25
    other = make()
    await other.open()
    try:  # two reclaimers at once: each call is reclaimed once
        a, b = await asyncio.gather(store.reclaim(), other.reclaim())
    finally:
        await other.close()
    assert sorted(a + b) == ["c1"]
    assert await store.live_calls() == {"c3": "w2"}
    record = await store.get("c1")
    assert record is not None
    assert (record.status, record.reason, record.owner) == ("failed", "owner_lost: w1", None)
    assert record.ended_at == clock.now
    assert await store.reclaim("w2", reason="worker_died") == ["c3"]
    record = await store.get("c3")
    assert record is not None and record.reason == "worker_died: w2"
    assert await store.live_calls() == {}


async def test_prune_removes_old_ended_records_only(store: CallStore, clock: Clock) -> None:
    old, new = T0 - 40 * 86400, T0 - 86400
    await store.write_batch([
        *realistic_call("old-ended", old, statuses=3, lines=2, commands=1),
        CallCreated("old-live", old, "inbound", "+1555", "+1666"),
        CallCreated("old-open", old + 1, "inbound", "+1555", "+1666"),
        *realistic_call("new-ended", new, statuses=3, lines=2, commands=1),
    ])
    assert await store.claim_call("old-live", "w1", lease_s=60)
    await store.write_batch([StatusChanged("old-live", old + 2, "completed")])
    assert await store.claim_nonce("n1", 60)

    assert await store.prune(T0 - 30 * 86400) == 1
    assert await store.get("old-ended") is None
    assert {r.call_id for r in (await store.list_records()).records} == {
        "old-live", "old-open", "new-ended"}
    assert await store.get("new-ended") is not None
    assert not await store.claim_nonce("n1", 60)  # unexpired nonces are kept


async def test_everything_survives_close_and_reopen(make: StoreFactory) -> None:
    first = make()
    await first.open()
    writer = StoreWriter(first, interval_s=0.01)
    writer.start()
    for event in realistic_call("c1", T0):
        writer.append(event)
    assert await writer.close() == 0
    assert await first.claim_nonce("n1", 60)
    assert await first.claim_call("c2", "w1", lease_s=60)
    before = await first.get("c1")
    await first.close()

    second = make()
    await second.open()
    try:
        assert await second.get("c1") == before
        assert before is not None and len(before.transcript) == 40
        assert not await second.claim_nonce("n1", 60)
        assert await second.live_calls() == {"c2": "w1"}
        assert [r.call_id for r in (await second.list_records()).records] == ["c1"]
    finally:
        await second.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_store_down_health_false_and_claims_raise(backend: str, tmp_path: Path) -> None:
    metrics.reset()
    if backend == "sqlite":
        (tmp_path / "file").write_text("not a directory")
        store: CallStore = SQLiteCallStore(tmp_path / "file" / "calls.db")
    else:
        store = RedisCallStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5,
                               connect_timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match=f"{backend} store unavailable"):
        await store.open()
    try:
        assert not await store.health()
        with pytest.raises(StoreUnavailable) as info:
            await store.claim_nonce("n1", 60)
        assert info.value.backend == backend
        with pytest.raises(StoreUnavailable):
            await store.claim_call("c1", "w1", lease_s=15)
        with pytest.raises(StoreUnavailable):
            await store.write_batch([CallCreated("c1", T0, "inbound", "+1555", "+1666")])
        with pytest.raises(StoreUnavailable):
            await store.get("c1")
    finally:
        await store.close()
