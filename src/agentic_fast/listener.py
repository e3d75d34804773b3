"""The listening socket: media-stream WebSocket upgrades to our lean socket, the rest to aiohttp.

Each new connection starts with :class:`FrontProtocol`, which reads only as far as the
request line. A ``GET`` of a registered WebSocket path with ``Upgrade: websocket`` is
answered here and the transport switched to that route's socket protocol (see
``media_socket``); any other request is handed, bytes and all, to aiohttp's own request
handler, which then owns the connection (webhooks, the calls API, health). Routes are
registered by path: ``{"/twilio/media-stream": handler}``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

from aiohttp import web

from agentic_fast import metrics
from agentic_fast.client_address import TrustedProxies, client_address
from agentic_fast.http_upgrade import (
    BadRequestHead,
    UpgradeRequest,
    handshake_problem,
    http_error,
    is_websocket_upgrade,
    parse_head,
)
from agentic_fast.log import get_logger

log = get_logger("listener")

#: a request head larger than this, on a WebSocket route, is refused (431)
MAX_HEAD_BYTES = 16 * 1024
#: a connection that has not finished its request line/head in this time is dropped
HEAD_TIMEOUT_S = 15.0


class UpgradeHandler(Protocol):
    """A WebSocket route: takes over a connection whose upgrade request is valid."""

    def upgrade(self, transport: asyncio.Transport, request: UpgradeRequest,
                leftover: bytes, remote: str) -> None:
        """Answer (101 or a refusal) and take the transport."""


class FrontProtocol(asyncio.Protocol):
    """First protocol of every connection: routes it to a WebSocket route or to aiohttp."""

    def __init__(self, http_factory: Any, routes: dict[str, UpgradeHandler],
                 trusted: TrustedProxies | None = None) -> None:
        self._http_factory = http_factory
        self._trusted = trusted
        self._routes = routes
        self._prefixes = [(b"GET " + p.encode(), p) for p in routes]
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._route: UpgradeHandler | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, self._timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timeout(self) -> None:
        self._timer = None
        metrics.incr("listener.head_timeout")
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._route is None:
            route = self._match(buf)
            if route is False:
                return  # not enough bytes to tell yet
            if route is None:
                self._to_http()
                return
            self._route = route
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD_BYTES:  # incomplete, or complete but too large
            if len(buf) > MAX_HEAD_BYTES:
                self._refuse(431, "request head too large")
            return
        head, leftover = bytes(buf[:end]), bytes(buf[end + 4:])
        try:
            request = parse_head(head)
        except BadRequestHead as exc:
            self._refuse(400, str(exc))
            return
        if not is_websocket_upgrade(request):
            self._to_http()  # a plain GET of the path: aiohttp answers it
            return
        problem = handshake_problem(request)
        if problem is not None:
            status, text, headers = problem
            self._refuse(status, text, headers)
            return
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        remote = client_address(str(peer[0]) if isinstance(peer, tuple) and peer else None,
                                request.headers, self._trusted)  # behind a trusted proxy
        self._route.upgrade(transport, request, leftover, remote)

    def _match(self, buf: bytearray) -> UpgradeHandler | bool | None:
        """The route the request line names; None: not ours; False: undecided yet."""
        undecided = False
        for prefix, path in self._prefixes:
            n = len(prefix)
            if len(buf) <= n:
                if prefix.startswith(bytes(buf)):
                    undecided = True
                continue
            if buf.startswith(prefix) and buf[n] in b" ?":
                return self._routes[path]
        return False if undecided else None

    def _to_http(self) -> None:
        """Give the connection, and what was read of it, to aiohttp."""
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        handler = self._http_factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data, self._buf = bytes(self._buf), bytearray()
        handler.data_received(data)

    def _refuse(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._cancel_timer()
        metrics.incr(f"listener.refused.{status}")
        log.warning("listener.upgrade_refused", status=status, reason=text)
        if self._transport is not None:
            self._transport.write(http_error(status, text, headers))
            self._transport.close()


class CallServerSite(web.BaseSite):
    """A TCP site whose connections start with :class:`FrontProtocol`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 routes: dict[str, UpgradeHandler], backlog: int = 1024,
                 trusted: TrustedProxies | None = None) -> None:
        super().__init__(runner, backlog=backlog)
        self._trusted = trusted
        self._host = host
        self._port = port
        self._routes = routes
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
        routes, trusted = self._routes, self._trusted
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrontProtocol(http, routes, trusted), self._host, self._port,
            backlog=self._backlog, reuse_address=True)
        sockets = self._server.sockets
        if sockets:
            self._bound_port = sockets[0].getsockname()[1]
            for sock in sockets:  # 20 ms frames must not wait for Nagle
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
