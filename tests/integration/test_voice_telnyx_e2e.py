"""Whole calls through Telnyx: fake Telnyx (Call Control v2 REST, signed webhooks, media
stream client) -> server -> AudioBridge -> OpenAI or Gemini provider -> their fakes, and back.

Wired as in production (``make_bridge_factory``: the brain in its default mode ``tool``,
the one gateway client); the fake Telnyx checks every REST body against the SDK's params
and every frame we send on the media stream, and signs every webhook with its Ed25519 key.
Both codecs: PCMU 8 kHz and L16 16 kHz (big-endian, as RTP L16 is).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from agentic_fast.audio import AudioConverter
from agentic_fast.audio.l16 import L16Converter
from agentic_fast.brain.intent import RUN_COMMAND
from agentic_fast.call.factory import make_bridge_factory
from agentic_fast.call.manager import CallStatus
from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.server.app import SERVICES, create_app, start_site
from agentic_fast.server.runner import make_runner
from tests.fakes.audio import load_speech_ulaw
from tests.fakes.gemini_live import FakeGeminiLive, ModelTurn
from tests.fakes.gemini_live import tone as gemini_tone
from tests.fakes.openai_realtime import FakeOpenAIRealtime, tone
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway
from tests.fakes.telnyx_media import FakeTelnyxMediaClient
from tests.fakes.telnyx_rest import FakeTelnyx, FakeTelnyxCall
from tests.fakes.telnyx_webhooks import event_envelope

OWNER = "+15551230000"  # the caller (allowed to command the brain)
OUR_NUMBER = "+15557654321"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    telnyx: FakeTelnyx
    gateway: FakeOpenClawGateway
    config: Config
    runner: Any
    site: Any
    port: int
    openai: FakeOpenAIRealtime | None = None
    gemini: FakeGeminiLive | None = None

    @property
    def services(self) -> Any:
        return self.runner.app[SERVICES]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def incoming(self) -> tuple[FakeTelnyxCall, FakeTelnyxMediaClient]:
        call = await self.telnyx.incoming_call(OWNER, OUR_NUMBER)
        await call.wait_answered()
        media = await call.wait_media()
        # the stream is live once the call store has claimed its token and the call
        session = self.services.manager.get_by_sid(call.call_control_id)
        await media.wait_for(lambda: session is not None and session.stream_started)
        return call, media


def _config(telnyx: FakeTelnyx, gateway: FakeOpenClawGateway, port: int, provider: str,
            codec: str, provider_yaml: str, key_path: Path, *, telnyx_yaml: str = "",
            calls_yaml: str = "") -> Config:
    text = f"""
server:
  public_url: https://agent.example.test
  port: {port}
carrier: telnyx
telnyx:
  api_key: {telnyx.api_key}
  api_base_url: {telnyx.base_url}
  connection_id: '{telnyx.connection_id}'
  public_key: {telnyx.public_key_b64}
  from_number: '+15550001111'
  codec: {codec}
  stream_url: ws://127.0.0.1:{port}/telnyx/media-stream
  webhook_url: http://127.0.0.1:{port}/telnyx/webhook
  request_timeout_s: 5
{telnyx_yaml}
audio:
  provider: {provider}
bridge:
  lead_ms: 120
  mark_every_frames: 5
gateway:
  url: {gateway.url}
  token: gw-token
  device_key_path: {key_path}
brain:
  allowed_callers: ['{OWNER}']
  filler_after_s: 0
calls:
  inbound: open
  rate_limits:
    per_caller_per_minute: 0
    global_per_second: 0
{calls_yaml}
{provider_yaml}"""
    return Config.from_text(text, source="test-config", env={})


async def _stack(tmp_path: Path, provider: str, codec: str, *, telnyx_yaml: str = "",
                 calls_yaml: str = "", **fake: Any) -> AsyncIterator[Stack]:
    port = _free_port()
    async with FakeTelnyx(webhook_url=f"http://127.0.0.1:{port}/telnyx/webhook",
                          **fake) as telnyx, \
            FakeOpenClawGateway(token="gw-token",
                                default_script=ChatScript(noise=False)) as gateway:
        if provider == "gemini":
            model: Any = FakeGeminiLive(respond_on_stream_end=False)
            await model.__aenter__()
            yaml_part = f"gemini:\n  url: {model.url}\n  api_key: {model.api_key}\n"
        else:
            model = FakeOpenAIRealtime()
            await model.__aenter__()
            yaml_part = (f"openai_realtime:\n  url: {model.url.split('?')[0]}\n"
                         f"  api_key: {model.api_key}\n")
        config = _config(telnyx, gateway, port, provider, codec, yaml_part,
                         tmp_path / "device_key", telnyx_yaml=telnyx_yaml,
                         calls_yaml=calls_yaml)
        app = create_app(config, bridge_factory=make_bridge_factory(config))
        runner = make_runner(app, config)
        await runner.setup()
        site = await start_site(runner, "127.0.0.1", port)
        stack = Stack(telnyx, gateway, config, runner, site, port)
        if provider == "gemini":
            stack.gemini = model
        else:
            stack.openai = model
        try:
            yield stack
        finally:
            await runner.cleanup()
            await model.__aexit__(None, None, None)


@pytest.fixture
async def openai_pcmu(tmp_path: Path) -> AsyncIterator[Stack]:
    async for stack in _stack(tmp_path, "openai", "PCMU"):
        yield stack


@pytest.fixture
async def gemini_l16(tmp_path: Path) -> AsyncIterator[Stack]:
    async for stack in _stack(tmp_path, "gemini", "L16"):
        yield stack


@pytest.fixture
async def gemini_pcmu(tmp_path: Path) -> AsyncIterator[Stack]:
    async for stack in _stack(tmp_path, "gemini", "PCMU"):
        yield stack


@pytest.fixture
async def openai_l16(tmp_path: Path) -> AsyncIterator[Stack]:
    async for stack in _stack(tmp_path, "openai", "L16"):
        yield stack


async def _api(stack: Stack, path: str, body: dict[str, Any] | None = None
               ) -> tuple[int, dict[str, Any]]:
    """POST to the server's /calls API (loopback: no token needed)."""
    async with aiohttp.ClientSession() as http, http.post(stack.base_url + path,
                                                          json=body or {}) as resp:
        return resp.status, await resp.json()


def _pcm16_be(n_ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(16 * n_ms) / 16000.0
    return (8000 * np.sin(2 * np.pi * hz * t)).astype(">i2").tobytes()


# -- inbound: answer with a media stream ------------------------------------------------------


async def test_inbound_call_is_answered_with_a_bidirectional_rtp_stream(
        openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    call, media = await stack.incoming()
    answer = await stack.telnyx.wait_request(lambda r: r.action == "answer")
    assert answer.status == 200 and answer.authorized
    body = answer.body or {}
    assert body["stream_url"] == f"ws://127.0.0.1:{stack.port}/telnyx/media-stream"
    assert (body["stream_bidirectional_mode"], body["stream_bidirectional_codec"],
            body["stream_codec"], body["stream_track"]) == ("rtp", "PCMU", "PCMU",
                                                            "inbound_track")
    session = stack.services.manager.get_by_sid(call.call_control_id)
    assert session is not None
    await media.wait_for(lambda: session.stream_started)  # after the store's checks
    assert session.status is CallStatus.IN_PROGRESS
    media.assert_no_violations()


async def test_pcmu_audio_both_ways_with_openai(openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    assert stack.openai is not None
    _call, media = await stack.incoming()
    s = await stack.openai.wait_session(0)
    speech = load_speech_ulaw()[:160 * 50]
    await s.wait_until(lambda: s.audio_bytes.get("audio/pcm", 0) > 0)  # silence flows
    before = s.audio_bytes.get("audio/pcm", 0)
    await media.say(speech)
    await s.wait_until(lambda: s.audio_bytes.get("audio/pcm", 0) >= before + 48000 * 2 // 2)
    reply = tone("audio/pcm", 600, 600.0)
    s.script_response(audio=reply, chunk_ms=200, pace=0)
    await s.user_turn("what is the weather like")
    out = AudioConverter("openai")
    frames = [base64.b64decode(f) for f in out.feed_provider(reply) + out.flush_provider()]
    await media.wait_for_audio(160 * len(frames), timeout=10)
    assert media.received_audio[:160 * len(frames)] == b"".join(frames)
    assert {len(m.audio) for m in media.media} == {160}
    assert not s.rejected
    media.assert_no_violations()


async def test_l16_reaches_gemini_byte_swapped_without_resampling(gemini_l16: Stack) -> None:
    stack = gemini_l16
    gemini = stack.gemini
    assert gemini is not None
    _call, media = await stack.incoming()
    answer = await stack.telnyx.wait_request(lambda r: r.action == "answer")
    body = answer.body or {}
    assert (body["stream_codec"], body["stream_bidirectional_codec"],
            body["stream_bidirectional_sampling_rate"]) == ("L16", "L16", 16000)
    await gemini.wait_for(lambda: gemini.connections and gemini.current.setup)
    speech = _pcm16_be(400)
    await gemini.wait_for(lambda: len(gemini.audio_received) > 0)
    await media.say(speech)
    # 16 kHz in: the model gets the caller's samples exactly, little-endian
    want = np.frombuffer(speech, ">i2").astype("<i2").tobytes()
    await gemini.wait_for(lambda: want in bytes(gemini.audio_received), timeout=10)

    reply = gemini_tone(600)  # 24 kHz PCM16 from the model
    await gemini.play_turn(ModelTurn(audio=reply, chunk_ms=100))
    out = L16Converter("gemini")
    frames = [base64.b64decode(f) for f in out.feed_provider(reply) + out.flush_provider()]
    await media.wait_for_audio(640 * len(frames), timeout=10)
    assert media.received_audio[:640 * len(frames)] == b"".join(frames)  # big-endian L16
    assert {len(m.audio) for m in media.media} == {640}
    assert not gemini.violations
    media.assert_no_violations()


async def test_l16_with_openai_is_resampled_to_24k(openai_l16: Stack) -> None:
    stack = openai_l16
    assert stack.openai is not None
    _call, media = await stack.incoming()
    s = await stack.openai.wait_session(0)
    await s.wait_until(lambda: s.audio_bytes.get("audio/pcm", 0) >= 24000 * 2 // 5)
    reply = tone("audio/pcm", 400, 600.0)
    s.script_response(audio=reply, chunk_ms=200, pace=0)
    await s.user_turn("hello")
    out = L16Converter("openai")
    frames = [base64.b64decode(f) for f in out.feed_provider(reply) + out.flush_provider()]
    await media.wait_for_audio(640 * len(frames), timeout=10)
    assert media.received_audio[:640 * len(frames)] == b"".join(frames)
    assert not s.rejected
    media.assert_no_violations()


# -- barge-in -----------------------------------------------------------------------------------


async def test_barge_in_clears_telnyx_and_truncates_at_what_was_heard(
        openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    assert stack.openai is not None
    _call, media = await stack.incoming()
    s = await stack.openai.wait_session(0)
    s.script_response(audio_ms=3000, chunk_ms=100, pace=0, hold_after_chunks=15)
    await s.user_turn("tell me a long story")
    await media.wait_for(lambda: len([e for e in media.echoes if not e.flushed]) >= 4)
    heard_ms = 100 * len([e for e in media.echoes if not e.flushed])
    await s.speech_started()
    await media.wait_for(lambda: media.clears)
    await s.wait_until(lambda: s.truncates, timeout=5)
    truncate = s.truncates[0]
    cleared_at = media.clears[0]
    confirmed = [e for e in media.echoes if not e.flushed and e.at <= cleared_at]
    heard_at_clear = 100 * len(confirmed) + (cleared_at - confirmed[-1].at) * 1000.0
    assert heard_ms - 100 <= truncate["audio_end_ms"] <= heard_at_clear
    assert not s.rejected
    assert not [m for m in media.media if m.at > cleared_at]
    media.assert_no_violations()


async def test_barge_in_with_gemini_clears_the_caller(gemini_l16: Stack) -> None:
    stack = gemini_l16
    gemini = stack.gemini
    assert gemini is not None
    _call, media = await stack.incoming()
    await gemini.wait_for(lambda: gemini.connections and gemini.current.setup)
    await gemini.play_turn(ModelTurn(audio_ms=3000, chunk_ms=100, interrupt_after_chunks=10))
    await media.wait_for(lambda: media.clears, timeout=10)
    cleared_at = media.clears[0]
    assert media.received_audio_bytes < 640 * 50 * 8 // 10 * 8  # the rest never reached it
    assert not [m for m in media.media if m.at > cleared_at]
    media.assert_no_violations()


# -- the brain ----------------------------------------------------------------------------------


async def test_a_brain_command_round_trips_through_the_gateway(gemini_pcmu: Stack) -> None:
    stack = gemini_pcmu
    gemini = stack.gemini
    assert gemini is not None
    _call, media = await stack.incoming()
    await gemini.wait_for(lambda: gemini.connections and gemini.current.setup)
    stack.gateway.queue_chat(ChatScript(reply="Done. I texted Sam.", noise=False))
    tool_call = {"name": RUN_COMMAND, "args": {"command": "Text Sam that I'm running late"}}
    async with asyncio.timeout(10):
        await gemini.play_turn(ModelTurn(tool_calls=[tool_call], audio_ms=200))
    send = await stack.gateway.wait_request("chat.send", 1)
    assert send["params"]["message"] == "Text Sam that I'm running late"
    [response] = gemini.current.tool_responses
    assert "I texted Sam" in json.dumps(response["response"])
    media.assert_no_violations()


async def test_dtmf_and_caller_hangup_end_the_call(openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    call, media = await stack.incoming()
    session = stack.services.manager.get_by_sid(call.call_control_id)
    await media.send_dtmf("5")
    await stack.telnyx.caller_hangup(call.call_control_id)
    await call.wait_hangup()
    assert session.ended and session.status is CallStatus.COMPLETED
    assert session.dtmf == "5"
    media.assert_no_violations()


# -- outbound -----------------------------------------------------------------------------------


async def test_outbound_call_is_placed_through_call_control_and_speaks_first(
        openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    assert stack.openai is not None
    status, created = await _api(stack, "/calls", {"to": "+15559998888",
                                                   "prompt": "Remind Sam."})
    assert status == 201, created
    dial = await stack.telnyx.wait_request(lambda r: r.action == "dial")
    body = dial.body or {}
    assert dial.status == 200
    assert (body["to"], body["from"], body["connection_id"]) == (
        "+15559998888", "+15550001111", stack.telnyx.connection_id)
    assert body["stream_url"].endswith("/telnyx/media-stream")
    assert body["stream_bidirectional_mode"] == "rtp"
    assert body["webhook_url"] == f"http://127.0.0.1:{stack.port}/telnyx/webhook"
    call = stack.telnyx.calls[created["call_sid"]]
    media = await call.wait_media()
    session = stack.services.manager.get(created["call_id"])
    await media.wait_for(lambda: session.stream_started)
    assert session.status is CallStatus.IN_PROGRESS
    s = await stack.openai.wait_session(0)
    await s.wait_received("response.create")  # the assistant speaks first...
    assert any("Remind Sam." in json.dumps(e) for e in s.received)  # ...with the call's prompt
    status, _ = await _api(stack, f"/calls/{created['call_id']}/hangup")
    assert status == 202
    await call.wait_hangup()
    await media.wait_closed()
    media.assert_no_violations()


async def test_busy_callee_fails_the_outbound_call(openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    stack.telnyx.script_outcome("+15559998888", "busy")
    _, created = await _api(stack, "/calls", {"to": "+15559998888"})
    call = stack.telnyx.calls[created["call_sid"]]
    await call.wait_hangup()
    session = stack.services.manager.get(created["call_id"])
    assert session.status is CallStatus.FAILED and session.reason == "busy"


# -- webhook signatures ---------------------------------------------------------------------------


async def test_tampered_stale_and_replayed_webhooks_are_refused(openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    url = f"{stack.base_url}/telnyx/webhook"
    sender = stack.telnyx.webhooks
    env = event_envelope("call.initiated", {
        "call_control_id": "v3:forged", "call_leg_id": "x", "call_session_id": "y",
        "connection_id": stack.telnyx.connection_id, "direction": "incoming",
        "state": "parked", "from": OWNER, "to": OUR_NUMBER})
    good = json.dumps(env, separators=(",", ":")).encode()
    ts = int(sender.clock())
    signed = stack.telnyx.keys.sign(good, ts)  # Telnyx's signature over the real body...
    tampered = await sender.post(url, env, timestamp=ts,  # ...on a body changed in transit
                                 body=good.replace(OWNER.encode(), b"+15550000000"),
                                 signature=signed["telnyx-signature-ed25519"])
    assert tampered.status == 403
    forged_sig = await sender.post(url, env, signature=base64.b64encode(bytes(64)).decode())
    assert forged_sig.status == 403
    stale = await sender.post(url, env, timestamp=int(sender.clock()) - 3600)
    assert stale.status == 403
    assert metrics.get("telnyx.webhook.rejected.bad_signature") >= 2
    assert metrics.get("telnyx.webhook.rejected.stale") >= 1
    assert not [r for r in stack.telnyx.requests if r.action == "answer"]

    # a real call's call.initiated, replayed verbatim within the tolerance window
    call, media = await stack.incoming()
    first = next(d for d in sender.deliveries if d.event_type == "call.initiated"
                 and d.envelope["data"]["payload"]["call_control_id"] == call.call_control_id)
    replay = await sender.post(url, first.envelope, body=first.body)
    assert replay.status == 200 and "duplicate" in replay.response
    answers = [r for r in stack.telnyx.requests if r.action == "answer"]
    assert len(answers) == 1  # the replay answered nothing
    assert stack.services.manager.active_count == 1
    media.assert_no_violations()


async def test_a_stream_without_our_token_is_closed_1008(openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    client = FakeTelnyxMediaClient(f"ws://127.0.0.1:{stack.port}/telnyx/media-stream",
                                   client_state=base64.b64encode(b"nope token").decode())
    await client.connect()
    await client.wait_closed()
    assert client.close_code == 1008
    assert metrics.get("telnyx.media.token.malformed") >= 1
    await client.close()


# -- refusals and goodbyes are spoken (answer / speak, then hangup on call.speak.ended) ------


def _actions(stack: Stack, call: FakeTelnyxCall) -> list[tuple[str, int]]:
    """(action, HTTP status) of every command the fake answered for ``call``, in order."""
    return [(r.action or "", r.status) for r in stack.telnyx.requests
            if f"/calls/{call.call_control_id}/" in r.path]


@pytest.fixture
async def one_line(tmp_path: Path) -> AsyncIterator[Stack]:
    """One call at a time: a second caller is refused (busy, with BUSY_TEXT)."""
    async for stack in _stack(tmp_path, "openai", "PCMU",
                              calls_yaml="  max_concurrent_calls: 1"):
        yield stack


async def test_a_refused_inbound_call_hears_the_line_then_is_hung_up(one_line: Stack) -> None:
    from agentic_fast.server.desk import BUSY_TEXT
    stack = one_line
    first, media = await stack.incoming()
    refused = await stack.telnyx.incoming_call("+15550002222", OUR_NUMBER)
    await refused.wait_hangup()
    assert _actions(stack, refused) == [("answer", 200), ("speak", 200), ("hangup", 200)]
    [answer] = [r for r in stack.telnyx.requests if r.action == "answer"
                and refused.call_control_id in r.path]
    assert not any(k.startswith("stream_") for k in answer.body or {})  # no media stream
    [spoken] = refused.spoken
    assert spoken["payload"] == BUSY_TEXT and spoken["voice"] == "AWS.Polly.Joanna-Neural"
    # the hangup came from the call.speak.ended webhook (it carried our marker)
    assert refused.events[-3:] == ["call.speak.started", "call.speak.ended", "call.hangup"]
    ended = [d for d in stack.telnyx.webhooks.deliveries if d.event_type == "call.speak.ended"]
    assert [d.status for d in ended] == [200]
    assert metrics.get("telnyx.speak.hung_up.ended") >= 1
    assert stack.services.manager.active_count == 1  # the first call is untouched
    assert first.is_alive and not media.closed.is_set()
    media.assert_no_violations()


async def test_a_goodbye_on_a_streaming_call_is_spoken_then_hung_up(
        openai_pcmu: Stack) -> None:
    stack = openai_pcmu
    call, media = await stack.incoming()
    control = stack.services.carriers["telnyx"].control
    await control.say_and_hang_up(call.call_control_id, "Goodbye for now.")
    await call.wait_hangup()
    assert _actions(stack, call)[-3:] == [("streaming_stop", 200), ("speak", 200),
                                          ("hangup", 200)]
    assert [s["payload"] for s in call.spoken] == ["Goodbye for now."]
    assert call.events.index("streaming.stopped") < call.events.index("call.speak.ended")
    await media.wait_closed()
    media.assert_no_violations()


@pytest.fixture
async def unknown_voice(tmp_path: Path) -> AsyncIterator[Stack]:
    async for stack in _stack(tmp_path, "openai", "PCMU",
                              telnyx_yaml="  speak_voice: Robot.Bender"):
        yield stack


async def test_a_refused_speak_falls_back_to_hangup(unknown_voice: Stack) -> None:
    stack = unknown_voice
    call, media = await stack.incoming()
    control = stack.services.carriers["telnyx"].control
    await control.say_and_hang_up(call.call_control_id, "Goodbye.")
    await call.wait_hangup()
    assert _actions(stack, call)[-3:] == [("streaming_stop", 200), ("speak", 422),
                                          ("hangup", 200)]
    assert call.spoken == [] and "call.speak.ended" not in call.events
    assert metrics.get("telnyx.speak.refused") >= 1
    await media.wait_closed()


@pytest.fixture
async def lost_speak_ended(tmp_path: Path) -> AsyncIterator[Stack]:
    async for stack in _stack(tmp_path, "openai", "PCMU", speak_ended=False,
                              telnyx_yaml="  speak_timeout_s: 0.3"):
        yield stack


async def test_a_lost_speak_ended_is_bounded_by_the_speak_timeout(
        lost_speak_ended: Stack) -> None:
    stack = lost_speak_ended
    call, media = await stack.incoming()
    control = stack.services.carriers["telnyx"].control
    await control.say_and_hang_up(call.call_control_id, "Goodbye.")
    await call.wait_hangup(timeout=5)
    assert _actions(stack, call)[-2:] == [("speak", 200), ("hangup", 200)]
    assert "call.speak.ended" not in call.events
    assert metrics.get("telnyx.speak.timed_out") >= 1
    assert stack.services.carriers["telnyx"].speaker.pending == 0
    await media.wait_closed()
