"""A third provider with nothing but its own module (``tests/toy_provider.py``), selected by
``audio.provider: toy``: fake Twilio caller -> server -> AudioBridge -> toy provider -> fake
toy speech-to-speech server (``tests/fakes/toy_s2s.py``), and back, with barge-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentic_fast.call.factory import AudioBridgeFactory
from agentic_fast.core.errors import ConfigError
from agentic_fast.providers.registry import provider_factory
from tests import toy_provider
from tests.fakes.audio import load_speech_ulaw
from tests.fakes.toy_s2s import FakeToyS2S
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.integration.harness import Harness, make_config

Stack = tuple[Harness, FakeToyS2S]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with FakeTwilioRest() as rest, FakeToyS2S() as toy:
        toy_provider.install(toy.url, toy.token)
        config = make_config(rest, extra="audio:\n  provider: toy\n")
        harness = await Harness(config, rest, bridge_factory=AudioBridgeFactory(
            config, provider_factory(config))).__aenter__()
        try:
            yield harness, toy
        finally:
            await harness.__aexit__(None, None, None)
        assert not toy.violations


async def test_a_call_through_the_toy_provider_both_ways_with_barge_in(stack: Stack) -> None:
    harness, toy = stack
    call_sid, params, _ = await harness.incoming_call()
    await toy.wait_for(lambda: toy.sessions)  # pre-warmed while answering the webhook
    session = toy.sessions[0]
    client = harness.media_client(call_sid, params, continuous=False, time_scale=4.0)
    await client.connect()

    speech = load_speech_ulaw()[:160 * 50]  # 1 s, mu-law 8 kHz: no conversion on this leg
    await asyncio.wait_for(client.say(speech), 10)
    await toy.wait_for(lambda: len(session.audio_in) >= len(speech))
    assert bytes(session.audio_in) == speech

    reply = bytes(range(256)) * 25  # 6400 bytes: 0.8 s
    await session.respond(reply, text="hello there")
    await client.wait_for_audio(len(reply), timeout=10)
    assert client.received_audio[:len(reply)] == reply
    call = harness.services.manager.get(params["callId"])
    await client.wait_for(lambda: [e for e in call.transcript if e.role == "assistant"])

    hold = asyncio.Event()
    long_reply = asyncio.create_task(session.respond(b"\x55" * 8000 * 3, hold=hold,
                                                     hold_after=4))
    before = len(client.media)
    await client.wait_for(lambda: len(client.media) >= before + 5)
    await session.send({"type": "speech_started"})  # the caller talks over the assistant
    await client.wait_for(lambda: client.clears)
    await toy.wait_for(lambda: session.cancels)
    hold.set()
    response = await long_reply
    assert session.cancels == [response]
    cleared_at = client.clears[0]
    assert not [m for m in client.media if m.at > cleared_at]
    client.assert_no_violations()


async def test_an_unknown_provider_name_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        make_config(None, extra="audio:\n  provider: toy-unregistered\n")
    assert err.value.key == "audio.provider"
