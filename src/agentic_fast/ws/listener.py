"""The listening socket: media-stream WebSocket upgrades to our lean socket, the rest to aiohttp.

Each new connection starts with :class:`FrontProtocol`, which reads the whole request head
within ``ListenerLimits.head_timeout_s`` (and at most ``MAX_HEAD_BYTES``); connections in
that state, and media streams not yet started, are capped in total and per address
(``PendingConnections``), so half-sent heads cannot use up the descriptors. A ``GET`` of a
registered WebSocket path with ``Upgrade: websocket`` is answered here and the transport
switched to that route's socket protocol (see ``media_socket``); any other request is
handed, bytes and all, to aiohttp's own request handler, which then owns the connection
(webhooks, the calls API, health). Routes are registered by path:
``{"/twilio/media-stream": handler}``; a stream URL may name its owner worker first
(``/w/<instance>-<worker>/twilio/media-stream``, see ``server/workers.py``): a stream owned
by another worker of this machine is handed to it (``ws/handover.py``) before any answer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, cast

from aiohttp import web

from agentic_fast.core import metrics
from agentic_fast.core.errors import BadRequestHead
from agentic_fast.core.log import get_logger
from agentic_fast.server.client_address import TrustedProxies, client_address
from agentic_fast.server.workers import parse_owner
from agentic_fast.ws.handover import Handover
from agentic_fast.ws.server_socket import MediaSocket
from agentic_fast.ws.upgrade import (
    UpgradeRequest,
    handshake_problem,
    http_error,
    is_websocket_upgrade,
    parse_head,
)

log = get_logger("listener")

#: a request head larger than this is refused (431)
MAX_HEAD_BYTES = 16 * 1024
#: a ``Content-Length`` body up to this size is read (within the head deadline) before the
#: request is handed to aiohttp; a larger or chunked one is aiohttp's to read (and limit)
MAX_EARLY_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """Bounds on connections that have not yet sent a complete request.

    ``head_timeout_s``: a new connection has this long to send its whole request head (and
    a ``Content-Length`` body up to ``MAX_EARLY_BODY_BYTES``), else 408 and close.
    ``max_pending_total``: connections still inside that deadline, plus media streams not
    yet started, and ``max_pending_per_address`` of them from one address: a new connection
    beyond either closes the oldest of them (503, or close 1013 for a media stream), so a
    flood of half-sent heads cannot lock out webhooks and health checks.
    """

    head_timeout_s: float = 5.0
    max_pending_total: int = 256
    max_pending_per_address: int = 32


class PendingSlot:
    """One pending connection's place in :class:`PendingConnections`."""

    __slots__ = ("_evict", "_owner", "address")

    def __init__(self, owner: PendingConnections, address: str,
                 evict: Callable[[], None]) -> None:
        self._owner: PendingConnections | None = owner
        self.address = address
        self._evict = evict

    def set_evict(self, evict: Callable[[], None]) -> None:
        """The new holder of the slot (the upgraded socket) and how to make it leave."""
        self._evict = evict

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self)

    def evict(self) -> None:
        self.release()
        self._evict()


class PendingConnections:
    """Connections that have not sent a complete request yet, and media streams not yet
    started, capped in total and per address. At a cap the oldest pending connection (of
    that address, or of all) is closed to make room: a flood of half-sent heads holds at
    most the cap, and a new request, even from the flooding address (a proxy on this host),
    still gets in. Every operation is O(1)."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._slots: dict[PendingSlot, None] = {}  # oldest first
        self._by_address: dict[str, dict[PendingSlot, None]] = {}

    @property
    def total(self) -> int:
        return len(self._slots)

    def count(self, address: str) -> int:
        return len(self._by_address.get(address, ()))

    def admit(self, address: str, evict: Callable[[], None]) -> PendingSlot:
        """A slot for a new connection from ``address``, closing the oldest at a cap."""
        mine = self._by_address.get(address)
        if mine is not None and len(mine) >= self.max_per_address:
            metrics.incr("listener.pending.evicted_per_address")
            next(iter(mine)).evict()
        while len(self._slots) >= self.max_total:
            metrics.incr("listener.pending.evicted")
            next(iter(self._slots)).evict()
        slot = PendingSlot(self, address, evict)
        self._slots[slot] = None
        self._by_address.setdefault(address, {})[slot] = None
        return slot

    def _release(self, slot: PendingSlot) -> None:
        del self._slots[slot]
        mine = self._by_address[slot.address]
        del mine[slot]
        if not mine:
            del self._by_address[slot.address]


class UpgradeHandler(Protocol):
    """A WebSocket route: takes over a connection whose upgrade request is valid."""

    def upgrade(self, transport: asyncio.Transport, request: UpgradeRequest,
                leftover: bytes, remote: str) -> None:
        """Answer (101 or a refusal) and take the transport."""


class FrontProtocol(asyncio.Protocol):
    """First protocol of every connection: reads the request head (bounded in time and
    size), then routes the connection to a WebSocket route or to aiohttp."""

    def __init__(self, http_factory: Callable[[], asyncio.Protocol],
                 routes: Mapping[str, UpgradeHandler],
                 limits: ListenerLimits | None = None,
                 pending: PendingConnections | None = None,
                 trusted: TrustedProxies | None = None,
                 handover: Handover | None = None, replay: bytes = b"") -> None:
        self._http_factory = http_factory
        self._handover = handover
        self._replay = replay  # bytes another worker read from this (handed-over) connection
        self._owner: str | None = None  # the owner named by the stream URL's prefix
        self._trusted = trusted
        self._routes = routes
        self._limits = limits = limits or ListenerLimits()
        self._pending = pending or PendingConnections(limits.max_pending_total,
                                                      limits.max_pending_per_address)
        self._prefixes = [(b"GET " + p.encode(), p) for p in routes]
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._slot: PendingSlot | None = None
        self._remote = "?"
        self._done = False  # handed over, refused or timed out: read nothing more
        self._body_wait = -1  # once the head of a plain request is read: bytes to wait for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream server's protocol is always handed a stream (write) transport
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._slot = self._pending.admit(self._remote, self._evicted)
        self._timer = asyncio.get_running_loop().call_later(self._limits.head_timeout_s,
                                                            self._timeout)
        if self._replay:
            replay, self._replay = self._replay, b""
            self.data_received(replay)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        """Stop the deadline and give the pending slot back."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._slot is not None:
            slot, self._slot = self._slot, None
            slot.release()

    def _timeout(self) -> None:
        self._timer = None
        metrics.incr("listener.head_timeout")
        log.info("listener.head_timeout", remote=self._remote, received=len(self._buf))
        if self._buf:
            self._refuse(408, "request head not received in time")
        else:
            self._finish()
            if self._transport is not None:
                self._transport.close()

    def _evicted(self) -> None:
        """The oldest pending connection makes room for a new one."""
        self._slot = None  # already released
        self._refuse(503, "server busy", {"Retry-After": "1"})

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        buf = self._buf
        if self._body_wait >= 0:  # head read, waiting for a small body
            buf += data
            if len(buf) >= self._body_wait:
                self._to_http()
            return
        scan = max(0, len(buf) - 3)
        buf += data
        end = buf.find(b"\r\n\r\n", scan)
        if end < 0 or end > MAX_HEAD_BYTES:  # incomplete, or complete but too large
            if end < 0 and 0 <= buf.find(b"\n\n", scan) <= MAX_HEAD_BYTES:
                self._to_http()  # bare-LF line ends: aiohttp's parser decides
            elif len(buf) > MAX_HEAD_BYTES:
                self._refuse(431, "request head too large")
            return
        route = self._match(buf)
        if route is None:
            self._body_wait = end + 4 + _early_body_length(buf, end)
            if len(buf) >= self._body_wait:
                self._to_http()
            return  # else wait for the body (within the deadline)
        if self._owner is not None and self._handover is not None \
                and self._handover.take(self._owner, self._transport_or_fail(), bytes(buf)):
            self._finish()  # the owner worker answers it
            self._buf = bytearray()
            return
        head, leftover = bytes(buf[:end]), bytes(buf[end + 4:])
        try:
            request = parse_head(head)
        except BadRequestHead as exc:
            self._refuse(400, exc.detail)
            return
        if not is_websocket_upgrade(request):
            self._to_http()  # a plain GET of the path: aiohttp answers it
            return
        problem = handshake_problem(request)
        if problem is not None:
            status, text, headers = problem
            self._refuse(status, text, headers)
            return
        slot, self._slot = self._slot, None
        self._finish()
        transport = self._transport
        assert transport is not None
        remote = client_address(None if self._remote == "?" else self._remote,
                                request.headers, self._trusted)  # behind a trusted proxy
        route.upgrade(transport, request, leftover, remote)
        if slot is not None:  # a started socket holds it until its stream starts
            sock = transport.get_protocol()
            if isinstance(sock, MediaSocket) and not transport.is_closing():
                sock.hold_pending(slot)
            else:
                slot.release()

    def _transport_or_fail(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    def _match(self, buf: bytearray) -> UpgradeHandler | None:
        """The WebSocket route the (complete) request line names; None: not ours. A path
        under ``/w/<owner>`` is the route of the rest of it (``_owner`` says whose)."""
        if buf.startswith(b"GET /w/"):
            line = bytes(buf[4:buf.find(b" ", 4)])
            owned = parse_owner(line)
            if owned is None:
                return None
            owner, rest = owned
            for _, path in self._prefixes:
                encoded = path.encode()
                if rest.startswith(encoded) and rest[len(encoded):len(encoded) + 1] in (b"", b"?"):
                    self._owner = owner
                    return self._routes[path]
            return None
        for prefix, path in self._prefixes:
            n = len(prefix)
            if len(buf) > n and buf.startswith(prefix) and buf[n] in b" ?":
                return self._routes[path]
        return None

    def _to_http(self) -> None:
        """Give the connection, and what was read of it, to aiohttp."""
        self._finish()
        transport = self._transport
        assert transport is not None
        handler = self._http_factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data, self._buf = bytes(self._buf), bytearray()
        handler.data_received(data)

    def _refuse(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._finish()
        self._buf = bytearray()
        metrics.incr(f"listener.refused.{status}")
        log.warning("listener.refused", status=status, reason=text, remote=self._remote)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(http_error(status, text, headers))
            self._transport.close()


def _early_body_length(buf: bytearray, end: int) -> int:
    """Bytes of body to read before handing over: the ``Content-Length`` when it is small
    and nothing else governs the body (no ``Expect: 100-continue``, no chunking); else 0."""
    length = 0
    for line in bytes(buf[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or len(value) > 7 or length:
                return 0
            length = int(value)
        elif name in (b"expect", b"transfer-encoding"):
            return 0
    return length if length <= MAX_EARLY_BODY_BYTES else 0


class CallServerSite(web.BaseSite):
    """A TCP site whose connections start with :class:`FrontProtocol`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 routes: Mapping[str, UpgradeHandler], backlog: int = 1024,
                 limits: ListenerLimits | None = None,
                 trusted: TrustedProxies | None = None,
                 reuse_port: bool = False, handover: Handover | None = None) -> None:
        super().__init__(runner, backlog=backlog)
        self._trusted = trusted
        self._reuse_port = reuse_port
        self.handover = handover
        self._host = host
        self._port = port
        self._routes = routes
        self.limits = limits = limits or ListenerLimits()
        self.pending = PendingConnections(limits.max_pending_total,
                                          limits.max_pending_per_address)
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        http = self._runner.server
        assert http is not None, "runner.setup() first"
        routes, limits, pending, trusted = self._routes, self.limits, self.pending, self._trusted
        handover = self.handover
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrontProtocol(http, routes, limits, pending, trusted, handover),
            self._host, self._port, backlog=self._backlog, reuse_address=True,
            reuse_port=self._reuse_port or None)
        sockets = self._server.sockets
        if sockets:
            self._bound_port = sockets[0].getsockname()[1]
            for sock in sockets:  # 20 ms frames must not wait for Nagle
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def adopt(self, sock: socket.socket, data: bytes) -> None:
        """Serve a connection another worker accepted (``data``: what it read of it) as if
        this site had accepted it: its listener reads ``data`` first, then the socket."""
        http = self._runner.server
        assert http is not None, "runner.setup() first"
        routes, limits, pending, trusted = self._routes, self.limits, self.pending, self._trusted
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(
            lambda: FrontProtocol(http, routes, limits, pending, trusted, self.handover, data),
            sock))
        _ADOPTING.add(task)
        task.add_done_callback(_adopted)


_ADOPTING: set[asyncio.Task[object]] = set()


def _adopted(task: asyncio.Task[object]) -> None:
    _ADOPTING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        metrics.incr("stream.handover.adopt_failed")
        log.warning("stream.handover.adopt_failed", error=str(task.exception()))
