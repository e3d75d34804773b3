"""One object for the server to hold: the configured store, its writer and its pruner.

    service = StoreService.from_config(config.store)
    await service.start()                       # raises StoreUnavailable if unreachable
    service.append(CallCreated(...))            # never blocks; False when dropped
    ok = await service.store.claim_nonce(nonce, ttl_s)
    await service.close()                       # drains the queue (store.shutdown_timeout_s)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from agentic_fast.core import metrics
from agentic_fast.core.config import StoreConfig
from agentic_fast.core.errors import StoreError
from agentic_fast.core.log import get_logger
from agentic_fast.store.base import CallStore, StoreEvent
from agentic_fast.store.writer import StoreWriter

__all__ = ["StoreService", "build_store"]

log = get_logger("store")


def build_store(config: StoreConfig, *, clock: Callable[[], float] = time.time) -> CallStore:
    """The backend ``config.backend`` names (not opened yet)."""
    if config.backend == "redis":
        from agentic_fast.store.redis import RedisCallStore
        return RedisCallStore(config.url, prefix=config.key_prefix, timeout_s=config.timeout_s,
                              connect_timeout_s=config.connect_timeout_s, clock=clock)
    from agentic_fast.store.sqlite import SQLiteCallStore
    return SQLiteCallStore(config.file, busy_timeout_s=config.timeout_s, clock=clock)


class StoreService:
    """The store, its batching writer and the background retention prune."""

    def __init__(self, store: CallStore, config: StoreConfig, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.writer = StoreWriter(store, queue_size=config.queue_size,
                                  batch_max=config.batch_max,
                                  interval_s=config.batch_interval_s,
                                  retry_initial_s=config.retry_initial_s,
                                  retry_max_s=config.retry_max_s,
                                  max_attempts=config.max_attempts)
        self._pruner: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: StoreConfig, *,
                    clock: Callable[[], float] = time.time) -> StoreService:
        return cls(build_store(config, clock=clock), config, clock=clock)

    async def start(self) -> None:
        """Open the store (``StoreUnavailable`` when it cannot), then ``start_background``."""
        await self.store.open()
        self.start_background()

    def start_background(self) -> None:
        """Start the writer and the pruner (also when the store is down: they retry)."""
        self.writer.start()
        if self.config.retention_days > 0 and self._pruner is None:
            self._pruner = asyncio.get_running_loop().create_task(self._prune_forever(),
                                                                  name="store-pruner")

    def append(self, event: StoreEvent) -> bool:
        return self.writer.append(event)

    async def prune_once(self) -> int:
        """Delete ended records older than ``retention_days``; errors logged and counted."""
        cutoff = self.clock() - self.config.retention_days * 86_400
        try:
            return await self.store.prune(cutoff)
        except StoreError as exc:
            metrics.incr("store.prune.failed")
            log.warning("store.prune.failed", backend=self.store.backend, error=str(exc))
            return 0

    async def _prune_forever(self) -> None:
        while True:
            await self.prune_once()
            await asyncio.sleep(self.config.prune_interval_s)

    async def close(self) -> int:
        """Stop pruning, drain the writer, close the store; returns events lost."""
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None
        lost = await self.writer.close(self.config.shutdown_timeout_s)
        await self.store.close()
        return lost
