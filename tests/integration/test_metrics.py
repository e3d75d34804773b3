"""``GET /metrics`` scraped from a running server and parsed with prometheus_client's own
text parser, after a whole call through the fakes (fake Twilio caller -> server -> fake
OpenAI Realtime, ConversationBrain -> fake OpenClaw gateway); and ``/readyz`` telling the
truth (draining, a provider refusing our key, the gateway down)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agentic_fast.core import metrics
from agentic_fast.providers import health
from agentic_fast.server.app import begin_drain
from tests.fakes.openai_realtime import FakeOpenAIRealtime, tone
from tests.fakes.openclaw_gateway import FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_webhooks import status_callback_form
from tests.integration.harness import Harness, start_harness
from tests.integration.test_voice_openai_e2e import OWNER, _call, _harness


@pytest.fixture
async def harness(rest: FakeTwilioRest, openai: FakeOpenAIRealtime,
                  gateway: FakeOpenClawGateway, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await _harness(rest, openai.url.split("?")[0], openai.api_key, gateway,
                       tmp_path / "device_key")
    try:
        yield h
    finally:
        await h.__aexit__(None, None, None)


async def _scrape(h: Harness, **headers: str) -> dict[str, list[Sample]]:
    assert h.http is not None
    resp = await h.http.get(f"{h.base_url}/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(families: dict[str, list[Sample]], family: str, sample: str,
           **labels: str) -> float | None:
    for s in families.get(family, []):
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


async def _readyz(h: Harness) -> tuple[int, dict[str, Any]]:
    assert h.http is not None
    resp = await h.http.get(f"{h.base_url}/readyz")
    return resp.status, await resp.json()


async def test_a_call_shows_in_the_scraped_counters_histograms_and_gauges(
        harness: Harness, openai: FakeOpenAIRealtime) -> None:
    client, s, call = await _call(harness, openai, continuous=False, time_scale=4.0)
    s.script_response(audio=tone("audio/pcm", 400, 600.0), chunk_ms=100, pace=0)
    await s.user_turn("hello there")
    await client.wait_for_audio(160 * 5, timeout=10)

    live = await _scrape(harness)
    # counters, in labelled families
    assert _value(live, "agentic_fast_calls_created", "agentic_fast_calls_created_total",
                  direction="inbound") >= 1
    assert _value(live, "agentic_fast_media_stream_events",
                  "agentic_fast_media_stream_events_total",
                  carrier="twilio", event="connections") >= 1
    assert _value(live, "agentic_fast_provider_events", "agentic_fast_provider_events_total",
                  provider="openai", event="sessions") >= 1
    # the first assistant audio was timed (stream start -> first frame out)
    assert _value(live, "agentic_fast_first_audio_seconds",
                  "agentic_fast_first_audio_seconds_count") >= 1
    # gauges: this call is live, its model socket open
    assert _value(live, "agentic_fast_live_calls", "agentic_fast_live_calls") == 1
    assert _value(live, "agentic_fast_provider_sockets", "agentic_fast_provider_sockets") >= 1
    assert _value(live, "agentic_fast_brain_queued_events",
                  "agentic_fast_brain_queued_events") is not None
    # process metrics (read from /proc)
    assert _value(live, "process_cpu_seconds", "process_cpu_seconds_total") is not None

    await client.hangup()  # the caller hangs up: stop, then Twilio's status callback
    r = await harness.webhooks().post("/twilio/status", status_callback_form(
        call_sid=call.call_sid, call_status="completed", sequence_number=1))
    assert r.status == 204
    assert await harness.services.manager.wait_idle(5)
    ended = await _scrape(harness)
    assert _value(ended, "agentic_fast_live_calls", "agentic_fast_live_calls") == 0
    assert _value(ended, "agentic_fast_call_duration_seconds",
                  "agentic_fast_call_duration_seconds_count", status="completed") >= 1
    # no call id, CallSid or phone number in any label of any sample
    secrets = {call.call_id, call.call_sid, OWNER, OWNER.lstrip("+")}
    for samples in ended.values():
        for sample in samples:
            for value in sample.labels.values():
                assert not any(x and x in value for x in secrets), (sample.name, value)


async def test_a_counter_named_after_a_call_does_not_leak_it_into_a_label(
        harness: Harness) -> None:
    metrics.incr("openai.responses.failed.CA0123456789abcdef0123456789abcdef")
    metrics.incr("calls.refused.+15551234567")
    families = await _scrape(harness)
    labels = [v for samples in families.values() for s in samples for v in s.labels.values()]
    assert not any("0123456789abcdef" in v or "5551234567" in v for v in labels)
    assert _value(families, "agentic_fast_calls_refused", "agentic_fast_calls_refused_total",
                  reason="_id_") >= 1


async def test_metrics_sit_behind_the_api_token(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, api_token="s3cret-token-123")
    try:
        assert h.http is not None
        assert (await h.http.get(f"{h.base_url}/metrics")).status == 401
        families = await _scrape(h, Authorization="Bearer s3cret-token-123")
        assert "agentic_fast_live_calls" in families
    finally:
        await h.__aexit__(None, None, None)


def _gateway_client(h: Harness) -> Any:
    return next(p for p in h.services.bridge_factory.owned if hasattr(p, "is_open"))


async def test_readyz_is_ready_then_not_ready_while_draining(harness: Harness) -> None:
    await _gateway_client(harness).wait_ready(timeout=5)
    status, body = await _readyz(harness)
    assert status == 200 and body["status"] == "ready", body
    assert body["checks"]["gateway"] == {"ok": True}
    begin_drain(harness.app)
    status, body = await _readyz(harness)
    assert status == 503
    assert body["status"] == "not-ready"
    assert body["problems"] == ["draining: not taking calls"]


async def test_readyz_is_not_ready_after_openai_refused_our_key_until_a_session_works(
        harness: Harness, openai: FakeOpenAIRealtime) -> None:
    openai.refuse_next("invalid_api_key", "Incorrect API key provided: sk-***.", times=2)
    call_sid, params, _ = await harness.incoming_call()
    client = harness.media_client(call_sid, params)
    await client.connect()
    await client.wait_closed()
    status, body = await _readyz(harness)
    assert status == 503, body
    assert any(p.startswith("provider_credentials: openai rejected the API key (invalid_api_key")
               for p in body["problems"]), body
    # the key works again (rotated): the next session clears it
    await harness.incoming_call()  # pre-warms a session, which the fake now accepts
    s = await openai.wait_session(2)
    await s.wait_received("session.update")
    await s.wait_until(lambda: "session.updated" in s.sent_types())
    async with asyncio.timeout(5):  # the provider reads session.updated, then marks it ok
        while health.rejected():
            await asyncio.sleep(0.01)
    status, body = await _readyz(harness)
    assert status == 200, body


async def test_readyz_is_ready_with_a_warning_while_the_gateway_is_down(
        harness: Harness, gateway: FakeOpenClawGateway) -> None:
    client = _gateway_client(harness)
    await client.wait_ready(timeout=5)
    await gateway.close()
    async with asyncio.timeout(5):
        while client.is_open:
            await asyncio.sleep(0.01)  # polling the client's own state, not a sleep-as-sync
    status, body = await _readyz(harness)
    assert status == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["gateway"]["ok"] is False
    assert body["checks"]["gateway"]["warning"] is True
    assert any(w.startswith("gateway: ") for w in body["warnings"])
