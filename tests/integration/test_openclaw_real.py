"""GatewayClient against the real OpenClaw gateway (npm ``openclaw``, Node 26), offline.

protocols.md 5.5: the gateway runs on a free loopback port, isolated (HOME, state, config
in tmp_path, Bonjour off), its model pointed at tests/fakes/fake_chat_model.py. The test
waits for the handshake to be accepted (``UNAVAILABLE`` startup-sidecars is retried), sends
a command with ``chat.send`` and checks the agent's final answer is what the fake model said;
then a second, warm turn, and a live ``chat.abort`` of a turn whose model is slow.

Pairing: the gateway lets a loopback ``gateway-client`` backend in without pairing (and
without a device token). Reached from this host's LAN address it treats us as remote: the
connect is refused with ``PAIRING_REQUIRED`` until ``openclaw devices approve <requestId>``;
the client keeps retrying meanwhile, then stores the ``deviceToken`` it is issued, and a
restart without the shared token gets in on that token alone.

Skipped, with the reason, when npm/node are missing or the install fails
(``.ci/install-openclaw.sh``; ``AGENTIC_FAST_SKIP_OPENCLAW=1`` skips on purpose).
Select with ``pytest -m openclaw``. Timings are printed and recorded as properties.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentic_fast.core.errors import PeerUnavailableError
from agentic_fast.gateway import (
    Backoff,
    GatewayClient,
    load_or_create_identity,
    voice_session_key,
)
from tests.fakes.fake_chat_model import FakeChatModel
from tests.fakes.openclaw_real import (
    OpenClawInstall,
    RealGateway,
)

pytestmark = pytest.mark.openclaw

TOKEN = "agentic-fast-test-token"
REPLY = "Done: the porch lights are on and the door is locked."
READY_TIMEOUT_S = 180.0
TURN_DEADLINE_S = 120.0


async def test_real_gateway_answers_a_command_and_aborts(
        openclaw: OpenClawInstall, tmp_path: Path,
        record_property: pytest.RecordProperty) -> None:
    timings: dict[str, float] = {"install_s": openclaw.seconds}
    async with FakeChatModel(default_reply=REPLY) as model:
        gateway = RealGateway(openclaw, tmp_path / "openclaw", token=TOKEN,
                              model_base_url=model.base_url, model_id=model.model)
        started = time.perf_counter()
        await gateway.start()
        try:
            client = GatewayClient(gateway.url, token=TOKEN,
                                   identity=load_or_create_identity(tmp_path / "device_key"),
                                   backoff=Backoff.endless(0.25, 1.0))
            async with client:
                try:
                    hello = await client.wait_ready(timeout=READY_TIMEOUT_S)
                except PeerUnavailableError as exc:
                    pytest.fail(f"gateway never accepted the handshake ({exc}); "
                                f"exit={gateway.exited()}\n{gateway.log_tail()}")
                timings["gateway_ready_s"] = time.perf_counter() - started
                assert hello.protocol == 4
                assert {"operator.read", "operator.write"} <= set(hello.scopes)
                assert hello.policy.tick_interval_ms > 0

                # 1. a command, to the agent's final answer
                key = voice_session_key("CAreal0001")
                t0 = time.perf_counter()
                async with client.run(key, "Turn on the porch lights and lock the door.",
                                      deadline_s=TURN_DEADLINE_S) as run:
                    events = [event async for event in run]
                timings["first_answer_s"] = time.perf_counter() - t0
                last = events[-1]
                assert last.state == "final", (last, gateway.log_tail())
                assert REPLY in last.text
                assert {e.run_id for e in events} == {run.run_id}
                assert model.requests, "the gateway never called the fake model"

                # 2. a warm turn in the same session
                t0 = time.perf_counter()
                final = await client.ask(key, "Thanks. Anything else?",
                                         deadline_s=TURN_DEADLINE_S)
                timings["warm_answer_s"] = time.perf_counter() - t0
                assert final.state == "final"
                assert REPLY in final.text

                # 3. chat.abort of a turn whose model is slow (live behaviour, protocols 6)
                model.reply_delay_s = 60.0
                abort_key = voice_session_key("CAreal0002")
                async with client.run(abort_key, "Take your time.", deadline_s=30.0) as run:
                    t0 = time.perf_counter()
                    result = await client.request("chat.abort", {"sessionKey": abort_key,
                                                                 "runId": run.run_id})
                    timings["abort_ack_s"] = time.perf_counter() - t0
                    states = [event.state async for event in run]
                    timings["abort_to_terminal_s"] = time.perf_counter() - t0
                print(f"\nchat.abort answered {result!r:.300}; run states after it: {states}")
                assert states[-1] == "aborted", (states, gateway.log_tail())
                model.reply_delay_s = 0.0
        finally:
            await gateway.stop()
    for name, value in timings.items():
        record_property(name, round(value, 3))
    print("\nopenclaw timings: " + ", ".join(f"{k}={v:.2f}" for k, v in timings.items()))
