"""Call time limits on a whole call: fake Twilio caller -> server -> bridge -> fake OpenAI
Realtime, and the fake Twilio REST API for the hang-up. The limits are short (seconds) so
the real loop timers fire; every wait is on an event (a message, a request), none sleeps.

What a user of the server expects: the assistant warns before the time limit, says goodbye,
the goodbye is heard to its end, then the call is hung up (``Status=completed``) and its end
reason recorded; a silent line gets one "are you still there?" then the same goodbye."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agentic_fast.call.factory import make_bridge_factory
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.openclaw_gateway import FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest, RecordedRequest
from tests.integration.harness import Harness, make_config
from tests.integration.test_voice_openai_e2e import _call, _openai_config

pytestmark = pytest.mark.asyncio


async def _harness(rest: FakeTwilioRest, openai: FakeOpenAIRealtime,
                   gateway: FakeOpenClawGateway, tmp_path: Path, **calls: object) -> Harness:
    extra = _openai_config(openai.url.split("?")[0], openai.api_key, gateway,
                           tmp_path / "device_key", {}, {})
    extra += "calls:\n" + "".join(f"  {k}: {v}\n" for k, v in calls.items())
    config = make_config(rest, extra=extra)
    harness = Harness(config, rest, bridge_factory=make_bridge_factory(config))
    return await harness.__aenter__()


def _said(session, text: str) -> bool:  # type: ignore[no-untyped-def]
    return any(text in json.dumps(e) for e in session.received
               if e["type"] == "conversation.item.create")


def _hangup_of(call_sid: str):  # type: ignore[no-untyped-def]
    def match(r: RecordedRequest) -> bool:
        return r.path.endswith(f"/Calls/{call_sid}.json") and r.method == "POST"
    return match


async def test_max_duration_warns_says_goodbye_then_hangs_up_with_the_reason(
        rest: FakeTwilioRest, openai: FakeOpenAIRealtime, gateway: FakeOpenClawGateway,
        tmp_path: Path) -> None:
    h = await _harness(rest, openai, gateway, tmp_path, max_duration_s=2.5,
                       duration_warning_s=1.5, silence_timeout_s=0)
    try:
        client, s, call = await _call(h, openai)
        rest.add_incoming(call.call_sid, call.from_number, call.to_number)
        await s.wait_until(lambda: _said(s, "will end in about 1.5 seconds"), timeout=5,
                           what="the warning")
        assert not _said(s, "Goodbye") and not call.ended
        goodbye = h.config.calls.duration_goodbye_message
        await s.wait_until(lambda: _said(s, goodbye), timeout=5, what="the goodbye")
        request = await rest.wait_request(_hangup_of(call.call_sid), timeout=10)
        # the goodbye (the fake's 600 ms answer) was heard to its end before the hang-up
        assert len(client.media) >= 2 * 30 and client.marks_received
        assert len([e for e in client.echoes if not e.flushed]) == len(client.marks_received)
        assert request.get("Status") == "completed" and request.get("Twiml") is None
        assert call.status.value == "completed" and call.reason == "max-duration"
        assert 2.5 <= call.duration < 2.5 + 10
        await client.hangup()  # Twilio ends the stream after the hang-up
        await client.wait_closed()
        assert call.reason == "max-duration" and not s.rejected
    finally:
        await h.__aexit__(None, None, None)


async def test_a_silent_line_is_prompted_once_then_hung_up(
        rest: FakeTwilioRest, openai: FakeOpenAIRealtime, gateway: FakeOpenClawGateway,
        tmp_path: Path) -> None:
    h = await _harness(rest, openai, gateway, tmp_path, max_duration_s=0,
                       silence_timeout_s=1.0, silence_grace_s=1.0)
    try:
        client, s, call = await _call(h, openai)  # line noise only: nobody speaks
        rest.add_incoming(call.call_sid, call.from_number, call.to_number)
        await s.wait_until(lambda: _said(s, "Are you still there?"), timeout=5,
                           what="the prompt")
        assert not call.ended
        request = await rest.wait_request(_hangup_of(call.call_sid), timeout=10)
        assert request.get("Status") == "completed"
        assert _said(s, h.config.calls.silence_goodbye_message)
        assert call.status.value == "completed" and call.reason == "silence-timeout"
        assert len([e for e in s.received if e["type"] == "conversation.item.create"
                    and "still there" in json.dumps(e)]) == 1
        assert not s.rejected
        await client.hangup()
    finally:
        await h.__aexit__(None, None, None)


class _Sender:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class _Bridge:
    def __init__(self) -> None:
        self.sender = _Sender()


async def _factory(rest: FakeTwilioRest):  # type: ignore[no-untyped-def]
    from agentic_fast.call.factory import AudioBridgeFactory
    from agentic_fast.call.manager import CallManager
    from agentic_fast.carriers.twilio.rest import TwilioRestClient

    config = make_config(rest)
    manager = CallManager()
    client = TwilioRestClient(rest.account_sid, rest.auth_token, api_base=rest.base_url,
                              timeout_s=5)
    factory = AudioBridgeFactory(config, lambda s: None)  # type: ignore[arg-type,return-value]
    factory.bind_server(manager, client)
    session = manager.create_inbound("CA" + "3" * 32, "+15551230000", "+15557654321")
    manager.mark_stream_started(session)
    session.bridge = _Bridge()
    return factory, manager, client, session


async def test_a_goodbye_the_model_never_voiced_is_said_by_twilio_before_the_hang_up(
        rest: FakeTwilioRest) -> None:
    factory, _, client, session = await _factory(rest)
    rest.add_incoming(session.call_sid, session.from_number, session.to_number)
    try:
        factory.end_call(session, "max-duration", "Time is up. Goodbye!")
        assert session.status.value == "completed" and session.reason == "max-duration"
        request = await rest.wait_request(_hangup_of(session.call_sid))
        twiml = request.get("Twiml") or ""
        assert "<Say>Time is up. Goodbye!</Say>" in twiml and "<Hangup" in twiml
        await factory.close()
        assert not session.bridge.sender.closed
    finally:
        await client.close()


async def test_when_the_rest_hang_up_fails_the_stream_is_closed(rest: FakeTwilioRest) -> None:
    factory, _, client, session = await _factory(rest)
    rest.add_incoming(session.call_sid, session.from_number, session.to_number)
    rest.fail_next(503, times=10)
    try:
        factory.end_call(session, "silence-timeout", None)
        assert session.reason == "silence-timeout"
        await rest.wait_request(_hangup_of(session.call_sid))
        tasks = list(factory._tasks)
        await asyncio.wait(tasks, timeout=10)
        assert session.bridge.sender.closed
    finally:
        await client.close()


async def test_a_call_that_already_ended_is_not_hung_up_again(rest: FakeTwilioRest) -> None:
    factory, manager, client, session = await _factory(rest)
    try:
        manager.complete(session, reason="stop")
        factory.end_call(session, "max-duration", None)
        assert session.reason == "stop" and not factory._tasks and not rest.requests
    finally:
        await client.close()
