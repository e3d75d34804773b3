"""The production wiring end to end: ``make_bridge_factory`` builds the provider, the
ConversationBrain and the one GatewayClient from config; a caller's turn (transcribed by
the fake OpenAI Realtime) becomes a command at the fake OpenClaw gateway, and the agent's
answer is handed back to the voice model to speak."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentic_fast.call.factory import make_bridge_factory
from tests.fakes.fake_chat_model import FakeChatModel
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.integration.harness import Harness, make_config

OWNER = "+15551230000"  # the fake caller's number (incoming_call_form's default From)


def classify(body: dict[str, Any]) -> str:
    turn = body["messages"][-1]["content"]
    if "text sam" in turn.lower():
        return json.dumps({"intent": "action", "command": "Text Sam that I'm running late"})
    return json.dumps({"intent": "chat", "command": ""})


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Harness, FakeOpenAIRealtime,
                                                       FakeOpenClawGateway]]:
    async with FakeTwilioRest() as rest, FakeOpenAIRealtime() as openai, \
            FakeOpenClawGateway(token="gw-token",
                                default_script=ChatScript(noise=False)) as gateway, \
            FakeChatModel(responder=classify) as model:
        extra = f"""
openai_realtime:
  url: {openai.url.split("?")[0]}
  api_key: {openai.api_key}
gateway:
  url: {gateway.url}
  token: gw-token
  device_key_path: {tmp_path / "device_key"}
brain:
  mode: transcript
  allowed_callers: ['{OWNER}']
  filler_after_s: 0
  turn_gap_s: 0
  classifier:
    base_url: {model.base_url}
    model: {model.model}
    api_key: test
"""
        config = make_config(rest, extra=extra)
        harness = await Harness(config, rest, bridge_factory=make_bridge_factory(config)
                                ).__aenter__()
        try:
            yield harness, openai, gateway
        finally:
            await harness.__aexit__(None, None, None)


async def test_a_spoken_command_reaches_the_agent_and_its_answer_is_spoken(stack) -> None:
    harness, openai, gateway = stack
    call_sid, params, _ = await harness.incoming_call()
    s = await openai.wait_session(0)
    client = harness.media_client(call_sid, params)
    await client.connect()
    await s.wait_received("session.update")
    # the provider was pre-warmed at the webhook: events it gets before the stream's bridge
    # attaches go nowhere, so the caller's turns start once caller audio flows through it
    await s.wait_received("input_audio_buffer.append")
    gateway.queue_chat(ChatScript(reply="**Done.** I texted Sam: running late.", noise=False))

    await s.user_turn("hi there")  # small talk: never reaches the agent
    await s.user_turn("please text Sam that I'm running late")
    send = await gateway.wait_request("chat.send", 1)
    assert send["params"]["message"] == "Text Sam that I'm running late"

    def spoken() -> list[str]:
        return [json.dumps(e) for e in s.received if e["type"] == "conversation.item.create"
                and "I texted Sam" in json.dumps(e)]

    await s.wait_until(lambda: bool(spoken()), timeout=10)
    assert "**" not in spoken()[0]  # made speakable: no markdown read aloud
    assert not s.rejected
    call = harness.services.manager.get(params["callId"])
    assert [c["command"] for c in call.commands] == ["Text Sam that I'm running late"]
    assert len(gateway.methods("chat.send")) == 1
    await client.hangup()
