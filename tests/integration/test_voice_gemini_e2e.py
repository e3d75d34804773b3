"""A whole call with Gemini Live: fake Twilio caller -> server -> AudioBridge -> Gemini
provider -> fake Gemini Live (16 kHz in, 24 kHz out), and back; barge-in and goAway.

Built like production: ``make_bridge_factory`` with the default brain (mode ``tool``), so the
setup carries the brain's ``run_command`` tool and the fake checks every client frame against
google-genai's Live types (a malformed one closes the socket 1007, as the real server does)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentic_fast.audio import AudioConverter
from agentic_fast.brain.intent import RUN_COMMAND, run_command_declaration
from agentic_fast.call.factory import make_bridge_factory
from tests.fakes.audio import load_speech_ulaw
from tests.fakes.gemini_live import FakeGeminiLive, ModelTurn, tone
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.integration.harness import Harness, connect_live, make_config

OWNER = "+15551230000"  # the fake caller's number (incoming_call_form's default From)
Stack = tuple[Harness, FakeGeminiLive, FakeOpenClawGateway]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with FakeTwilioRest() as rest, FakeGeminiLive(respond_on_stream_end=False) as gemini, \
            FakeOpenClawGateway(token="gw-token",
                                default_script=ChatScript(noise=False)) as gateway:
        # brain.mode is left at its default (tool): the production Gemini setup has tools
        extra = (f"gemini:\n  url: {gemini.url}\n  api_key: {gemini.api_key}\n"
                 "audio:\n  provider: gemini\n"
                 f"gateway:\n  url: {gateway.url}\n  token: gw-token\n"
                 f"  device_key_path: {tmp_path / 'device_key'}\n"
                 f"brain:\n  allowed_callers: ['{OWNER}']\n  filler_after_s: 0\n")
        config = make_config(rest, extra=extra)
        assert config.brain.mode == "tool"
        harness = await Harness(config, rest, bridge_factory=make_bridge_factory(config)
                                ).__aenter__()
        try:
            yield harness, gemini, gateway
        finally:
            await harness.__aexit__(None, None, None)
        assert not [c for c in gemini.connections if c.close_code == 1007], gemini.violations


async def _call(harness: Harness, gemini: FakeGeminiLive, **kwargs):
    call_sid, params, _ = await harness.incoming_call()
    await gemini.wait_for(lambda: gemini.connections and gemini.current.setup)  # pre-warmed
    client = harness.media_client(call_sid, params, **kwargs)
    await connect_live(harness, client)
    return client


async def test_production_setup_declares_the_brain_tool(stack) -> None:
    harness, gemini, _ = stack
    client = await _call(harness, gemini)
    [setup] = gemini.setups
    [tool] = setup["tools"]
    assert list(tool) == ["functionDeclarations"]
    [decl] = tool["functionDeclarations"]
    assert decl["name"] == RUN_COMMAND == run_command_declaration()["name"]
    assert decl["description"] == run_command_declaration()["description"]
    assert not gemini.violations and gemini.current.close_code is None
    client.assert_no_violations()


async def test_a_run_command_tool_call_is_answered_with_a_tool_response(stack) -> None:
    harness, gemini, gateway = stack
    client = await _call(harness, gemini)
    gateway.queue_chat(ChatScript(reply="Done. I texted Sam.", noise=False))
    call = {"name": RUN_COMMAND, "args": {"command": "Text Sam that I'm running late"}}
    async with asyncio.timeout(10):  # the turn waits for our toolResponse
        await gemini.play_turn(ModelTurn(tool_calls=[call], audio_ms=200))
    send = await gateway.wait_request("chat.send", 1)
    assert send["params"]["message"] == "Text Sam that I'm running late"
    [response] = gemini.current.tool_responses
    assert response["name"] == RUN_COMMAND
    assert "I texted Sam" in json.dumps(response["response"])
    assert not gemini.violations and gemini.current.close_code is None
    client.assert_no_violations()


async def test_audio_both_ways_in_gemini_formats(stack) -> None:
    harness, gemini, _ = stack
    client = await _call(harness, gemini, continuous=False, time_scale=4.0)
    speech = load_speech_ulaw()[:160 * 50]
    await client.say(speech)
    conv = AudioConverter("gemini")
    want = b"".join(base64.b64decode(c) for i in range(0, len(speech), 160)
                    for c in conv.feed_twilio_b64(base64.b64encode(speech[i:i + 160]).decode()))
    await gemini.wait_for(lambda: len(gemini.audio_received) >= len(want))
    assert gemini.audio_received[:len(want)] == want  # 16 kHz PCM16 samples, exactly

    reply = tone(600)
    await gemini.play_turn(ModelTurn(audio=reply, chunk_ms=100))
    out = AudioConverter("gemini")
    frames = [base64.b64decode(f) for f in out.feed_provider(reply) + out.flush_provider()]
    await client.wait_for_audio(160 * len(frames), timeout=10)
    assert [m.audio for m in client.media[:len(frames)]] == frames
    assert not gemini.violations
    client.assert_no_violations()


async def test_interrupted_turn_clears_the_caller(stack) -> None:
    harness, gemini, _ = stack
    client = await _call(harness, gemini)
    # the model streams 3 s faster than real time, then the server hears the caller
    await gemini.play_turn(ModelTurn(audio_ms=3000, chunk_ms=100, interrupt_after_chunks=10))
    await client.wait_for(lambda: client.clears, timeout=10)
    cleared_at = client.clears[0]
    assert sum(len(m.audio) for m in client.media) < 8 * 1000  # the rest never reached it
    assert not [m for m in client.media if m.at > cleared_at]
    client.assert_no_violations()


async def test_go_away_is_invisible_to_the_caller(stack) -> None:
    harness, gemini, _ = stack
    client = await _call(harness, gemini)
    await gemini.wait_for(lambda: len(gemini.audio_received) > 3200)
    await gemini.send_resumption_update()
    await gemini.go_away(time_left_s=1.0)
    await gemini.wait_for(lambda: gemini.connection_count >= 2 and gemini.current.setup,
                          timeout=10)
    assert gemini.handles_used  # resumed, not a fresh session
    n = len(gemini.current.audio)
    await gemini.wait_for(lambda: len(gemini.current.audio) > n + 3200, timeout=10)
    assert not client.closed.is_set()
    call = harness.services.manager.get(client.custom_parameters["callId"])
    assert not call.ended
