"""The fake Gemini Live server, driven by a plain ``websockets`` client on loopback.

Frames are built and parsed with ``agentic_fast.providers.gemini.events`` (the fake itself
imports none of our code), so these tests also check our messages against the fake's
google-genai validation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentic_fast.brain.intent import run_command_declaration
from agentic_fast.call.manager import CallDirection, CallSession
from agentic_fast.core.config import Config
from agentic_fast.providers.factory import provider_factory
from agentic_fast.providers.gemini.events import (
    AUTH_HEADER,
    AudioChunk,
    GeminiEvent,
    GeminiSetup,
    GenerationComplete,
    GoAway,
    InputTranscription,
    Interrupted,
    ModelText,
    OutputTranscription,
    SessionResumptionUpdate,
    SetupComplete,
    ToolCall,
    ToolCallCancellation,
    TurnComplete,
    UsageMetadata,
    VadSettings,
    activity_end,
    activity_start,
    audio_stream_end,
    client_content,
    parse_server_message,
    realtime_audio,
    realtime_text,
    tool_response,
)
from tests.fakes.gemini_live import (
    REASON_BAD_KEY,
    REASON_DEADLINE,
    REASON_INVALID,
    FakeGeminiLive,
    ModelTurn,
)

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
MODEL3 = "gemini-3.1-flash-live-preview"
TIMEOUT = 5.0


def pcm16(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def chunk_b64(i: int, amplitude: int = 0) -> str:
    """20 ms of 16 kHz PCM16: a quiet ramp tagged by ``i``, or a loud 1 kHz tone."""
    if amplitude:
        return base64.b64encode(pcm16([int(amplitude * math.sin(2 * math.pi * n / 16))
                                       for n in range(320)])).decode()
    return base64.b64encode(pcm16([(i * 7 + n) % 200 - 100 for n in range(320)])).decode()


class Session:
    """A client connection plus every event parsed from it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[GeminiEvent] = []
        self.frames: list[str | bytes] = []

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def until(self, kind: type, count: int = 1) -> list[GeminiEvent]:
        """Read frames until ``count`` events of ``kind`` arrived; return all events so far."""
        async with asyncio.timeout(TIMEOUT):
            while sum(type(e) is kind for e in self.events) < count:
                frame = await self.ws.recv()
                self.frames.append(frame)
                self.events.extend(parse_server_message(frame))
        return self.events

    async def closed(self) -> tuple[int | None, str | None]:
        """Read until the server closes; the close code and reason it sent (None: abort)."""
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    self.events.extend(parse_server_message(await self.ws.recv()))
        rcvd = info.value.rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if type(e) is kind]


@pytest.fixture
async def fake() -> AsyncIterator[FakeGeminiLive]:
    async with FakeGeminiLive() as fake:
        yield fake


async def open_session(fake: FakeGeminiLive, setup: GeminiSetup | None = None, *,
                       handle: str | None = None, auth: str = "header",
                       wait_setup: bool = True) -> Session:
    url, headers = fake.url, {}
    if auth == "header":
        headers[AUTH_HEADER] = fake.api_key
    elif auth == "query":
        url += "?key=" + fake.api_key
    elif auth == "bad":
        headers[AUTH_HEADER] = "wrong-key"
    ws = await connect(url, additional_headers=headers, ping_interval=None)
    session = Session(ws)
    await session.send((setup or GeminiSetup(MODEL)).to_json(handle))
    if wait_setup:
        await session.until(SetupComplete)
    return session


# --------------------------------------------------------------------------- connection


@pytest.mark.parametrize("auth", ["header", "query"])
async def test_setup_complete_in_binary_frame_then_resumption_handle(
        fake: FakeGeminiLive, auth: str) -> None:
    s = await open_session(fake, GeminiSetup(MODEL, voice="Puck", system_instruction="Be brief"),
                           auth=auth)
    events = await s.until(SessionResumptionUpdate)
    assert isinstance(s.frames[0], bytes)  # the real server sends binary frames
    assert type(events[0]) is SetupComplete
    update = s.of(SessionResumptionUpdate)[0]
    assert update.resumable and update.new_handle in fake.issued_handles
    assert fake.connection_count == 1 and fake.current.auth == auth
    assert fake.setups[0]["model"] == "models/" + MODEL
    assert fake.setups[0]["generationConfig"]["speechConfig"]["voiceConfig"] == {
        "prebuiltVoiceConfig": {"voiceName": "Puck"}}
    await s.ws.close()


@pytest.mark.parametrize(("auth", "code", "reason"), [("bad", 1007, REASON_BAD_KEY),
                                                      ("none", 1008, None)])
async def test_bad_or_missing_key_closes_after_setup(fake: FakeGeminiLive, auth: str, code: int,
                                                     reason: str | None) -> None:
    s = await open_session(fake, auth=auth, wait_setup=False)
    got_code, got_reason = await s.closed()
    assert got_code == code
    assert got_reason == reason if reason else "unregistered callers" in (got_reason or "")
    assert not fake.setups


async def test_wrong_path_is_404(fake: FakeGeminiLive) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(fake.base_url + "/ws/BidiGenerateContent", ping_interval=None)
    assert info.value.response.status_code == 404


@pytest.mark.parametrize("first", [
    realtime_text("hello"),                                   # not setup first
    '{"setup": {"model": "models/x", "bogusField": 1}}',        # unknown field (types reject)
    '{"setup": {"model": "gemini-2.5-flash"}}',                 # no models/ prefix
    "{not json",
])
async def test_invalid_first_message_closes_1007(fake: FakeGeminiLive, first: str) -> None:
    ws = await connect(fake.url, additional_headers={AUTH_HEADER: fake.api_key},
                       ping_interval=None)
    await ws.send(first)
    assert await Session(ws).closed() == (1007, REASON_INVALID)
    assert fake.violations and not fake.setups


async def test_bare_function_declarations_in_setup_tools_close_1007(fake: FakeGeminiLive) -> None:
    """``setup.tools`` holds Tool objects (``[{"functionDeclarations": [...]}]``); the bare
    declarations the production wiring once sent are refused as the real server refuses them."""
    ws = await connect(fake.url, additional_headers={AUTH_HEADER: fake.api_key},
                       ping_interval=None)
    await ws.send(json.dumps({"setup": {"model": "models/" + MODEL,
                                        "tools": [run_command_declaration()]}}))
    assert await Session(ws).closed() == (1007, REASON_INVALID)
    [violation] = fake.violations
    assert violation.reason == "invalid_setup" and "setup.tools" in violation.detail
    assert not fake.setups


async def test_production_wired_gemini_setup_is_accepted(fake: FakeGeminiLive) -> None:
    """The provider ``provider_factory`` builds with the brain's declarations (what
    ``make_bridge_factory`` does in tool mode) passes the fake's validation."""
    config = Config.from_text(f"gemini:\n  url: {fake.url}\n  api_key: {fake.api_key}\n"
                              "audio:\n  provider: gemini\n", source="test", env={})
    make = provider_factory(config, tools=[{"type": "function", **run_command_declaration()}],
                            gemini_declarations=[run_command_declaration()])
    provider = make(CallSession(CallDirection.INBOUND, "+15551230000", "+15550001111"))
    try:
        await provider.connect()
        provider.send_audio(chunk_b64(1))
        await fake.wait_for(lambda: fake.samples_received == 320)
    finally:
        await provider.close()
    [tool] = fake.setups[0]["tools"]
    assert [d["name"] for d in tool["functionDeclarations"]] == ["run_command"]
    assert not fake.violations and fake.current.close_code is None


async def test_unknown_model_closes_1008() -> None:
    async with FakeGeminiLive(known_models=frozenset({MODEL})) as fake:
        s = await open_session(fake, GeminiSetup("gemini-0-nope"), wait_setup=False)
        code, reason = await s.closed()
        assert code == 1008 and "models/gemini-0-nope is not found" in (reason or "")


async def test_snake_case_messages_are_accepted(fake: FakeGeminiLive) -> None:
    """The SDK itself sends a mix of spellings (protocols.md 3.2)."""
    ws = await connect(fake.url, additional_headers={AUTH_HEADER: fake.api_key},
                       ping_interval=None)
    s = Session(ws)
    await s.send(json.dumps({"setup": {"model": "models/" + MODEL, "generationConfig": {
        "responseModalities": ["AUDIO"], "speechConfig": {"voice_config": {
            "prebuilt_voice_config": {"voice_name": "Kore"}}}},
        "realtimeInputConfig": {"automatic_activity_detection": {"disabled": False}},
        "sessionResumption": {}}}))
    await s.until(SetupComplete)
    await s.send(json.dumps({"realtime_input": {"audio": {"data": chunk_b64(1),
                                                          "mime_type": "audio/pcm;rate=16000"}}}))
    # The SDK encodes bytes as URL-safe base64 (proto3 JSON accepts both alphabets).
    await s.send(json.dumps({"realtime_input": {"audio": {"data": "-_8=",
                                                          "mime_type": "audio/pcm;rate=16000"}}}))
    await fake.wait_for(lambda: fake.samples_received == 321)
    assert fake.audio_received[-2:] == b"\xfb\xff"
    assert not fake.violations
    await ws.close()


# --------------------------------------------------------------------------- client input


async def test_audio_is_decoded_and_recorded(fake: FakeGeminiLive) -> None:
    s = await open_session(fake)
    for i in range(50):
        await s.send(realtime_audio(chunk_b64(i)))
    await fake.wait_for(lambda: fake.samples_received == 50 * 320)
    assert fake.audio_received == b"".join(base64.b64decode(chunk_b64(i)) for i in range(50))
    assert len(fake.received) == 50 and not fake.violations
    await s.ws.close()


@pytest.mark.parametrize("message", [
    '{"realtimeInput":{"audio":{"data":"AAAA","mimeType":"audio/pcm;rate=8000"}}}',
    '{"realtimeInput":{"audio":{"data":"AAAA","mimeType":"audio/pcm"}}}',
    '{"realtimeInput":{"audio":{"data":"A*A=","mimeType":"audio/pcm;rate=16000"}}}',
    '{"realtimeInput":{"audio":{"data":"AA==","mimeType":"audio/pcm;rate=16000"}}}',
    '{"realtimeInput":{"audio":{"data":"AA","mimeType":"audio/pcm;rate=16000"}}}',
    '{"realtimeInput":{"audioo":{}}}',
])
async def test_bad_realtime_input_closes_1007(fake: FakeGeminiLive, message: str) -> None:
    s = await open_session(fake)
    await s.send(message)
    assert await s.closed() == (1007, REASON_INVALID)


async def test_activity_signals_with_automatic_vad_are_violations(fake: FakeGeminiLive) -> None:
    s = await open_session(fake)
    await s.send(activity_start())
    await fake.wait_for(lambda: fake.violations)
    assert fake.violations[0].reason == "activity_with_automatic_vad"
    await s.ws.close()


async def test_messages_before_setup_complete_are_violations() -> None:
    async with FakeGeminiLive(setup_complete_delay_s=60.0) as fake:
        s = await open_session(fake, wait_setup=False)
        await s.send(realtime_audio(chunk_b64(0)))
        await fake.wait_for(lambda: fake.violations)
        assert fake.violations[0].reason == "before_setup_complete"
        await s.ws.close()


# --------------------------------------------------------------------------- model turns


async def test_model_turn_after_audio() -> None:
    async with FakeGeminiLive(respond_after_audio_ms=200) as fake:
        s = await open_session(fake)
        for i in range(10):
            await s.send(realtime_audio(chunk_b64(i)))
        await s.until(TurnComplete)
        events = await s.until(SessionResumptionUpdate, 3)  # setup, mid-turn, after turn
    kinds = [type(e) for e in events]
    assert "".join(e.text for e in s.of(InputTranscription)) == "Hello, I'd like to book a table."
    assert "".join(e.text for e in s.of(OutputTranscription)) == "Sure, for which day?"
    audio = s.of(AudioChunk)
    assert {a.rate for a in audio} == {24000}
    assert sum(len(base64.b64decode(a.data)) for a in audio) == 24000 * 2 * 400 // 1000
    assert kinds.index(InputTranscription) < kinds.index(AudioChunk)
    assert kinds.index(GenerationComplete) < kinds.index(TurnComplete)
    assert kinds.index(TurnComplete) < kinds.index(UsageMetadata)
    updates = s.of(SessionResumptionUpdate)
    assert not updates[1].resumable and updates[1].new_handle is None  # during generation
    assert updates[2].resumable and updates[2].new_handle
    assert fake.current.turns_done == 1


async def test_text_frames_and_audio_stream_end_trigger() -> None:
    async with FakeGeminiLive(binary_frames=False) as fake:
        s = await open_session(fake)
        await s.send(realtime_audio(chunk_b64(0)))
        await s.send(audio_stream_end())
        await s.until(TurnComplete)
        assert all(isinstance(f, str) for f in s.frames)
        assert fake.current.audio_stream_ends == 1


async def test_speech_trigger_and_periodic_handles() -> None:
    async with FakeGeminiLive(respond_after_speech_ms=100,
                              resumption_update_interval_s=0.01) as fake:
        s = await open_session(fake)
        await s.until(SessionResumptionUpdate, 3)  # fresh handles while idle
        for i in range(20):  # silence-ish audio does not count as speech
            await s.send(realtime_audio(chunk_b64(i)))
        await fake.wait_for(lambda: fake.samples_received == 20 * 320)
        assert fake.current.turns_started == 0
        for i in range(5):
            await s.send(realtime_audio(chunk_b64(i, amplitude=12000)))
        await s.until(TurnComplete)
        assert len(set(fake.issued_handles)) == len(fake.issued_handles) >= 3


async def test_manual_vad_text_modality_and_media_chunks(fake: FakeGeminiLive) -> None:
    setup = GeminiSetup(MODEL, vad=VadSettings(disabled=True), response_modality="TEXT",
                        output_transcription=False)
    s = await open_session(fake, setup)
    await s.send(activity_start())
    await s.send(json.dumps({"realtimeInput": {"mediaChunks": [
        {"data": chunk_b64(0), "mimeType": "audio/pcm;rate=16000"}]}}))
    await s.send(activity_end())
    await s.until(TurnComplete)
    assert "".join(e.text for e in s.of(ModelText)) == "Sure, for which day?"
    assert not s.of(AudioChunk) and not s.of(OutputTranscription)
    assert fake.samples_received == 320
    await s.send(audio_stream_end())  # not allowed with manual VAD
    await fake.wait_for(lambda: fake.violations)
    assert fake.violations[0].reason == "stream_end_with_manual_vad"
    await s.ws.close()


async def test_scripted_interruption() -> None:
    turn = ModelTurn(audio_ms=400, interrupt_after_chunks=3)
    async with FakeGeminiLive(turns=[turn]) as fake:
        s = await open_session(fake)
        await s.send(realtime_text("hi"))
        events = await s.until(TurnComplete)
    kinds = [type(e) for e in events]
    assert len(s.of(AudioChunk)) == 3
    assert kinds.index(Interrupted) < kinds.index(TurnComplete)
    assert GenerationComplete not in kinds  # an interrupted turn has none
    assert fake.current.interrupted_turns == 1 and fake.current.texts == ["hi"]


async def test_barge_in_by_caller_speech() -> None:
    async with FakeGeminiLive(realtime=True, barge_in_on_speech=True,
                              default_turn=ModelTurn(audio_ms=20_000)) as fake:
        s = await open_session(fake)
        await s.send(realtime_text("tell me a long story"))
        await s.until(AudioChunk)
        for i in range(5):  # 100 ms of loud speech while the model talks
            await s.send(realtime_audio(chunk_b64(i, amplitude=12000)))
        events = await s.until(TurnComplete)
    assert Interrupted in [type(e) for e in events]
    assert len(s.of(AudioChunk)) < 20_000 // 40


async def test_tool_call_round_trip_and_cancellation() -> None:
    call = {"name": "end_call", "args": {"reason": "caller said goodbye"}}
    async with FakeGeminiLive(turns=[ModelTurn(tool_calls=[call]),
                                     ModelTurn(tool_calls=[call])]) as fake:
        s = await open_session(fake)
        await s.send(realtime_text("bye"))
        [tc] = [e for e in await s.until(ToolCall) if type(e) is ToolCall]
        assert not s.of(AudioChunk)  # generation pauses until the response
        fc = tc.calls[0]
        assert fc.name == "end_call" and fc.args == {"reason": "caller said goodbye"}
        await s.send(tool_response([fc.reply({"result": "ok"})]))
        await s.until(TurnComplete)
        assert s.of(AudioChunk) and fake.current.tool_responses[0]["id"] == fc.id
        # second turn: the caller interrupts while the call is pending -> cancellation
        await s.send(realtime_text("wait"))
        tc2 = (await s.until(ToolCall, 2))[-1]
        await fake.interrupt()
        await s.until(ToolCallCancellation)
        assert s.of(ToolCallCancellation)[0].ids == (tc2.calls[0].id,)
        await s.send(tool_response([tc2.calls[0].reply({"result": "late"})]))  # ignored
        await fake.wait_for(lambda: len(fake.current.tool_responses) == 2)
        assert not fake.violations


# --------------------------------------------------------------------------- goAway, resume


async def test_go_away_then_resume_with_handle() -> None:
    async with FakeGeminiLive(connection_cap_s=0.3, go_away_time_left_s=0.1) as fake:
        s = await open_session(fake)
        await s.until(SessionResumptionUpdate)
        handle = s.of(SessionResumptionUpdate)[0].new_handle
        await s.until(GoAway)
        assert s.of(GoAway)[0].time_left_s == pytest.approx(0.1)
        assert await s.closed() == (1011, REASON_DEADLINE)
        s2 = await open_session(fake, handle=handle)
        assert fake.handles_used == [handle] and fake.connection_count == 2
        assert fake.connections[1].session is fake.connections[0].session
        assert fake.connections[1].resumed_handle == handle
        await s2.ws.close()


async def test_on_demand_go_away_and_unknown_handle(fake: FakeGeminiLive) -> None:
    s = await open_session(fake)
    await fake.go_away(0.05)
    await s.until(GoAway)
    assert (await s.closed())[0] == 1011
    s2 = await open_session(fake, handle="never-issued", wait_setup=False)
    assert await s2.closed() == (1007, REASON_INVALID)
    assert fake.violations[-1].reason == "unknown_handle" and not fake.handles_used


async def test_on_demand_turn_handle_raw_message_and_close(fake: FakeGeminiLive) -> None:
    s = await open_session(fake)
    await fake.play_turn(ModelTurn(audio_ms=80, input_transcript=None))  # returns once sent
    handle = await fake.send_resumption_update()
    await fake.send({"toolCallCancellation": {"ids": ["fc-9"]}})
    await s.until(ToolCallCancellation)
    assert not s.of(InputTranscription) and len(s.of(AudioChunk)) == 2
    assert s.of(SessionResumptionUpdate)[-1].new_handle == handle
    await fake.close_connection(1011, "Internal error encountered.")
    assert await s.closed() == (1011, "Internal error encountered.")


async def test_abrupt_close(fake: FakeGeminiLive) -> None:
    s = await open_session(fake)
    fake.drop_connection()
    assert await s.closed() == (None, None)  # no close frame: 1006 on the client
    await fake.wait_for(lambda: fake.current.closed)


# --------------------------------------------------------------------------- clientContent


async def test_gemini3_rejects_client_content_after_first_turn() -> None:
    async with FakeGeminiLive() as fake:
        s = await open_session(fake, GeminiSetup(MODEL3, initial_history_in_client_content=True))
        await s.send(client_content([("user", "My name is Ada."), ("model", "Hi Ada.")],
                                    turn_complete=False))  # history seed: accepted
        await s.send(realtime_text("What's my name?"))
        await s.until(TurnComplete)
        await s.send(client_content("And now?"))
        assert await s.closed() == (1007, REASON_INVALID)
        assert len(fake.current.client_contents) == 1
        assert fake.violations[-1].reason == "client_content_gemini3"


async def test_gemini3_rejects_client_content_without_history_config(
        fake: FakeGeminiLive) -> None:
    s = await open_session(fake, GeminiSetup(MODEL3))
    await s.send(client_content("hello", turn_complete=False))
    assert await s.closed() == (1007, REASON_INVALID)


async def test_gemini25_client_content_interrupts_and_answers() -> None:
    async with FakeGeminiLive(realtime=True, default_turn=ModelTurn(audio_ms=20_000)) as fake:
        s = await open_session(fake, GeminiSetup(MODEL, vad=VadSettings(silence_duration_ms=500)))
        await s.send(realtime_text("tell me a long story"))
        await s.until(AudioChunk)
        fake.queue_turn(ModelTurn(audio_ms=80))
        await s.send(client_content("Summarise the call so far."))
        events = await s.until(TurnComplete, 2)
    kinds = [type(e) for e in events]
    cut = kinds.index(Interrupted)
    assert kinds.index(TurnComplete) > cut  # the interrupted turn ends...
    assert AudioChunk in kinds[kinds.index(TurnComplete):]  # ...and the answer follows
    assert GenerationComplete in kinds[cut:]
    assert fake.current.client_contents[0]["turnComplete"] is True
    assert fake.current.turns_done == 2 and fake.current.interrupted_turns == 1


# --------------------------------------------------------------------------- the official SDK


async def test_official_sdk_client_talks_to_the_fake(fake: FakeGeminiLive) -> None:
    """google-genai's own Live client (mixed-case setup, URL-safe base64 audio, binary
    replies parsed into LiveServerMessage) against the fake; only its URL is redirected."""
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=fake.api_key)
    api = client._api_client
    if not hasattr(api, "_websocket_base_url") or not hasattr(api, "_websocket_ssl_ctx"):
        pytest.skip("google-genai internals changed; cannot redirect the Live URL")
    api._websocket_base_url = lambda *_: fake.base_url  # type: ignore[method-assign]
    api._websocket_ssl_ctx = {}  # plain ws:// on loopback
    config = types.LiveConnectConfig(
        response_modalities=["AUDIO"], system_instruction="Be brief.",
        speech_config=types.SpeechConfig(voice_config=types.VoiceConfig(
            prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name="Puck"))),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(),
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(
                silence_duration_ms=300)))
    pcm = b"".join(base64.b64decode(chunk_b64(i)) for i in range(5))
    audio, heard = bytearray(), []
    async with asyncio.timeout(TIMEOUT), client.aio.live.connect(model=MODEL,
                                                                 config=config) as session:
        await session.send_realtime_input(audio=types.Blob(data=pcm,
                                                           mime_type="audio/pcm;rate=16000"))
        await session.send_realtime_input(audio_stream_end=True)
        async for msg in session.receive():
            content = msg.server_content
            if content and content.model_turn:
                audio += b"".join(p.inline_data.data for p in content.model_turn.parts)
            if content and content.input_transcription:
                heard.append(content.input_transcription.text)
            if content and content.turn_complete:
                break
    assert fake.audio_received == pcm and not fake.violations
    # (google-genai 3.x connects to the ``v1`` path; protocols.md 3.1 names v1beta/v1alpha.)
    assert len(audio) == 24000 * 2 * 400 // 1000
    assert "".join(heard) == "Hello, I'd like to book a table."
