"""Call-store cost: writes per call, their cost, and the store's size per call-hour.

A realistic call (``tests.integration.store_support.realistic_call``): 1 record, 10 status
events, 40 transcript lines, 2 agent commands (sent + answered), a recording and the end
fields: 56 store events, ~3 minutes of call. Measured per backend:

- ``append``: cost on the event loop of queueing one event (what a call pays);
- ``batched write``: the flusher's cost per event and per call, in batches of 500
  (SQLite: one transaction each, on the store's thread; Redis: one MULTI/EXEC pipeline);
- size: SQLite file bytes (WAL checkpointed) or Redis ``used_memory`` per call, and per
  call-hour (20 such calls of 3 minutes).

    python -m bench.bench_store --calls 2000 --backend both

Under pytest (``bench_store_smoke``) it runs once, small, on SQLite, as a smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.fakes.redis_server import RedisServer, RedisUnavailable
from tests.integration.store_support import realistic_call

from agentic_fast.store import CallStore, StoreEvent, StoreWriter
from agentic_fast.store.redis import RedisCallStore
from agentic_fast.store.sqlite import SQLiteCallStore

CALL_SECONDS = 180.0  # the realistic call's length
BATCH = 500


def _events(calls: int, t0: float = 1_800_000_000.0) -> list[StoreEvent]:
    out: list[StoreEvent] = []
    for i in range(calls):
        out += realistic_call(f"bench-{i:06d}", t0 + i)
    return out


async def _size(store: CallStore) -> int:
    if isinstance(store, SQLiteCallStore):
        def checkpoint(db: Any) -> int:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            return int(pages * db.execute("PRAGMA page_size").fetchone()[0])
        return await store._call(checkpoint)
    assert isinstance(store, RedisCallStore)
    info = await store.client.info("memory")
    return int(info["used_memory"])


async def measure(store: CallStore, calls: int) -> dict[str, float]:
    """Figures for ``calls`` realistic calls written into the (empty, open) ``store``."""
    events = _events(calls)
    per_call = len(events) / calls
    writer = StoreWriter(store, queue_size=len(events), batch_max=BATCH)
    start = time.perf_counter()
    for event in events:
        writer.append(event)
    append_us = (time.perf_counter() - start) / len(events) * 1e6
    del writer  # never started: the queued copies are simply let go

    size0 = await _size(store)
    start = time.perf_counter()
    for i in range(0, len(events), BATCH):
        await store.write_batch(events[i:i + BATCH])
    write_s = time.perf_counter() - start
    size = (await _size(store) - size0) / calls
    return {"events_per_call": per_call, "append_us_per_event": append_us,
            "write_us_per_event": write_s / len(events) * 1e6,
            "write_us_per_call": write_s / calls * 1e6,
            "bytes_per_call": size, "bytes_per_call_hour": size * 3600 / CALL_SECONDS}


def _print(backend: str, calls: int, f: dict[str, float]) -> None:
    print(f"{backend:6s} calls={calls} events/call={f['events_per_call']:.0f}  "
          f"append={f['append_us_per_event']:.2f} us/event  "
          f"batched write={f['write_us_per_event']:.1f} us/event "
          f"= {f['write_us_per_call'] / 1000:.2f} ms/call  "
          f"size={f['bytes_per_call'] / 1024:.1f} KiB/call "
          f"= {f['bytes_per_call_hour'] / 1024:.0f} KiB/call-hour")


async def run(backend: str, calls: int) -> dict[str, float] | None:
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            store: CallStore = SQLiteCallStore(Path(tmp) / "calls.db")
            await store.open()
            try:
                return await measure(store, calls)
            finally:
                await store.close()
        try:
            server = RedisServer(Path(tmp))
            server.start()
        except RedisUnavailable as exc:
            print(f"redis  skipped: {exc}")
            return None
        try:
            store = RedisCallStore(server.url)
            await store.open()
            try:
                return await measure(store, calls)
            finally:
                await store.close()
        finally:
            server.stop()


def bench_store_smoke() -> None:
    figures = asyncio.run(run("sqlite", 20))
    assert figures is not None
    assert figures["events_per_call"] == 56 and figures["bytes_per_call"] > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--backend", choices=("sqlite", "redis", "both"), default="both")
    args = parser.parse_args()
    for backend in ("sqlite", "redis") if args.backend == "both" else (args.backend,):
        figures = asyncio.run(run(backend, args.calls))
        if figures is not None:
            _print(backend, args.calls, figures)


if __name__ == "__main__":
    main()
