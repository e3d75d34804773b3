"""Who gets a model session: ``calls.inbound`` and ``calls.rate_limits`` at the voice webhook.

A refused caller is turned away with ``<Reject>`` (or a spoken line) before anything is
registered: no call, no stream token, no pre-warmed provider socket. The rates run on the
call manager's injected clock.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from agentic_fast.call.factory import make_bridge_factory
from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.core import metrics
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.openclaw_gateway import FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_twiml import read_connect_stream, read_reject
from tests.fakes.twilio_webhooks import incoming_call_form, new_sid
from tests.integration.harness import Harness, make_config

pytestmark = pytest.mark.asyncio

OWNER = "+15551230000"
STRANGER = "+15557770000"


class ManualClock:
    def __init__(self) -> None:
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return 1.7e9 + self.mono


class CountingFactory:
    """The harness's recording bridge factory, counting pre-warms (model socket opens)."""

    def __init__(self) -> None:
        self.bridge: Any = None
        self.prewarmed: list[str] = []

    def __call__(self, session: CallSession, sender: object) -> object:
        return self.bridge(session, sender)

    def prewarm(self, session: CallSession) -> None:
        self.prewarmed.append(session.call_id)


async def _start(rest: FakeTwilioRest, calls: str,
                 clock: ManualClock | None = None) -> tuple[Harness, CountingFactory]:
    factory = CountingFactory()
    manager = CallManager(clock=clock or ManualClock())
    h = Harness(make_config(rest, "calls:\n" + calls), rest, manager=manager,
                bridge_factory=factory)
    factory.bridge = h._bridge
    await h.__aenter__()
    return h, factory


async def _voice(h: Harness, caller: str, call_sid: str | None = None) -> str:
    form = incoming_call_form(call_sid=call_sid or new_sid("CA"), from_number=caller)
    resp = await h.webhooks().post("/twilio/voice", form)
    assert resp.status == 200 and resp.content_type == "text/xml", resp.status
    return await resp.text()


def _assert_nothing_registered(h: Harness, factory: CountingFactory, active: int = 0) -> None:
    manager = h.services.manager
    assert manager.active_count == active
    assert len(factory.prewarmed) == active  # no model socket for a refused caller


NO_RATES = "  rate_limits: {per_caller_per_minute: 0, global_per_second: 0}\n"


async def test_allowlist_connects_listed_callers_and_rejects_the_rest(
        rest: FakeTwilioRest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentic_fast")
    h, factory = await _start(rest, f"  inbound: allowlist\n  inbound_numbers: ['{OWNER}']\n"
                                    + NO_RATES)
    try:
        before = metrics.get("calls.refused.not_allowed")
        twiml = await _voice(h, STRANGER)
        assert read_reject(twiml) == "rejected"
        assert "Stream" not in twiml  # no stream URL, no token
        _assert_nothing_registered(h, factory)
        assert metrics.get("calls.refused.not_allowed") == before + 1
        refused = [r.getMessage() for r in caplog.records
                   if r.getMessage().startswith("call.refused reason=not_allowed")]
        assert len(refused) == 1 and "caller=+15*******00" in refused[0]
        assert "caller_tag=" in refused[0] and STRANGER not in caplog.text

        stream = read_connect_stream(await _voice(h, OWNER))
        assert stream.parameters["callId"] in factory.prewarmed
        _assert_nothing_registered(h, factory, active=1)
    finally:
        await h.__aexit__(None, None, None)


async def test_refused_caller_opens_no_provider_socket(
        rest: FakeTwilioRest, tmp_path: Path) -> None:
    """With the production bridge factory (pre-warm on) and the fake OpenAI Realtime."""
    async with FakeOpenAIRealtime() as openai, FakeOpenClawGateway(token="gw") as gateway:
        extra = (f"openai_realtime:\n  url: {openai.url.split('?')[0]}\n"
                 f"  api_key: {openai.api_key}\n"
                 f"gateway:\n  url: {gateway.url}\n  token: {gateway.token}\n"
                 f"  device_key_path: {tmp_path / 'device_key'}\n"
                 f"brain:\n  allowed_callers: ['{OWNER}']\n"
                 "calls:\n  inbound: allowlist\n" + NO_RATES)
        config = make_config(rest, extra)
        assert config.calls.inbound_numbers == (OWNER,) and config.bridge.prewarm
        factory = make_bridge_factory(config)
        h = await Harness(config, rest, bridge_factory=factory).__aenter__()
        try:
            for _ in range(5):
                assert read_reject(await _voice(h, STRANGER)) == "rejected"
            assert factory._warm == {} and h.services.manager.active_count == 0
            read_connect_stream(await _voice(h, OWNER))
            assert len(factory._warm) == 1
            await openai.wait_session(0)  # the listed caller's pre-warmed socket
            assert openai.connection_count == 1 and len(openai.handshakes) == 1
        finally:
            await h.__aexit__(None, None, None)


async def test_disabled_refuses_every_inbound_call(rest: FakeTwilioRest) -> None:
    h, factory = await _start(rest, f"  inbound: disabled\n  inbound_numbers: ['{OWNER}']\n"
                                    + NO_RATES)
    try:
        before = metrics.get("calls.refused.inbound_disabled")
        for caller in (OWNER, STRANGER):
            assert read_reject(await _voice(h, caller)) == "rejected"
        _assert_nothing_registered(h, factory)
        assert metrics.get("calls.refused.inbound_disabled") == before + 2
    finally:
        await h.__aexit__(None, None, None)


async def test_open_connects_any_caller(rest: FakeTwilioRest) -> None:
    h, factory = await _start(rest, "  inbound: open\n" + NO_RATES)
    try:
        for caller in (OWNER, STRANGER, "anonymous"):
            read_connect_stream(await _voice(h, caller))
        _assert_nothing_registered(h, factory, active=3)
    finally:
        await h.__aexit__(None, None, None)


async def test_refuse_with_say_speaks_the_message_then_hangs_up(rest: FakeTwilioRest) -> None:
    h, factory = await _start(rest, "  inbound: allowlist\n  refuse_with: say\n"
                                    "  refuse_message: 'This line is private. Goodbye.'\n"
                                    + NO_RATES)
    try:
        root = ET.fromstring(await _voice(h, STRANGER))
        assert [c.tag for c in root] == ["Say", "Hangup"]
        assert root[0].text == "This line is private. Goodbye."
        _assert_nothing_registered(h, factory)
    finally:
        await h.__aexit__(None, None, None)


async def test_per_caller_rate_answers_busy_on_the_injected_clock(rest: FakeTwilioRest) -> None:
    clock = ManualClock()
    h, factory = await _start(rest, "  inbound: open\n  rate_limits:\n"
                                    "    per_caller_per_minute: 2\n    global_per_second: 0\n",
                              clock)
    try:
        before = metrics.get("calls.refused.rate_per_caller")
        read_connect_stream(await _voice(h, OWNER))
        clock.mono += 10
        read_connect_stream(await _voice(h, OWNER))
        assert read_reject(await _voice(h, OWNER)) == "busy"
        read_connect_stream(await _voice(h, STRANGER))  # others are not held back
        _assert_nothing_registered(h, factory, active=3)
        assert metrics.get("calls.refused.rate_per_caller") == before + 1
        clock.mono += 50  # a minute after the first call
        read_connect_stream(await _voice(h, OWNER))
    finally:
        await h.__aexit__(None, None, None)


async def test_global_rate_answers_busy_on_the_injected_clock(rest: FakeTwilioRest) -> None:
    clock = ManualClock()
    h, factory = await _start(rest, "  inbound: open\n  rate_limits:\n"
                                    "    per_caller_per_minute: 0\n    global_per_second: 2\n",
                              clock)
    try:
        before = metrics.get("calls.refused.rate_global")
        for i in range(2):
            read_connect_stream(await _voice(h, f"+1555000000{i}"))
        assert read_reject(await _voice(h, "+15550000002")) == "busy"
        _assert_nothing_registered(h, factory, active=2)
        assert metrics.get("calls.refused.rate_global") == before + 1
        clock.mono += 1
        read_connect_stream(await _voice(h, "+15550000002"))
    finally:
        await h.__aexit__(None, None, None)


async def test_a_retried_webhook_of_an_answered_call_is_not_rate_limited(
        rest: FakeTwilioRest) -> None:
    h, factory = await _start(rest, "  inbound: open\n  rate_limits:\n"
                                    "    per_caller_per_minute: 1\n    global_per_second: 1\n")
    try:
        call_sid = new_sid("CA")
        read_connect_stream(await _voice(h, OWNER, call_sid))
        # Twilio retrying before the stream connected: answered again, not "busy"
        read_connect_stream(await _voice(h, OWNER, call_sid))
        assert h.services.manager.active_count == 1 and len(set(factory.prewarmed)) == 1
    finally:
        await h.__aexit__(None, None, None)


async def test_outbound_calls_are_not_subject_to_the_inbound_policy(
        rest: FakeTwilioRest) -> None:
    h, factory = await _start(rest, "  inbound: disabled\n  rate_limits:\n"
                                    "    per_caller_per_minute: 1\n    global_per_second: 1\n")
    try:
        assert h.http is not None
        for _ in range(2):
            resp = await h.http.post(f"{h.base_url}/calls", json={"to": STRANGER})
            assert resp.status == 201, await resp.text()
        _assert_nothing_registered(h, factory, active=2)  # both placed, both pre-warmed
    finally:
        await h.__aexit__(None, None, None)

