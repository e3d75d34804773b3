"""GeminiLiveProvider against the fake Gemini Live server on loopback.

Synchronisation: the fake's ``wait_for`` (re-checked on every recorded change), the
recording listener's ``wait_for`` (re-checked on every callback), and :func:`until` for the
provider's own state (a bounded poll, never a fixed sleep). No timing assertions.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff
from agentic_fast.core.config import GeminiConfig
from agentic_fast.core.errors import PeerUnavailableError
from agentic_fast.providers.gemini.provider import GeminiLiveProvider
from tests.fakes.gemini_live import FakeGeminiLive, ModelTurn, tone

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
MODEL3 = "gemini-3.1-flash-live-preview"
TIMEOUT = 5.0
CHUNK_SAMPLES = 320  # 20 ms at 16 kHz


def chunk(i: int) -> str:
    """20 ms of quiet 16 kHz PCM16 tagged by ``i`` (base64)."""
    pcm = struct.pack(f"<{CHUNK_SAMPLES}h", *(((i * 7 + n) % 200) - 100
                                             for n in range(CHUNK_SAMPLES)))
    return base64.b64encode(pcm).decode()


def pcm(indices: range | list[int]) -> bytes:
    return b"".join(base64.b64decode(chunk(i)) for i in indices)


async def until(predicate: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    """Poll the provider's own state until ``predicate()`` (bounded; not a sync sleep)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


class Recorder:
    """A ProviderListener that records every callback in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._changed = asyncio.Event()
        self.on_audio_hook: Callable[[str, str], None] | None = None

    def _add(self, *event: Any) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def on_audio(self, audio_b64: str, item_id: str) -> None:
        self._add("audio", item_id, audio_b64)
        if self.on_audio_hook is not None:
            self.on_audio_hook(audio_b64, item_id)

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


def make_provider(fake: FakeGeminiLive, model: str = MODEL, *, api_key: str | None = None,
                  url: str | None = None, **kw: Any) -> GeminiLiveProvider:
    config = GeminiConfig(api_key=fake.api_key if api_key is None else api_key,
                          url=url or fake.url, model=model, voice="Kore",
                          instructions="You are a concise phone assistant.")
    kw.setdefault("backoff", Backoff(base_s=0.01, max_delay_s=0.05, max_attempts=4,
                                     max_total_s=TIMEOUT))
    kw.setdefault("ping_interval_s", None)
    return GeminiLiveProvider(config, call_id="call-test", connect_timeout_s=2.0, **kw)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGeminiLive]:
    async with FakeGeminiLive() as fake:
        yield fake


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def connected(fake: FakeGeminiLive, recorder: Recorder, **kw: Any) -> GeminiLiveProvider:
    """A provider past setupComplete holding the fake's newest resumption handle."""
    provider = make_provider(fake, **kw)
    provider.attach(recorder)
    await provider.connect()
    await until(lambda: provider.resumption_handle == fake.issued_handles[-1])
    return provider


def audio_bytes(recorder: Recorder, item_id: str | None = None) -> bytes:
    return b"".join(base64.b64decode(e[2]) for e in recorder.of("audio")
                    if item_id is None or e[1] == item_id)


# --------------------------------------------------------------------------- connect


async def test_connect_sends_setup_once_even_when_awaited_concurrently(
        fake: FakeGeminiLive) -> None:
    provider = make_provider(fake, tools=[{"functionDeclarations": [
        {"name": "end_call", "description": "Hang up politely."}]}])
    assert provider.converter_format == "gemini"
    await asyncio.gather(provider.connect(), provider.connect())  # pre-warm + bridge
    await provider.connect()
    assert provider.connected and fake.connection_count == 1 and not fake.violations
    assert fake.current.auth == "header"
    [setup] = fake.setups
    assert setup["model"] == "models/" + MODEL
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    assert setup["generationConfig"]["speechConfig"]["voiceConfig"] == {
        "prebuiltVoiceConfig": {"voiceName": "Kore"}}
    assert setup["systemInstruction"] == {"parts": [{"text": "You are a concise phone "
                                                              "assistant."}]}
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    assert setup["sessionResumption"] == {}
    assert "contextWindowCompression" in setup
    assert setup["tools"][0]["functionDeclarations"][0]["name"] == "end_call"
    await provider.close()


@pytest.mark.parametrize("how", ["bad_key", "unreachable"])
async def test_connect_failure_raises_peer_unavailable(fake: FakeGeminiLive, how: str) -> None:
    if how == "bad_key":
        provider = make_provider(fake, api_key="wrong-key")
    else:
        provider = make_provider(fake, url=fake.url.replace(fake.base_url, "ws://127.0.0.1:9"))
    with pytest.raises(PeerUnavailableError) as info:
        await provider.connect()
    assert info.value.peer == "gemini"
    await provider.close()


# --------------------------------------------------------------------------- audio in / out


async def test_caller_audio_reaches_the_server_as_16k_pcm(fake: FakeGeminiLive,
                                                          recorder: Recorder) -> None:
    provider = await connected(fake, recorder)
    for i in range(50):
        provider.send_audio(chunk(i))
    await fake.wait_for(lambda: fake.samples_received == 50 * CHUNK_SAMPLES)
    assert fake.audio_received == pcm(range(50))
    blobs = [m["realtimeInput"]["audio"] for m in fake.current.received]
    assert {b["mimeType"] for b in blobs} == {"audio/pcm;rate=16000"}
    assert not fake.violations
    await provider.close()


@pytest.mark.parametrize("binary_frames", [True, False])
async def test_model_turns_audio_done_once_and_transcripts(recorder: Recorder,
                                                           binary_frames: bool) -> None:
    async with FakeGeminiLive(respond_after_audio_ms=100, binary_frames=binary_frames) as fake:
        provider = await connected(fake, recorder)
        for i in range(5):  # 100 ms of caller audio -> one model turn
            provider.send_audio(chunk(i))
        await recorder.wait_for(lambda: len(recorder.of("transcript")) == 2)
        provider.say("The table is booked.")  # a second turn
        await recorder.wait_for(lambda: len(recorder.of("transcript")) == 4)
        await fake.wait_for(lambda: fake.current.turns_done == 2)
        await provider.close()
    assert audio_bytes(recorder, "turn-1") == tone(400)  # every chunk, in order
    assert audio_bytes(recorder, "turn-2") == tone(400)
    assert recorder.of("audio_done") == [("audio_done", "turn-1"), ("audio_done", "turn-2")]
    kinds = [e[0] for e in recorder.events]
    first_done = kinds.index("audio_done")
    assert all(e[1] == "turn-1" for e in recorder.of("audio")[:first_done - 1])
    assert recorder.of("transcript") == [
        ("transcript", "user", "Hello, I'd like to book a table.", True),
        ("transcript", "assistant", "Sure, for which day?", True)] * 2
    assert fake.connections[0].texts == ["Tell the caller: The table is booked."]
    assert not recorder.of("failed") and not fake.violations


async def test_interrupted_turn_stops_forwarding_its_audio(fake: FakeGeminiLive,
                                                           recorder: Recorder) -> None:
    """Audio the server had in flight after ``interrupted`` is not forwarded."""
    provider = await connected(fake, recorder)
    data = base64.b64encode(tone(40)).decode()
    audio = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {
        "mimeType": "audio/pcm;rate=24000", "data": data}}]}}}
    await fake.send(audio)
    await fake.send({"serverContent": {"interrupted": True}})
    await fake.send(audio)  # late chunk of the interrupted turn
    await fake.send({"serverContent": {"turnComplete": True}})
    await recorder.wait_for(lambda: recorder.of("audio_done"))
    assert [e[0] for e in recorder.events] == ["audio", "speech_started", "audio_done"]
    assert recorder.events[0][1] == recorder.events[2][1] == "turn-1"
    # the next turn is forwarded again, under a new id
    await fake.play_turn(ModelTurn(audio_ms=80, input_transcript=None))
    await recorder.wait_for(lambda: len(recorder.of("audio_done")) == 2)
    assert audio_bytes(recorder, "turn-2") == tone(80)
    await provider.close()


async def test_a_turn_in_progress_is_a_live_response_for_barge_in(fake: FakeGeminiLive,
                                                                  recorder: Recorder) -> None:
    """``response_active`` (what makes the bridge honour a barge-in when no audio is
    queued) is true while a turn is generated and when ``interrupted`` arrives, even
    before any of the turn's audio; false once the turn is complete."""
    provider = await connected(fake, recorder)
    seen: list[bool] = []
    recorder.on_speech_started = lambda: (  # type: ignore[method-assign]
        seen.append(provider.response_active), recorder._add("speech_started"))
    assert not provider.response_active
    await fake.send({"serverContent": {"interrupted": True}})  # before the first chunk
    await fake.send({"serverContent": {"turnComplete": True}})
    data = base64.b64encode(tone(40)).decode()
    await fake.send({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
        "mimeType": "audio/pcm;rate=24000", "data": data}}]}}})
    await recorder.wait_for(lambda: recorder.of("audio"))
    assert provider.response_active  # audio arriving, the turn not complete
    await fake.send({"serverContent": {"interrupted": True}})
    await fake.send({"serverContent": {"turnComplete": True}})
    await recorder.wait_for(lambda: recorder.of("audio_done"))
    assert seen == [True, True] and not provider.response_active
    await provider.close()


async def test_scripted_barge_in_and_bridge_interrupt(recorder: Recorder) -> None:
    turns = [ModelTurn(audio_ms=400, interrupt_after_chunks=3), ModelTurn(audio_ms=400)]
    async with FakeGeminiLive(turns=turns) as fake:
        provider = await connected(fake, recorder)
        provider.say("first")
        await recorder.wait_for(lambda: recorder.of("audio_done"))
        assert len(recorder.of("audio")) == 3 and len(recorder.of("speech_started")) == 1
        # The bridge's own barge-in (interrupt) after the first chunk of the next turn.
        recorder.on_audio_hook = lambda _data, item: provider.interrupt(item, 20)
        provider.say("second")
        await recorder.wait_for(lambda: len(recorder.of("audio_done")) == 2)
        await provider.close()
    assert [e[1] for e in recorder.of("audio")].count("turn-2") == 1
    assert recorder.of("audio_done")[-1] == ("audio_done", "turn-2")


async def test_tool_call_round_trip(recorder: Recorder) -> None:
    call = {"name": "end_call", "args": {"reason": "caller said goodbye"}}
    async with FakeGeminiLive(turns=[ModelTurn(tool_calls=[call])]) as fake:
        provider = await connected(fake, recorder)
        provider.say("bye")
        await recorder.wait_for(lambda: recorder.of("tool_call"))
        [(_, call_id, name, arguments)] = recorder.of("tool_call")
        assert name == "end_call" and arguments == '{"reason":"caller said goodbye"}'
        provider.send_tool_result("fc-unknown", '{"result": "x"}')  # dropped, counted
        provider.send_tool_result(call_id, '{"result": "ok"}')
        await recorder.wait_for(lambda: recorder.of("audio_done"))
        await provider.close()
    assert fake.current.tool_responses == [{"id": call_id, "name": "end_call",
                                            "response": {"result": "ok"}}]
    assert audio_bytes(recorder) == tone(400) and not fake.violations


@pytest.mark.parametrize("model", [MODEL, MODEL3])
async def test_speak_first_uses_realtime_text(fake: FakeGeminiLive, recorder: Recorder,
                                              model: str) -> None:
    provider = make_provider(fake, model)
    provider.attach(recorder)
    provider.begin(speak_first="Greet the caller.")  # before connect: buffered
    await provider.connect()
    await recorder.wait_for(lambda: recorder.of("audio_done"))
    provider.say("It is sunny.")  # after the first turn: 3.x would close 1007 on clientContent
    await recorder.wait_for(lambda: len(recorder.of("audio_done")) == 2)
    conn = fake.current
    assert conn.texts == ["Greet the caller.", "Tell the caller: It is sunny."]
    assert not conn.client_contents and not fake.violations
    assert conn.close_code is None and not conn.closed and fake.connection_count == 1
    await provider.close()


# --------------------------------------------------------------------------- goAway, resume


async def test_go_away_resumes_on_a_new_connection_without_losing_audio(
        recorder: Recorder) -> None:
    async with FakeGeminiLive(setup_complete_delay_s=0.2) as fake:
        provider = await connected(fake, recorder)
        handle = provider.resumption_handle
        for i in range(10):
            provider.send_audio(chunk(i))
        await fake.wait_for(lambda: fake.samples_received == 10 * CHUNK_SAMPLES)
        await fake.go_away(1.0)  # the fake closes 1011 after that
        await fake.wait_for(lambda: fake.connection_count == 2)
        for i in range(10, 20):  # sent while the switch is under way
            provider.send_audio(chunk(i))
        await until(lambda: provider.stats["rotations"] == 1)
        for i in range(20, 30):
            provider.send_audio(chunk(i))
        new = fake.connections[1]
        # audio written after the handle was issued is replayed, then the rest in order
        expected = pcm(range(10)) + pcm(range(10, 30))
        await fake.wait_for(lambda: len(new.audio) >= len(expected))
        assert bytes(fake.connections[0].audio) == pcm(range(10))
        assert bytes(new.audio) == expected
        assert fake.handles_used == [handle] and new.resumed_handle == handle
        assert new.session is fake.connections[0].session
        assert provider.stats["audio_buffered_dropped"] == 0
        await fake.wait_for(lambda: fake.connections[0].closed)
        provider.say("still there?")  # the resumed session answers
        await recorder.wait_for(lambda: recorder.of("audio_done"))
        assert new.texts == ["Tell the caller: still there?"]
        assert not recorder.of("failed") and not fake.violations
        await provider.close()


async def test_audio_buffered_during_a_switch_is_bounded_drop_oldest(
        recorder: Recorder) -> None:
    async with FakeGeminiLive() as fake:
        # 110 ms: room for 5 chunks of 20 ms (each base64-padded on its own), not 6
        provider = await connected(fake, recorder, max_buffered_audio_ms=110)
        fake.setup_complete_delay_s = 0.5  # the next connection takes a while
        await fake.go_away(5.0, then_close=False)
        await fake.wait_for(lambda: fake.connection_count == 2)
        assert not provider.connected  # switching: what follows goes to the backlog
        for i in range(20):
            provider.send_audio(chunk(i))
        await until(lambda: provider.stats["rotations"] == 1)
        new = fake.connections[1]
        await fake.wait_for(lambda: len(new.audio) >= 5 * CHUNK_SAMPLES * 2)
        assert bytes(new.audio) == pcm(range(15, 20))  # the newest 5, in order
        assert not fake.connections[0].audio
        assert provider.stats["audio_buffered_dropped"] == 15
        await provider.close()


async def test_local_max_connection_age_rotates_without_go_away(recorder: Recorder) -> None:
    async with FakeGeminiLive() as fake:
        provider = await connected(fake, recorder, max_connection_s=0.2)
        handle = provider.resumption_handle
        await until(lambda: provider.stats["rotations"] >= 1)
        assert fake.handles_used[0] == handle and provider.stats["go_aways"] == 0
        await provider.close()


async def test_abrupt_drop_reconnects_with_resumption(fake: FakeGeminiLive,
                                                      recorder: Recorder) -> None:
    provider = await connected(fake, recorder)
    handle = provider.resumption_handle
    fake.drop_connection()
    await until(lambda: provider.stats["reconnects"] == 1)
    assert fake.handles_used == [handle] and fake.connection_count == 2
    provider.send_audio(chunk(1))
    await fake.wait_for(lambda: len(fake.connections[1].audio) == 2 * CHUNK_SAMPLES)
    assert not recorder.of("failed")
    await provider.close()


async def test_a_server_that_stops_reading_is_noticed_and_resumed(
        fake: FakeGeminiLive, recorder: Recorder) -> None:
    """TCP backpressure mid-call (the socket stays open, nothing is read): noticed within
    ``stall_timeout_s`` without any keepalive, the write buffer bounded meanwhile, the
    session resumed on a new connection with the audio since the last handle replayed."""
    provider = await connected(fake, recorder, stall_timeout_s=0.3,
                               max_write_buffer=64 * 1024)
    handle = provider.resumption_handle
    fake.stop_reading()
    stalled_ws = provider._link.ws  # type: ignore[union-attr]
    for i in range(30_000):  # caller audio into a socket nobody reads, until it pushes back
        provider.send_audio(chunk(i))
        if provider.stats["audio_backpressure_dropped"] > 100:
            break
    assert stalled_ws.transport.get_write_buffer_size() <= 64 * 1024 + 4096  # bounded
    assert provider.stats["audio_backpressure_dropped"] > 0
    await until(lambda: provider.stats["reconnects"] == 1)
    assert provider.stats["stalls"] == 1 and fake.handles_used == [handle]
    provider.send_audio(chunk(1))
    await fake.wait_for(lambda: fake.connections[1].audio.endswith(pcm([1])))
    assert not recorder.of("failed")
    assert stalled_ws.transport.is_closing()
    await provider.close()


async def test_rejected_handle_falls_back_to_a_seeded_fresh_session(
        fake: FakeGeminiLive, recorder: Recorder) -> None:
    provider = await connected(fake, recorder)
    provider.say("hello")
    await recorder.wait_for(lambda: len(recorder.of("transcript")) == 2)
    await until(lambda: provider.resumption_handle == fake.issued_handles[-1])
    fake._sessions.clear()  # handles expire (2 h): the fake no longer knows this one
    fake.drop_connection()
    await until(lambda: provider.stats["reconnects"] == 1)
    assert provider.stats["resume_rejected"] == 1 and fake.connection_count == 3
    assert fake.violations[-1].reason == "unknown_handle" and not fake.handles_used
    fresh = fake.setups[-1]
    assert fresh["sessionResumption"] == {}
    seed = fresh["systemInstruction"]["parts"][0]["text"]
    assert seed.startswith("You are a concise phone assistant.")
    assert "Assistant: Sure, for which day?" in seed
    assert not fake.connections[2].client_contents  # never re-seeded with clientContent
    assert not recorder.of("failed")
    await provider.close()


async def test_repeated_failure_reports_on_failed_once(recorder: Recorder) -> None:
    fake = FakeGeminiLive()
    await fake.start()
    provider = await connected(fake, recorder)
    failed_before = metrics.get("gemini.failed")
    await fake.close()  # the server goes away: every reconnect attempt is refused
    await recorder.wait_for(lambda: recorder.of("failed"))
    assert provider.stats["reconnects"] == 0
    provider.send_audio(chunk(0))  # never raises, dropped
    provider.say("anyone?")
    await provider.close()
    assert len(recorder.of("failed")) == 1 and "4 attempt(s)" in recorder.of("failed")[0][1]
    assert metrics.get("gemini.failed") == failed_before + 1


async def test_close_is_idempotent(fake: FakeGeminiLive, recorder: Recorder) -> None:
    provider = await connected(fake, recorder)
    await provider.close()
    await provider.close()
    provider.send_audio(chunk(0))
    provider.say("late")
    provider.interrupt("turn-1", None)
    with pytest.raises(PeerUnavailableError):
        await provider.connect()
    await fake.wait_for(lambda: fake.current.closed)
    assert not recorder.of("failed") and fake.connection_count == 1
