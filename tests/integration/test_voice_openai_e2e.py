"""A whole call: fake Twilio caller -> server -> AudioBridge -> OpenAI provider -> fake
OpenAI Realtime, and back. Nothing of ours is replaced: the fakes speak the wire protocols.

The server is wired as in production (``make_bridge_factory``: the ConversationBrain in its
default mode ``tool``, its ``run_command`` tool in the session, the one gateway client), so
the ``session.update`` the fake validates against the SDK types is the production one."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agentic_fast.audio import AudioConverter
from agentic_fast.call.factory import make_bridge_factory
from tests.fakes.audio import load_speech_ulaw
from tests.fakes.openai_realtime import FakeOpenAIRealtime, ResponseScript, tone
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.integration.harness import Harness, connect_live, make_config

OWNER = "+15551230000"  # the fake caller's number (incoming_call_form's default From)


def _openai_config(url: str, key: str, gateway: FakeOpenClawGateway, key_path: Path,
                   openai: dict[str, object], bridge: dict[str, object]) -> str:
    lines = ["openai_realtime:", f"  url: {url}", f"  api_key: {key}"]
    lines += [f"  {k}: {v}" for k, v in openai.items()]
    lines += ["gateway:", f"  url: {gateway.url}", f"  token: {gateway.token}",
              f"  device_key_path: {key_path}", "brain:", f"  allowed_callers: ['{OWNER}']",
              "audio:", "  provider: openai", "bridge:", "  lead_ms: 120",
              "  mark_every_frames: 5"]
    lines += [f"  {k}: {v}" for k, v in bridge.items()]
    return "\n".join(lines) + "\n"


async def _harness(rest: FakeTwilioRest, url: str, key: str, gateway: FakeOpenClawGateway,
                   key_path: Path, openai: dict[str, object] | None = None,
                   **bridge: object) -> Harness:
    config = make_config(rest, extra=_openai_config(url, key, gateway, key_path,
                                                     openai or {}, bridge))
    assert config.brain.mode == "tool"  # the default: the model delegates with a tool call
    harness = Harness(config, rest, bridge_factory=make_bridge_factory(config))
    return await harness.__aenter__()


@pytest.fixture
async def harness(rest: FakeTwilioRest, openai: FakeOpenAIRealtime,
                  gateway: FakeOpenClawGateway, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await _harness(rest, openai.url.split("?")[0], openai.api_key, gateway,
                       tmp_path / "device_key")
    try:
        yield h
    finally:
        await h.__aexit__(None, None, None)


def _payloads(ulaw: bytes) -> list[str]:
    return [base64.b64encode(ulaw[i:i + 160]).decode() for i in range(0, len(ulaw), 160)]


async def _call(harness: Harness, openai: FakeOpenAIRealtime, **client_kwargs):
    call_sid, params, _ = await harness.incoming_call()
    session = await openai.wait_session(0)  # pre-warmed while answering the webhook
    await session.wait_received("session.update")
    client = harness.media_client(call_sid, params, **client_kwargs)
    await connect_live(harness, client)
    if client.continuous:  # the caller's line audio reaches the model: the bridge listens
        await session.wait_until(lambda: session.audio_bytes.get("audio/pcm", 0) > 0)
    return client, session, harness.services.manager.get(params["callId"])


async def test_caller_audio_reaches_openai_as_pcm16_24k_and_the_reply_comes_back_paced(
        harness: Harness, openai: FakeOpenAIRealtime) -> None:
    client, s, call = await _call(harness, openai, continuous=False, time_scale=4.0)
    speech = load_speech_ulaw()[:160 * 100]  # 2 s
    await asyncio.wait_for(client.say(speech), 10)
    expected = AudioConverter("openai")
    want = b"".join(base64.b64decode(c) for p in _payloads(speech)
                    for c in expected.feed_twilio_b64(p))
    await s.wait_until(lambda: s.audio_bytes.get("audio/pcm", 0) >= len(want))
    assert bytes(s.audio_in["audio/pcm"]) == want  # the samples, not just the byte count
    assert not s.rejected

    reply = tone("audio/pcm", 1000, 600.0)
    s.script_response(audio=reply, chunk_ms=200, pace=0)  # faster than real time
    await s.user_turn("what is the weather like")
    out = AudioConverter("openai")
    frames = out.feed_provider(reply) + out.flush_provider()
    await client.wait_for_audio(160 * len(frames), timeout=10)
    got = client.media
    assert [base64.b64decode(f) for f in frames] == [m.audio for m in got[:len(frames)]]
    assert {len(m.audio) for m in got} == {160}
    # paced: 1 s of audio arrives over at least ~1 s minus the lead, not in one burst
    span = got[len(frames) - 1].at - got[0].at
    assert span >= 0.7
    assert [e.text for e in call.transcript if e.role == "user"] == ["what is the weather like"]
    client.assert_no_violations()


async def test_barge_in_clears_the_caller_and_truncates_at_what_was_heard(
        harness: Harness, openai: FakeOpenAIRealtime) -> None:
    client, s, _ = await _call(harness, openai)
    s.script_response(audio_ms=3000, chunk_ms=100, pace=0, hold_after_chunks=15)
    await s.user_turn("tell me a long story")
    await client.wait_for(lambda: len([e for e in client.echoes if not e.flushed]) >= 4)
    heard_ms = 100 * len([e for e in client.echoes if not e.flushed])
    await s.speech_started()  # the caller talks over the assistant
    await client.wait_for(lambda: client.clears)
    await s.wait_until(lambda: s.truncates, timeout=5)
    truncate = s.truncates[0]
    cleared_at = client.clears[0]
    confirmed = [e for e in client.echoes if not e.flushed and e.at <= cleared_at]
    # the caller's playback ran on after its last echo until the clear reached it: the
    # server adds that time to its last confirmed mark (it saw the echo later and sent the
    # clear earlier than the caller's times, so its figure is within this bound)
    heard_at_clear = 100 * len(confirmed) + (cleared_at - confirmed[-1].at) * 1000.0
    # at most one mark behind the caller's playout, never beyond what it had heard
    assert heard_ms - 100 <= truncate["audio_end_ms"] <= heard_at_clear
    assert not s.rejected  # a truncate the real server accepts
    late = [m for m in client.media if m.at > cleared_at]
    assert not late  # nothing of the interrupted answer after the clear
    s.release()
    s.script_response(audio_ms=200, pace=0)
    await s.user_turn("actually, never mind")
    n = len(client.media)
    await client.wait_for(lambda: len(client.media) >= n + 10)  # the session is not wedged
    client.assert_no_violations()


async def test_provider_drop_mid_call_reconnects_and_the_call_stays_up(
        harness: Harness, openai: FakeOpenAIRealtime) -> None:
    client, s, call = await _call(harness, openai)
    await s.wait_until(lambda: s.audio_bytes.get("audio/pcm", 0) > 0)
    await s.abort()
    s2 = await openai.wait_session(1, timeout=10)
    await s2.wait_until(lambda: s2.audio_bytes.get("audio/pcm", 0) > 9600, timeout=10)
    assert not client.closed.is_set() and not call.ended
    s2.script_response(audio_ms=400, pace=0)
    await s2.user_turn("are you still there")
    await client.wait_for_audio(160 * 15, timeout=10)


async def test_unreachable_provider_gives_a_spoken_fallback_and_a_clean_end(
        rest: FakeTwilioRest, gateway: FakeOpenClawGateway, tmp_path: Path) -> None:
    h = await _harness(rest, "ws://127.0.0.1:9/v1/realtime", "sk-none", gateway,
                       tmp_path / "device_key", provider_connect_timeout_s=1, prewarm="false")
    try:
        call_sid, params, _ = await h.incoming_call()
        client = h.media_client(call_sid, params)
        await client.connect()
        await client.wait_closed()
        call = h.services.manager.get(params["callId"])
        assert call.status.value == "failed" and call.reason.startswith("provider-unavailable")
        update = rest.requests[-1]
        assert update.get("Twiml") and "<Say>" in update.get("Twiml")
        assert "<Hangup" in update.get("Twiml")
    finally:
        await h.__aexit__(None, None, None)


async def test_production_session_and_a_tool_call_round_trip_pass_the_wire_validation(
        harness: Harness, openai: FakeOpenAIRealtime, gateway: FakeOpenClawGateway) -> None:
    _, s, call = await _call(harness, openai)
    update = s.received[0]
    assert update["type"] == "session.update"
    assert [t["name"] for t in update["session"]["tools"]] == ["run_command"]
    assert update["session"]["tool_choice"] == "auto"
    gateway.queue_chat(ChatScript(reply="Done, I texted Sam.", noise=False))
    s.script_response(function_call=("run_command", '{"command": "Text Sam I am late"}'))
    await s.user_turn("text Sam that I'm late")
    send = await gateway.wait_request("chat.send")
    assert send["params"]["message"] == "Text Sam I am late"
    await s.wait_until(lambda: bool(s.function_outputs), timeout=10, what="tool result")
    assert "I texted Sam" in s.function_outputs[0]["output"]
    await s.wait_received("response.create")
    assert not s.rejected  # every client event of the production wiring is valid
    assert not call.ended


async def test_failed_responses_get_an_apology_then_three_in_a_row_end_the_call(
        harness: Harness, openai: FakeOpenAIRealtime, rest: FakeTwilioRest) -> None:
    client, s, call = await _call(harness, openai)
    s.script_response(ResponseScript.failed())
    s.script_response(ResponseScript(audio_ms=400))  # the apology is spoken
    await s.user_turn("what time is it")
    await client.wait_for_audio(160 * 15, timeout=10)
    assert s.statuses == ["failed", "completed"] and not call.ended
    apology = harness.config.openai_realtime.failed_response_message
    assert any(apology in json.dumps(e) for e in s.received
               if e["type"] == "conversation.item.create")
    for _ in range(3):  # then the provider fails everything: 3 in a row end the call
        s.script_response(ResponseScript.failed(
            "rate_limit_exceeded", "Rate limit reached for gpt-realtime.",
            error_type="rate_limit_error"))
    await s.user_turn("hello?")
    await client.wait_closed()
    assert s.statuses == ["failed", "completed", "failed", "failed", "failed"]
    assert call.status.value == "failed"
    assert call.reason.startswith("provider-unavailable: 3 responses failed in a row")
    assert "rate_limit_exceeded: Rate limit reached" in call.reason
    twiml = rest.requests[-1].get("Twiml")
    assert twiml and harness.config.bridge.unavailable_message in twiml and "<Hangup" in twiml
    assert not s.rejected


async def test_an_error_instead_of_session_created_is_recorded_on_the_call(
        harness: Harness, openai: FakeOpenAIRealtime) -> None:
    openai.refuse_next("invalid_api_key", "Incorrect API key provided: sk-***.", times=2)
    call_sid, params, _ = await harness.incoming_call()
    client = harness.media_client(call_sid, params)
    await client.connect()
    await client.wait_closed()
    call = harness.services.manager.get(params["callId"])
    assert call.status.value == "failed"
    assert "invalid_api_key: Incorrect API key provided" in call.reason
    assert "session.created" not in call.reason


def test_tone_helper_is_pcm16() -> None:
    assert len(tone("audio/pcm", 100)) == 4800
    assert np.frombuffer(tone("audio/pcm", 10), "<i2").any()
