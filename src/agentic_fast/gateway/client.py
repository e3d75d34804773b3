"""GatewayClient: one shared WebSocket to the OpenClaw gateway, many concurrent chat runs.

The I/O shell around :mod:`agentic_fast.gateway.protocol` (python-websockets'
``asyncio/connection.py`` is the model: the shell only moves frames and wakes waiters)::

    async with GatewayClient.from_config(config.gateway) as gateway:
        async with gateway.run(voice_session_key(call_sid), "turn on the lights",
                               deadline_s=8.0) as run:
            async for event in run:           # status..., delta..., final | error | aborted
                ...
        # leaving the block before a terminal event sends chat.abort (hang-up, barge-in)

One connection task keeps the link up: handshake (15 s), reconnect with backoff (1 s
doubling to 30 s, jittered), ``UNAVAILABLE`` retried after its ``retryAfterMs``, and a tick
watchdog (2 ticks of silence = dead link). Requests in flight when the link drops fail with
:class:`GatewayConnectionError`; runs too. Every queue is bounded.

Pairing: a gateway that does not know this device yet refuses the connect with
``PAIRING_REQUIRED``; the client logs the device id and the ``openclaw devices approve
<requestId>`` command for the owner and keeps retrying with the backoff until approved. The
device token the gateway then issues (``hello-ok.auth.deviceToken``) is stored beside the
device key and sent on later connects; a token the gateway rejects is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agentic_fast import __version__
from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff
from agentic_fast.core.errors import (
    AgenticFastError,
    GatewayBusyError,
    GatewayConnectionError,
    GatewayError,
    GatewayPayloadTooLargeError,
    GatewayTimeoutError,
    RemoteProtocolError,
)
from agentic_fast.core.log import get_logger
from agentic_fast.core.tasks import TaskSet
from agentic_fast.gateway.credentials import DeviceCredentials
from agentic_fast.gateway.device import (
    DeviceIdentity,
    DeviceTokenStore,
    load_or_create_identity,
)
from agentic_fast.gateway.protocol import (
    ChatEvent,
    ClientHandshake,
    Event,
    HelloOk,
    PairingRequired,
    Response,
    chat_abort_params,
    encode_request,
    error_from_shape,
    parse_chat_event,
    parse_frame,
    parse_pairing_required,
)
from agentic_fast.gateway.run import ChatRun, PendingRunBuffer, RunRoute, abort_quietly

if TYPE_CHECKING:
    from agentic_fast.core.config import GatewayConfig

__all__ = ["ChatRun", "GatewayClient"]

_log = get_logger("gateway")
Sleep = Callable[[float], Awaitable[None]]
_CONNECT_ERRORS = (OSError, InvalidHandshake, ConnectionClosed, RemoteProtocolError,
                   GatewayConnectionError, GatewayTimeoutError)


class _Pending:
    """A request waiting for its ``res``; ``on_ok`` runs in the reader, before the waiter."""

    __slots__ = ("future", "method", "on_done", "on_ok")

    def __init__(self, future: asyncio.Future[Any], method: str,
                 on_ok: Callable[[Any], None] | None,
                 on_done: Callable[[], None] | None) -> None:
        self.future = future
        self.method = method
        self.on_ok = on_ok
        self.on_done = on_done


class _Link:
    """One open, handshaken connection."""

    __slots__ = ("hello", "last_rx", "ws")

    def __init__(self, ws: ClientConnection, hello: HelloOk, now: float) -> None:
        self.ws = ws
        self.hello = hello
        self.last_rx = now


class GatewayClient:
    """One connection to the OpenClaw gateway per process, shared by every call's runs."""

    def __init__(self, url: str = "ws://127.0.0.1:18789", *, identity: DeviceIdentity,
                 token: str = "", handshake_timeout: float = 15.0,
                 request_timeout: float = 10.0, abort_timeout: float = 5.0,
                 backoff: Backoff | None = None, sleep: Sleep = asyncio.sleep,
                 max_request_retries: int = 5, max_pending: int = 256, max_runs: int = 256,
                 run_queue_size: int = 256, early_buffer_size: int = 256,
                 max_message_size: int = 16 * 1024 * 1024, client_version: str = __version__,
                 client_platform: str | None = None,
                 token_store: DeviceTokenStore | None = None) -> None:
        self._url = url
        self._identity = identity
        self._token = token
        self._credentials = DeviceCredentials(device_id=identity.device_id, url=url,
                                              shared_token=token, store=token_store)
        self._handshake_timeout = handshake_timeout
        self._request_timeout = request_timeout
        self._abort_timeout = abort_timeout
        self._backoff = backoff or Backoff.endless()
        self._sleep = sleep
        self._max_retries = max_request_retries
        self._max_pending = max_pending
        self._max_runs = max_runs
        self._run_queue_size = run_queue_size
        self._max_message_size = max_message_size
        self._client_version = client_version
        self._platform = client_platform or platform.system().lower() or "linux"
        self._early = PendingRunBuffer(early_buffer_size)
        self._pending: dict[str, _Pending] = {}
        self._routes: dict[str, RunRoute] = {}
        self._tasks = TaskSet("gateway", _log, expected=(AgenticFastError,))
        self._link: _Link | None = None
        self._ready = asyncio.Event()
        self._manager: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fatal: GatewayError | None = None
        self._closing = False
        self._next_id = 0
        self._connections = 0
        self._events: dict[str, Callable[[Event], None]] = {
            "chat": self._on_chat, "tick": _ignore, "shutdown": self._on_shutdown,
        }

    @classmethod
    def from_config(cls, config: GatewayConfig, **kwargs: Any) -> GatewayClient:
        """A client for ``config`` (url, token, device key created on first use).

        The device token is kept beside the device key (``<device_key_path>.token``).
        """
        identity = kwargs.pop("identity", None) or load_or_create_identity(
            config.device_key_file)
        kwargs.setdefault("token_store", DeviceTokenStore.beside(config.device_key_file))
        return cls(config.url, identity=identity, token=config.token, **kwargs)

    # --- state ------------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self._identity.device_id

    @property
    def hello(self) -> HelloOk | None:
        """The current connection's ``hello-ok`` (None while not connected)."""
        return self._link.hello if self._link else None

    @property
    def is_open(self) -> bool:
        return self._link is not None

    @property
    def connections(self) -> int:
        """How many times a connection was opened (1 + reconnects)."""
        return self._connections

    @property
    def pairing_required(self) -> PairingRequired | None:
        """The pending pairing request while the gateway waits for the owner's approval."""
        return self._credentials.pairing

    @property
    def device_token(self) -> str | None:
        """The device token the gateway issued to this device (stored), if any."""
        return self._credentials.token

    @property
    def fatal_error(self) -> GatewayError | None:
        """The handshake error that stopped reconnecting (bad token, protocol mismatch)."""
        return self._fatal

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection task (idempotent; returns at once)."""
        if self._closing:
            raise GatewayConnectionError("client is closed")
        if self._manager is None:
            self._loop = asyncio.get_running_loop()
            self._manager = asyncio.create_task(self._maintain(), name="gateway-connection")

    async def wait_ready(self, timeout: float | None = None) -> HelloOk:
        """Start if needed and wait for an open connection; raises a fatal handshake error."""
        await self.start()
        wait_for = self._handshake_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait_for):
                return (await self._ready_link()).hello
        except TimeoutError as exc:
            if isinstance(exc, GatewayTimeoutError):
                raise
            waiting = ""
            if (pairing := self._credentials.pairing) is not None:
                waiting = (f" (device {self.device_id} awaits pairing approval: "
                           f"{pairing.approve_command})")
            raise GatewayTimeoutError(f"no open connection to {self._url} "
                                      f"within {wait_for:g} s{waiting}") from exc

    async def close(self) -> None:
        """Let pending aborts go out (bounded), then close the link and fail what is left."""
        if self._closing:
            return
        await self._tasks.wait(timeout=self._abort_timeout)
        self._closing = True
        self._ready.set()
        link = self._link
        if link is not None:
            with contextlib.suppress(Exception):
                await link.ws.close()
        if self._manager is not None:
            self._manager.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._manager
        self._fail_all("client closed")
        self._tasks.cancel_all()

    async def __aenter__(self) -> GatewayClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # --- requests ---------------------------------------------------------------------------

    async def request(self, method: str, params: dict[str, Any], *,
                      timeout: float | None = None,
                      on_ok: Callable[[Any], None] | None = None,
                      send_session: str | None = None) -> Any:
        """Send one request and return its ``payload``; retries retryable errors (bounded).

        ``on_ok`` runs in the reader with the payload, before any later frame is handled;
        ``send_session`` keeps that session's early ``chat`` events until the answer.
        Raises :class:`GatewayError` (error answer), :class:`GatewayConnectionError` (link
        lost), :class:`GatewayTimeoutError`, :class:`GatewayPayloadTooLargeError`.
        """
        return await self._request(method, params, timeout=timeout, on_ok=on_ok,
                                   send_session=send_session)

    def run(self, session_key: str, message: str, *, deadline_s: float,
            queue_mode: str | None = None, thinking: str | None = None) -> ChatRun:
        """A ``chat.send`` of ``message`` in ``session_key`` whose events are iterated.

        ``deadline_s`` bounds the whole run (send + answer); past it the run is aborted and
        the iterator raises :class:`GatewayTimeoutError`. Use ``async with`` (or ``aclose``)
        so that leaving early sends ``chat.abort``.
        """
        return ChatRun(self, session_key, message, deadline_s=deadline_s,
                       queue_mode=queue_mode, thinking=thinking)

    async def ask(self, session_key: str, message: str, *, deadline_s: float,
                  queue_mode: str | None = None) -> ChatEvent:
        """Run ``message`` to its terminal event (``final`` carries the whole answer text)."""
        async with self.run(session_key, message, deadline_s=deadline_s,
                            queue_mode=queue_mode) as run:
            async for event in run:
                if event.terminal:
                    return event
        raise GatewayConnectionError(f"run {run.run_id} ended without a terminal event")

    async def abort(self, session_key: str, run_id: str | None = None, *,
                    timeout: float | None = None) -> Any:
        """``chat.abort`` of ``run_id`` (or the session's active run)."""
        if run_id is not None:
            self.close_route(run_id)
        return await self._request("chat.abort", chat_abort_params(
            session_key=session_key, run_id=run_id), timeout=timeout)

    # --- internals: requests ----------------------------------------------------------------

    async def _request(self, method: str, params: dict[str, Any], *,
                       timeout: float | None = None,
                       on_ok: Callable[[Any], None] | None = None,
                       send_session: str | None = None) -> Any:
        limit = self._request_timeout if timeout is None else timeout
        if not self._closing:
            await self.start()
        cm = asyncio.timeout(limit)
        try:
            async with cm:
                attempt = 0
                delays = self._backoff.delays()
                while True:
                    link = await self._ready_link()
                    try:
                        return await self._call(link, method, params, on_ok, send_session)
                    except GatewayError as exc:
                        if not exc.retryable or attempt >= self._max_retries:
                            raise
                        attempt += 1
                        delay = _retry_delay(exc, delays, self._backoff.max_delay_s)
                        metrics.incr("gateway.request.retries")
                        _log.info("gateway.request.retry", method=method, code=exc.code,
                                  attempt=attempt, delay_s=round(delay, 3))
                        await self._sleep(delay)
        except TimeoutError as exc:
            if not cm.expired():
                raise
            metrics.incr("gateway.request.timeouts")
            raise GatewayTimeoutError(f"{method}: no answer within {limit:g} s") from exc

    async def _ready_link(self) -> _Link:
        while True:
            if self._fatal is not None:
                raise self._fatal.with_traceback(None)
            if self._closing:
                raise GatewayConnectionError("client is closed")
            if self._link is not None:
                return self._link
            await self._ready.wait()

    async def _call(self, link: _Link, method: str, params: dict[str, Any],
                    on_ok: Callable[[Any], None] | None, send_session: str | None) -> Any:
        if len(self._pending) >= self._max_pending:
            metrics.incr("gateway.request.busy")
            raise GatewayBusyError(f"{method}: {self._max_pending} requests already pending")
        self._next_id += 1
        rid = f"r{self._next_id}"
        data = encode_request(rid, method, params)
        limit = link.hello.policy.max_payload
        if len(data) > limit:
            metrics.incr("gateway.request.too_large")
            raise GatewayPayloadTooLargeError(
                f"{method}: frame of {len(data)} bytes exceeds the gateway's maxPayload of "
                f"{limit} bytes", size=len(data), limit=limit)
        on_done = None
        if send_session is not None:
            self._early.begin_send(send_session)
            on_done = _end_send(self._early, send_session)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future, method, on_ok, on_done)
        try:
            await link.ws.send(data.decode())
            return await future
        except ConnectionClosed as exc:
            raise GatewayConnectionError(f"{method}: connection lost while sending") from exc
        finally:
            self._take_pending(rid)

    def _take_pending(self, rid: str) -> _Pending | None:
        entry = self._pending.pop(rid, None)
        if entry is not None and entry.on_done is not None:
            entry.on_done()
        return entry

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task the client keeps (and waits for, bounded, on close)."""
        return self._tasks.spawn(coro)

    # --- the run host (run.RunHost): what ChatRun uses -------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the client runs on (``None`` before ``start``)."""
        return self._loop

    @property
    def abort_timeout(self) -> float:
        """Bound in seconds on a best-effort ``chat.abort``."""
        return self._abort_timeout

    @property
    def max_runs(self) -> int:
        """Most runs active at once."""
        return self._max_runs

    @property
    def active_runs(self) -> int:
        """Runs routed now."""
        return len(self._routes)

    def open_route(self, run_id: str, session_key: str) -> RunRoute:
        """Route ``run_id``'s events (with any that arrived early) to a queue."""
        route = self._routes.get(run_id)
        if route is None:
            route = RunRoute(run_id, self._run_queue_size)
            self._routes[run_id] = route
        for event in self._early.claim(run_id):
            route.push(event)
        return route

    def close_route(self, run_id: str | None) -> None:
        """Stop routing ``run_id`` (``None``: nothing)."""
        if run_id is not None:
            self._routes.pop(run_id, None)

    def abort_orphan(self, session_key: str, run_id: str) -> None:
        """A run object was dropped unfinished (no ``async with``): abort it anyway."""
        if self._closing or run_id not in self._routes:
            return
        self.close_route(run_id)
        self.spawn(abort_quietly(self, session_key, run_id, "dropped"))

    # --- internals: connection --------------------------------------------------------------

    async def _maintain(self) -> None:
        delays = self._backoff.delays()
        while not self._closing:
            delay: float | None = None
            try:
                await self._connect_once()
                delays = self._backoff.delays()  # it was open: start the backoff afresh
            except GatewayError as exc:
                if self._credentials.rejected(exc):
                    await self._credentials.forget()  # then retry without it, once
                elif not exc.retryable:
                    self._fatal = exc
                    metrics.incr("gateway.connect.refused")
                    _log.error("gateway.connect.refused", url=self._url, code=exc.code,
                               details_code=exc.details_code, error=str(exc))
                    self._fail_all(f"gateway refused the connection: {exc}")
                    self._ready.set()
                    return
                else:
                    delay = _retry_delay(exc, delays, self._backoff.max_delay_s)
                    self._on_retryable_refusal(exc, delay)
            except InvalidURI as exc:
                self._fatal = GatewayError(f"bad gateway url {self._url}: {exc}",
                                           code="INVALID_URL")
                self._ready.set()
                return
            except _CONNECT_ERRORS as exc:
                metrics.incr("gateway.connect.failed")
                _log.warning("gateway.connect.failed", url=self._url, error=repr(exc))
            except Exception as exc:  # keep the link alive whatever broke; logged and counted
                metrics.incr("gateway.connect.error")
                _log.exception("gateway.connect.error", url=self._url, error=repr(exc))
            if self._closing:
                return
            if delay is None:
                delay = next(delays)
            _log.debug("gateway.reconnect.wait", delay_s=round(delay, 3))
            await self._sleep(delay)

    async def _connect_once(self) -> None:
        metrics.incr("gateway.connect.attempts")
        ws: ClientConnection | None = None
        cm = asyncio.timeout(self._handshake_timeout)
        try:
            async with cm:
                ws = await connect(self._url, max_size=self._max_message_size,
                                   compression=None, ping_interval=None, open_timeout=None,
                                   close_timeout=2)
                hello = await self._handshake(ws)
        except BaseException as exc:
            if ws is not None:
                ws.transport.abort()
            if isinstance(exc, TimeoutError) and cm.expired():
                raise GatewayTimeoutError(f"handshake with {self._url} took over "
                                          f"{self._handshake_timeout:g} s") from exc
            raise
        try:
            await self._credentials.keep(hello)  # durable before anyone uses the link
        except BaseException:
            ws.transport.abort()
            raise
        link = _Link(ws, hello, asyncio.get_running_loop().time())
        self._link = link
        self._connections += 1
        self._credentials.opened()
        self._ready.set()
        metrics.incr("gateway.connect.open")
        _log.info("gateway.open", url=self._url, device_id=self.device_id[:16],
                  conn_id=hello.conn_id, tick_ms=hello.policy.tick_interval_ms,
                  max_payload=hello.policy.max_payload, scopes=",".join(hello.scopes),
                  auth=hello.auth_method)
        reason = "closed"
        watchdog = asyncio.create_task(self._watch_ticks(link))
        try:
            async for message in ws:
                link.last_rx = asyncio.get_running_loop().time()
                self._on_message(message)
            reason = _close_reason(ws)
        except ConnectionClosed:
            reason = _close_reason(ws)
        finally:
            watchdog.cancel()
            if watchdog.done() and not watchdog.cancelled():
                reason = "tick timeout"
            self._link = None
            self._ready.clear()
            self._fail_all(f"connection to the gateway lost ({reason})")
            if not self._closing:
                metrics.incr("gateway.connect.dropped")
                _log.warning("gateway.closed", url=self._url, reason=reason)

    async def _handshake(self, ws: ClientConnection) -> HelloOk:
        handshake = ClientHandshake(signer=self._identity, token=self._token,
                                    client_version=self._client_version,
                                    platform=self._platform,
                                    device_token=self._credentials.for_connect())
        async for message in ws:
            out = handshake.receive(parse_frame(message))
            if out.send is not None:
                await ws.send(out.send.decode())
            if out.hello is not None:
                return out.hello
        raise GatewayConnectionError(f"gateway closed the connection during the handshake "
                                     f"({_close_reason(ws)})")

    def _on_retryable_refusal(self, exc: GatewayError, delay: float) -> None:
        pairing = parse_pairing_required(exc.details)
        if pairing is not None:
            self._credentials.pairing_required(pairing, delay)
            return
        metrics.incr("gateway.connect.unavailable")
        _log.info("gateway.connect.retry", code=exc.code, details_code=exc.details_code,
                  delay_s=round(delay, 3), reason=_details_reason(exc))

    async def _watch_ticks(self, link: _Link) -> None:
        """Abort the transport after 2 tick intervals without any frame."""
        interval = link.hello.policy.tick_interval_ms / 1000.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval / 2)
            silent = loop.time() - link.last_rx
            if silent > 2 * interval:
                metrics.incr("gateway.tick_timeouts")
                _log.warning("gateway.tick_timeout", silent_s=round(silent, 3),
                             tick_ms=link.hello.policy.tick_interval_ms)
                link.ws.transport.abort()
                return

    def _fail_all(self, why: str) -> None:
        for rid in list(self._pending):
            entry = self._take_pending(rid)
            if entry is not None and not entry.future.done():
                entry.future.set_exception(GatewayConnectionError(f"{entry.method}: {why}"))
        routes, self._routes = self._routes, {}
        for route in routes.values():
            route.fail(GatewayConnectionError(f"run {route.run_id}: {why}"))
        self._early.clear()

    # --- internals: inbound frames ----------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        try:
            frame = parse_frame(message)
        except RemoteProtocolError as exc:
            metrics.incr("gateway.frames.invalid")
            _log.warning("gateway.frame.invalid", error=str(exc))
            return
        if isinstance(frame, Response):
            self._on_response(frame)
        elif isinstance(frame, Event):
            self._events.get(frame.event, _ignore)(frame)
        else:
            metrics.incr("gateway.frames.unexpected_req")

    def _on_response(self, res: Response) -> None:
        entry = self._pending.pop(res.id, None)
        if entry is None:
            metrics.incr("gateway.res.unknown_id")
            _log.debug("gateway.res.unknown_id", id=res.id)
            return
        try:
            if entry.future.done():
                return
            if not res.ok:
                assert res.error is not None
                entry.future.set_exception(error_from_shape(res.error, entry.method))
                return
            try:
                if entry.on_ok is not None:
                    entry.on_ok(res.payload)
            except RemoteProtocolError as exc:
                entry.future.set_exception(exc)
                return
            entry.future.set_result(res.payload)
        finally:
            if entry.on_done is not None:
                entry.on_done()

    def _on_chat(self, frame: Event) -> None:
        try:
            event = parse_chat_event(frame.payload)
        except RemoteProtocolError as exc:
            metrics.incr("gateway.events.invalid")
            _log.warning("gateway.chat_event.invalid", error=str(exc))
            return
        route = self._routes.get(event.run_id)
        if route is not None:
            route.push(event)
        elif self._early.offer(event):
            metrics.incr("gateway.events.early")
        else:
            metrics.incr("gateway.events.other_run")

    def _on_shutdown(self, frame: Event) -> None:
        _log.warning("gateway.shutdown_notice", payload=str(frame.payload)[:200])


def _retry_delay(exc: GatewayError, delays: Iterator[float], maximum: float) -> float:
    """``retryAfterMs`` of a retryable error (clamped), else the next backoff delay."""
    if exc.retry_after_ms is not None:
        return min(maximum, max(0.05, exc.retry_after_ms / 1000.0))
    return next(delays)


def _details_reason(exc: GatewayError) -> str | None:
    reason = exc.details.get("reason") if isinstance(exc.details, dict) else None
    return reason if isinstance(reason, str) else None


def _close_reason(ws: ClientConnection) -> str:
    code = ws.close_code
    if code is None or code == 1006:
        return "connection lost"
    return f"code {code} {ws.close_reason or ''}".strip()


def _end_send(buffer: PendingRunBuffer, session_key: str) -> Callable[[], None]:
    return lambda: buffer.end_send(session_key)


def _ignore(frame: Event) -> None:
    return None
