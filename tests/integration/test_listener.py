"""The listener on a real socket: WebSocket upgrades to MediaSocket, the rest to aiohttp.

Two servers: the real app (``create_app`` + ``start_site``, see ``harness``) for the
media-stream route, and a minimal aiohttp app with a tiny echo route registered through
``CallServerSite(routes=...)`` for the listener's own behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Close, Frame, Opcode

from agentic_fast.ws.frames import OP_BINARY, OP_CLOSE, OP_TEXT, ClientFramer, server_frame
from agentic_fast.ws.listener import MAX_HEAD_BYTES, CallServerSite, FrontProtocol, ListenerLimits
from agentic_fast.ws.server_socket import MediaSocket
from agentic_fast.ws.upgrade import UpgradeRequest, accept_key, switching_protocols
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_webhooks import new_sid
from tests.integration.harness import Harness, RecordingBridge, start_harness
from tests.ws_frames import parse_frames

pytestmark = pytest.mark.asyncio
WAIT = 10.0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MEDIA = "/twilio/media-stream"


# -- a minimal server: aiohttp routes + an echo WebSocket route ------------------------------

class EchoRoute:
    """Echoes text and binary messages on a MediaSocket; records each upgrade."""

    def __init__(self) -> None:
        self.upgrades: list[tuple[UpgradeRequest, bytes, str]] = []
        self.sockets: list[MediaSocket] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def upgrade(self, transport: asyncio.Transport, request: UpgradeRequest, leftover: bytes,
                remote: str) -> None:
        self.upgrades.append((request, leftover, remote))
        sock = MediaSocket(max_message_bytes=1 << 17, close_timeout_s=2.0, remote=remote)
        transport.write(switching_protocols(request))
        sock.take_over(transport, leftover)
        self.sockets.append(sock)
        task = asyncio.get_running_loop().create_task(self._echo(sock))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _echo(self, sock: MediaSocket) -> None:
        while True:
            opcode, data = await sock.receive()
            if opcode == OP_CLOSE:
                return
            if opcode == OP_TEXT:
                sock.send_text(data)
            else:
                sock.write_frames(server_frame(OP_BINARY, data))

    async def close(self) -> None:
        for sock in self.sockets:
            if not sock.closed:
                with contextlib.suppress(Exception):
                    await sock.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=WAIT)


class EchoServer:
    def __init__(self, route: EchoRoute, runner: web.AppRunner, site: CallServerSite) -> None:
        self.route, self.runner, self.site = route, runner, site

    @property
    def port(self) -> int:
        return self.site.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _echo_body(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, headers={"X-Length": str(len(body))})


@contextlib.asynccontextmanager
async def echo_server_with(limits: ListenerLimits | None = None) -> AsyncIterator[EchoServer]:
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/echo", _echo_body)
    route = EchoRoute()
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = CallServerSite(runner, "127.0.0.1", 0, routes={"/ws": route}, limits=limits)
    await site.start()
    try:
        yield EchoServer(route, runner, site)
    finally:
        await route.close()
        await runner.cleanup()


@pytest.fixture
async def echo_server() -> AsyncIterator[EchoServer]:
    async with echo_server_with() as server:
        yield server


@pytest.fixture
async def harness(rest: FakeTwilioRest) -> AsyncIterator[Harness]:
    h = await start_harness(rest, start_timeout_s=5)
    try:
        yield h
    finally:
        await h.__aexit__(None, None, None)


# -- raw HTTP helpers ------------------------------------------------------------------------

Response = tuple[int, dict[str, str], bytes]


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One HTTP/1.1 response (body by Content-Length; none for a 101)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ")
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), WAIT) if length else b""
    return int(status), headers, body


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), WAIT)


def request(method: str, path: str, *headers: str, body: bytes = b"",
            host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def ws_request(path: str, *extra: str, version: str = "13", key: str = KEY) -> bytes:
    return request("GET", path, "Upgrade: websocket", "Connection: Upgrade",
                   f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {version}", *extra)


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """One server frame from a raw connection."""
    head = await asyncio.wait_for(reader.readexactly(2), WAIT)
    n = head[1] & 0x7F
    ext = b""
    if n == 126:
        ext = await reader.readexactly(2)
        n = int.from_bytes(ext, "big")
    elif n == 127:
        ext = await reader.readexactly(8)
        n = int.from_bytes(ext, "big")
    body = await asyncio.wait_for(reader.readexactly(n), WAIT)
    [frame] = parse_frames(head + ext + body)
    return frame


async def until(predicate: Callable[[], object], timeout: float = WAIT) -> None:
    """Poll a server-side condition that no event announces (bounded)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# -- plain HTTP through the hand-off -----------------------------------------------------------

async def test_plain_requests_share_one_keepalive_connection(harness: Harness) -> None:
    reader, writer = await open_raw(harness.port)
    try:
        writer.write(request("GET", "/healthz"))
        status, headers, body = await read_response(reader)
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert headers.get("connection", "keep-alive").lower() != "close"
        # a POST with a body on the same connection: aiohttp reads the body we hand over
        writer.write(request("POST", "/calls", "Content-Type: application/json",
                             body=b'{"to": "555"}'))
        status, _, body = await read_response(reader)
        assert status == 400 and "E.164" in json.loads(body)["error"]
        writer.write(request("POST", "/calls", body=b'{"to": "+15557654321", "prompt": "hi"}'))
        status, _, body = await read_response(reader)
        assert status == 201, body
        assert harness.services.manager.get(json.loads(body)["call_id"]) is not None
        writer.write(request("GET", "/readyz"))
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["status"] == "ready"
    finally:
        await close_writer(writer)


async def test_pipelined_requests_in_one_write(echo_server: EchoServer) -> None:
    reader, writer = await open_raw(echo_server.port)
    try:
        writer.write(request("POST", "/echo", body=b"first body")
                     + request("GET", "/healthz")
                     + request("POST", "/echo", body=b"x" * 100_000))
        assert (await read_response(reader))[2] == b"first body"
        assert json.loads((await read_response(reader))[2]) == {"status": "ok"}
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["x-length"] == "100000" and body == b"x" * 100_000
    finally:
        await close_writer(writer)


async def test_post_body_split_across_writes(echo_server: EchoServer) -> None:
    reader, writer = await open_raw(echo_server.port)
    try:
        data = request("POST", "/echo", body=b"split body " * 50)
        for i in range(0, len(data), 7):
            writer.write(data[i:i + 7])
            await writer.drain()
        status, _, body = await read_response(reader)
        assert status == 200 and body == b"split body " * 50
    finally:
        await close_writer(writer)


async def test_aiohttp_client_reuses_one_connection(echo_server: EchoServer) -> None:
    created: list[object] = []
    reused: list[object] = []
    trace = aiohttp.TraceConfig()

    async def on_create(session: object, ctx: object, params: object) -> None:
        created.append(params)

    async def on_reuse(session: object, ctx: object, params: object) -> None:
        reused.append(params)

    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn, trace_configs=[trace]) as http:
        for i in range(3):
            async with http.post(f"{echo_server.base_url}/echo", data=f"body {i}") as resp:
                assert resp.status == 200 and await resp.text() == f"body {i}"
        async with http.get(f"{echo_server.base_url}/healthz") as resp:
            assert (await resp.json()) == {"status": "ok"}
    assert len(created) == 1 and len(reused) == 3  # one TCP connection carried them all


async def test_paths_that_only_look_like_the_route_go_to_aiohttp(
        echo_server: EchoServer) -> None:
    for path in ("/wsx", "/ws/", "/w", "/WS"):
        reader, writer = await open_raw(echo_server.port)
        try:
            writer.write(ws_request(path))
            status, _, _ = await read_response(reader)
            assert status == 404, path
        finally:
            await close_writer(writer)
    assert echo_server.route.upgrades == []


async def test_other_methods_on_the_route_go_to_aiohttp(echo_server: EchoServer) -> None:
    reader, writer = await open_raw(echo_server.port)
    try:
        writer.write(request("POST", "/ws", "Upgrade: websocket", "Connection: Upgrade",
                             body=b"{}"))
        status, _, _ = await read_response(reader)
        assert status in (404, 405)
    finally:
        await close_writer(writer)
    assert echo_server.route.upgrades == []


# -- WebSocket clients on the media-stream route --------------------------------------------

ACCOUNT_SID = new_sid("AC")


def _start_message(call_sid: str, stream_sid: str, params: dict[str, str]) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
                       "start": {"accountSid": ACCOUNT_SID, "streamSid": stream_sid,
                                 "callSid": call_sid, "tracks": ["inbound"],
                                 "customParameters": params,
                                 "mediaFormat": {"encoding": "audio/x-mulaw",
                                                 "sampleRate": 8000, "channels": 1}}})


def _media_message(stream_sid: str, seq: int) -> str:
    payload = base64.b64encode(bytes([0xFF]) * 160).decode()
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": str(seq - 1),
                                 "timestamp": str((seq - 2) * 20), "payload": payload}})


async def _exchange(harness: Harness, send: Callable[[str], Awaitable[None]],
                    recv: Callable[[], Awaitable[str]], call_sid: str,
                    params: dict[str, str]) -> tuple[RecordingBridge, str]:
    """connected + start + media from the client; media + mark back from the bridge."""
    stream_sid = new_sid("MZ")
    await send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await send(_start_message(call_sid, stream_sid, params))
    bridge = await asyncio.wait_for(harness.bridge_ready.get(), WAIT)
    await asyncio.wait_for(bridge.started.wait(), WAIT)
    for seq in range(2, 7):
        await send(_media_message(stream_sid, seq))
    await bridge.wait_until(lambda: bridge.media_count == 5)
    payload = base64.b64encode(bytes(160)).decode()
    assert bridge.sender.media(payload)
    assert bridge.sender.send([("media", payload), ("mark", "m1")])
    got = [json.loads(await asyncio.wait_for(recv(), WAIT)) for _ in range(3)]
    assert [m["event"] for m in got] == ["media", "media", "mark"]
    assert {m["streamSid"] for m in got} == {stream_sid}
    assert got[0]["media"]["payload"] == payload and got[2]["mark"]["name"] == "m1"
    return bridge, stream_sid


async def test_websockets_client_on_the_media_stream(harness: Harness) -> None:
    call_sid, params, _ = await harness.incoming_call()
    # websockets offers permessage-deflate by default: the server must decline it
    async with connect(harness.ws_url, open_timeout=WAIT, max_size=None) as ws:
        assert ws.response.headers["Sec-WebSocket-Accept"] == accept_key(
            ws.request.headers["Sec-WebSocket-Key"])
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        bridge, stream_sid = await _exchange(harness, ws.send, ws.recv, call_sid, params)
        latency = await asyncio.wait_for(await ws.ping(b"are you there"), WAIT)
        assert latency >= 0
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": "7",
                                  "streamSid": stream_sid,
                                  "stop": {"accountSid": ACCOUNT_SID, "callSid": call_sid}}))
        assert await asyncio.wait_for(bridge.closed, WAIT) == "stream-stopped"
        # the server ends the socket itself after stop: a clean 1000 close
        await asyncio.wait_for(ws.wait_closed(), WAIT)
    assert ws.close_code == 1000
    session = harness.services.manager.get(params["callId"])
    assert session.status.value == "completed"


async def test_aiohttp_client_on_the_media_stream(harness: Harness) -> None:
    call_sid, params, _ = await harness.incoming_call()
    # a session of its own: harness.http would reuse the webhook's keep-alive connection,
    # and an upgrade must be the first request of its connection (see the 426 test below)
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(harness.ws_url, compress=15, autoping=True,
                               timeout=aiohttp.ClientWSTimeout(ws_close=WAIT))
    try:
        assert ws.compress == 0  # deflate offered, not agreed

        async def recv() -> str:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            return msg.data

        bridge, _ = await _exchange(harness, ws.send_str, recv, call_sid, params)
        # the client hangs up with a close frame: the call ends as socket-closed
        assert await ws.close(code=1000)
        assert ws.close_code == 1000
        assert await asyncio.wait_for(bridge.closed, WAIT) == "socket-closed"
    finally:
        await ws.close()
        await http.close()


async def test_handshake_and_first_frame_in_one_write(echo_server: EchoServer) -> None:
    framer = ClientFramer()
    reader, writer = await open_raw(echo_server.port)
    try:
        writer.write(ws_request("/ws?x=1") + framer.frame(OP_TEXT, "early bird")
                     + framer.frame(OP_BINARY, b"\x00\x01"))
        status, headers, _ = await read_response(reader)
        assert status == 101 and headers["sec-websocket-accept"] == accept_key(KEY)
        assert headers["upgrade"].lower() == "websocket"
        echo = await read_frame(reader)
        assert (echo.opcode, echo.data) == (Opcode.TEXT, b"early bird")
        echo = await read_frame(reader)
        assert (echo.opcode, echo.data) == (Opcode.BINARY, b"\x00\x01")
        [(req, leftover, remote)] = echo_server.route.upgrades
        assert (req.path, req.query) == ("/ws", "x=1") and remote == "127.0.0.1"
        assert leftover.startswith(b"\x81")  # the first frame arrived with the head
        writer.write(framer.frame(OP_CLOSE, b"\x03\xe8"))
        close = await read_frame(reader)
        assert Close.parse(close.data).code == 1000
        assert await read_to_eof(reader) == b""  # the server ends the TCP connection
    finally:
        await close_writer(writer)


async def test_websockets_client_on_the_echo_route(echo_server: EchoServer) -> None:
    async with connect(f"ws://127.0.0.1:{echo_server.port}/ws", max_size=None,
                       open_timeout=WAIT) as ws:
        for text in ("hello", "\u2603" * 1000, "x" * 100_000):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), WAIT) == text
        await ws.send(["frag", "mented", " message"])  # sent as continuation frames
        assert await asyncio.wait_for(ws.recv(), WAIT) == "fragmented message"
        await ws.send(b"\x00binary\xff")
        assert await asyncio.wait_for(ws.recv(), WAIT) == b"\x00binary\xff"
        await asyncio.wait_for(await ws.ping(b"x"), WAIT)
    assert ws.close_code == 1000
    [sock] = echo_server.route.sockets
    assert await asyncio.wait_for(sock.wait_closed(), WAIT) == 1000


async def test_oversize_message_closes_with_1009(echo_server: EchoServer) -> None:
    async with connect(f"ws://127.0.0.1:{echo_server.port}/ws", max_size=None,
                       compression=None, open_timeout=WAIT) as ws:
        await ws.send("x" * ((1 << 17) + 1))
        await asyncio.wait_for(ws.wait_closed(), WAIT)
    assert ws.close_code == 1009


# -- refusals ----------------------------------------------------------------------------------

async def _refusal(port: int, data: bytes) -> Response:
    reader, writer = await open_raw(port)
    try:
        writer.write(data)
        response = await read_response(reader)
        assert await read_to_eof(reader) == b""  # and the connection is closed
        return response
    finally:
        await close_writer(writer)


async def test_bad_websocket_version_is_426(harness: Harness) -> None:
    status, headers, body = await _refusal(harness.port, ws_request(MEDIA, version="8"))
    assert status == 426
    assert headers["sec-websocket-version"] == "13"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body) and body
    assert harness.services.media.open_sockets == 0


@pytest.mark.parametrize(("data", "status"), [
    (ws_request(MEDIA, key="short"), 400),
    (request("GET", MEDIA, "Upgrade: websocket", "Connection: keep-alive",
             f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"), 400),
    (b"GET " + MEDIA.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
     b"no colon here\r\n\r\n", 400),
    (b"GET " + MEDIA.encode() + b" HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
], ids=["bad-key", "no-connection-upgrade", "bad-header-line", "no-host"])
async def test_bad_handshakes_are_400(harness: Harness, data: bytes, status: int) -> None:
    got, headers, _ = await _refusal(harness.port, data)
    assert got == status and headers["connection"] == "close"


async def test_huge_head_is_431(harness: Harness) -> None:
    data = (f"GET {MEDIA} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Big: ").encode()
    data += b"a" * (MAX_HEAD_BYTES + 100 - len(data))  # no end of head yet
    status, _, body = await _refusal(harness.port, data)
    assert status == 431 and b"too large" in body


async def test_huge_complete_head_is_431(harness: Harness) -> None:
    """The cap holds even when the whole oversized head arrives in one read."""
    big = "X-Big: " + "a" * (MAX_HEAD_BYTES + 100)
    status, _, _ = await _refusal(harness.port, ws_request(MEDIA, big))
    assert status == 431
    assert harness.services.media.open_sockets == 0


async def test_request_line_in_one_byte_writes(harness: Harness) -> None:
    for data, expect in ((ws_request(MEDIA), 101), (request("GET", "/healthz"), 200),
                         (request("GET", "/twilio/media-streams"), 404)):
        reader, writer = await open_raw(harness.port)
        try:
            head, rest = data[:40], data[40:]
            for i in range(len(head)):
                writer.write(head[i:i + 1])
                await writer.drain()
            writer.write(rest)
            status, headers, _ = await read_response(reader)
            assert status == expect, data
            if expect == 101:
                assert headers["sec-websocket-accept"] == accept_key(KEY)
        finally:
            await close_writer(writer)


async def test_plain_get_of_the_media_stream_is_aiohttps_426(harness: Harness) -> None:
    assert harness.http is not None
    async with harness.http.get(f"{harness.base_url}{MEDIA}") as resp:
        assert resp.status == 426
        assert resp.headers["Upgrade"] == "websocket"
        assert "first request" in await resp.text()


async def test_upgrade_after_another_request_on_the_connection_is_426(
        harness: Harness) -> None:
    reader, writer = await open_raw(harness.port)
    try:
        writer.write(request("GET", "/healthz"))
        assert (await read_response(reader))[0] == 200
        writer.write(ws_request(MEDIA))  # aiohttp owns the connection now
        status, headers, _ = await read_response(reader)
        assert status == 426 and headers["upgrade"] == "websocket"
    finally:
        await close_writer(writer)
    assert harness.services.media.open_sockets == 0


async def test_connection_cap_total(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, max_connections_total=1, start_timeout_s=30)
    try:
        media = h.services.media
        first = await connect(h.ws_url, open_timeout=WAIT)
        assert media.limiter.total == 1
        with pytest.raises(InvalidStatus) as info:
            async with connect(h.ws_url, open_timeout=WAIT):
                pass
        assert info.value.response.status_code == 503
        status, headers, _ = await _refusal(h.port, ws_request(MEDIA))
        assert status == 503 and headers["connection"] == "close"
        # plain HTTP is not capped
        assert h.http is not None
        assert (await h.http.get(f"{h.base_url}/healthz")).status == 200
        await first.close()
        await until(lambda: media.limiter.total == 0)  # released when its socket ends
        async with connect(h.ws_url, open_timeout=WAIT) as again:
            assert again.response.status_code == 101
    finally:
        await h.__aexit__(None, None, None)


# -- the head timeout --------------------------------------------------------------------------

async def test_head_timeout_drops_slow_connections() -> None:
    async with echo_server_with(ListenerLimits(head_timeout_s=0.1)) as echo_server:
        reader, writer = await open_raw(echo_server.port)
        try:  # nothing sent: closed without an answer
            assert await read_to_eof(reader) == b""
        finally:
            await close_writer(writer)
        for data in (b"GET /w", b"GET /ws HTTP/1.1\r\nHost: x\r\n"):
            reader, writer = await open_raw(echo_server.port)
            try:
                writer.write(data)
                assert (await read_response(reader))[0] == 408
                assert await read_to_eof(reader) == b""
            finally:
                await close_writer(writer)
        assert echo_server.route.upgrades == []


async def test_head_timeout_does_not_touch_handed_over_connections() -> None:
    async with echo_server_with(ListenerLimits(head_timeout_s=0.05)) as echo_server:
        await _handed_over_connections_survive(echo_server)


async def _handed_over_connections_survive(echo_server: EchoServer) -> None:
    http_r, http_w = await open_raw(echo_server.port)
    ws_r, ws_w = await open_raw(echo_server.port)
    framer = ClientFramer()
    try:
        http_w.write(request("GET", "/healthz"))
        assert (await read_response(http_r))[0] == 200
        ws_w.write(ws_request("/ws"))
        assert (await read_response(ws_r))[0] == 101
        # let several head timeouts' worth of time pass: both connections must survive
        await asyncio.sleep(0.3)
        http_w.write(request("GET", "/healthz"))
        assert (await read_response(http_r))[0] == 200
        ws_w.write(framer.frame(OP_TEXT, "still here"))
        assert (await read_frame(ws_r)).data == b"still here"
    finally:
        await close_writer(http_w)
        await close_writer(ws_w)


# -- FrontProtocol, fed byte by byte -------------------------------------------------------

class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.protocol: asyncio.BaseProtocol | None = None
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.protocol

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("10.0.0.7", 4242) if name == "peername" else default


class _Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data


class _Route:
    def __init__(self) -> None:
        self.calls: list[tuple[UpgradeRequest, bytes, str]] = []

    def upgrade(self, transport: asyncio.Transport, request: UpgradeRequest, leftover: bytes,
                remote: str) -> None:
        self.calls.append((request, leftover, remote))


def _front() -> tuple[FrontProtocol, _Transport, list[_Http], _Route]:
    made: list[_Http] = []

    def factory() -> _Http:
        made.append(_Http())
        return made[-1]

    route = _Route()
    front = FrontProtocol(factory, {"/ws": route, "/twilio/media-stream": route})
    transport = _Transport()
    front.connection_made(transport)  # type: ignore[arg-type]
    return front, transport, made, route


async def test_front_protocol_routes_an_upgrade_fed_byte_by_byte() -> None:
    front, transport, made, route = _front()
    frame = os.urandom(6)
    data = ws_request("/twilio/media-stream?a=b") + frame
    head_end = data.index(b"\r\n\r\n") + 4
    for i in range(head_end):
        front.data_received(data[i:i + 1])
    assert made == [] and transport.written == b"" and not transport.closed
    [(req, leftover, remote)] = route.calls
    assert (req.path, req.query, leftover, remote) == ("/twilio/media-stream", "a=b", b"",
                                                       "10.0.0.7")
    front.connection_lost(None)


async def test_front_protocol_hands_http_over_with_every_byte() -> None:
    for data in (request("GET", "/healthz"), request("POST", "/echo", body=b"abc"),
                 request("GET", "/w"), request("GET", "/wsx"), b"PUT /ws HTTP/1.1\r\n\r\n"):
        front, transport, made, route = _front()
        for i in range(len(data)):
            if made:
                made[0].data_received(data[i:i + 1])  # what the transport would now do
            else:
                front.data_received(data[i:i + 1])
        [http] = made
        assert bytes(http.data) == data and http.transport is transport
        assert transport.protocol is http and route.calls == []
        front.connection_lost(None)


async def test_front_protocol_plain_get_of_the_route_goes_to_http() -> None:
    front, transport, made, route = _front()
    data = request("GET", "/ws") + request("GET", "/healthz")
    front.data_received(data)
    [http] = made
    assert bytes(http.data) == data and route.calls == []
    assert transport.protocol is http and not transport.closed
