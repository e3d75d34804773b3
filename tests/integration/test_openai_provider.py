"""OpenAIRealtimeProvider against the fake OpenAI Realtime server on loopback.

The fake validates every client event against the openai SDK's models (``s.rejected`` holds
what it refused). No sleeps as synchronisation: every wait is on a fake record or a listener
callback, with a timeout; no timing assertions.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff
from agentic_fast.core.config import OpenAIRealtimeConfig, VadConfig
from agentic_fast.core.errors import PeerUnavailableError
from agentic_fast.providers.openai.commands import function_tool
from agentic_fast.providers.openai.provider import OpenAIRealtimeProvider
from tests.fakes.openai_realtime import FakeOpenAIRealtime, FakeRealtimeSession, ResponseScript

TIMEOUT = 5.0
FAST = Backoff(base_s=0.001, max_delay_s=0.005, max_attempts=5, max_total_s=5.0)
END_CALL = function_tool("end_call", "Hang up politely.",
                         {"type": "object", "properties": {"reason": {"type": "string"}}})


class Recorder:
    """A ProviderListener that records every callback and can be waited on."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._tick = asyncio.Event()

    def _add(self, *call: Any) -> None:
        self.calls.append(call)
        self._tick.set()
        self._tick = asyncio.Event()

    def on_audio(self, audio_b64: str, item_id: str) -> None:
        self._add("audio", audio_b64, item_id)

    def on_audio_done(self, item_id: str) -> None:
        self._add("audio_done", item_id)

    def on_speech_started(self) -> None:
        self._add("speech_started")

    def on_speech_stopped(self) -> None:
        self._add("speech_stopped")

    def on_transcript(self, role: str, text: str, final: bool) -> None:
        self._add("transcript", role, text, final)

    def on_tool_call(self, call_id: str, name: str, arguments: str) -> None:
        self._add("tool_call", call_id, name, arguments)

    def on_failed(self, reason: str) -> None:
        self._add("failed", reason)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]

    def audio_bytes(self, item_id: str) -> bytes:
        return b"".join(base64.b64decode(c[1]) for c in self.of("audio") if c[2] == item_id)

    async def wait(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    tick = self._tick
                    if predicate():
                        return
                    await tick.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got "
                                 f"{[c[0] for c in self.calls][-12:]}") from None

    async def wait_for(self, kind: str, count: int = 1) -> tuple[Any, ...]:
        await self.wait(lambda: len(self.of(kind)) >= count, f"{count} x {kind}")
        return self.of(kind)[count - 1]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIRealtime]:
    async with FakeOpenAIRealtime() as server:
        yield server


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., tuple[OpenAIRealtimeProvider, Recorder]]]:
    made: list[OpenAIRealtimeProvider] = []

    def factory(fake: FakeOpenAIRealtime, fmt: str = "pcm16", *, url: str | None = None,
                connect_timeout_s: float = TIMEOUT, backoff: Backoff = FAST,
                config: dict[str, Any] | None = None,
                **kw: Any) -> tuple[OpenAIRealtimeProvider, Recorder]:
        settings = OpenAIRealtimeConfig(
            api_key=fake.api_key, url=url or f"ws://127.0.0.1:{fake.port}/v1/realtime",
            model=fake.model, audio_format=fmt, instructions="You are a test assistant.",
            vad=VadConfig(threshold=0.7, prefix_padding_ms=250, silence_duration_ms=450),
            **(config or {}))
        kw.setdefault("ping_interval_s", None)
        provider = OpenAIRealtimeProvider(settings, call_id="call-test",
                                          connect_timeout_s=connect_timeout_s,
                                          backoff=backoff, **kw)
        recorder = Recorder()
        provider.attach(recorder)
        made.append(provider)
        return provider, recorder

    yield factory
    for provider in made:
        await provider.close()


def pcm16_chunk(value: int, ms: int = 40) -> tuple[str, bytes]:
    """``ms`` of 24 kHz PCM16 whose samples all equal ``value`` (base64, raw)."""
    raw = np.full(24 * ms, value, dtype="<i2").tobytes()
    return base64.b64encode(raw).decode(), raw


async def _round_trip(provider: OpenAIRealtimeProvider) -> None:
    """Every server event sent before now has been handled: a ping's pong comes after them
    (and events are handled as their frames are read)."""
    conn = provider._link
    assert conn is not None
    await asyncio.wait_for(await conn.ws.ping(), TIMEOUT)


def texts(s: FakeRealtimeSession, role: str = "system") -> list[str]:
    return [e["item"]["content"][0]["text"] for e in s.received
            if e["type"] == "conversation.item.create" and e["item"].get("role") == role]


# --------------------------------------------------------------------------- connect


@pytest.mark.parametrize(("fmt", "wire", "converter"), [
    ("pcm16", {"type": "audio/pcm", "rate": 24000}, "openai"),
    ("pcmu", {"type": "audio/pcmu"}, "openai-pcmu"),
])
async def test_connect_configures_the_session(fake: FakeOpenAIRealtime, make: Any, fmt: str,
                                              wire: dict[str, Any], converter: str) -> None:
    provider, _ = make(fake, fmt, tools=[END_CALL])
    assert provider.converter_format == converter
    await asyncio.gather(provider.connect(), provider.connect())  # concurrent: one socket
    await provider.connect()                                       # idempotent
    assert fake.connection_count == 1 and provider.connected
    s = fake.sessions[0]
    update = await s.wait_received("session.update")
    assert s.rejected == []
    assert s.headers["authorization"] == f"Bearer {fake.api_key}"
    assert "openai-beta" not in s.headers
    assert s.query["model"] == fake.model
    assert "permessage-deflate" not in s.headers.get("sec-websocket-extensions", "")
    audio = s.config["audio"]
    assert audio["input"]["format"] == wire and audio["output"]["format"] == wire
    vad = audio["input"]["turn_detection"]
    assert (vad["type"], vad["threshold"], vad["prefix_padding_ms"],
            vad["silence_duration_ms"]) == ("server_vad", 0.7, 250, 450)
    assert vad["create_response"] and vad["interrupt_response"]
    assert audio["input"]["transcription"]["model"] == "gpt-transcribe"  # the config default
    assert audio["output"]["voice"] == "marin"
    assert s.config["instructions"] == "You are a test assistant."
    assert [t["name"] for t in s.config["tools"]] == ["end_call"]
    assert update["session"]["output_modalities"] == ["audio"]


async def test_connect_refused_raises_peer_unavailable_then_retries(
        fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, _ = make(fake)
    fake.reject_next(503)
    with pytest.raises(PeerUnavailableError) as info:
        await provider.connect()
    assert info.value.peer == "openai"
    await provider.connect()  # the bridge retries when the stream arrives
    assert fake.connection_count == 1 and provider.connected


async def test_connect_times_out_and_close_interrupts_connect(make: Any,
                                                               fake: FakeOpenAIRealtime) -> None:
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await accepted.put(writer)  # never answers the upgrade

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        provider, _ = make(fake, url=f"ws://127.0.0.1:{port}/v1/realtime",
                           connect_timeout_s=0.2)
        with pytest.raises(PeerUnavailableError, match="timed out"):
            await provider.connect()
        provider2, _ = make(fake, url=f"ws://127.0.0.1:{port}/v1/realtime")
        task = asyncio.create_task(provider2.connect())
        await asyncio.wait_for(accepted.get(), TIMEOUT)
        await asyncio.wait_for(accepted.get(), TIMEOUT)
        await provider2.close()
        with pytest.raises(PeerUnavailableError):
            await asyncio.wait_for(task, TIMEOUT)
        with pytest.raises(PeerUnavailableError):
            await provider2.connect()
    finally:
        for writer in writers:
            writer.close()
        server.close()


async def test_close_is_idempotent_and_closes_the_socket(fake: FakeOpenAIRealtime,
                                                         make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    await provider.close()
    await provider.close()
    await s.wait_closed()
    assert s.close_code == 1000
    provider.send_audio(pcm16_chunk(1)[0])  # no raise, no effect
    provider.say("ignored")
    assert not provider.connected and rec.of("failed") == []


# --------------------------------------------------------------------------- audio


async def test_caller_audio_reaches_the_session_in_order(fake: FakeOpenAIRealtime,
                                                         make: Any) -> None:
    provider, _ = make(fake)
    chunks = [pcm16_chunk(v) for v in range(-3, 7)]
    provider.send_audio(chunks[0][0])  # before connect: buffered, flushed after it
    await provider.connect()
    for b64, _raw in chunks[1:]:
        provider.send_audio(b64)
    s = fake.sessions[0]
    want = b"".join(raw for _, raw in chunks)
    await s.wait_until(lambda: s.audio_bytes.get("audio/pcm", 0) >= len(want), what="audio")
    assert s.audio_bytes == {"audio/pcm": len(want)}
    assert bytes(s.audio_in["audio/pcm"]) == want
    samples = np.frombuffer(bytes(s.audio_in["audio/pcm"]), dtype="<i2")
    assert samples[0] == -3 and samples[-1] == 6
    assert s.rejected == []


async def test_caller_audio_pcmu(fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, _ = make(fake, "pcmu")
    await provider.connect()
    raw = bytes(range(256)) * 5
    for i in range(0, len(raw), 320):
        provider.send_audio(base64.b64encode(raw[i:i + 320]).decode())
    s = fake.sessions[0]
    await s.wait_until(lambda: s.audio_bytes.get("audio/pcmu", 0) >= len(raw), what="audio")
    assert bytes(s.audio_in["audio/pcmu"]) == raw


async def test_response_audio_in_order_done_once_and_transcripts(fake: FakeOpenAIRealtime,
                                                                make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    audio = np.arange(24 * 500, dtype="<i2").tobytes()  # 500 ms, distinct samples
    s.script_response(ResponseScript(audio=audio, chunk_ms=100, transcript="Sure thing."))
    await s.user_turn("Book me a table.")
    done = await rec.wait_for("audio_done")
    await rec.wait(lambda: len(rec.of("transcript")) >= 2, "transcripts")
    await s.wait_sent("response.done")
    item = done[1]
    assert len(rec.of("audio")) == 5
    assert rec.audio_bytes(item) == audio
    assert rec.of("audio_done") == [("audio_done", item)]
    assert ("transcript", "user", "Book me a table.", True) in rec.calls
    assert ("transcript", "assistant", "Sure thing.", True) in rec.calls
    assert rec.of("speech_started") and rec.of("speech_stopped")
    # one more response: still one audio_done per item
    await s.user_turn("And a second one.")
    await rec.wait_for("audio_done", 2)
    await s.wait_sent("response.done", 2)
    await provider.close()
    items = [c[1] for c in rec.of("audio_done")]
    assert len(items) == 2 and len(set(items)) == 2


# --------------------------------------------------------------------------- barge-in


async def _held_response(s: FakeRealtimeSession, rec: Recorder, chunks: int = 3) -> str:
    s.script_response(ResponseScript(audio_ms=1000, chunk_ms=100, hold_after_chunks=chunks))
    await s.user_turn("Tell me a story.")
    return (await rec.wait_for("audio", chunks))[2]


async def test_barge_in_server_cancels_and_truncate_is_clamped(fake: FakeOpenAIRealtime,
                                                               make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    item = await _held_response(s, rec)
    await s.speech_started()  # server VAD: cancels the response itself (turn_detected)
    await rec.wait_for("speech_started", 2)
    provider.interrupt(item, 10_000)  # more than the 300 ms received
    await s.wait_until(lambda: bool(s.truncates), what="truncate")
    assert s.truncates[0]["item_id"] == item
    assert s.truncates[0]["audio_end_ms"] == 300


async def test_interrupt_cancels_active_response_and_truncates(fake: FakeOpenAIRealtime,
                                                               make: Any) -> None:
    provider, rec = make(fake, interrupt_response=False)
    await provider.connect()
    s = fake.sessions[0]
    assert s.config["audio"]["input"]["turn_detection"]["interrupt_response"] is False
    item = await _held_response(s, rec)
    response_id = s.active.id if s.active else None
    await s.speech_started()
    await rec.wait_for("speech_started", 2)
    provider.interrupt(item, 150)
    await s.wait_until(lambda: bool(s.truncates) and bool(s.cancels), what="cancel+truncate")
    assert s.cancels[0]["response_id"] == response_id
    assert (s.truncates[0]["item_id"], s.truncates[0]["audio_end_ms"]) == (item, 150)
    assert s.rejected == []
    await rec.wait_for("audio_done")


async def test_late_deltas_of_an_interrupted_response_are_dropped(fake: FakeOpenAIRealtime,
                                                                 make: Any) -> None:
    """The bridge barges in while a response is in progress but none of its audio is live
    (``interrupt(None, None)``): deltas of that response still in flight are not played;
    the next response's are."""
    provider, rec = make(fake, interrupt_response=False)
    await provider.connect()
    s = fake.sessions[0]
    item = await _held_response(s, rec)
    assert s.active is not None and provider.response_active
    response_id = s.active.id
    provider.interrupt(None, None)
    late, _ = pcm16_chunk(7, 100)  # in flight when the cancel was sent
    await s.send({"type": "response.output_audio.delta", "response_id": response_id,
                  "item_id": item, "output_index": 0, "content_index": 0, "delta": late})
    await s.wait_until(lambda: bool(s.cancels) and s.active is None, what="cancel")
    assert s.cancels[0]["response_id"] == response_id and s.truncates == []
    s.script_response(ResponseScript(audio_ms=200, chunk_ms=100))
    await s.user_turn("Something else.")
    await rec.wait_for("audio", 5)
    assert [c[2] for c in rec.of("audio")].count(item) == 3


async def test_interrupt_without_heard_audio_does_not_truncate(fake: FakeOpenAIRealtime,
                                                               make: Any) -> None:
    provider, rec = make(fake, interrupt_response=False)
    await provider.connect()
    s = fake.sessions[0]
    item = await _held_response(s, rec)
    provider.interrupt(item, None)
    provider.interrupt(item, 0)
    provider.say("Go on.")  # a later event: everything before it was processed by then
    await s.wait_until(lambda: any("Go on." in t for t in texts(s)), what="say item")
    assert len(s.cancels) == 1
    assert s.truncates == []


async def test_truncate_error_does_not_wedge_the_session(fake: FakeOpenAIRealtime,
                                                         make: Any) -> None:
    provider, rec = make(fake, interrupt_response=False)
    await provider.connect()
    s = fake.sessions[0]
    item = await _held_response(s, rec)
    provider.interrupt(item, 200)
    provider.interrupt(item, 300)  # the item was cut to 200 ms: the fake rejects this one
    await s.wait_until(lambda: any(r[0].get("type") == "conversation.item.truncate"
                                   for r in s.rejected), what="truncate rejected")
    assert [t["audio_end_ms"] for t in s.truncates] == [200]
    s.script_response(ResponseScript(audio_ms=300, transcript="Still here."))
    provider.say("Are you still there?")
    await rec.wait(lambda: ("transcript", "assistant", "Still here.", True) in rec.calls,
                   "a following response")
    new_items = {c[2] for c in rec.of("audio")} - {item}
    assert len(new_items) == 1
    assert provider.stats["errors"] >= 1 and rec.of("failed") == []


# --------------------------------------------------------------------------- items, tools


async def test_tool_call_and_result(fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake, tools=[END_CALL])
    await provider.connect()
    s = fake.sessions[0]
    s.script_response(ResponseScript(function_call=("end_call", '{"reason": "done"}')))
    await s.user_turn("Bye.")
    call = await rec.wait_for("tool_call")
    _, call_id, name, arguments = call
    assert (name, arguments) == ("end_call", '{"reason": "done"}')
    provider.send_tool_result(call_id, '{"ok": true}')
    await s.wait_until(lambda: bool(s.function_outputs), what="function output")
    assert (s.function_outputs[0]["call_id"], s.function_outputs[0]["output"]) == (
        call_id, '{"ok": true}')
    await s.wait_received("response.create")
    await rec.wait_for("audio_done")
    assert len(rec.of("tool_call")) == 1  # arguments.done and response.done: reported once
    assert s.rejected == []


async def test_speak_first(fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    provider.begin(speak_first="Remind Bob about his appointment at 3 pm.")
    await s.wait_received("response.create")
    assert texts(s) == ["The call has connected. Remind Bob about his appointment at 3 pm."]
    types = s.received_types()
    assert types.index("conversation.item.create") < types.index("response.create")
    await rec.wait_for("audio_done")
    assert rec.of("audio")
    provider.begin(speak_first=None)  # nothing to say: nothing sent
    assert s.rejected == []


async def test_say_during_a_response_waits_for_it(fake: FakeOpenAIRealtime,
                                                  make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    s.script_response(ResponseScript(audio_ms=500, hold_after_chunks=1))
    provider.say("One moment please.")
    await rec.wait_for("audio")
    provider.say("Your table is booked.")  # a response is active: response.create waits
    await s.wait_until(lambda: len(texts(s)) == 2, what="second item")
    assert len([t for t in s.received_types() if t == "response.create"]) == 1
    s.release()
    await s.wait_received("response.create", 2)
    await rec.wait_for("audio_done", 2)
    assert texts(s) == ["Tell the caller: One moment please.",
                        "Tell the caller: Your table is booked."]
    assert s.rejected == []


# --------------------------------------------------------------------------- failed responses


@pytest.fixture
def logs() -> Iterator[list[logging.LogRecord]]:
    """The provider's log records (a handler on its logger: immune to ``log.configure``)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("agentic_fast.providers.openai")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def events(records: list[logging.LogRecord], name: str) -> list[dict[str, Any]]:
    """The fields of each log line ``name`` (structured: ``agentic_fast.core.log``)."""
    return [r.msg.fields for r in records if getattr(r.msg, "event", None) == name]


APOLOGY = "Sorry, I had a problem there. Could you say that again?"


def apologies(s: FakeRealtimeSession) -> list[str]:
    return [t for t in texts(s) if APOLOGY in t]


async def test_failed_response_is_logged_counted_apologised_for_and_the_call_goes_on(
        fake: FakeOpenAIRealtime, make: Any, logs: list[logging.LogRecord]) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    before = metrics.snapshot()
    s.script_response(ResponseScript.failed(
        "insufficient_quota", "You exceeded your current quota.", error_type="insufficient_quota"))
    s.script_response(ResponseScript(audio_ms=300, transcript="Sorry about that."))
    await s.user_turn("What's on my calendar?")
    await s.wait_received("response.create")  # the apology's response
    assert apologies(s) and APOLOGY in apologies(s)[0]
    types = s.received_types()
    assert types.index("conversation.item.create") < types.index("response.create")
    await rec.wait_for("audio_done")  # the call goes on: the apology is spoken
    assert s.statuses == ["failed", "completed"]
    assert rec.of("failed") == []
    assert metrics.get("openai.responses.failed") == before.get(
        "openai.responses.failed", 0) + 1
    assert metrics.get("openai.responses.failed.insufficient_quota") == before.get(
        "openai.responses.failed.insufficient_quota", 0) + 1
    assert provider.stats["responses_failed"] == 1
    (line,) = events(logs, "openai.response_failed")
    assert line["call_id"] == "call-test" and line["status"] == "failed"
    assert line["code"] == "insufficient_quota"
    assert line["status_details"]["error"]["message"] == "You exceeded your current quota."
    assert s.rejected == []


@pytest.mark.parametrize("reason", ["max_output_tokens", "content_filter"])
async def test_incomplete_response_is_a_failure(fake: FakeOpenAIRealtime, make: Any,
                                                logs: list[logging.LogRecord],
                                                reason: str) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    s.script_response(ResponseScript.incomplete(reason, audio_ms=200))
    await s.user_turn("Tell me everything.")
    await s.wait_received("response.create")
    assert len(apologies(s)) == 1
    (line,) = events(logs, "openai.response_failed")
    assert line["status"] == "incomplete" and line["reason"] == reason
    await rec.wait_for("audio_done", 2)  # the cut answer's item closed, then the apology
    assert rec.of("failed") == [] and provider.stats["responses_failed"] == 1


async def test_items_waiting_on_a_failed_response_share_the_apology_response(
        fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    s.script_response(ResponseScript.incomplete("max_output_tokens", audio_ms=500,
                                                hold_after_chunks=1))
    s.script_response(ResponseScript(audio_ms=200))
    await s.user_turn("Read me the whole list.")
    await rec.wait_for("audio")
    provider.say("Your order shipped.")  # a response is active: its response.create waits
    await s.wait_until(lambda: len(texts(s)) == 1, what="said item")
    s.release()
    await s.wait_until(lambda: s.statuses == ["incomplete", "completed"], what="apology")
    item = rec.of("audio")[-1][2]  # the apology's audio item
    provider.interrupt(item, 100)  # a round trip: anything sent before it is handled first
    await s.wait_sent("conversation.item.truncated")
    assert texts(s)[0] == "Tell the caller: Your order shipped." and len(apologies(s)) == 1
    assert s.received_types().count("response.create") == 1  # one response for both
    assert s.rejected == []


@pytest.mark.parametrize("reason", ["turn_detected", "client_cancelled"])
async def test_incomplete_by_barge_in_or_cancel_is_not_a_failure(
        fake: FakeOpenAIRealtime, make: Any, logs: list[logging.LogRecord],
        reason: str) -> None:
    provider, rec = make(fake)
    await provider.connect()
    s = fake.sessions[0]
    s.script_response(ResponseScript.incomplete(reason, audio_ms=200))
    await s.user_turn("Hello?")
    await s.wait_sent("response.done")
    await rec.wait_for("audio_done")
    s.script_response(ResponseScript(audio_ms=100))
    await s.user_turn("Are you there?")  # later events are handled after that response.done
    await rec.wait_for("audio_done", 2)
    assert events(logs, "openai.response_failed") == []
    assert apologies(s) == [] and provider.stats.get("responses_failed", 0) == 0


async def test_failures_in_a_row_end_the_call_and_a_completed_one_resets(
        fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake, config={"max_failed_responses": 2})
    await provider.connect()
    s = fake.sessions[0]
    # fail, the apology completes (resets), fail, the apology fails too: two in a row
    s.script_response(ResponseScript.failed())
    s.script_response(ResponseScript(audio_ms=100))
    s.script_response(ResponseScript.failed())
    s.script_response(ResponseScript.failed("rate_limit_exceeded", "Rate limit reached.",
                                            error_type="rate_limit_error"))
    await s.user_turn("First question.")
    await s.wait_until(lambda: s.statuses == ["failed", "completed"], what="recovery")
    await s.user_turn("Second question.")
    _, reason = await rec.wait_for("failed")
    assert s.statuses == ["failed", "completed", "failed", "failed"]
    assert reason.startswith("2 responses failed in a row")
    assert "rate_limit_exceeded: Rate limit reached." in reason
    assert len(apologies(s)) == 2  # after the first failure of each run, not the last
    assert not provider.connected
    await s.wait_closed()
    provider.say("nobody hears this")  # after failure: dropped, no raise
    await provider.close()
    assert len(rec.of("failed")) == 1


async def test_no_apology_when_the_message_is_empty(fake: FakeOpenAIRealtime,
                                                    make: Any) -> None:
    provider, rec = make(fake, config={"failed_response_message": "",
                                       "max_failed_responses": 0})
    await provider.connect()
    s = fake.sessions[0]
    for _ in range(4):
        s.script_response(ResponseScript.failed())
    for n in range(4):  # 0: the call is never ended for failed responses
        await s.user_turn(f"Question {n}.")
        await s.wait_until(lambda n=n: len(s.statuses) == n + 1, what="failed response")
    assert s.received_types().count("response.create") == 0
    assert texts(s) == [] and rec.of("failed") == [] and provider.connected
    await _round_trip(provider)  # the fake recorded the last status before sending it
    assert provider.stats["responses_failed"] == 4


async def test_error_as_first_frame_is_reported_with_its_code_and_message(
        fake: FakeOpenAIRealtime, make: Any, logs: list[logging.LogRecord]) -> None:
    provider, _ = make(fake)
    fake.refuse_next("model_not_found", "The model 'gpt-realtime-0' does not exist or you "
                     "do not have access to it.")
    with pytest.raises(PeerUnavailableError) as info:
        await provider.connect()
    text = str(info.value)
    assert "model_not_found" in text and "does not exist" in text
    assert "session.created" not in text
    (line,) = events(logs, "openai.session_refused")
    assert line["code"] == "model_not_found" and line["call_id"] == "call-test"
    assert line["error_type"] == "invalid_request_error"
    await fake.sessions[0].wait_closed()


async def test_error_as_first_frame_on_reconnect_fails_at_once(fake: FakeOpenAIRealtime,
                                                              make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    fake.refuse_next("invalid_api_key", "Incorrect API key provided: sk-***.", times=10)
    await fake.sessions[0].abort()
    _, reason = await rec.wait_for("failed")
    assert "invalid_api_key: Incorrect API key provided" in reason
    assert fake.connection_count == 2  # no retry fixes a bad key


async def test_server_error_as_first_frame_is_retried(fake: FakeOpenAIRealtime,
                                                      make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    fake.refuse_next("server_error", "The server had an error.", error_type="server_error")
    await fake.sessions[0].abort()
    s2 = await fake.wait_session(2)
    await s2.wait_received("session.update")
    assert rec.of("failed") == []


# --------------------------------------------------------------------------- reconnect


async def test_reconnect_after_abort_flushes_buffered_audio_and_items(
        fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake, max_buffered_audio_ms=200)
    await provider.connect()
    s0 = fake.sessions[0]
    item = await _held_response(s0, rec, chunks=2)
    await s0.abort()
    await rec.wait_for("audio_done")  # the cut item is closed: the provider now buffers
    assert rec.of("audio_done") == [("audio_done", item)]
    assert not provider.connected
    chunks = [pcm16_chunk(v) for v in range(10)]  # 400 ms: only the last 200 ms are kept
    for b64, _ in chunks:
        provider.send_audio(b64)
    provider.say("Sorry, I lost you for a second.")
    s1 = await fake.wait_session(1)
    want = b"".join(raw for _, raw in chunks[5:])
    await s1.wait_until(lambda: s1.audio_bytes.get("audio/pcm", 0) >= len(want),
                        what="flushed audio")
    assert bytes(s1.audio_in["audio/pcm"]) == want
    assert provider.stats["audio_buffered_dropped"] == 5
    await s1.wait_received("response.create")
    seed, said = texts(s1)  # the context summary first, then the buffered item
    assert "Caller: Tell me a story." in seed
    assert said == "Tell the caller: Sorry, I lost you for a second."
    after, raw_after = pcm16_chunk(42)
    provider.send_audio(after)
    await s1.wait_until(lambda: s1.audio_bytes["audio/pcm"] >= len(want) + len(raw_after),
                        what="live audio")
    assert bytes(s1.audio_in["audio/pcm"]).endswith(raw_after)
    assert provider.connected and provider.stats["reconnects"] == 1
    assert fake.connection_count == 2 and rec.of("failed") == []
    assert s1.rejected == []


async def test_reconnect_after_1011_seeds_context_and_converts_old_tool_results(
        fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake, tools=[END_CALL])
    await provider.connect()
    s0 = fake.sessions[0]
    s0.script_response(ResponseScript(function_call=("end_call", "{}")))
    await s0.user_turn("Please hang up.")
    _, call_id, _, _ = await rec.wait_for("tool_call")
    await s0.wait_sent("response.done")
    await s0.close(1011)
    s1 = await fake.wait_session(1)
    await s1.wait_received("session.update")
    provider.send_tool_result(call_id, '{"ok": true}')  # the call id is s0's, not s1's
    await s1.wait_received("response.create")
    seeded, result = texts(s1)
    assert "Caller: Please hang up." in seeded
    assert result == 'Result of the earlier call to end_call: {"ok": true}'
    assert s1.function_outputs == [] and s1.rejected == []
    assert rec.of("failed") == []


async def test_reconnect_gives_up_after_the_bound(fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake, backoff=Backoff(base_s=0.001, max_delay_s=0.002,
                                               max_attempts=3, max_total_s=5.0))
    await provider.connect()
    fake.reject_next(503, times=10)
    await fake.sessions[0].abort()
    await rec.wait_for("failed")
    assert [h["status"] for h in fake.handshakes[1:]] == [503, 503, 503]
    assert fake.connection_count == 1
    provider.send_audio(pcm16_chunk(1)[0])  # after failure: dropped, no raise
    provider.say("nobody hears this")
    await provider.close()
    assert len(rec.of("failed")) == 1


async def test_reconnect_refused_for_good_fails_at_once(fake: FakeOpenAIRealtime,
                                                        make: Any) -> None:
    provider, rec = make(fake)
    await provider.connect()
    fake.reject_next(401, times=10)
    await fake.sessions[0].abort()
    _, reason = await rec.wait_for("failed")
    assert "HTTP 401" in reason
    assert [h["status"] for h in fake.handshakes[1:]] == [401]


# --------------------------------------------------------------------------- stalled server


async def test_a_server_that_stops_reading_is_noticed_and_replaced(
        fake: FakeOpenAIRealtime, make: Any) -> None:
    """TCP backpressure mid-call: the socket is not closed, the server just stops reading.
    The stall watch notices within ``stall_timeout_s`` (no keepalive here: ``ping_interval_s``
    is None), the write buffer stays bounded meanwhile, and audio reaches a new session."""
    provider, rec = make(fake, stall_timeout_s=0.3, max_write_buffer=64 * 1024)
    await provider.connect()
    s0 = fake.sessions[0]
    s0.stop_reading()
    stalled_ws = provider._link.ws  # type: ignore[union-attr]
    for i in range(10_000):  # caller audio into a socket nobody reads, until it pushes back
        provider.send_audio(pcm16_chunk(i % 100)[0])
        if provider.stats["audio_backpressure_dropped"] > 100:
            break
    assert stalled_ws.transport.get_write_buffer_size() <= 64 * 1024 + 4096  # bounded
    assert provider.stats["audio_backpressure_dropped"] > 0
    s1 = await fake.wait_session(1, timeout=TIMEOUT)
    await s1.wait_received("session.update")
    b64, raw = pcm16_chunk(5)
    provider.send_audio(b64)  # written, or buffered and flushed once the session is in
    await s1.wait_until(lambda: bytes(s1.audio_in.get("audio/pcm", b"")).endswith(raw),
                        what="audio on the new session")
    assert provider.stats["stalls"] == 1 and provider.stats["reconnects"] == 1
    assert rec.of("failed") == [] and s1.rejected == []
    assert stalled_ws.transport.is_closing()  # the stalled socket is gone, not left open


async def test_a_stalled_server_that_cannot_be_replaced_ends_the_call_once(
        fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake, stall_timeout_s=0.2,
                         backoff=Backoff(base_s=0.001, max_delay_s=0.002, max_attempts=2,
                                         max_total_s=5.0))
    await provider.connect()
    fake.reject_next(503, times=10)
    fake.sessions[0].stop_reading()
    _, reason = await rec.wait_for("failed")
    assert "503" in reason
    assert provider.stats["stalls"] == 1 and len(rec.of("failed")) == 1


# --------------------------------------------------------------------------- carry-over


# The fake arms each session's expiry with an eager ``_expire(session)`` coroutine; a session
# that we close before it expires leaves that coroutine un-awaited (a fake-side warning).
@pytest.mark.filterwarnings("ignore:coroutine 'FakeOpenAIRealtime._expire':RuntimeWarning")
async def test_server_session_cap_carries_over(make: Any) -> None:
    async with FakeOpenAIRealtime(max_session_s=0.5) as fake:
        provider, rec = make(fake)
        await provider.connect()
        s0 = fake.sessions[0]
        await s0.wait_sent("error", timeout=TIMEOUT)  # session_expired
        s1 = await fake.wait_session(1)
        await s1.wait_received("session.update")
        b64, raw = pcm16_chunk(7)
        provider.send_audio(b64)

        def later_audio() -> bytes:
            return b"".join(bytes(s.audio_in.get("audio/pcm", b"")) for s in fake.sessions[1:])
        await s1.wait_until(lambda: later_audio() == raw, what="audio on the new session")
        await provider.close()
    assert rec.of("failed") == []
    assert provider.stats["reconnects"] >= 1


async def test_local_session_cap_carries_over_before_the_server_does(
        fake: FakeOpenAIRealtime, make: Any) -> None:
    provider, rec = make(fake, max_session_s=0.2)
    await provider.connect()
    s0 = fake.sessions[0]
    s1 = await fake.wait_session(1)
    await s0.wait_closed()
    assert s0.close_code == 1000  # closed by us, cleanly, after the switch
    assert s1.received_types()[0] == "session.update"
    await provider.close()
    assert provider.stats["carry_overs"] >= 1 and provider.stats["reconnects"] == 0
    assert rec.of("failed") == []


async def test_carry_over_waits_for_the_reply_and_seeds_a_summary(fake: FakeOpenAIRealtime,
                                                                  make: Any) -> None:
    provider, rec = make(fake, max_session_s=None)
    await provider.connect()
    s0 = fake.sessions[0]
    s0.script_response(ResponseScript(audio_ms=400, chunk_ms=100, hold_after_chunks=1,
                                      transcript="Of course, for what time?"))
    await s0.user_turn("I need a table for two.")
    await rec.wait_for("audio")
    provider.request_carry_over()
    s1 = await fake.wait_session(1)
    await s1.wait_received("session.update")
    s0.release()  # the reply finishes on the old session before the switch
    await s0.wait_closed()
    item = (await rec.wait_for("audio_done"))[1]
    assert len(rec.audio_bytes(item)) == 400 * 48
    await s1.wait_received("conversation.item.create")
    (seed,) = texts(s1)
    assert "Caller: I need a table for two." in seed
    assert "Assistant: Of course, for what time?" in seed
    b64, raw = pcm16_chunk(9)
    provider.send_audio(b64)
    await s1.wait_until(lambda: bytes(s1.audio_in.get("audio/pcm", b"")) == raw,
                        what="audio on the new session")
    assert provider.stats["carry_overs"] == 1 and fake.connection_count == 2
    assert rec.of("failed") == [] and s1.rejected == []

