"""ConversationBrain against the REAL OpenClaw gateway (npm ``openclaw``, Node 26), offline.

One caller turn goes the whole way: transcript -> rule layer -> classifier (a fake chat
model answering strict JSON) -> ConversationBrain -> GatewayClient -> real gateway, whose
agent model is another fake chat model -> the agent's final answer, made speakable and
said through a recording provider. The command and its result are on the CallSession.

Skipped, with the reason, when npm/node are missing or the install fails (see
tests/fakes/openclaw_real.py; ``AGENTIC_FAST_SKIP_OPENCLAW=1`` skips on purpose).
Select with ``pytest -m openclaw``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agentic_fast.brain import ChatModelClassifier, ConversationBrain
from agentic_fast.call.manager import CallManager
from agentic_fast.core.config import BrainConfig
from agentic_fast.core.errors import PeerUnavailableError
from agentic_fast.gateway import Backoff, GatewayClient, load_or_create_identity
from tests.fakes.fake_chat_model import FakeChatModel
from tests.fakes.openclaw_real import (
    OpenClawInstall,
    RealGateway,
)
from tests.integration.test_brain import RecordingProvider

pytestmark = pytest.mark.openclaw

TOKEN = "agentic-fast-brain-test-token"
OWNER = "+15551230000"
AGENT_REPLY = ("**Done!** I texted Sam: *running late, there in 20*. "
               "Details: https://messages.example.com/t/123")
SPOKEN = "Done! I texted Sam: running late, there in 20. Details: messages.example.com."
COMMAND = "Text Sam that I'm running late and will be there in 20 minutes."
READY_TIMEOUT_S = 180.0
TURN_DEADLINE_S = 120.0


def classify(body: dict[str, Any]) -> str:
    """The classifier model: the caller's turn is an action with a self-contained command."""
    turn = body["messages"][-1]["content"]
    assert "running late" in turn
    return json.dumps({"intent": "action", "command": COMMAND})


async def test_a_transcript_command_reaches_the_real_agent_and_is_spoken(
        openclaw: OpenClawInstall, tmp_path: Path,
        record_property: pytest.RecordProperty) -> None:
    async with FakeChatModel(default_reply=AGENT_REPLY) as agent_model, \
            FakeChatModel(responder=classify) as classifier_model:
        gateway = RealGateway(openclaw, tmp_path / "openclaw", token=TOKEN,
                              model_base_url=agent_model.base_url, model_id=agent_model.model)
        await gateway.start()
        client = GatewayClient(gateway.url, token=TOKEN,
                               identity=load_or_create_identity(tmp_path / "device_key"),
                               backoff=Backoff.endless(0.25, 1.0))
        brain = ConversationBrain(
            BrainConfig(mode="transcript", allowed_callers=(OWNER,), filler_after_s=2.0,
                        deadline_s=TURN_DEADLINE_S, turn_gap_s=0),
            client, classifier=ChatModelClassifier(classifier_model.base_url,
                                                   classifier_model.model, timeout_s=10.0))
        try:
            try:
                await client.wait_ready(timeout=READY_TIMEOUT_S)
            except PeerUnavailableError as exc:
                pytest.fail(f"gateway never accepted the handshake ({exc}); "
                            f"exit={gateway.exited()}\n{gateway.log_tail()}")
            await brain.start()
            session = CallManager().create_inbound("CAbrainreal0001", OWNER, "+15550001111")
            voice = RecordingProvider()
            session.bridge = SimpleNamespace(provider=voice)

            t0 = time.perf_counter()
            brain.on_turn(session, "user", "Hi!")  # small talk: never sent
            brain.on_turn(session, "user", "Can you tell Sam I'm running late, 20 minutes?")
            await voice.wait_until(lambda: voice.said and voice.said[-1] != brain.phrases.filler,
                                   "the agent's answer", timeout=TURN_DEADLINE_S + 10)
            elapsed = time.perf_counter() - t0

            assert voice.said[-1] == SPOKEN, (voice.said, gateway.log_tail())
            assert set(voice.said[:-1]) <= {brain.phrases.filler}  # at most the filler
            [record] = session.commands
            assert record["command"] == COMMAND
            assert record["status"] == "done" and record["source"] == "transcript"
            assert AGENT_REPLY in record["answer"]
            assert record["session_key"] == "agent:main:voice-cabrainreal0001"
            assert len(classifier_model.requests) == 1  # "Hi!" was settled by the rules
            assert any(COMMAND in json.dumps(r["messages"]) for r in agent_model.requests), \
                "the agent model never saw the command"
            record_property("command_to_spoken_s", round(elapsed, 3))
            print(f"\nbrain -> real gateway -> spoken answer in {elapsed:.2f} s; "
                  f"said={voice.said}")
        finally:
            await brain.close()
            await client.close()
            await gateway.stop()
