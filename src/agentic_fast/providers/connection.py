"""The life of a model socket, written once for every provider.

A speech-to-speech provider is a sans-I/O event module (parse server frames, build client
frames) plus the policy that differs (how a session is opened, renewed and seeded). Everything
else is here, in :class:`ModelConnection`, which a provider subclasses:

- **connect**: :meth:`ModelConnection.connect` opens the first link (idempotent,
  concurrency-safe, one deadline); :func:`open_socket` is the WebSocket dial every provider
  uses (a :class:`ws_client.FastClientConnection`).
- **send path**: frames are written synchronously (``write_text_now``: one whole masked
  frame, one ``transport.write``, nothing awaited), so :meth:`send_audio` can run inside the
  carrier's media handler. Above ``max_write_buffer`` caller audio is dropped and counted
  (``<peer>.audio.backpressure_dropped``).
- **read path**: one reader task per link turns the fast path on (whole frames go straight
  from ``data_received`` to ``deliver``, which parses and dispatches through the provider's
  handler table), drains what was queued before, and learns of the close.
- **loss**: a close, a failed write, a reader error or the link's
  :class:`ws_client.StallWatch` (a peer that stopped reading) is a lost link: the call stays
  up, caller audio goes to a bounded backlog (``<peer>.audio.buffered_dropped``), text and
  tool results to a bounded list, and the provider's ``_switch`` opens a new link under
  :class:`~agentic_fast.core.backoff.Backoff`; once installed the buffers are flushed
  (replayed audio first, then the backlog, then the items). When the provider gives up,
  ``listener.on_failed`` runs once.
- **age cap**: a link older than ``max_link_s`` is renewed (:meth:`_link_aged`).
- **close**: every task and socket stopped, reference cycles broken (:meth:`_release`).

What a provider supplies (the policy): ``peer``, ``_open`` (one configured link),
``_switch`` (move the call to a new link), ``_parser`` (frame -> event or events),
``_audio_frame`` (caller audio -> client frame), ``_flush_items`` / ``_render``, and the
optional hooks ``_on_detach``, ``_on_lost``, ``_on_fail``, ``_link_aged``, ``_may_retry``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, cast

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff, BackoffRun
from agentic_fast.core.errors import PeerUnavailableError, RemoteProtocolError
from agentic_fast.core.tasks import TaskSet
from agentic_fast.providers.base import ProviderListener, RealtimeProvider, dispatch_event
from agentic_fast.providers.reconnect import ChunkBacklog
from agentic_fast.ws.client_connection import FastClientConnection, StallWatch

__all__ = ["Link", "LinkOptions", "ModelConnection", "NullListener", "close_info",
           "open_socket", "open_sockets"]


class NullListener:
    """Events before ``attach`` (pre-warm) and after ``close`` go nowhere."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class LinkOptions:
    """Socket settings shared by every link of one provider."""

    __slots__ = ("close_timeout_s", "headers", "max_message_bytes", "max_queue",
                 "ping_interval_s", "timeout_s", "url")

    def __init__(self, url: str, headers: dict[str, str], *, timeout_s: float,
                 ping_interval_s: float | None = 20.0, close_timeout_s: float = 2.0,
                 max_message_bytes: int = 4 * 2**20, max_queue: int = 64) -> None:
        self.url = url
        self.headers = headers
        self.timeout_s = timeout_s
        self.ping_interval_s = ping_interval_s
        self.close_timeout_s = close_timeout_s
        self.max_message_bytes = max_message_bytes
        self.max_queue = max_queue


async def open_socket(options: LinkOptions) -> FastClientConnection:
    """Dial ``options.url`` (the WebSocket handshake only) on a fast client connection."""
    return cast(FastClientConnection, await ws_connect(
        options.url, additional_headers=options.headers, compression=None,
        open_timeout=options.timeout_s, close_timeout=options.close_timeout_s,
        ping_interval=options.ping_interval_s, ping_timeout=options.ping_interval_s,
        max_size=options.max_message_bytes, max_queue=options.max_queue, write_limit=2**16,
        create_connection=FastClientConnection))


_links: weakref.WeakSet[Link] = weakref.WeakSet()


def open_sockets() -> int:
    """Model provider sockets open in this process now (the ``/metrics`` gauge)."""
    return sum(1 for link in list(_links) if link.open)


def close_info(exc: ConnectionClosed) -> tuple[int, str]:
    """(code, reason) the peer closed with; (1006, "") for an abrupt close."""
    frame = exc.rcvd or exc.sent
    if frame is None:
        return 1006, ""
    return frame.code, frame.reason


class Link:
    """One configured socket and its bookkeeping.

    ``detached``: caller audio no longer goes here (a switch is under way), its events are
    still delivered. ``retired``: dropped on purpose, its events are ignored. ``early``:
    events that came with the handshake's last frame, delivered first by the reader.
    """

    __slots__ = ("__weakref__", "detached", "early", "opened_at", "reader", "retired", "seq",
                 "session_id", "timer", "watch", "ws")

    def __init__(self, ws: FastClientConnection, seq: int,
                 session_id: str | None = None, early: list[Any] | None = None) -> None:
        self.ws = ws
        self.seq = seq
        self.session_id = session_id
        self.early: list[Any] = early if early is not None else []
        self.reader: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.watch: StallWatch | None = None  # while it carries the call
        self.detached = False
        self.retired = False
        self.opened_at = time.monotonic()
        _links.add(self)

    @property
    def open(self) -> bool:
        return self.ws.protocol.state is State.OPEN

    def stop_timer(self) -> None:
        """Cancel the age timer and the stall watch."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.watch is not None:
            self.watch.stop()
            self.watch = None

    async def close(self, timeout_s: float) -> None:
        """Close politely within ``timeout_s``, else abort; never raises."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.ws.close()
        except Exception:
            self.ws.transport.abort()


class ModelConnection(RealtimeProvider):
    """The shared life of one call's model sockets; subclasses add the protocol policy."""

    #: metric and log prefix, and ``PeerUnavailableError.peer``
    peer: ClassVar[str]
    #: the parser returns a sequence of events per frame (else one event)
    _many_events: ClassVar[bool] = False
    #: the name of a link in log lines (``session``, ``connection``)
    _link_word: ClassVar[str] = "connection"

    def __init__(self, *, call_id: str, log: Any, backoff: Backoff | None,
                 backlog_chars: int, replay_chars: int = 0, max_pending_items: int = 32,
                 max_write_buffer: int = 256 * 1024, close_timeout_s: float = 2.0,
                 stall_timeout_s: float | None = 5.0, max_link_s: float | None = None,
                 stats: Sequence[str] = ()) -> None:
        self.call_id = call_id
        self.log = log
        self._backoff = backoff or Backoff()
        self._max_write_buffer = max_write_buffer
        self._close_timeout_s = close_timeout_s
        self._stall_timeout_s = stall_timeout_s or None  # None/0: no StallWatch
        self._max_link_s = max_link_s
        self._listener: ProviderListener = NullListener()
        self._link: Any = None  # the provider's Link subclass carrying the call, or None
        self._links: set[Any] = set()
        self._seq = 0
        self._connect_task: asyncio.Task[None] | None = None
        self._switch_task: asyncio.Task[None] | None = None
        self._switch_deadline = 0.0
        self._switch_wake = asyncio.Event()
        self._tasks = TaskSet(self.peer, log)
        self._connected_once = False
        self._closed = False
        self._failed = False
        self._backlog = ChunkBacklog(backlog_chars)
        #: audio written since the peer last confirmed it holds it, written again first on
        #: the next link (None: the peer never needs it)
        self._replay = ChunkBacklog(replay_chars) if replay_chars else None
        self._items: deque[Any] = deque()
        self._max_items = max_pending_items
        self._handlers: dict[type, Callable[[Any, Any], None]] = {}
        #: per-provider counts (also in :mod:`metrics`), for the closing log line and tests
        self.stats: dict[str, int] = dict.fromkeys(
            ("audio_buffered_dropped", "audio_backpressure_dropped", "stalls", *stats), 0)

    # -- the policy a provider supplies ------------------------------------------------------

    @abstractmethod
    async def _open(self) -> Any:
        """A new link with its session configured; :class:`PeerUnavailableError` if not."""

    @abstractmethod
    async def _switch(self, reason: str, proactive: bool) -> None:
        """Move the call to a new link (the carrying one, if any, is replaced)."""

    @abstractmethod
    def _parser(self, link: Any) -> Callable[[bytes], Any]:
        """Frame -> event (or events, with ``_many_events``); raises RemoteProtocolError."""

    @staticmethod
    @abstractmethod
    def _audio_frame(chunk_b64: str, /) -> str:
        """The client frame carrying one chunk of caller audio."""

    def _flush_items(self, link: Any) -> None:
        """Send what was kept in ``_items`` while no link carried the call."""
        items, self._items = list(self._items), deque()
        for item in items:
            self._send_item(item)

    @abstractmethod
    def _render(self, item: Any) -> str:
        """The client frame for one kept item."""

    def _on_detach(self, link: Any) -> None:
        """``link`` stopped carrying the call."""

    def _on_lost(self, link: Any) -> None:
        """A link that carried the call (or was being replaced) is gone."""

    def _on_fail(self) -> None:
        """The provider gave up (before ``listener.on_failed``)."""

    def _link_aged(self, link: Any) -> None:
        """The carrying link reached ``max_link_s``: renew it."""
        self._ensure_switching("max_age", proactive=True)

    def _may_retry(self, exc: PeerUnavailableError) -> bool:
        """After a failed attempt to open a link: is another attempt worth it?"""
        return True

    def _closing_fields(self) -> dict[str, Any]:
        """Extra fields of the closing log line."""
        return {}

    def _release_more(self) -> None:
        """Drop what else refers back to the provider (see :meth:`_release`)."""

    # -- RealtimeProvider ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A configured link is carrying the call right now."""
        return self._link is not None

    def attach(self, listener: ProviderListener) -> None:
        self._listener = listener

    async def connect(self) -> None:
        """Open the first link (idempotent, concurrency-safe: pre-warm and the bridge may
        both await it).

        Raises :class:`PeerUnavailableError` (``peer`` is the provider's) when that fails
        within the connect timeout; a later call tries again.
        """
        if self._closed:
            raise PeerUnavailableError("provider is closed", peer=self.peer)
        if self._connected_once:
            return
        task = self._connect_task
        if task is None or task.done():
            task = self._connect_task = asyncio.get_running_loop().create_task(
                self._first_connect())
            task.add_done_callback(_retrieve)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise PeerUnavailableError("closed while connecting", peer=self.peer) from None
            raise

    def send_audio(self, chunk_b64: str) -> None:  # HOT
        """Caller audio (the provider's input format, base64): written now, never awaits;
        buffered while no link carries the call."""
        link = self._link
        if link is not None:
            ws = link.ws
            if ws.protocol.state is State.OPEN:
                if ws.transport.get_write_buffer_size() > self._max_write_buffer:
                    self.stats["audio_backpressure_dropped"] += 1
                    metrics.incr(self.peer + ".audio.backpressure_dropped")
                    return
                try:
                    ws.write_text_now(self._audio_frame(chunk_b64))
                except Exception as exc:
                    self._write_failed(link, exc)
                else:
                    if self._replay is not None:
                        self._replay.push(chunk_b64)
                    return
        self._buffer_audio(chunk_b64)

    async def close(self) -> None:
        """Stop every task and close every socket; idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        links: list[Any] = []
        try:
            me = asyncio.current_task()
            tasks = [t for t in (self._connect_task, self._switch_task)
                     if t is not None and t is not me and not t.done()]
            for task in tasks:
                task.cancel()
            tasks += self._tasks.cancel_all()
            links = list(self._links)
            self._links.clear()
            self._link = None
            for link in links:
                self._stop(link)
            readers = [k.reader for k in links if k.reader is not None and k.reader is not me]
            await asyncio.gather(*(k.close(self._close_timeout_s + 0.5) for k in links),
                                 *tasks, *readers, return_exceptions=True)
            self.log.info(self.peer + ".closed", **self.stats, **self._closing_fields())
        except Exception:
            self.log.exception(self.peer + ".close_error")
        finally:
            self._release(links)

    def _release(self, links: Sequence[Link]) -> None:
        """Break the reference cycles of a closed provider so it is freed at once, not by a
        collector that may not run for thousands of calls: the handler table (bound methods
        of self), the listener (the bridge, which holds us), the done tasks (their
        exception's traceback holds the reader's frame, which holds the link, which holds
        the task) and each socket's message handler (a closure over the link)."""
        self._handlers.clear()
        self._listener = NullListener()
        self._connect_task = self._switch_task = None
        self._tasks.clear()
        self._backlog.drain()
        if self._replay is not None:
            self._replay.drain()
        self._items.clear()
        self._release_more()
        for link in links:
            link.reader = None
            link.early = []
            link.ws.set_handlers(None)

    # -- links -------------------------------------------------------------------------------

    async def _first_connect(self) -> None:
        link = await self._open()
        if self._closed:
            self._discard(link)
            raise PeerUnavailableError("closed while connecting", peer=self.peer)
        self._install(link)
        self._connected_once = True

    def _install(self, link: Link) -> None:
        """Make ``link`` carry the call: reader, age cap, stall watch, then flush what
        waited."""
        loop = asyncio.get_running_loop()
        self._link = link
        self._links.add(link)
        link.reader = loop.create_task(self._read(link))
        if self._max_link_s is not None:
            link.timer = loop.call_later(self._max_link_s, self._aged, link)
        if self._stall_timeout_s is not None:
            link.watch = StallWatch(link.ws, lambda why: self._stalled(link, why),
                                    timeout_s=self._stall_timeout_s,
                                    max_buffer=self._max_write_buffer)
            link.watch.start()
        self._flush(link)

    def _flush(self, link: Link) -> None:
        """Audio kept for replay, then the backlog, then the items."""
        replay = self._replay
        frame = self._audio_frame
        if replay is not None and len(replay):
            chunks = replay.drain()
            for chunk in chunks:
                replay.push(chunk)  # still not confirmed by this link's peer
                self._write(link, frame(chunk))
            self.stats["audio_replayed"] = self.stats.get("audio_replayed", 0) + len(chunks)
            metrics.incr(self.peer + ".audio.replayed", len(chunks))
        if len(self._backlog):
            chunks = self._backlog.drain()
            for chunk in chunks:
                if not self._write(link, frame(chunk)):
                    break
                if replay is not None:
                    replay.push(chunk)
            self.log.info(self.peer + ".audio_flushed", chunks=len(chunks))
        self._flush_items(link)

    def _aged(self, link: Link) -> None:
        link.timer = None
        if link is self._link and not self._closed:
            self._link_aged(link)

    def _ensure_switching(self, reason: str, *, grace_s: float = 0.0,
                          proactive: bool = False) -> None:
        """Start moving the call to a new link (``_switch``); a running switch only gets a
        shorter deadline (``grace_s`` from now) and a wake-up."""
        if self._closed or self._failed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        task = self._switch_task
        if task is not None and not task.done():
            self._switch_deadline = min(self._switch_deadline, deadline)
            self._switch_wake.set()
            return
        self._switch_deadline = deadline
        self._switch_task = loop.create_task(self._switch(reason, proactive))
        self._switch_task.add_done_callback(_retrieve)

    async def _open_with_backoff(self, run: BackoffRun, reason: str) -> tuple[Any, str]:
        """``(link, "")``, or ``(None, last error)`` once ``run`` is over or a failure is
        final (:meth:`_may_retry`)."""
        last = reason
        while (delay := run.next_delay()) is not None:
            if delay > 0:
                await asyncio.sleep(delay)
            metrics.incr(self.peer + ".reconnect.attempts")
            self.log.info(self.peer + ".reconnect.attempt", attempt=run.attempts,
                          reason=reason)
            try:
                return await self._open(), ""
            except PeerUnavailableError as exc:
                last = str(exc)
                if not self._may_retry(exc):
                    break
                self.log.warning(self.peer + ".reconnect.attempt_failed",
                                 attempt=run.attempts, error=last[:200])
        return None, last

    def _switched(self, link: Link, kind: str, reason: str, run: BackoffRun,
                  **fields: Any) -> None:
        """Count and log a finished switch (``kind``: the stats key)."""
        self.stats[kind] += 1
        metrics.incr(f"{self.peer}.{kind}")
        self.log.info(self.peer + ".switched", kind=kind, reason=reason, connection=link.seq,
                      attempts=run.attempts, elapsed_s=round(run.elapsed, 3), **fields)

    def _lost(self, link: Link, reason: str) -> None:
        """``link``'s reader ended, a write failed or it stalled. Only the carrying link's
        loss starts a switch; a detached one is being replaced already."""
        link.stop_timer()
        self._links.discard(link)
        if self._closed or link.retired:
            return
        self._switch_wake.set()
        if link is self._link:
            metrics.incr(self.peer + ".connection_lost")
            self.log.warning(self.peer + ".connection_lost", connection=link.seq,
                             reason=reason)
            self._detach(link)
            self._on_lost(link)
            self._ensure_switching(reason)
        elif link.detached:
            self._on_lost(link)

    def _detach(self, link: Link) -> None:
        """Caller audio no longer goes to ``link`` (it buffers); its events still count."""
        link.detached = True
        link.stop_timer()
        if self._link is link:
            self._link = None
        self._on_detach(link)

    def _retire(self, link: Link) -> None:
        """Drop ``link`` on purpose: its reader stops, the socket closes in the background."""
        self._stop(link)
        self._links.discard(link)
        self._tasks.spawn(link.close(self._close_timeout_s + 0.5))

    def _discard(self, link: Link) -> None:
        """Drop ``link`` at once (never installed, or dead): abort its socket."""
        link.retired = True
        self._links.discard(link)
        link.ws.transport.abort()

    @staticmethod
    def _stop(link: Link) -> None:
        link.retired = True
        link.stop_timer()
        if link.reader is not None and link.reader is not asyncio.current_task():
            link.reader.cancel()

    def _stalled(self, link: Link, reason: str) -> None:
        """The StallWatch saw the peer stop reading: drop the socket, switch."""
        self.stats["stalls"] += 1
        metrics.incr(self.peer + ".stalled")
        self.log.warning(self.peer + ".stalled", connection=link.seq, reason=reason)
        self._lost(link, f"stalled: {reason}")
        self._stop(link)
        link.ws.transport.abort()

    def _fail(self, reason: str) -> None:
        """Give up: every link retired, buffers dropped, ``listener.on_failed`` once."""
        if self._failed or self._closed:
            return
        self._failed = True
        metrics.incr(self.peer + ".failed")
        self.log.error(self.peer + ".failed", reason=reason[:300])
        dropped = len(self._backlog.drain())
        if dropped:
            metrics.incr(self.peer + ".audio.buffered_dropped", dropped)
        self._items.clear()
        for link in list(self._links):
            self._retire(link)
        self._link = None
        self._on_fail()
        self._listener.on_failed(reason)

    # -- writing -----------------------------------------------------------------------------

    def _write(self, link: Link, frame: str) -> bool:
        """Write one frame now (no await); False if ``link`` cannot take it."""
        ws = link.ws
        if ws.protocol.state is not State.OPEN or link.retired:
            return False
        try:
            ws.write_text_now(frame)
        except Exception as exc:
            self._write_failed(link, exc)
            return False
        return True

    def _write_failed(self, link: Link, exc: Exception) -> None:
        metrics.incr(self.peer + ".write_failed")
        self.log.warning(self.peer + ".write_failed", connection=link.seq,
                         error=repr(exc)[:200])
        link.ws.transport.abort()
        self._lost(link, "write_failed")

    def _buffer_audio(self, chunk_b64: str) -> None:
        if self._closed or self._failed:
            metrics.incr(self.peer + ".audio.dropped_closed")
            return
        dropped = self._backlog.push(chunk_b64)
        if dropped:
            self.stats["audio_buffered_dropped"] += dropped
            metrics.incr(self.peer + ".audio.buffered_dropped", dropped)

    def _keep_items(self, items: Iterable[Any]) -> bool:
        """Keep ``items`` (bounded, oldest dropped) until a link carries the call; False
        (dropped, counted) once the provider is closed or failed."""
        if self._closed or self._failed:
            metrics.incr(self.peer + ".items.dropped_closed")
            return False
        kept = self._items
        for item in items:
            kept.append(item)
            if len(kept) > self._max_items:
                kept.popleft()
                metrics.incr(self.peer + ".items.buffered_dropped")
        return True

    def _send_item(self, item: Any) -> None:
        """One item: written now, or kept until a link carries the call."""
        link = self._link
        if link is not None and self._write(link, self._render(item)):
            return
        self._keep_items((item,))

    # -- reading -----------------------------------------------------------------------------

    async def _read(self, link: Link) -> None:
        """The link's reader: delivers the events that came with the handshake, turns the
        fast path on, drains what is queued, and reports the close."""
        ws = link.ws
        recv = ws.recv
        handlers = self._handlers
        deliver = self._deliverer(link)
        reason = "closed"
        try:
            for event in link.early:
                dispatch_event(handlers, link, event, self.log, self.peer)
            # From here on whole frames go straight to ``deliver`` from data_received;
            # recv() still returns what was queued before (and fragmented messages),
            # delivered synchronously, in order (ws_client's ordering rule).
            ws.set_handlers(deliver, deliver)
            while not link.retired:
                deliver(await recv(decode=False))
        except ConnectionClosed as exc:
            code, why = close_info(exc)
            reason = f"closed {code} {why}".strip()
        except Exception as exc:
            reason = f"reader_error {exc!r:.100}"
            self.log.exception(self.peer + ".reader_error", connection=link.seq)
        finally:
            if not link.retired:  # else keep it: it drops everything, so the socket's close
                ws.set_handlers(None)  # handshake is not stuck behind a full frame queue
        self._lost(link, reason)

    def _deliverer(self, link: Link) -> Callable[[bytes], None]:
        """``deliver(frame)``: parse one server frame of ``link`` and dispatch its event(s);
        runs in ``data_received`` (fast path) or in the reader (queued frames)."""
        parse = self._parser(link)
        handlers = self._handlers
        log = self.log
        peer = self.peer
        many = self._many_events

        def deliver(frame: bytes) -> None:  # HOT: one call per server message
            if link.retired:
                return  # dropped on purpose: its events are ignored
            try:
                parsed = parse(frame)
            except Exception as exc:
                self._bad_frame(link, exc)
                return
            if many:
                for event in parsed:
                    dispatch_event(handlers, link, event, log, peer)
            else:
                dispatch_event(handlers, link, parsed, log, peer)

        return deliver

    def _bad_frame(self, link: Link, exc: Exception) -> None:
        """A frame the parser refused is counted and skipped; any other parser exception
        is a bug: the socket can no longer be trusted (lost, then closed)."""
        if isinstance(exc, RemoteProtocolError):
            reason = getattr(exc, "reason", "bad")
            metrics.incr(f"{self.peer}.{self._bad_kind}.bad.{reason}")
            self.log.warning(f"{self.peer}.{self._bad_kind[:-1]}_bad", reason=reason,
                             field=getattr(exc, "field", None), detail=str(exc)[:200])
            return
        self.log.exception(self.peer + ".reader_error", connection=link.seq)
        self._lost(link, f"reader_error {exc!r:.100}")
        self._retire(link)

    #: counter word for refused frames (``<peer>.<word>.bad.<reason>``)
    _bad_kind: ClassVar[str] = "messages"


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as seen (callers get it through ``connect``)."""
    if not task.cancelled():
        task.exception()
