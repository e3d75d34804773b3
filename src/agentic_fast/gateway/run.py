"""Per-run routing for the gateway client: early-event buffer, run queues, :class:`ChatRun`.

A ``chat.send`` answers with its ``runId``; the gateway may emit that run's first ``chat``
events before the answer arrives. :class:`PendingRunBuffer` (pure) holds them briefly;
:class:`RunRoute` is the bounded queue of one run; :class:`ChatRun` is what callers iterate.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import replace
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from agentic_fast.core import metrics
from agentic_fast.core.errors import (
    AgenticFastError,
    GatewayBusyError,
    GatewayConnectionError,
    GatewayProtocolError,
    GatewayTimeoutError,
)
from agentic_fast.core.log import get_logger
from agentic_fast.gateway.protocol import DELTA, FINAL, ChatEvent, chat_send_params

__all__ = ["ChatRun", "PendingRunBuffer", "RunHost", "RunRoute", "abort_quietly"]

_log = get_logger("gateway")


class PendingRunBuffer:
    """Chat events that arrive before the ``chat.send`` response naming their runId.

    Only events of a session with a send in flight are kept, at most ``max_events`` in all
    (the oldest is dropped and counted); everything is let go once no send is in flight.
    """

    def __init__(self, max_events: int = 256) -> None:
        self._max = max_events
        self._in_flight: Counter[str] = Counter()
        self._runs: OrderedDict[str, list[ChatEvent]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def begin_send(self, session_key: str) -> None:
        self._in_flight[session_key.lower()] += 1

    def end_send(self, session_key: str) -> None:
        key = session_key.lower()
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
        if not self._in_flight:
            self.clear()

    def offer(self, event: ChatEvent) -> bool:
        """Keep ``event`` if a send is in flight for its session; True when kept."""
        if event.session_key.lower() not in self._in_flight:
            return False
        if self._count >= self._max:
            oldest_run, events = next(iter(self._runs.items()))
            events.pop(0)
            if not events:
                del self._runs[oldest_run]
            self._count -= 1
            metrics.incr("gateway.events.early_overflow")
        self._runs.setdefault(event.run_id, []).append(event)
        self._count += 1
        return True

    def claim(self, run_id: str) -> list[ChatEvent]:
        """The kept events of ``run_id``, in arrival order (removed from the buffer)."""
        events = self._runs.pop(run_id, [])
        self._count -= len(events)
        return events

    def clear(self) -> None:
        self._runs.clear()
        self._count = 0


class RunRoute:
    """Per-run event queue (bounded: the oldest non-terminal event makes room, counted)."""

    __slots__ = ("_error", "_events", "_limit", "_wake", "run_id")

    def __init__(self, run_id: str, limit: int) -> None:
        self.run_id = run_id
        self._limit = limit
        self._events: deque[ChatEvent] = deque()
        self._wake = asyncio.Event()
        self._error: BaseException | None = None

    def push(self, event: ChatEvent) -> None:
        if len(self._events) >= self._limit:
            for i, old in enumerate(self._events):
                if not old.terminal:
                    del self._events[i]
                    break
            metrics.incr("gateway.run.queue_overflow")
        self._events.append(event)
        self._wake.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._wake.set()

    async def get(self) -> ChatEvent:
        while not self._events:
            if self._error is not None:
                raise self._error
            self._wake.clear()
            await self._wake.wait()
        return self._events.popleft()


@runtime_checkable
class RunHost(Protocol):
    """What a :class:`ChatRun` needs of its client (:class:`GatewayClient` is the one).

    The seam between the run and the connection: runs send through ``request`` and are
    routed by ``open_route``/``close_route``; the client owns the tasks and the loop.
    """

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the client runs on (``None`` before ``start``)."""

    @property
    def abort_timeout(self) -> float:
        """Bound in seconds on a best-effort ``chat.abort``."""

    @property
    def max_runs(self) -> int:
        """Most runs active at once (beyond: :class:`GatewayBusyError`)."""

    @property
    def active_runs(self) -> int:
        """Runs routed now."""

    async def request(self, method: str, params: dict[str, Any], *,
                      timeout: float | None = None,
                      on_ok: Callable[[Any], None] | None = None,
                      send_session: str | None = None) -> Any:
        """One request's ``payload``; ``on_ok`` runs in the reader with it (before any later
        frame), ``send_session`` holds that session's early events until the answer."""

    async def abort(self, session_key: str, run_id: str | None = None, *,
                    timeout: float | None = None) -> Any:
        """``chat.abort`` of ``run_id`` (or the session's active run)."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task the client keeps (and waits for, bounded, on close)."""

    def open_route(self, run_id: str, session_key: str) -> RunRoute:
        """Route ``run_id``'s events (with any that arrived early) to a new queue."""

    def close_route(self, run_id: str | None) -> None:
        """Stop routing ``run_id`` (``None``: nothing)."""

    def abort_orphan(self, session_key: str, run_id: str) -> None:
        """A run was dropped unfinished: abort it in the background."""


class ChatRun:
    """One ``chat.send`` and its ``chat`` events, as an async iterator and context manager.

    Ends at the first terminal event (``final`` / ``error`` / ``aborted``). Leaving early
    (``aclose``, ``async with`` exit, task cancellation, deadline) sends ``chat.abort``.
    ``text`` is the answer so far; the ``final`` event always carries the whole text.
    """

    def __init__(self, client: RunHost, session_key: str, message: str, *,
                 deadline_s: float, queue_mode: str | None = None,
                 thinking: str | None = None) -> None:
        self._done = True  # until fully built (``__del__`` must not act on a half object)
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        self.session_key = session_key
        self.message = message
        self.deadline_s = deadline_s
        self.idempotency_key = uuid.uuid4().hex
        self.run_id: str | None = None
        self.text = ""
        self.final: ChatEvent | None = None
        self._params = chat_send_params(
            session_key=session_key, message=message, idempotency_key=self.idempotency_key,
            timeout_ms=int(deadline_s * 1000), queue_mode=queue_mode, thinking=thinking)
        self._client = client
        self._deadline = 0.0
        self._route: RunRoute | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """True once the run ended (terminal event, abort, deadline or failure)."""
        return self._done

    async def start(self) -> str:
        """Send ``chat.send`` (once) and return the ``runId``."""
        client = self._client
        if self._send_task is None:
            if client.active_runs >= client.max_runs:
                metrics.incr("gateway.run.busy")
                raise GatewayBusyError(f"{client.max_runs} runs already active")
            self._deadline = asyncio.get_running_loop().time() + self.deadline_s
            self._send_task = client.spawn(self._send())
        cm = asyncio.timeout_at(self._deadline)
        try:
            async with cm:
                await asyncio.shield(self._send_task)
        except TimeoutError as exc:
            if not cm.expired():
                self._done = True
                raise
            self._spawn_abort("deadline")
            raise GatewayTimeoutError(f"chat.send in {self.session_key} got no answer "
                                      f"within the deadline of {self.deadline_s:g} s") from exc
        except asyncio.CancelledError:
            self._spawn_abort("cancelled")
            raise
        except BaseException:
            self._done = True
            raise
        assert self.run_id is not None
        return self.run_id

    async def _send(self) -> None:
        await self._client.request("chat.send", self._params, on_ok=self._bind,
                                   send_session=self.session_key)

    def _bind(self, payload: Any) -> None:
        """Runs in the reader with the response: route the run before any later event."""
        run_id = payload.get("runId") if isinstance(payload, dict) else None
        if not isinstance(run_id, str) or not run_id:
            raise GatewayProtocolError("chat.send: response without a runId",
                                       reason="missing_field", field="runId")
        self.run_id = run_id
        self._route = self._client.open_route(run_id, self.session_key)
        _log.debug("gateway.run.started", run_id=run_id, session_key=self.session_key)

    def __aiter__(self) -> ChatRun:
        return self

    async def __anext__(self) -> ChatEvent:
        if self._done:
            raise StopAsyncIteration
        if self._route is None:
            await self.start()
        assert self._route is not None
        cm = asyncio.timeout_at(self._deadline)
        try:
            async with cm:
                event = await self._route.get()
        except TimeoutError as exc:
            if not cm.expired():
                raise
            aborting = self._begin_abort("deadline")
            if aborting is not None:
                await aborting
            raise GatewayTimeoutError(f"run {self.run_id} passed its deadline of "
                                      f"{self.deadline_s:g} s and was aborted",
                                      run_id=self.run_id) from exc
        except asyncio.CancelledError:
            self._spawn_abort("cancelled")
            raise
        except GatewayConnectionError:
            self._done = True
            raise
        return self._track(event)

    def _track(self, event: ChatEvent) -> ChatEvent:
        if event.state == DELTA:
            if event.text:
                self.text = event.text
            elif event.replace:
                self.text = event.delta_text
            else:
                self.text += event.delta_text
        elif event.state == FINAL:
            if event.text:
                self.text = event.text
            else:
                event = replace(event, text=self.text)
            self.final = event
        if event.terminal:
            self._done = True
            self._client.close_route(self.run_id)
            _log.debug("gateway.run.end", run_id=self.run_id, state=event.state)
        return event

    async def aclose(self) -> None:
        """Stop reading; aborts the run unless it already ended."""
        aborting = self._begin_abort("closed")
        if aborting is not None:
            await aborting

    async def __aenter__(self) -> ChatRun:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            self._spawn_abort("cancelled")  # do not delay the cancellation
        else:
            await self.aclose()

    def _spawn_abort(self, reason: str) -> None:
        aborting = self._begin_abort(reason)
        if aborting is not None:
            self._client.spawn(aborting)

    def _begin_abort(self, reason: str) -> Coroutine[Any, Any, None] | None:
        """Mark the run over; the coroutine that aborts it, or None if nothing to abort."""
        if self._done:
            return None
        self._done = True
        if self._send_task is not None and not self._send_task.done():
            return self._abort_when_sent(reason)
        self._client.close_route(self.run_id)
        if self.run_id is None:
            return None
        return abort_quietly(self._client, self.session_key, self.run_id, reason)

    async def _abort_when_sent(self, reason: str) -> None:
        assert self._send_task is not None
        try:
            await self._send_task
        except Exception:  # the send failed: no run to abort (the sender saw the error)
            return
        self._client.close_route(self.run_id)
        if self.run_id is not None:
            await abort_quietly(self._client, self.session_key, self.run_id, reason)

    def __del__(self) -> None:
        # Dropped unfinished without aclose (e.g. ``break`` out of a bare ``async for``):
        # hand the abort to the loop, as asyncio's async-generator finalizer does.
        if self._done or self.run_id is None:
            return
        loop = self._client.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nothing left to abort
                loop.call_soon_threadsafe(self._client.abort_orphan, self.session_key,
                                          self.run_id)


async def abort_quietly(client: RunHost, session_key: str, run_id: str,
                         reason: str) -> None:
    """``chat.abort`` that logs and counts a failure instead of raising (best effort)."""
    metrics.incr(f"gateway.run.abort.{reason}")
    _log.info("gateway.run.abort", run_id=run_id, session_key=session_key, reason=reason)
    try:
        await client.abort(session_key, run_id, timeout=client.abort_timeout)
    except AgenticFastError as exc:
        metrics.incr("gateway.run.abort_failed")
        _log.warning("gateway.run.abort_failed", run_id=run_id, reason=reason,
                     error=str(exc))
