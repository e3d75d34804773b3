"""The notifier: ended calls in, deliveries out, through the persisted outbox.

``submit(session)`` is the ``CallManager.on_call_ended`` callback: it takes the record
(``record.call_record``), serialises it, and returns; the outbox write runs on the
notifier's own thread. One background task sends what is due, destinations in parallel
(each in order), and sleeps until the next due delivery or a new call. A failed attempt
is retried after ``backoff_base_s * 2**(attempts-1)`` (at most ``backoff_max_s``), or after
the peer's ``Retry-After``/``retry_after``; after ``max_attempts`` attempts, or once older
than ``max_age_s``, or on a permanent refusal, the delivery is dead-lettered: logged at
error level with the call id and counted (``notify.dead.<destination>``).

The summary is written once per call, at its first delivery attempt (so a slow model
never delays the outbox write), and stored with the call for every destination.
Tests drive ``run_once()`` with an injected ``clock``; nothing here sleeps for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
from aiohttp import web

from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff
from agentic_fast.core.config import Config, NotifyConfig
from agentic_fast.core.errors import OutboxFullError
from agentic_fast.core.log import get_logger
from agentic_fast.notify.base import Delivery, Destination, Outcome
from agentic_fast.notify.outbox import Outbox, Pending
from agentic_fast.notify.record import call_record
from agentic_fast.notify.summary import Summarizer, build_summarizer
from agentic_fast.notify.telegram import TelegramDestination
from agentic_fast.notify.webhook import WebhookDestination

log = get_logger("notify")

OUTBOX_FILE: Final = "outbox.sqlite3"
#: Deliveries taken from the outbox per round.
BATCH: Final = 50
#: A claimed delivery is retried after this long if the process died during its attempt.
LEASE_S: Final = 600.0
_T = TypeVar("_T")


def outbox_path(state_dir: str) -> Path | None:
    """``<state_dir>/outbox.sqlite3`` (``~`` expanded); None (memory) without a state dir."""
    return Path(state_dir).expanduser() / OUTBOX_FILE if state_dir else None


class Notifier:
    """Persisted, retried post-call delivery to ``destinations``."""

    def __init__(self, config: NotifyConfig, destinations: Sequence[Destination], *,
                 path: Path | None, summarizer: Summarizer, provider: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        if not destinations:
            raise ValueError("no destination")
        self.config = config
        #: the wait before retry n: backoff_base_s doubling up to backoff_max_s (no jitter:
        #: a delivery's next attempt is a row in the outbox, not a reconnect storm)
        self._backoff = Backoff(base_s=config.backoff_base_s, factor=2.0,
                                max_delay_s=config.backoff_max_s, max_attempts=None,
                                max_total_s=None, first_immediate=False, jitter=0.0)
        self.destinations = {d.name: d for d in destinations}
        self.path = path
        self.summarizer = summarizer
        self.provider = provider
        self.clock = clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="notify-outbox")
        self._outbox: Outbox | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._enqueues: set[asyncio.Task[bool]] = set()
        self._wake = asyncio.Event()
        self._paused: dict[str, float] = {}  # destination -> retry_after deadline
        self._summaries: dict[str, asyncio.Future[str]] = {}  # call id -> being written

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the outbox and the HTTP session (no sender task: see ``start``)."""
        if self._outbox is None:
            self._outbox = await self._db(
                lambda: Outbox(self.path, max_pending=self.config.max_pending))
            if not self._outbox.persistent:
                log.warning("notify.outbox.memory", detail="server.state_dir is not set (or "
                            "unusable): undelivered post-call messages are lost on restart")
        if self._http is None:
            self._http = aiohttp.ClientSession()

    async def start(self) -> None:
        """Open, then send in the background until ``close``."""
        await self.open()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="notify")

    async def close(self) -> None:
        """Finish queuing submitted calls, stop sending; pending deliveries stay queued."""
        if self._enqueues:
            await asyncio.gather(*self._enqueues, return_exceptions=True)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.summarizer.close()
        outbox, self._outbox = self._outbox, None
        if outbox is not None:
            await self._db(outbox.close)
        self._executor.shutdown(wait=True)

    def attach(self, app: web.Application, manager: CallManager) -> None:
        """Take the ended calls of ``manager``; start and close with ``app``."""
        manager.on_call_ended.append(self.submit)

        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.close()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)

    async def _db(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- intake ------------------------------------------------------------------------------

    def submit(self, session: CallSession) -> None:
        """Queue an ended call for every destination (returns at once)."""
        try:
            record = call_record(session, provider=self.provider)
        except Exception:  # a bug here must not break the end of a call
            metrics.incr("notify.record.error")
            session.log.exception("notify.record.error")
            return
        task = asyncio.get_running_loop().create_task(self.enqueue(record))
        self._enqueues.add(task)
        task.add_done_callback(self._enqueues.discard)

    async def enqueue(self, record: dict[str, Any]) -> bool:
        """Write ``record`` to the outbox for every destination; False if refused."""
        call_id = str(record["call"]["call_id"])
        body = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        names = list(self.destinations)
        await self.open()
        assert self._outbox is not None
        outbox = self._outbox
        try:
            await self._db(lambda: outbox.add(call_id, body, names, self.clock()))
        except OutboxFullError as exc:
            metrics.incr("notify.outbox.full")
            log.error("notify.outbox.full", call_id=call_id, detail=str(exc),
                      max_pending=self.config.max_pending, dropped=",".join(names))
            return False
        except Exception as exc:
            metrics.incr("notify.outbox.db_error")
            log.error("notify.outbox.db_error", op="add", call_id=call_id, error=str(exc))
            return False
        metrics.incr("notify.enqueued")
        log.info("notify.enqueued", call_id=call_id, destinations=",".join(names))
        self._wake.set()
        return True

    # -- sending -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_at = await self.run_once()
            except Exception:  # keep sending; a bug here must not stop every delivery
                metrics.incr("notify.loop.error")
                log.exception("notify.loop.error")
                next_at = self.clock() + self.config.backoff_base_s
            delay = None if next_at is None else max(0.0, next_at - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def run_once(self) -> float | None:
        """Attempt every delivery due now; returns when the next one is due (or None)."""
        await self.open()
        assert self._outbox is not None
        outbox, now = self._outbox, self.clock()
        due = await self._db(lambda: outbox.claim_due(now, BATCH, LEASE_S))
        by_destination: dict[str, list[Pending]] = {}
        for item in due:
            by_destination.setdefault(item.destination, []).append(item)
        await asyncio.gather(*(self._send_all(name, items)
                               for name, items in by_destination.items()))
        next_at = await self._db(outbox.next_due)
        if len(due) == BATCH:
            return self.clock()  # more may be due already
        return next_at

    async def _send_all(self, name: str, items: list[Pending]) -> None:
        for item in items:
            await self._attempt(name, item)

    async def _attempt(self, name: str, item: Pending) -> None:
        assert self._outbox is not None and self._http is not None
        outbox, now = self._outbox, self.clock()
        destination = self.destinations.get(name)
        if destination is None:
            await self._dead(item, item.attempts, "destination is no longer configured")
            return
        if now - item.created_at > self.config.max_age_s:
            await self._dead(item, item.attempts, f"older than notify.max_age_s "
                             f"({self.config.max_age_s:g} s)")
            return
        paused = self._paused.get(name, 0.0)
        if paused > now:  # flood control of this destination: wait, costs no attempt
            await self._db(lambda: outbox.retry(item.id, attempts=item.attempts,
                                                next_at=paused, progress=item.progress,
                                                error="waiting for retry_after"))
            return
        record = json.loads(item.record)
        summary = item.summary if item.summary is not None else \
            await self._summary(item.call_id, record)
        delivery = Delivery(item.id, item.call_id, record, summary, item.progress)
        try:
            outcome = await destination.deliver(delivery, self._http)
        except Exception as exc:  # a bug in a destination is one failed attempt
            metrics.incr("notify.deliver.error")
            log.exception("notify.deliver.error", call_id=item.call_id, destination=name)
            outcome = Outcome(False, f"{type(exc).__name__}: {exc}"[:300],
                              progress=item.progress)
        await self._settle(name, item, outcome)

    async def _summary(self, call_id: str, record: dict[str, Any]) -> str:
        """The call's summary, written once (destinations sending in parallel share it)
        and stored with the call."""
        running = self._summaries.get(call_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._summaries[call_id] = future
        try:
            summary = await self.summarizer.summarize(record)
            assert self._outbox is not None
            outbox = self._outbox
            await self._db(lambda: outbox.set_summary(call_id, summary))
            future.set_result(summary)
            return summary
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._summaries[call_id]

    async def _settle(self, name: str, item: Pending, outcome: Outcome) -> None:
        assert self._outbox is not None
        outbox, attempts = self._outbox, item.attempts + 1
        if outcome.ok:
            await self._db(lambda: outbox.done(item))
            metrics.incr(f"notify.delivered.{name}")
            log.info("notify.delivered", call_id=item.call_id, destination=name,
                     attempts=attempts)
            return
        if outcome.permanent or attempts >= self.config.max_attempts:
            why = "refused" if outcome.permanent else \
                f"{attempts} attempts (notify.max_attempts)"
            await self._dead(item, attempts, f"{outcome.error} [{why}]")
            return
        now = self.clock()
        delay = self._backoff.ceiling(attempts)
        if outcome.retry_after is not None:
            delay = outcome.retry_after
            self._paused[name] = now + delay
        next_at = now + delay
        await self._db(lambda: outbox.retry(item.id, attempts=attempts, next_at=next_at,
                                            progress=outcome.progress, error=outcome.error))
        metrics.incr(f"notify.retry.{name}")
        log.warning("notify.retry", call_id=item.call_id, destination=name,
                    attempts=attempts, retry_in_s=round(delay, 3), error=outcome.error)

    async def _dead(self, item: Pending, attempts: int, error: str) -> None:
        assert self._outbox is not None
        outbox, now = self._outbox, self.clock()
        await self._db(lambda: outbox.dead(item, attempts=attempts, error=error, now=now))
        metrics.incr(f"notify.dead.{item.destination}")
        log.error("notify.dead_letter", call_id=item.call_id, destination=item.destination,
                  attempts=attempts, error=error)

    # -- inspection --------------------------------------------------------------------------

    async def pending(self) -> int:
        """Deliveries waiting in the outbox."""
        await self.open()
        assert self._outbox is not None
        return await self._db(self._outbox.pending)

    async def dead_letters(self) -> list[tuple[str, str, int, str]]:
        """``(call_id, destination, attempts, error)`` of the dead letters."""
        await self.open()
        assert self._outbox is not None
        return await self._db(self._outbox.dead_letters)


def build_notifier(config: Config, *,
                   clock: Callable[[], float] = time.time) -> Notifier | None:
    """The notifier ``config.notify`` describes; None when no destination is set.

    Raises ``ConfigError`` for a destination without its secret or its other half."""
    notify = config.notify
    if not notify.enabled:
        return None
    notify.require_complete()
    destinations: list[Destination] = []
    if notify.webhook_url:
        destinations.append(WebhookDestination(notify.webhook_url, notify.webhook_secret,
                                               timeout_s=notify.webhook_timeout_s,
                                               clock=clock))
    telegram = notify.telegram
    if telegram.bot_token:
        destinations.append(TelegramDestination(
            bot_token=telegram.bot_token, chat_id=telegram.chat_id,
            api_base_url=telegram.api_base_url, timeout_s=telegram.timeout_s,
            max_messages=telegram.max_messages))
    return Notifier(notify, destinations, path=outbox_path(config.server.state_dir),
                    summarizer=build_summarizer(notify.summary),
                    provider=config.audio.provider, clock=clock)
