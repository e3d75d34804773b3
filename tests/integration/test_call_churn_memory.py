"""Ended calls leave nothing behind but their record, without the cycle collector.

Production freezes the collector's startup objects and collects the young generation only
every 10,000 allocations (``serve.tune_gc``): objects in reference cycles then wait a long
time (in the battery's churn, no full collection ran in 2,000 calls and ~60-80 kB stayed
per ended call). So a call must be freed by reference counting alone: here the collector is
frozen and *disabled* while rounds of short calls run through the production wiring (fake
Twilio caller -> server -> AudioBridge -> OpenAI provider -> fake OpenAI Realtime), and after
each round no call machinery is alive, and the number of live objects of this package's
types is the same as after the first round (the bounded history is full by then).

Not counted: objects of the fakes (they keep records of every session) and the stdlib
selector transport's own cycle (``_read_ready_cb``, a bound method of itself); production
runs on uvloop, whose transports have none.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import weakref
from pathlib import Path

import pytest

from agentic_fast.call.bridge import AudioBridge
from agentic_fast.call.factory import make_bridge_factory
from agentic_fast.call.manager import CallManager
from tests.fakes.gemini_live import FakeGeminiLive
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.openclaw_gateway import FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.integration.harness import Harness, make_config
from tests.integration.test_voice_openai_e2e import _openai_config

ROUNDS = 3
CALLS = 30
HISTORY = 10  # < CALLS: the history is full after the first round
MACHINERY = ("AudioBridge", "OpenAIRealtimeProvider", "_Connection", "GeminiLiveProvider",
             "GeminiLink", "TurnTracker", "FastClientConnection", "StallWatch", "MediaSocket",
             "StreamSender", "AudioConverter", "_StreamReader")


STORE_EVENTS = frozenset({"CallCreated", "StatusChanged", "CallFieldsSet", "TranscriptAdded",
                          "CommandSent", "CommandAnswered", "CallEvent"})


def _ours() -> collections.Counter[str]:
    """Live objects tracked by the collector (frozen ones excluded) of agentic_fast types."""
    return collections.Counter(
        type(o).__qualname__ for o in gc.get_objects()
        if type(o).__module__.startswith("agentic_fast"))


async def _short_call(harness: Harness, model: FakeOpenAIRealtime | FakeGeminiLive,
                      bridges: list[weakref.ref[AudioBridge]]) -> None:
    before = model.connection_count
    call_sid, params, _ = await harness.incoming_call()
    client = harness.media_client(call_sid, params)
    await client.connect()
    if isinstance(model, FakeGeminiLive):  # the caller's audio reached the model
        await model.wait_for(lambda: model.connection_count > before)
        conn = model.connections[before]
        await model.wait_for(lambda: len(conn.audio) > 0, timeout=10)
    else:
        session = model.sessions[-1]
        await session.wait_until(lambda: session.audio_bytes.get("audio/pcm", 0) > 0,
                                 timeout=10)
    call = harness.services.manager.get(params["callId"])
    assert call is not None and isinstance(call.bridge, AudioBridge)
    bridges.append(weakref.ref(call.bridge))
    await client.hangup()
    harness.clients.remove(client)
    await client.wait_closed()
    async with asyncio.timeout(10):  # the stream handler's last step (after bridge.close)
        while not call.ended:
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_ended_calls_are_freed_without_the_collector(
        rest: FakeTwilioRest, openai: FakeOpenAIRealtime, gateway: FakeOpenClawGateway,
        tmp_path: Path, provider: str) -> None:
    async with FakeGeminiLive(respond_on_stream_end=False) as gemini:
        await _churn(rest, openai if provider == "openai" else gemini, gateway, tmp_path)


async def _churn(rest: FakeTwilioRest, model: FakeOpenAIRealtime | FakeGeminiLive,
                 gateway: FakeOpenClawGateway, tmp_path: Path) -> None:
    if isinstance(model, FakeGeminiLive):
        extra = (f"gemini:\n  url: {model.url}\n  api_key: {model.api_key}\n"
                 "audio:\n  provider: gemini\n"
                 f"gateway:\n  url: {gateway.url}\n  token: {gateway.token}\n"
                 f"  device_key_path: {tmp_path / 'device_key'}\n")
    else:
        extra = _openai_config(model.url.split("?")[0], model.api_key, gateway,
                               tmp_path / "device_key", {}, {})
    config = make_config(rest, extra=extra)
    manager = CallManager(max_concurrent_calls=50, history_size=HISTORY)
    harness = Harness(config, rest, manager=manager, bridge_factory=make_bridge_factory(config))
    await harness.__aenter__()
    bridges: list[weakref.ref[AudioBridge]] = []
    rounds: list[collections.Counter[str]] = []
    try:
        await _short_call(harness, model, bridges)  # warm: imports, pools, the brain
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            for _ in range(ROUNDS):
                for _ in range(CALLS):
                    await _short_call(harness, model, bridges)
                # the call store's queued events are written (and freed) in batches
                assert await harness.services.manager.wait_idle(5)
                await harness.services.recorder.settle()
                rounds.append(_ours())
        finally:
            gc.enable()
            gc.unfreeze()
    finally:
        await harness.__aexit__(None, None, None)
    alive = sum(ref() is not None for ref in bridges)
    leftover = {name: rounds[-1][name] for name in MACHINERY if rounds[-1][name]}
    assert alive == 0 and not leftover, (alive, leftover)
    assert rounds[0]["CallSession"] <= HISTORY + 1  # the record stays, bounded
    # the call store's write events are bounded by its writer's queue (store.queue_size) and
    # may sit in a batch's asyncio/executor plumbing for a moment after it is written
    grew = {k: (rounds[1][k], rounds[2][k]) for k in rounds[1] | rounds[2]
            if rounds[2][k] > rounds[1][k] and k not in STORE_EVENTS}
    assert not grew, grew
