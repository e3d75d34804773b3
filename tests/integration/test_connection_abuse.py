"""Connection abuse on a real server on loopback (issue 12): half-sent request heads and
bodies on every route, pending-connection caps, keep-alive, and ping floods on media
streams before and after ``start`` (from a peer that reads its pongs and one that does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

from agentic_fast.core import metrics
from agentic_fast.ws.frames import OP_PING, ClientFramer
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_webhooks import new_sid
from tests.integration.harness import Harness, start_harness
from tests.integration.test_listener import (
    MEDIA,
    _start_message,
    close_writer,
    open_raw,
    read_frame,
    read_response,
    read_to_eof,
    request,
    until,
    ws_request,
)

pytestmark = pytest.mark.asyncio
WAIT = 10.0


@pytest.fixture
async def quick(rest: FakeTwilioRest) -> AsyncIterator[Harness]:
    """A server with short deadlines and small pending caps."""
    h = await start_harness(rest, head_timeout_s=0.3, max_pending_total=6,
                            max_pending_per_ip=4, http_keepalive_s=0.3, start_timeout_s=30,
                            ws_max_control_frames_per_s=20)
    try:
        yield h
    finally:
        await h.__aexit__(None, None, None)


# -- half-sent heads and bodies ----------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form",
    b"POST /twilio/status HTTP/1.1\r\nHost: x\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1",
    b"GET /heal",
], ids=["voice", "status", "healthz", "request-line"])
async def test_partial_head_on_an_aiohttp_route_is_timed_out_408(quick: Harness,
                                                                 data: bytes) -> None:
    before = metrics.get("listener.head_timeout")
    reader, writer = await open_raw(quick.port)
    try:
        writer.write(data)
        status, headers, _ = await read_response(reader)
        assert status == 408 and headers["connection"] == "close"
        assert await read_to_eof(reader) == b""
    finally:
        await close_writer(writer)
    assert metrics.get("listener.head_timeout") == before + 1
    await until(lambda: quick.site.pending.total == 0)


async def test_partial_body_is_timed_out_408(quick: Harness) -> None:
    reader, writer = await open_raw(quick.port)
    try:
        writer.write(b"POST /twilio/status HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 100\r\n\r\nCallSid=CA")
        assert (await read_response(reader))[0] == 408
    finally:
        await close_writer(writer)


async def test_expect_100_continue_is_left_to_aiohttp(quick: Harness) -> None:
    reader, writer = await open_raw(quick.port)
    try:
        body = json.dumps({"to": "555"}).encode()
        writer.write(request("POST", "/calls", "Content-Type: application/json",
                             "Expect: 100-continue", body=b"")[:-len("\r\n")]
                     .replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
                     + b"\r\n")
        assert (await read_response(reader))[0] == 100
        writer.write(body)
        assert (await read_response(reader))[0] == 400  # aiohttp read the body: not E.164
    finally:
        await close_writer(writer)


async def test_partial_second_request_on_keepalive_is_closed(quick: Harness) -> None:
    reader, writer = await open_raw(quick.port)
    try:
        writer.write(request("GET", "/healthz"))
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        assert await read_to_eof(reader) == b""
    finally:
        await close_writer(writer)


# -- pending connections: capped per address and in total ------------------------------------

async def test_pending_cap_per_address_closes_that_address_oldest(quick: Harness) -> None:
    before = metrics.get("listener.pending.evicted_per_address")
    conns = [await open_raw(quick.port) for _ in range(4)]  # 4 per address
    try:
        await until(lambda: quick.site.pending.count("127.0.0.1") == 4)
        # a fifth from the same address still gets its answer: the oldest is closed
        reader, writer = await open_raw(quick.port)
        writer.write(request("GET", "/healthz"))
        assert (await read_response(reader))[0] == 200
        await close_writer(writer)
        status, headers, _ = await read_response(conns[0][0])
        assert status == 503 and headers["retry-after"] == "1"
        assert metrics.get("listener.pending.evicted_per_address") == before + 1
        assert quick.site.pending.count("127.0.0.1") == 3
    finally:
        for _, w in conns:
            await close_writer(w)


async def test_pending_cap_total_makes_room_by_closing_the_oldest(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, head_timeout_s=30, max_pending_total=3,
                            max_pending_per_ip=100)
    before = metrics.get("listener.pending.evicted")
    conns = []
    try:
        for i in range(3):
            conns.append(await open_raw(h.port))
            conns[-1][1].write(f"GET /healthz HTTP/1.1\r\nX-Conn: {i}".encode())
            await until(lambda n=i + 1: h.site.pending.total == n)
        # a health check still gets through: the oldest half-sent request makes room
        reader, writer = await open_raw(h.port)
        writer.write(request("GET", "/healthz"))
        assert (await read_response(reader))[0] == 200
        await close_writer(writer)
        assert (await read_response(conns[0][0]))[0] == 503
        assert metrics.get("listener.pending.evicted") == before + 1
    finally:
        for _, w in conns:
            await close_writer(w)
        await h.__aexit__(None, None, None)


async def test_media_socket_is_pending_until_its_stream_starts(quick: Harness) -> None:
    call_sid, params, _ = await quick.incoming_call()
    async with connect(quick.ws_url, open_timeout=WAIT) as ws:
        await until(lambda: quick.site.pending.total == 1)
        await ws.send(json.dumps({"event": "connected", "protocol": "Call",
                                  "version": "1.0.0"}))
        await ws.send(_start_message(call_sid, new_sid("MZ"), params))
        bridge = await asyncio.wait_for(quick.bridge_ready.get(), WAIT)
        await asyncio.wait_for(bridge.started.wait(), WAIT)
        await until(lambda: quick.site.pending.total == 0)


async def test_unstarted_media_socket_is_evicted_with_1013(quick: Harness) -> None:
    async with connect(quick.ws_url, open_timeout=WAIT) as ws:
        # 4 per address: the fourth after it closes the oldest, the socket
        conns = [await open_raw(quick.port) for _ in range(4)]
        other: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            await asyncio.wait_for(ws.wait_closed(), WAIT)
            assert ws.close_code == 1013
        finally:
            for _, w in conns + other:
                await close_writer(w)


# -- ping floods ----------------------------------------------------------------------------

async def _upgraded(h: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await open_raw(h.port)
    writer.write(ws_request(MEDIA))
    assert (await read_response(reader))[0] == 101
    return reader, writer


async def test_ping_flood_before_start_closes_1008(quick: Harness) -> None:
    before = metrics.get("ws.control_flood")
    reader, writer = await _upgraded(quick)
    framer = ClientFramer()
    try:
        writer.write(b"".join(framer.frame(OP_PING, b"x" * 100) for _ in range(5000)))
        pongs = 0
        while True:
            frame = await read_frame(reader)
            if frame.opcode.value == 0xA:
                pongs += 1
                continue
            assert frame.opcode.value == 0x8
            assert int.from_bytes(frame.data[:2], "big") == 1008
            break
        assert pongs == 20
    finally:
        await close_writer(writer)
    assert metrics.get("ws.control_flood") == before + 1
    await until(lambda: quick.services.media.open_sockets == 0)


async def test_ping_flood_from_a_peer_that_never_reads_is_dropped(quick: Harness) -> None:
    before = metrics.get("ws.control_flood")
    reader, writer = await _upgraded(quick)
    ping = ClientFramer().frame(OP_PING, b"y" * 125)
    try:  # ~650 kB of pings, none of the pongs read
        writer.write(ping * 5000)
        await until(lambda: metrics.get("ws.control_flood") == before + 1)
        await until(lambda: quick.services.media.open_sockets == 0)
        # the connection ends (close frame, FIN, or a reset once the server aborts it)
        with contextlib.suppress(ConnectionError):
            data = await asyncio.wait_for(reader.read(), WAIT)
            assert len(data) < 20 * 130 + 64  # at most 20 pongs and the close frame
    finally:
        writer.transport.abort()


async def test_ping_flood_after_start_ends_that_call_only(quick: Harness) -> None:
    calls = []
    for _ in range(2):
        call_sid, params, _ = await quick.incoming_call()
        client = quick.media_client(call_sid, params)
        await client.connect(start_media=False)
        bridge = await asyncio.wait_for(quick.bridge_ready.get(), WAIT)
        await asyncio.wait_for(bridge.started.wait(), WAIT)
        calls.append((client, bridge))
    (flooder, flooded), (healthy, healthy_bridge) = calls
    assert flooder.ws is not None
    framer = ClientFramer()
    flooder.ws.transport.write(b"".join(framer.frame(OP_PING, b"z") for _ in range(10_000)))
    await asyncio.wait_for(flooder.closed.wait(), WAIT)
    assert flooder.close_code == 1008
    assert await asyncio.wait_for(flooded.closed, WAIT) == "socket-error"
    # the other call is untouched
    assert not healthy.closed.is_set()
    await healthy.send_raw(json.dumps({"event": "dtmf", "streamSid": healthy.stream_sid,
                                       "sequenceNumber": "3",
                                       "dtmf": {"track": "inbound_track", "digit": "5"}}))
    await healthy_bridge.wait_until(lambda: healthy_bridge.digits == ["5"])
