"""The store's write path: a bounded queue, flushed in batches by one background task.

``append`` is synchronous and O(1) (a deque append): the event loop and the audio path never
wait for the store. The flusher takes up to ``batch_max`` events every ``interval_s`` (sooner
when a full batch is waiting, or on ``flush``/``close``) and applies them with one
``write_batch`` (SQLite: one transaction on the store's thread; Redis: one pipeline).

What is lost, in each failure mode (each is counted in ``agentic_fast.core.metrics`` and
logged):

- store unreachable, locked or full (:class:`StoreUnavailable`): the batch is kept and
  retried with exponential backoff (``retry_initial_s`` doubling up to ``retry_max_s``),
  forever; events go on queueing meanwhile. Nothing is lost until the queue holds
  ``queue_size`` events; beyond that each new event is dropped
  (``store.write.dropped.queue_full``). When the store comes back the queue drains in order.
- the store rejects the batch itself (:class:`StoreError` or any other error: bad data,
  corrupt file): tried ``max_attempts`` times, then that batch is dropped
  (``store.write.dropped.failed``, call ids logged) so one bad event cannot block the rest.
- shutdown: ``close`` waits up to its timeout for the queue to drain; what is still queued
  then is lost (``store.write.lost.shutdown``). A crash (kill -9) loses the queue, at most
  ``interval_s`` of events in normal operation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff
from agentic_fast.core.errors import StoreUnavailable
from agentic_fast.core.log import get_logger
from agentic_fast.store.base import CallStore, StoreEvent

__all__ = ["StoreWriter"]

log = get_logger("store.writer")


class StoreWriter:
    """Queues store events and applies them in batches in the background."""

    def __init__(self, store: CallStore, *, queue_size: int = 10_000, batch_max: int = 500,
                 interval_s: float = 0.05, retry_initial_s: float = 0.1,
                 retry_max_s: float = 5.0, max_attempts: int = 3,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if queue_size < 1 or batch_max < 1:
            raise ValueError("queue_size and batch_max must be >= 1")
        self.store = store
        self.queue_size = queue_size
        self.batch_max = batch_max
        self.interval_s = interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        #: the wait between attempts: doubling from ``retry_initial_s`` to ``retry_max_s``,
        #: for as long as the store is away (the attempts are bounded by ``max_attempts``
        #: only for a batch the store refuses)
        self.backoff = Backoff(base_s=retry_initial_s, factor=2.0, max_delay_s=retry_max_s,
                               max_attempts=None, max_total_s=None, first_immediate=False,
                               jitter=0.0)
        self.max_attempts = max_attempts
        self._sleep = sleep
        self._queue: deque[StoreEvent] = deque()
        self._in_flight = 0  # events of the batch being written
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failing = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        #: Totals since start (also in metrics): written, dropped (queue full), failed
        #: (batches given up), lost at shutdown.
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.lost = 0

    # -- producer side (any coroutine or callback on the loop; never blocks) ---------------

    def append(self, event: StoreEvent) -> bool:
        """Queue ``event``; False (counted, logged) when the queue is full or closed."""
        if len(self._queue) >= self.queue_size or self._closing:
            self.dropped += 1
            metrics.incr("store.write.dropped.queue_full")
            if self.dropped == 1 or self.dropped % 1000 == 0:  # log, not flood
                log.warning("store.write.dropped", call_id=event.call_id,
                            kind=type(event).__name__, dropped_total=self.dropped,
                            queue_size=self.queue_size, closing=self._closing)
            return False
        self._queue.append(event)
        self._idle.clear()
        if len(self._queue) == 1 or len(self._queue) >= self.batch_max:
            # the first event wakes an idle flusher (it then gathers for interval_s); a
            # full batch is written at once
            self._wake.set()
        return True

    @property
    def pending(self) -> int:
        """Events queued or being written."""
        return len(self._queue) + self._in_flight

    @property
    def failing(self) -> bool:
        """True while the last write attempt failed (the store is down, locked or full)."""
        return self._failing.is_set()

    async def wait_failing(self) -> None:
        """Return once a write attempt has failed (and not yet succeeded since)."""
        await self._failing.wait()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="store-writer")

    async def flush(self) -> None:
        """Wait until everything appended so far is written (or given up)."""
        self._wake.set()
        await self._idle.wait()

    async def close(self, timeout_s: float = 5.0) -> int:
        """Stop accepting, write what is queued within ``timeout_s``; returns the number of
        events lost (queued or in flight when the time ran out)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle.wait()), timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lost = self.pending
        if lost:
            self.lost += lost
            metrics.incr("store.write.lost.shutdown", lost)
            log.error("store.write.lost", events=lost, reason="shutdown",
                      backend=self.store.backend)
        self._queue.clear()
        self._in_flight = 0
        self._idle.set()
        return lost

    # -- flusher ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                if not self._queue:
                    continue
            if len(self._queue) < self.batch_max and not self._closing:
                # gather a batch: wait out the interval unless woken (full batch, flush)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
            count = min(len(self._queue), self.batch_max)
            batch = [self._queue.popleft() for _ in range(count)]
            self._in_flight = count  # stays counted if close() cancels the write
            await self._write(batch)
            del batch  # written events are not kept alive while the flusher waits
            self._in_flight = 0

    async def _write(self, batch: Sequence[StoreEvent]) -> None:
        attempts = 0
        retries = self.backoff.start()
        while True:
            try:
                await self.store.write_batch(batch)
            except StoreUnavailable as exc:
                self._failed(batch, exc)
            except Exception as exc:  # the store refuses this batch: bounded attempts
                attempts += 1
                self._failed(batch, exc)
                if attempts >= self.max_attempts:
                    self.failed += len(batch)
                    metrics.incr("store.write.dropped.failed", len(batch))
                    log.error("store.write.batch_dropped", events=len(batch),
                              attempts=attempts, error=repr(exc),
                              call_ids=",".join(sorted({e.call_id for e in batch})[:20]))
                    return
            else:
                self.written += len(batch)
                metrics.incr("store.write.batches")
                metrics.incr("store.write.events", len(batch))
                if self._failing.is_set():
                    self._failing.clear()
                    log.info("store.write.recovered", backend=self.store.backend,
                             pending=self.pending)
                return
            await self._sleep(retries.next_delay() or self.retry_max_s)  # endless: never None

    def _failed(self, batch: Sequence[StoreEvent], exc: Exception) -> None:
        metrics.incr("store.write.retry")
        if not self._failing.is_set():
            self._failing.set()
            log.warning("store.write.failing", backend=self.store.backend, error=str(exc),
                        batch=len(batch), pending=self.pending)
