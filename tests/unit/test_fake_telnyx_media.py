"""The fake Telnyx media stream: codec framing, its player (explicit times), and the
WebSocket driver against a bare loopback server (synchronised on frames, not on time)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.fakes.telnyx_media import (
    AUTH_TOKEN_HEADER,
    FakeTelnyxMediaClient,
    TelnyxPlayback,
    codec,
)

# --------------------------------------------------------------------------- framing


def test_codec_framing() -> None:
    assert codec("PCMU").frame_bytes == 160 and codec("PCMU").silence == b"\xff" * 160
    assert codec("PCMA").frame_bytes == 160 and codec("PCMA").silence == b"\xd5" * 160
    assert codec("L16", 8000).frame_bytes == 320
    l16 = codec("L16", 16000)
    assert l16.frame_bytes == 640 and l16.bytes_per_s == 32000 and l16.silence == bytes(640)
    with pytest.raises(ValueError, match="G722"):
        codec("G722", 16000)


def test_l16_player_runs_at_32000_bytes_per_second() -> None:
    p = TelnyxPlayback(codec("L16", 16000).bytes_per_s)
    p.enqueue_audio(bytes(640 * 5), now=0.0)  # 100 ms
    p.enqueue_mark("m", now=0.0)
    assert p.next_due() == pytest.approx(0.1)
    p.advance(0.05)
    assert len(p.played) == 1600 and p.take_echoes() == []
    p.advance(0.1)
    assert [e.name for e in p.take_echoes()] == ["m"]


def test_clear_returns_queued_marks_in_order() -> None:
    p = TelnyxPlayback(8000)
    p.enqueue_audio(bytes(160), now=0.0)
    p.enqueue_mark("a", now=0.0)
    p.enqueue_audio(bytes(8000), now=0.0)
    p.enqueue_mark("b", now=0.0)
    p.enqueue_mark("c", now=0.0)
    p.clear(now=0.5)
    echoes = p.take_echoes()
    assert [(e.name, e.flushed) for e in echoes] == [("a", False), ("b", True), ("c", True)]
    assert p.queued_bytes == 0 and p.pending_marks == []
    p.enqueue_mark("d", now=0.6)  # empty queue: returned at once
    assert [(e.name, e.at) for e in p.take_echoes()] == [("d", 0.6)]


# --------------------------------------------------------------------------- driver, loopback


class Server:
    """A bare WebSocket server standing in for ours: records frames, sends what it is told."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.conn: asyncio.Future[ServerConnection] = (
            asyncio.get_running_loop().create_future())

    async def handler(self, ws: ServerConnection) -> None:
        self.conn.set_result(ws)
        async for message in ws:
            await self.inbox.put(json.loads(message))

    async def next(self, event: str) -> dict[str, Any]:
        """Next frame of kind ``event`` (skipping the steady inbound media)."""
        while True:
            msg = await self.inbox.get()
            if msg["event"] == event:
                return msg


@pytest.fixture
async def loopback() -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        yield server, f"ws://127.0.0.1:{port}/telnyx/media-stream"


def media(data: bytes, **extra: Any) -> str:
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(data).decode()},
                       **extra})


async def test_pcmu_stream_speaks_the_protocol(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        telnyx = FakeTelnyxMediaClient(url, client_state="c3RhdGU=", auth_token="tok",
                                       custom_parameters={"k": "v"}, time_scale=4.0)
        async with telnyx:
            ws = await server.conn
            assert ws.request is not None
            assert ws.request.headers[AUTH_TOKEN_HEADER] == "tok"
            connected = await server.inbox.get()
            assert connected == {"event": "connected", "version": "1.0.0",
                                 AUTH_TOKEN_HEADER: "tok"}
            start = await server.inbox.get()
            assert start["event"] == "start" and start["sequence_number"] == "1"
            assert start["stream_id"] == telnyx.stream_id
            body = start["start"]
            assert body["call_control_id"] == telnyx.call_control_id
            assert body["client_state"] == "c3RhdGU=" and body["custom_parameters"] == {"k": "v"}
            assert body["media_format"] == {"encoding": "PCMU", "sample_rate": 8000,
                                            "channels": 1}

            speech = bytes(range(256)) * 2  # 512 B: 3 full frames + a padded fourth
            await telnyx.say(speech)
            frames = []
            while len(frames) < 4:
                msg = await server.next("media")
                if base64.b64decode(msg["media"]["payload"]) != b"\xff" * 160:
                    frames.append(msg)
            audio = b"".join(base64.b64decode(m["media"]["payload"]) for m in frames)
            assert audio[:512] == speech and audio[512:] == b"\xff" * (640 - 512)
            assert all(m["media"]["track"] == "inbound" for m in frames)
            chunks = [int(m["media"]["chunk"]) for m in frames]
            stamps = [int(m["media"]["timestamp"]) for m in frames]
            assert chunks == list(range(chunks[0], chunks[0] + 4))
            assert stamps == [(c - 1) * 20 for c in chunks]

            # playback: a mark after queued audio comes back once the audio has played
            await ws.send(media(bytes(320)))
            await ws.send(json.dumps({"event": "mark", "mark": {"name": "m1"}}))
            echo = await server.next("mark")
            assert echo["mark"] == {"name": "m1"} and echo["stream_id"] == telnyx.stream_id
            assert (await telnyx.wait_for_echo("m1")).flushed is False

            # clear: queued audio dropped, the queued mark returned
            await ws.send(media(bytes(8000 * 20), stream_id=telnyx.stream_id))
            await ws.send(json.dumps({"event": "mark", "mark": {"name": "m2"}}))
            await ws.send(json.dumps({"event": "clear"}))
            assert (await server.next("mark"))["mark"]["name"] == "m2"
            assert (await telnyx.wait_for_echo("m2")).flushed is True
            assert telnyx.playback.discarded_bytes > 0

            await telnyx.send_dtmf("7")
            dtmf = await server.next("dtmf")
            assert dtmf["dtmf"] == {"digit": "7"} and dtmf["occurred_at"].endswith("Z")
            await telnyx.hangup()
            stop = await server.next("stop")
            assert stop["stop"] == {"user_id": telnyx.user_id,
                                    "call_control_id": telnyx.call_control_id}
        telnyx.assert_no_violations()
        assert telnyx.errors_sent == []
        seqs = [int(m["sequence_number"]) for m in telnyx.sent if "sequence_number" in m]
        assert seqs == list(range(1, len(seqs) + 1))


async def test_l16_16k_framing(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        async with FakeTelnyxMediaClient(url, encoding="L16", sample_rate=16000,
                                         bidirectional_codec="L16", bidirectional_rate=16000,
                                         continuous=False) as telnyx:
            ws = await server.conn
            start = await server.next("start")
            assert start["start"]["media_format"] == {"encoding": "L16", "sample_rate": 16000,
                                                      "channels": 1}
            tone = (1000).to_bytes(2, "big", signed=True) * 400  # 800 B: 1.25 frames
            await telnyx.say(tone)
            first = base64.b64decode((await server.next("media"))["media"]["payload"])
            second = base64.b64decode((await server.next("media"))["media"]["payload"])
            assert len(first) == len(second) == 640
            assert first + second[:160] == tone and second[160:] == bytes(480)

            await ws.send(media(bytes(640 * 3)))
            await ws.send(media(bytes(320)))    # 10 ms: under Telnyx's 20 ms minimum
            await ws.send(media(bytes(641)))    # half a sample
            await ws.send(json.dumps({"event": "mark", "mark": {"name": "end"}}))
            await telnyx.wait_for_echo("end")
        assert [v.reason for v in telnyx.violations] == ["chunk_too_short", "odd_sample_bytes"]
        assert telnyx.received_audio_bytes == 640 * 3
        assert [e["payload"]["code"] for e in telnyx.errors_sent] == [100004, 100004]


async def test_driver_records_server_protocol_errors(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        async with FakeTelnyxMediaClient(url, continuous=False) as telnyx:
            ws = await server.conn
            await server.next("start")
            await ws.send(b"\x00binary")
            await ws.send("{not json")
            await ws.send(json.dumps({"event": "clear", "stream_id": "other"}))
            await ws.send(json.dumps({"event": "play"}))
            await ws.send(json.dumps({"event": "media", "media": {"payload": "not base64!"}}))
            await ws.send(json.dumps({"event": "mark", "mark": {}}))
            await ws.send(media(bytes(100)))
            await ws.send(media(bytes(200)))  # > 20 ms but not whole frames: a warning
            await telnyx.wait_for(lambda: len(telnyx.received) == 8)
            errors = [await server.next("error") for _ in range(6)]
        reasons = [v.reason for v in telnyx.violations]
        assert reasons == ["binary_frame", "invalid_json", "wrong_stream_id", "unknown_event",
                           "bad_base64", "bad_mark", "chunk_too_short"]
        assert [w.reason for w in telnyx.warnings] == ["odd_payload_size"]
        assert [e["payload"]["code"] for e in errors] == [100003, 100003, 100003, 100004,
                                                          100003, 100004]
        with pytest.raises(AssertionError):
            telnyx.assert_no_violations()


async def test_media_refused_unless_bidirectional_rtp(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        async with FakeTelnyxMediaClient(url, bidirectional_mode=None,
                                         continuous=False) as telnyx:
            ws = await server.conn
            await server.next("start")
            await ws.send(media(bytes(160)))
            error = await server.next("error")
        assert error["payload"]["code"] == 100004
        assert [v.reason for v in telnyx.violations] == ["not_bidirectional_rtp"]
        assert telnyx.media == []


async def test_messages_before_start_are_flagged(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        telnyx = FakeTelnyxMediaClient(url)
        await telnyx.connect(send_start=False)
        try:
            ws = await server.conn
            await ws.send(media(bytes(160)))
            await telnyx.wait_for(lambda: telnyx.violations)
        finally:
            await telnyx.close()
        assert [v.reason for v in telnyx.violations] == ["before_start"]


async def test_server_closing_ends_the_stream(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        async with FakeTelnyxMediaClient(url) as telnyx:
            ws = await server.conn
            await server.next("start")
            await ws.close(1000, "bye")
            await telnyx.wait_closed()
        assert telnyx.close_code == 1000
