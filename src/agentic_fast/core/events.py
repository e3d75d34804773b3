"""The live event hub: what happens to calls, fanned out to whoever watches (SSE, dashboard).

Publishers (the call manager, a call's session, the bridge, the brain) call ``publish`` on
events, never per audio frame; with no subscriber it returns at once. Each event is turned
into JSON once and shared by every subscriber. Every subscriber has a bounded queue: one
that does not keep up loses the events that do not fit, and the next thing it reads is an
``events.dropped`` event saying how many (counted, ``events.dropped``), so a slow watcher
never grows memory and never slows a call.

    hub = EventHub()
    with hub.subscribe() as sub:
        async for event in sub:          # Event(id, type, data, json)
            ...
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import orjson

from agentic_fast.core import metrics
from agentic_fast.core.errors import SubscriberLimitError
from agentic_fast.core.log import get_logger

log = get_logger("events")

#: Events one subscriber may have waiting before newer ones are dropped for it.
DEFAULT_QUEUE_SIZE: Final = 256
#: Subscribers at most (SSE clients, dashboards); a new one beyond it is refused.
DEFAULT_MAX_SUBSCRIBERS: Final = 64
DROPPED: Final = "events.dropped"


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``id`` increases by one per published event (per process); ``json`` is
    the whole event as one JSON object (``id``, ``type``, ``ts``, ``call_id``, ``data``)."""

    id: int
    type: str
    json: bytes


class Subscription:
    """One watcher's bounded queue; iterate it (async) to read events as they come."""

    __slots__ = ("_dropped", "_hub", "_queue", "_ready", "_size", "closed")

    def __init__(self, hub: EventHub, size: int) -> None:
        self._hub = hub
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._dropped = 0
        self._size = size
        self.closed = False

    def offer(self, event: Event) -> None:
        """Queue ``event`` unless full (then it is dropped for this subscriber, counted)."""
        if len(self._queue) >= self._size:
            self._dropped += 1
            metrics.incr("events.dropped")
            return
        self._queue.append(event)
        self._ready.set()

    async def get(self) -> Event | None:
        """The next event; an ``events.dropped`` notice first if some were lost meanwhile
        (a watcher then reloads the state it shows, e.g. ``GET /calls``); None once closed."""
        while True:
            if self.closed:
                return None
            if self._dropped:
                return self._drop_notice()
            if self._queue:
                return self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()

    def _drop_notice(self) -> Event:
        count, self._dropped = self._dropped, 0
        return self._hub.make(DROPPED, None, {"dropped": count})

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Stop watching: the hub forgets this subscriber; a waiting ``get`` ends."""
        if not self.closed:
            self.closed = True
            self._hub._remove(self)
            self._ready.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class EventHub:
    """Fan-out of call events to bounded subscriber queues (one event loop)."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
                 clock: Callable[[], float] = time.time) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._clock = clock
        self._ids = itertools.count(1)
        self._subscribers: list[Subscription] = []

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """A new subscriber (use as a context manager, or ``close`` it)."""
        if len(self._subscribers) >= self.max_subscribers:
            metrics.incr("events.subscribe.refused")
            raise SubscriberLimitError(
                f"{self.max_subscribers} event subscribers already connected")
        sub = Subscription(self, self.queue_size)
        self._subscribers.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def close_all(self) -> None:
        """End every subscription (server shutdown): their readers see the end at once."""
        for sub in list(self._subscribers):
            sub.close()

    def make(self, type_: str, call_id: str | None, data: dict[str, Any]) -> Event:
        """Build an event (numbered, stamped, serialised once)."""
        event_id = next(self._ids)
        ts = datetime.fromtimestamp(self._clock(), UTC).isoformat()
        body = orjson.dumps({"id": event_id, "type": type_, "ts": ts, "call_id": call_id,
                             "data": data}, default=str)
        return Event(event_id, type_, body)

    def publish(self, type_: str, call_id: str | None, data: dict[str, Any]) -> None:
        """Send an event to every subscriber; never raises into the publisher."""
        if not self._subscribers:
            return
        try:
            event = self.make(type_, call_id, data)
        except Exception:  # an unserialisable field must not break a call
            metrics.incr("events.publish.error")
            log.exception("events.publish_error", type=type_, call_id=call_id)
            return
        for sub in self._subscribers:
            sub.offer(event)
