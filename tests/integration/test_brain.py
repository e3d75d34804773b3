"""ConversationBrain end to end on loopback: the fake OpenClaw gateway behind a real
GatewayClient, the fake chat model as classifier, a recording provider as the call's voice,
real CallSessions from a CallManager.

No sleeps as synchronisation: tests wait on what the fakes record (``wait_request``), on
what the provider was asked to say (``RecordingProvider.wait_until``) or on the brain going
idle (``wait_idle``). The only delays are scripted ones inside the fakes (a slow agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agentic_fast.brain import ChatModelClassifier, ConversationBrain, Phrases
from agentic_fast.brain.turns import MemoryTurn
from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.core import metrics
from agentic_fast.core.config import BrainConfig
from agentic_fast.core.errors import ClassifierError, InvalidClassificationError
from agentic_fast.gateway import Backoff, GatewayClient, load_or_create_identity
from agentic_fast.gateway.protocol import voice_session_key
from agentic_fast.providers.base import ProviderListener, RealtimeProvider
from tests.fakes.fake_chat_model import FakeChatModel
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway

TOKEN = "fake-token"
OWNER = "+15551230000"
STRANGER = "+15559990000"
OUR_NUMBER = "+15550001111"
PHRASES = Phrases()


class RecordingProvider(RealtimeProvider):
    """A RealtimeProvider that records what the brain asks it to say or answer."""

    converter_format = "openai"

    def __init__(self) -> None:
        self.said: list[str] = []
        self.tool_results: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    async def connect(self) -> None:
        return None

    def attach(self, listener: ProviderListener) -> None:
        return None

    def send_audio(self, chunk_b64: str) -> None:
        return None

    def begin(self, *, speak_first: str | None) -> None:
        return None

    def interrupt(self, item_id: str | None, audio_end_ms: int | None) -> None:
        return None

    def say(self, text: str) -> None:
        self.said.append(text)
        self._changed.set()

    def send_tool_result(self, call_id: str, output: str) -> None:
        self.tool_results.append((call_id, json.loads(output)))
        self._changed.set()

    async def close(self) -> None:
        return None

    async def wait_until(self, predicate: Callable[[], object], what: str,
                         timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"provider: no {what} within {timeout} s; said={self.said}, "
                                 f"tool_results={self.tool_results}") from None


def classify(body: dict[str, Any]) -> str:
    """The fake classifier: turns starting with "please" are actions (the rest of the turn
    is the command); anything else is chat."""
    turn = json.loads(body["messages"][-1]["content"].rsplit("\n", 1)[-1])
    if turn.lower().startswith("please "):
        command = turn[len("please "):]
        return json.dumps({"intent": "action", "command": command[0].upper() + command[1:]})
    return json.dumps({"intent": "chat", "command": ""})


class Harness:
    """A started brain plus its fakes; ``call()`` makes a call with a recording provider."""

    def __init__(self, gateway: FakeOpenClawGateway, client: GatewayClient,
                 model: FakeChatModel) -> None:
        self.gateway = gateway
        self.client = client
        self.model = model
        self.manager = CallManager()
        self.brain: ConversationBrain | None = None
        self._sids = 0

    async def start(self, classifier_url: str | None = None, **settings: Any
                    ) -> ConversationBrain:
        settings.setdefault("mode", "transcript")
        settings.setdefault("allowed_callers", (OWNER,))
        settings.setdefault("filler_after_s", 0)
        settings.setdefault("turn_gap_s", 0)
        scope = settings.pop("session_scope", "call")
        classifier = ChatModelClassifier(classifier_url or self.model.base_url,
                                         self.model.model, timeout_s=2.0)
        self.brain = ConversationBrain(BrainConfig(**settings), self.client,
                                       classifier=classifier, session_scope=scope)
        await self.brain.start()
        return self.brain

    def call(self, from_number: str = OWNER) -> tuple[CallSession, RecordingProvider]:
        self._sids += 1
        session = self.manager.create_inbound(f"CA{self._sids:032x}", from_number, OUR_NUMBER)
        provider = RecordingProvider()
        session.bridge = SimpleNamespace(provider=provider)
        return session, provider

    def sends(self, session: CallSession | None = None) -> list[dict[str, Any]]:
        params = [r["params"] for r in self.gateway.methods("chat.send")]
        if session is None:
            return params
        key = voice_session_key(session.call_sid or "")
        return [p for p in params if p["sessionKey"] == key]

    async def idle(self) -> None:
        assert self.brain is not None
        assert await self.brain.wait_idle(timeout=10.0), "brain did not go idle"


@pytest.fixture
async def fake_gateway() -> AsyncIterator[FakeOpenClawGateway]:
    async with FakeOpenClawGateway(token=TOKEN, default_script=ChatScript(noise=False)) as fake:
        yield fake


@pytest.fixture
async def h(fake_gateway: FakeOpenClawGateway, tmp_path: Path) -> AsyncIterator[Harness]:
    client = GatewayClient(fake_gateway.url, token=TOKEN,
                           identity=load_or_create_identity(tmp_path / "device_key"),
                           backoff=Backoff.endless(0.05, 0.2, jitter=0.0))
    async with FakeChatModel(responder=classify) as model:
        await client.wait_ready(timeout=10.0)
        harness = Harness(fake_gateway, client, model)
        try:
            yield harness
        finally:
            if harness.brain is not None:
                await harness.brain.close()
            await client.close()


def counter(name: str) -> Callable[[], int]:
    """``delta()`` -> how much ``name`` grew since this call (counters are process-wide)."""
    before = metrics.get(name)
    return lambda: metrics.get(name) - before


# -- transcript path -------------------------------------------------------------------------

async def test_chit_chat_is_not_sent_and_a_command_is_answered_aloud(h: Harness) -> None:
    brain = await h.start()
    h.gateway.queue_chat(ChatScript(
        reply="**Done!** I texted [Sam](https://example.com/sam) that you're running late.",
        noise=False))
    session, voice = h.call()
    brain.on_turn(session, "user", "Hello there!")                 # rules: chat
    brain.on_turn(session, "assistant", "Hi! How can I help?")
    brain.on_turn(session, "user", "How was your weekend?")        # model: chat
    brain.on_turn(session, "user", "please text Sam that I'm late.")  # model: action
    await voice.wait_until(lambda: voice.said, "answer")
    await h.idle()

    assert voice.said == ["Done! I texted Sam that you're running late."]
    sends = h.sends()
    assert [p["message"] for p in sends] == ["Text Sam that I'm late."]
    assert sends[0]["sessionKey"] == voice_session_key(session.call_sid or "")
    assert len(h.model.requests) == 2  # "Hello there!" never reached the classifier
    context = h.model.requests[1]["messages"][1]["content"]
    assert "caller: Hello there!\nassistant: Hi! How can I help?" in context
    assert h.model.requests[0]["response_format"] == {"type": "json_object"}

    [record] = session.commands
    assert record["command"] == "Text Sam that I'm late."
    assert record["source"] == "transcript" and record["status"] == "done"
    assert record["answer"].startswith("**Done!**")
    assert record["spoken"] == voice.said[0]
    assert record["started_at"] and record["ended_at"] and record["duration_s"] >= 0
    assert record["run_id"] and record["session_key"] == sends[0]["sessionKey"]
    assert session.to_dict()["commands"] == [record]


async def test_fragments_are_assembled_into_one_turn(h: Harness) -> None:
    brain = await h.start(turn_gap_s=0.05)
    session, voice = h.call()
    for piece in ("please turn", "on the", "porch lights"):  # no sentence end: gap flushes
        brain.on_turn(session, "user", piece)
    await voice.wait_until(lambda: voice.said, "answer")
    assert [p["message"] for p in h.sends()] == ["Turn on the porch lights"]


@pytest.mark.parametrize("failure", ["down", "bad-json", "slow"])
async def test_classifier_failure_sends_the_raw_turn_once(h: Harness, failure: str) -> None:
    url = None
    if failure == "down":
        async with FakeChatModel() as gone:
            url = gone.base_url  # nothing listens there any more
    elif failure == "bad-json":
        h.model.queue_reply("Sure! It's an action.", '{"intent": "action"}')
    else:
        h.model.reply_delay_s = 1.0
    brain = await h.start(classifier_url=url)
    if failure == "slow":
        brain._classifier.timeout_s = 0.2  # type: ignore[union-attr]
    failed = counter("brain.classifier.invalid" if failure == "bad-json"
                     else "brain.classifier.failed")
    duplicates = counter("brain.command.duplicate")
    session, voice = h.call()
    brain.on_turn(session, "user", "Turn on the porch lights.")
    brain.on_turn(session, "user", "Turn on the porch lights.")
    await h.idle()

    assert [p["message"] for p in h.sends()] == ["Turn on the porch lights."]
    assert failed() == 2 and duplicates() == 1
    assert voice.said == ["Done."]
    assert [c["source"] for c in session.commands] == ["transcript"]


async def test_slow_agent_gets_a_filler_then_the_answer(h: Harness) -> None:
    brain = await h.start(filler_after_s=0.05)
    h.gateway.queue_chat(ChatScript(reply="The lights are on.", event_delay_s=0.3,
                                    noise=False))
    session, voice = h.call()
    brain.on_turn(session, "user", "please turn on the lights.")
    await voice.wait_until(lambda: len(voice.said) == 2, "filler and answer")
    assert voice.said == [PHRASES.filler, "The lights are on."]


async def test_deadline_aborts_the_run_and_tells_the_caller(h: Harness) -> None:
    brain = await h.start(deadline_s=0.3)
    h.gateway.queue_chat(ChatScript(outcome="hang", noise=False))
    timeouts = counter("brain.command.timeout")
    session, voice = h.call()
    brain.on_turn(session, "user", "please book a table.")
    abort = await h.gateway.wait_request("chat.abort")
    [send] = h.sends()
    assert abort["params"]["sessionKey"] == send["sessionKey"]
    await voice.wait_until(lambda: voice.said, "timeout apology")
    assert voice.said == [PHRASES.timeout]
    assert session.commands[0]["status"] == "timeout" and timeouts() == 1


async def test_agent_error_is_an_apology(h: Harness) -> None:
    brain = await h.start()
    h.gateway.queue_chat(ChatScript(outcome="error", error_message="model failed",
                                    noise=False))
    session, voice = h.call()
    brain.on_turn(session, "user", "please book a table.")
    await voice.wait_until(lambda: voice.said, "apology")
    assert voice.said == [PHRASES.failed]
    assert session.commands[0]["status"] == "error"
    assert "model failed" in session.commands[0]["error"]
    brain.on_turn(session, "user", "please book a table.")  # a failed command may be retried
    await voice.wait_until(lambda: len(voice.said) == 2, "answer to the retry")
    assert voice.said[1] == "Done." and len(h.sends()) == 2


class SwitchableProxy:
    """A TCP forwarder on a fixed loopback port that can be switched off and on again
    (a gateway that goes down and comes back on the same address)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_gateway_down_is_an_apology_and_the_call_goes_on(
        fake_gateway: FakeOpenClawGateway, tmp_path: Path) -> None:
    proxy = SwitchableProxy(int(fake_gateway.url.rsplit(":", 1)[1]))
    await proxy.start()
    client = GatewayClient(f"ws://127.0.0.1:{proxy.port}", token=TOKEN,
                           identity=load_or_create_identity(tmp_path / "device_key"),
                           backoff=Backoff.endless(0.05, 0.1, jitter=0.0))
    async with FakeChatModel(responder=classify) as model:
        h = Harness(fake_gateway, client, model)
        await client.wait_ready(timeout=10.0)
        brain = await h.start(gateway_wait_s=0.2)
        try:
            await proxy.stop()
            await fake_gateway.wait_until(lambda: not client.is_open, "client noticing")
            session, voice = h.call()
            brain.on_turn(session, "user", "please turn on the lights.")
            await voice.wait_until(lambda: voice.said, "apology")
            assert voice.said == [PHRASES.unavailable]
            assert session.commands[0]["status"] == "unavailable"
            assert not session.ended

            await proxy.start()  # the gateway is back: the same call can command again
            await client.wait_ready(timeout=10.0)
            brain.on_turn(session, "user", "please turn off the lights.")
            await voice.wait_until(lambda: len(voice.said) == 2, "answer after recovery")
            assert voice.said[1] == "Done."
            assert [p["message"] for p in h.sends()] == ["Turn off the lights."]
        finally:
            await brain.close()
            await client.close()
            with contextlib.suppress(Exception):
                await proxy.stop()


# -- who may command -------------------------------------------------------------------------

async def test_a_caller_not_allowed_never_reaches_the_gateway(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentic_fast")
    brain = await h.start(mode="both")
    refused = counter("brain.refused.caller")
    refused_tools = counter("brain.refused.tool")
    session, voice = h.call(STRANGER)
    brain.on_turn(session, "user", "please text Sam that I'm late.")
    brain.on_turn(session, "user", "please unlock the front door.")
    brain.on_tool_call(session, "call_1", "run_command", '{"command": "Unlock the door."}')
    await h.idle()
    assert h.gateway.methods("chat.send") == []
    assert h.model.requests == []  # not even classified
    assert list(session.commands) == []
    assert refused() == 1 and refused_tools() == 1
    assert voice.tool_results == [("call_1", {"error": "Commands are not available to "
                                                       "this caller."})]
    assert voice.said == []
    [line] = [r.getMessage() for r in caplog.records if "brain.refused" in r.getMessage()]
    assert STRANGER not in line and f"caller={STRANGER[:3]}" in line  # masked in the log


async def test_commands_run_only_after_the_right_pin(h: Harness) -> None:
    brain = await h.start(pin="2468")
    session, voice = h.call()
    brain.on_turn(session, "user", "please turn on the lights.")
    await voice.wait_until(lambda: voice.said, "PIN prompt")
    assert voice.said == [PHRASES.pin_prompt]
    assert h.sends() == []

    for digit in "1111":
        brain.on_dtmf(session, digit)
    await voice.wait_until(lambda: len(voice.said) == 2, "wrong PIN")
    assert voice.said[1] == PHRASES.pin_wrong
    assert h.sends() == []

    for digit in "2468":
        brain.on_dtmf(session, digit)
    await voice.wait_until(lambda: len(voice.said) == 4, "PIN ok and the held command")
    assert voice.said[2:] == [PHRASES.pin_ok, "Done."]
    assert [p["message"] for p in h.sends()] == ["Turn on the lights."]

    brain.on_turn(session, "user", "please lock the door.")  # verified once per call
    await voice.wait_until(lambda: len(voice.said) == 5, "second answer")
    assert len(h.sends()) == 2


async def test_tool_call_before_the_pin_is_refused_then_held(h: Harness) -> None:
    brain = await h.start(mode="tool", pin="2468")
    session, voice = h.call()
    brain.on_tool_call(session, "call_1", "run_command", '{"command": "Lock the door."}')
    await voice.wait_until(lambda: voice.tool_results, "tool refusal")
    assert voice.tool_results == [("call_1", {"error": PHRASES.pin_prompt})]
    for digit in "2468#":
        brain.on_dtmf(session, digit)
    await voice.wait_until(lambda: len(voice.said) == 2, "PIN ok and the held command")
    assert voice.said == [PHRASES.pin_ok, "Done."]
    assert [p["message"] for p in h.sends()] == ["Lock the door."]


# -- aborts ----------------------------------------------------------------------------------

async def test_hang_up_aborts_the_run_in_flight(h: Harness) -> None:
    brain = await h.start()
    h.gateway.queue_chat(ChatScript(outcome="hang", noise=False))
    session, voice = h.call()
    brain.on_turn(session, "user", "please book a table.")
    await h.gateway.wait_request("chat.send")
    brain.on_call_end(session)
    h.manager.complete(session, "hangup")
    abort = await h.gateway.wait_request("chat.abort")
    assert abort["params"]["sessionKey"] == h.sends()[0]["sessionKey"]
    await h.idle()
    assert session.commands[0]["status"] == "aborted"
    assert session.commands[0]["error"] == "hang-up"
    assert voice.said == []
    brain.on_turn(session, "user", "please book it again.")  # late events are ignored
    await h.idle()
    assert len(h.sends()) == 1


@pytest.mark.parametrize("aborts", [True, False])
async def test_barge_in_aborts_only_when_configured(h: Harness, aborts: bool) -> None:
    brain = await h.start(barge_in_aborts=aborts)
    h.gateway.queue_chat(ChatScript(reply="Booked.", event_delay_s=0.2, noise=False))
    session, voice = h.call()
    brain.on_turn(session, "user", "please book a table.")
    await h.gateway.wait_request("chat.send")
    brain.on_barge_in(session)
    await h.idle()
    if aborts:
        await h.gateway.wait_request("chat.abort")
        assert session.commands[0]["status"] == "aborted"
        assert voice.said == []
        brain.on_turn(session, "user", "please call mom.")  # the call goes on
        await voice.wait_until(lambda: voice.said, "next answer")
        assert voice.said == ["Done."]
    else:
        assert h.gateway.methods("chat.abort") == []
        assert voice.said == ["Booked."]


# -- tool path -------------------------------------------------------------------------------

async def test_tool_call_runs_and_returns_the_speakable_answer(h: Harness) -> None:
    brain = await h.start(mode="tool")
    h.gateway.queue_chat(ChatScript(
        reply="Today:\n- **Standup** at 9\n- Lunch with Sam at 12\n\nSee https://cal.example.com",
        noise=False))
    session, voice = h.call()
    assert brain.tools()[0]["name"] == "run_command"
    brain.on_turn(session, "user", "please do not classify me.")  # mode tool: ignored
    brain.on_tool_call(session, "call_1", "run_command",
                       '{"command": "What is on my calendar today?"}')
    await voice.wait_until(lambda: voice.tool_results, "tool result")
    assert voice.tool_results == [("call_1", {"result": "Today: Standup at 9 and Lunch "
                                                        "with Sam at 12. See cal.example.com."})]
    assert voice.said == []
    assert h.model.requests == []
    assert [p["message"] for p in h.sends()] == ["What is on my calendar today?"]
    assert session.commands[0]["source"] == "tool"


async def test_bad_tool_calls_are_answered_at_once(h: Harness) -> None:
    brain = await h.start(mode="tool")
    session, voice = h.call()
    brain.on_tool_call(session, "c1", "end_call", "{}")
    brain.on_tool_call(session, "c2", "run_command", '{"command": ""}')
    assert [cid for cid, _ in voice.tool_results] == ["c1", "c2"]
    assert all("error" in out for _, out in voice.tool_results)
    await h.idle()
    assert h.sends() == []


async def test_tool_error_outcomes_are_errors(h: Harness) -> None:
    brain = await h.start(mode="tool", deadline_s=0.3)
    h.gateway.queue_chat(ChatScript(outcome="hang", noise=False))
    session, voice = h.call()
    brain.on_tool_call(session, "c1", "run_command", '{"command": "Book a table."}')
    await voice.wait_until(lambda: voice.tool_results, "tool timeout")
    assert voice.tool_results == [("c1", {"error": PHRASES.timeout})]
    assert len(h.gateway.methods("chat.abort")) == 1


async def test_mode_both_sends_a_delegated_command_once(h: Harness) -> None:
    brain = await h.start(mode="both")
    delegated = counter("brain.turn.delegated")
    session, voice = h.call()
    # the model calls the tool first; the caller's transcript arrives a moment later
    brain.on_tool_call(session, "c1", "run_command", '{"command": "Text Sam I am late."}')
    brain.on_turn(session, "user", "please text Sam that I'm running late.")
    await voice.wait_until(lambda: voice.tool_results, "tool result")
    await h.idle()
    assert [p["message"] for p in h.sends()] == ["Text Sam I am late."]
    assert voice.tool_results == [("c1", {"result": "Done."})]
    assert voice.said == [] and delegated() == 1


async def test_mode_both_tool_call_joins_the_transcript_command_in_flight(h: Harness) -> None:
    brain = await h.start(mode="both")
    h.gateway.queue_chat(ChatScript(reply="Sent.", event_delay_s=0.2, noise=False))
    joined = counter("brain.tool.joined")
    session, voice = h.call()
    brain.on_turn(session, "user", "please text Sam that I'm running late.")
    await h.gateway.wait_request("chat.send")
    brain.on_tool_call(session, "c1", "run_command", '{"command": "Text Sam: running late"}')
    await voice.wait_until(lambda: voice.tool_results, "tool result")
    await h.idle()
    assert len(h.sends()) == 1 and joined() == 1
    assert voice.tool_results == [("c1", {"result": "Sent."})]
    assert voice.said == []  # the model speaks the answer from the tool output


# -- the pool --------------------------------------------------------------------------------

async def test_per_call_order_is_kept_with_concurrent_calls(h: Harness) -> None:
    brain = await h.start(workers=2)
    h.gateway.default_script = ChatScript(reply=None, noise=False)  # "echo: <message>"
    calls = [h.call() for _ in range(4)]
    for step in range(5):
        for n, (session, _) in enumerate(calls):
            brain.on_turn(session, "user", f"please do step {step} of call {n}.")
    for _, voice in calls:
        await voice.wait_until(lambda v=voice: len(v.said) == 5, "five answers")
    for n, (session, voice) in enumerate(calls):
        expected = [f"Do step {step} of call {n}." for step in range(5)]
        assert [p["message"] for p in h.sends(session)] == expected
        assert voice.said == [f"echo: {text}" for text in expected]
        assert [c["command"] for c in session.commands] == expected


async def test_a_full_queue_is_counted_and_a_dropped_tool_call_answered(h: Harness) -> None:
    brain = await h.start(mode="both", call_queue_size=2, workers=1)
    h.gateway.queue_chat(ChatScript(outcome="hang", noise=False))
    full = counter("brain.queue.full")
    session, voice = h.call()
    brain.on_turn(session, "user", "please book a table.")
    await h.gateway.wait_request("chat.send")  # the worker is busy with this run
    brain.on_turn(session, "user", "please call mom.")
    brain.on_turn(session, "user", "please call dad.")
    brain.on_turn(session, "user", "please call grandma.")  # third: the queue is full
    brain.on_tool_call(session, "c1", "run_command", '{"command": "Call grandpa."}')
    assert full() == 2
    assert voice.tool_results == [("c1", {"error": "The assistant is busy; try again "
                                                   "shortly."})]
    assert brain.pending == 2
    brain.on_call_end(session)
    await h.gateway.wait_request("chat.abort")
    await h.idle()
    assert brain.pending == 0 and len(h.sends()) == 1


async def test_global_queue_bound(h: Harness) -> None:
    brain = await h.start(queue_size=1, workers=1)
    h.gateway.queue_chat(ChatScript(outcome="hang", noise=False))
    full = counter("brain.queue.full")
    first, _ = h.call()
    brain.on_turn(first, "user", "please book a table.")
    await h.gateway.wait_request("chat.send")
    second, _ = h.call()
    brain.on_turn(second, "user", "please call mom.")   # fits (1 queued in all)
    brain.on_turn(second, "user", "please call dad.")   # over the global bound
    assert full() == 1
    await brain.close()


# -- the classifier over HTTP ------------------------------------------------------------------

async def test_classifier_request_and_verdicts() -> None:
    async with FakeChatModel(api_key="sk-test") as model:
        classifier = ChatModelClassifier(model.base_url, "tiny", api_key="sk-test")
        model.queue_reply('{"intent": "action", "command": "Text Sam that I\'m late."}',
                          '{"intent": "chat", "command": ""}')
        try:
            context = (MemoryTurn("assistant", "Shall I tell Sam you're late?"),)
            verdict = await classifier.classify("yes do it", context)
            assert verdict.is_action and verdict.command == "Text Sam that I'm late."
            assert not (await classifier.classify("nice", ())).is_action
            body = model.requests[0]
            assert body["model"] == "tiny" and body["stream"] is False
            assert body["response_format"] == {"type": "json_object"}
            assert "assistant: Shall I tell Sam you're late?" in body["messages"][1]["content"]
        finally:
            await classifier.close()


@pytest.mark.parametrize(("setup", "error"), [
    ("wrong-key", ClassifierError), ("bad-json", InvalidClassificationError),
    ("slow", ClassifierError)])
async def test_classifier_errors(setup: str, error: type[Exception]) -> None:
    async with FakeChatModel(api_key="sk-right") as model:
        key = "sk-wrong" if setup == "wrong-key" else "sk-right"
        classifier = ChatModelClassifier(model.base_url, "tiny", api_key=key, timeout_s=0.2)
        if setup == "bad-json":
            model.queue_reply("{not json")
        if setup == "slow":
            model.reply_delay_s = 1.0
        try:
            with pytest.raises(error):
                await classifier.classify("Turn on the lights.", ())
        finally:
            await classifier.close()
