"""The fake Twilio Media Streams peer: its player (explicit times, no real clock), and the
WebSocket driver against a bare loopback server (synchronised on messages, not on time)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agentic_fast.carriers.twilio.media import TwilioStreamState
from tests.fakes.audio import SPEECH_ULAW_PATH, load_speech_ulaw, ulaw_frames, ulaw_silence
from tests.fakes.twilio_media import FakeTwilioMediaClient, MarkEcho, TwilioPlayback
from tests.fakes.twilio_webhooks import twilio_signature

FRAME = 160
SECOND = 8000


def audio(n: int, byte: int = 0x7E) -> bytes:
    return bytes([byte]) * n


# --------------------------------------------------------------------------- player


def test_audio_plays_at_8000_bytes_per_second() -> None:
    p = TwilioPlayback()
    p.enqueue_audio(audio(SECOND), now=10.0)
    p.advance(10.25)
    assert len(p.played) == 2000 and p.queued_bytes == 6000
    p.advance(11.5)
    assert len(p.played) == SECOND and p.queued_bytes == 0


def test_sending_faster_than_real_time_queues_in_order() -> None:
    p = TwilioPlayback()
    for i in range(5):
        p.enqueue_audio(audio(FRAME, byte=i), now=0.0)
    p.advance(0.05)  # 2.5 frames
    assert bytes(p.played) == audio(FRAME, 0) + audio(FRAME, 1) + audio(80, 2)
    assert p.queued_bytes == 5 * FRAME - 400


def test_mark_echoed_when_reached() -> None:
    p = TwilioPlayback()
    p.enqueue_audio(audio(FRAME), now=0.0)
    p.enqueue_mark("m1", now=0.0)
    p.enqueue_audio(audio(FRAME), now=0.0)
    p.enqueue_mark("m2", now=0.0)
    assert p.next_due() == pytest.approx(0.02)
    p.advance(0.019)
    assert p.take_echoes() == []
    p.advance(0.021)
    assert p.take_echoes() == [MarkEcho("m1", pytest.approx(0.02), False)]
    assert p.next_due() == pytest.approx(0.04)
    p.advance(1.0)
    assert [e.name for e in p.take_echoes()] == ["m2"]
    assert p.take_echoes() == []  # never twice
    assert [e.name for e in p.echoes] == ["m1", "m2"]
    assert p.next_due() is None


def test_mark_on_empty_queue_is_echoed_at_once() -> None:
    p = TwilioPlayback()
    p.enqueue_mark("now", now=5.0)
    assert p.take_echoes() == [MarkEcho("now", 5.0, False)]


def test_idle_player_starts_new_audio_at_its_arrival() -> None:
    p = TwilioPlayback()
    p.enqueue_audio(audio(FRAME), now=0.0)
    p.advance(10.0)  # long idle after 20 ms of audio
    p.enqueue_audio(audio(FRAME), now=10.0)
    p.enqueue_mark("m", now=10.0)
    assert p.next_due() == pytest.approx(10.02)
    p.advance(10.01)
    assert p.take_echoes() == []


def test_clear_discards_audio_and_flushes_marks_in_order() -> None:
    p = TwilioPlayback()
    p.enqueue_audio(audio(FRAME), now=0.0)
    p.enqueue_mark("a", now=0.0)
    p.enqueue_audio(audio(SECOND), now=0.0)
    p.enqueue_mark("b", now=0.0)
    p.enqueue_audio(audio(FRAME), now=0.0)
    p.enqueue_mark("c", now=0.0)
    p.clear(now=0.5)
    echoes = p.take_echoes()
    assert [(e.name, e.flushed) for e in echoes] == [("a", False), ("b", True), ("c", True)]
    assert echoes[0].at == pytest.approx(0.02) and echoes[1].at == 0.5
    assert len(p.played) == 4000 and p.discarded_bytes == FRAME + SECOND - 3840
    assert p.queued_bytes == 0 and p.pending_marks == [] and p.clears == [0.5]
    p.clear(now=0.6)  # nothing left to echo
    assert p.take_echoes() == []
    p.advance(2.0)
    assert p.take_echoes() == []


def test_audio_after_clear_plays_from_the_clear() -> None:
    p = TwilioPlayback()
    p.enqueue_audio(audio(SECOND), now=0.0)
    p.clear(now=0.1)
    p.enqueue_audio(audio(FRAME, 1), now=0.1)
    p.enqueue_mark("after", now=0.1)
    assert p.next_due() == pytest.approx(0.12)


def test_duplicate_mark_names_are_separate_marks() -> None:
    p = TwilioPlayback()
    p.enqueue_audio(audio(FRAME), now=0.0)
    p.enqueue_mark("x", now=0.0)
    p.enqueue_audio(audio(FRAME), now=0.0)
    p.enqueue_mark("x", now=0.0)
    p.advance(1.0)
    assert [e.at for e in p.take_echoes()] == [pytest.approx(0.02), pytest.approx(0.04)]


def test_time_scaled_player() -> None:
    p = TwilioPlayback(rate=SECOND * 10)
    p.enqueue_audio(audio(SECOND), now=0.0)
    p.enqueue_mark("m", now=0.0)
    assert p.next_due() == pytest.approx(0.1)


# --------------------------------------------------------------------------- fixture audio


def test_fixture_speech() -> None:
    speech = load_speech_ulaw()
    assert SPEECH_ULAW_PATH.stat().st_size < 60_000
    assert len(speech) % FRAME == 0 and len(speech) >= 3 * SECOND
    assert len(set(speech)) > 100  # real speech, not silence
    frames = ulaw_frames(speech[:-1])
    assert all(len(f) == FRAME for f in frames) and frames[-1][-1] == 0xFF
    assert ulaw_silence(20) == b"\xff" * FRAME


# --------------------------------------------------------------------------- driver, loopback


class Server:
    """A bare WebSocket server standing in for ours: records frames, sends what it is told."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.conn: asyncio.Future[ServerConnection] | None = None

    async def handler(self, ws: ServerConnection) -> None:
        assert self.conn is not None
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
    server.conn = asyncio.get_running_loop().create_future()
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        yield server, f"ws://127.0.0.1:{port}/twilio/media-stream"


def frame_msg(sid: str, data: bytes) -> str:
    return json.dumps({"event": "media", "streamSid": sid,
                       "media": {"payload": base64.b64encode(data).decode()}})


async def test_driver_speaks_the_protocol(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        twilio = FakeTwilioMediaClient(url, custom_parameters={"sessionToken": "t0k"},
                                       auth_token="tok",
                                       signed_url="wss://agent.example.com/twilio/media-stream",
                                       time_scale=4.0)
        async with twilio:
            assert server.conn is not None
            ws = await server.conn
            assert ws.request is not None
            assert ws.request.headers["X-Twilio-Signature"] == twilio_signature(
                "tok", "wss://agent.example.com/twilio/media-stream")

            connected = await server.inbox.get()
            assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
            start = await server.inbox.get()
            assert start["event"] == "start" and start["sequenceNumber"] == "1"
            body = start["start"]
            assert body["callSid"] == twilio.call_sid and body["streamSid"] == twilio.stream_sid
            assert body["customParameters"] == {"sessionToken": "t0k"}
            assert body["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                           "channels": 1}
            sid = start["streamSid"]

            speech = load_speech_ulaw()[:FRAME * 3]
            await twilio.say(speech)
            received = []
            while len(received) < 3:
                msg = await server.next("media")
                if base64.b64decode(msg["media"]["payload"]) != b"\xff" * FRAME:
                    received.append(msg)
            assert b"".join(base64.b64decode(m["media"]["payload"]) for m in received) == speech
            seqs = [int(m["sequenceNumber"]) for m in received]
            chunks = [int(m["media"]["chunk"]) for m in received]
            assert seqs == list(range(seqs[0], seqs[0] + 3)) and chunks[0] >= 1
            assert int(received[1]["media"]["timestamp"]) - int(
                received[0]["media"]["timestamp"]) == 20

            # playback: a mark after queued audio is echoed once it has played
            await ws.send(frame_msg(sid, audio(FRAME * 2)))
            await ws.send(json.dumps({"event": "mark", "streamSid": sid,
                                      "mark": {"name": "m1"}}))
            echo = await server.next("mark")
            assert echo["mark"] == {"name": "m1"} and echo["streamSid"] == sid
            assert (await twilio.wait_for_echo("m1")).flushed is False

            # clear: queued audio dropped, the pending mark flushed
            await ws.send(frame_msg(sid, audio(SECOND * 60)))
            await ws.send(json.dumps({"event": "mark", "streamSid": sid,
                                      "mark": {"name": "m2"}}))
            await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
            assert (await server.next("mark"))["mark"]["name"] == "m2"
            assert (await twilio.wait_for_echo("m2")).flushed is True
            assert twilio.playback.discarded_bytes > 0

            await twilio.send_dtmf("7")
            assert (await server.next("dtmf"))["dtmf"] == {"track": "inbound_track",
                                                           "digit": "7"}
            await twilio.hangup()
            stop = await server.next("stop")
            assert stop["stop"] == {"accountSid": twilio.account_sid,
                                    "callSid": twilio.call_sid}
        twilio.assert_no_violations()
        assert twilio.received_audio_bytes == FRAME * 2 + SECOND * 60
        assert [name for _, name in twilio.marks_received] == ["m1", "m2"]
        sent_seqs = [int(m["sequenceNumber"]) for m in twilio.sent if "sequenceNumber" in m]
        assert sent_seqs == list(range(1, len(sent_seqs) + 1))
        # cross-check: everything the fake sent passes our own strict parser and state rules
        state = TwilioStreamState()
        for message in twilio.sent:
            state.receive(json.dumps(message))
        assert state.stopped and state.seq_gaps == 0 and state.seq_regressions == 0


async def test_driver_flags_messages_before_start(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        twilio = FakeTwilioMediaClient(url)
        await twilio.connect(send_start=False)
        try:
            assert server.conn is not None
            ws = await server.conn
            await ws.send(frame_msg(twilio.stream_sid, audio(FRAME)))
            await twilio.wait_for(lambda: twilio.violations)
        finally:
            await twilio.close()
        assert [v.reason for v in twilio.violations] == ["before_start"]
        assert twilio.media == []


async def test_driver_records_server_protocol_errors(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        async with FakeTwilioMediaClient(url, continuous=False) as twilio:
            assert server.conn is not None
            ws = await server.conn
            sid = (await server.next("start"))["streamSid"]
            await ws.send(b"\x00binary")
            await ws.send("{not json")
            await ws.send(json.dumps({"event": "clear"}))
            await ws.send(json.dumps({"event": "clear", "streamSid": "MZ" + "9" * 32}))
            await ws.send(json.dumps({"event": "play", "streamSid": sid}))
            await ws.send(json.dumps({"event": "media", "streamSid": sid,
                                      "media": {"payload": "not base64!"}}))
            await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {}}))
            await ws.send(frame_msg(sid, audio(100)))
            await twilio.wait_for(lambda: len(twilio.received) == 8)
        reasons = [v.reason for v in twilio.violations]
        assert reasons == ["binary_frame", "invalid_json", "missing_stream_sid",
                           "wrong_stream_sid", "unknown_event", "bad_base64", "bad_mark"]
        assert [w.reason for w in twilio.warnings] == ["odd_payload_size"]
        with pytest.raises(AssertionError):
            twilio.assert_no_violations()


async def test_server_closing_ends_the_stream(loopback: tuple[Server, str]) -> None:
    server, url = loopback
    async with asyncio.timeout(10):
        async with FakeTwilioMediaClient(url) as twilio:
            assert server.conn is not None
            ws = await server.conn
            await server.next("start")
            await ws.close(1000, "bye")
            await twilio.wait_closed()
        assert twilio.close_code == 1000
