"""AudioBridge logic: pacing lead, marks -> heard milliseconds, barge-in, bounds.

The provider here is a recorder of our own ``RealtimeProvider`` interface (the wire side of
each provider is tested against its fake server); the pacer is driven by hand with explicit
times, so nothing depends on the wall clock.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from agentic_fast.call.bridge import AudioBridge, BridgeSettings
from agentic_fast.call.manager import CallManager
from agentic_fast.providers.base import RealtimeProvider

pytestmark = pytest.mark.asyncio


class RecordingProvider(RealtimeProvider):
    converter_format = "openai"
    response_active = False  # type: ignore[assignment]  # set by tests: a response is live

    def __init__(self) -> None:
        self.audio: list[str] = []
        self.interrupts: list[tuple[str | None, int | None]] = []
        self.begun: list[str | None] = []
        self.closed = False
        self.listener: Any = None
        self.tool_results: list[tuple[str, str]] = []
        self.interrupted = asyncio.Event()

    async def connect(self) -> None:
        pass

    def attach(self, listener: Any) -> None:
        self.listener = listener

    def send_audio(self, chunk_b64: str) -> None:
        self.audio.append(chunk_b64)

    def begin(self, *, speak_first: str | None) -> None:
        self.begun.append(speak_first)

    def interrupt(self, item_id: str | None, audio_end_ms: int | None) -> None:
        self.interrupts.append((item_id, audio_end_ms))
        self.interrupted.set()

    def say(self, text: str) -> None:
        pass

    def send_tool_result(self, call_id: str, output: str) -> None:
        self.tool_results.append((call_id, output))

    async def close(self) -> None:
        self.closed = True


class RecordingSender:
    def __init__(self) -> None:
        self.frames: list[tuple[str, str]] = []
        self.closed = False
        self.buffered = 0
        self.writes = 0

    def send(self, batch: list[tuple[str, str]]) -> bool:
        self.frames.extend(batch)
        self.writes += 1
        return True

    def clear(self) -> bool:
        self.frames.append(("clear", ""))
        return True

    def write_buffer_size(self) -> int:
        return self.buffered

    def media_count(self) -> int:
        return sum(1 for kind, _ in self.frames if kind == "media")

    def marks(self) -> list[str]:
        return [name for kind, name in self.frames if kind == "mark"]


class ManualPacer:
    kicks = 0
    next_tick: float | None = None  # no tick grid: stretches start at the kick time

    def register(self, member: Any) -> None:
        self.member = member

    def kick(self, member: Any) -> None:
        self.kicks += 1

    def unregister(self, member: Any) -> None:
        self.member = None


def _delta(ms: int) -> str:
    return base64.b64encode(bytes(48 * ms)).decode()  # PCM16 24 kHz silence


async def _bridge(**settings: Any) -> tuple[AudioBridge, RecordingProvider, RecordingSender]:
    manager = CallManager()
    session = manager.create_inbound("CA" + "1" * 32, "+15551230000", "+15557654321")
    provider, sender = RecordingProvider(), RecordingSender()
    bridge = AudioBridge(session, sender, provider, ManualPacer(),  # type: ignore[arg-type]
                         settings=BridgeSettings(**settings), speak_first="hello",
                         write_buffer=sender.write_buffer_size)
    await bridge.start()
    return bridge, provider, sender


async def test_inbound_audio_goes_to_the_provider_in_handoff_chunks() -> None:
    bridge, provider, _ = await _bridge()
    assert provider.begun == ["hello"] and provider.listener is bridge
    for _ in range(4):
        bridge.on_media(base64.b64encode(b"\xff" * 160).decode(), 0)
    assert len(provider.audio) == 4  # 80 ms -> four 20 ms chunks (the default handoff)
    assert {len(base64.b64decode(c)) for c in provider.audio} == {960}


async def test_pacing_keeps_a_bounded_lead_over_playout() -> None:
    bridge, _, sender = await _bridge(lead_ms=120, mark_every_frames=5)
    bridge.on_audio(_delta(1000), "item1")
    assert bridge.wants_pump
    bridge.pump(100.0)
    assert sender.media_count() == 6  # 120 ms lead
    bridge.pump(100.0)  # same instant: nothing more is due
    assert sender.media_count() == 6
    bridge.pump(100.1)  # 100 ms later: 5 more frames
    assert sender.media_count() == 11
    assert sender.marks() == ["m1", "m2"]  # every 5 frames


def _frames_per_tick(bridge: AudioBridge, sender: RecordingSender, t0: float,
                     jitter_ms: list[float]) -> list[int]:
    """Ticks every 20 ms after ``t0``, each early or late by ``jitter_ms``: media frames
    sent at each tick."""
    out = []
    for k, wobble in enumerate(jitter_ms, start=1):
        before = sender.media_count()
        bridge.pump(t0 + 0.020 * k + wobble / 1000.0)
        out.append(sender.media_count() - before)
    return out


async def test_frames_fall_between_ticks_so_a_wobbling_tick_still_sends_one_frame() -> None:
    wobble = [(-1.0) ** k * 3.0 for k in range(40)]  # early, late, early... by 3 ms
    # The stretch starts exactly on the tick phase: the worst case without the grid.
    bridge, _, sender = await _bridge(lead_ms=120)
    bridge.pacer.next_tick = 100.020
    bridge.on_audio(_delta(2000), "item1")
    bridge.pump(100.0)  # the kick: the first burst, the lead
    assert sender.media_count() == 6
    assert _frames_per_tick(bridge, sender, 100.0, wobble) == [1] * 40

    # the same without the pacer's grid: two frames in one tick, none in the next
    bridge, _, sender = await _bridge(lead_ms=120)
    bridge.on_audio(_delta(2000), "item1")
    bridge.pump(100.0)
    per_tick = _frames_per_tick(bridge, sender, 100.0, wobble)
    assert 0 in per_tick and 2 in per_tick


async def test_with_a_10_ms_tick_boundaries_fall_between_ticks_too() -> None:
    bridge, _, sender = await _bridge(lead_ms=120)
    bridge.pacer.tick_s = 0.010
    bridge.pacer.next_tick = 100.010
    bridge.on_audio(_delta(2000), "item1")
    bridge.pump(100.0)
    sent = []
    for k in range(1, 41):  # ticks every 10 ms, two early by 2 ms, two late, ...
        before = sender.media_count()
        bridge.pump(100.0 + 0.010 * k + (-1.0) ** (k // 2) * 0.002)
        sent.append(sender.media_count() - before)
    assert sent == [0, 1] * 20 or sent == [1, 0] * 20  # one frame every other tick


async def test_a_stretch_origin_is_on_the_half_frame_grid_at_most_a_frame_back() -> None:
    bridge, _, sender = await _bridge(lead_ms=120)
    bridge.pacer.next_tick = 50.013  # ticks at ...,49.993, 50.013, ...
    bridge.on_audio(_delta(1000), "item1")
    bridge.pump(50.0)
    origin = bridge._t0
    assert 49.980 < origin <= 50.0
    assert round((50.013 - 0.010 - origin) / 0.020, 6) % 1 == 0  # boundaries mid-tick
    assert sender.media_count() == 6  # the first burst is unchanged


async def test_marks_tell_what_was_heard_and_barge_in_truncates_there() -> None:
    bridge, provider, sender = await _bridge(lead_ms=200, mark_every_frames=5)
    bridge.on_audio(_delta(2000), "item1")
    bridge.pump(10.0)  # 10 frames: marks m1 (100 ms) and m2 (200 ms)
    bridge.on_mark("m1")  # the caller heard 100 ms
    assert bridge.assistant_speaking
    bridge.on_speech_started()
    await asyncio.sleep(0)  # let the clear task run
    assert ("clear", "") in sender.frames
    assert provider.interrupts == [("item1", 100)]
    assert not bridge.wants_pump  # queue dropped
    bridge.on_mark("m2")  # echoed by the clear: not heard
    bridge.on_audio(_delta(100), "item1")  # stray delta of the cancelled item: dropped
    assert not bridge.wants_pump


async def test_barge_in_before_anything_was_heard_skips_the_truncate() -> None:
    bridge, provider, _ = await _bridge()
    bridge.on_audio(_delta(500), "item7")
    bridge.pump(1.0)
    bridge.on_speech_started()
    assert provider.interrupts == [("item7", None)]


async def test_speech_while_the_assistant_is_silent_is_not_a_barge_in() -> None:
    bridge, provider, sender = await _bridge()
    bridge.on_speech_started()
    assert provider.interrupts == [] and sender.frames == []


async def test_short_speech_does_not_cut_the_assistant_off() -> None:
    bridge, provider, _ = await _bridge(barge_in_min_speech_ms=50)
    bridge.on_audio(_delta(1000), "item1")
    bridge.pump(1.0)
    bridge.on_speech_started()
    bridge.on_speech_stopped()  # "mhm": shorter than 50 ms
    assert provider.interrupts == []
    bridge.on_speech_started()  # long enough this time: the confirmation timer fires
    await asyncio.wait_for(provider.interrupted.wait(), 5)
    assert provider.interrupts == [("item1", None)]


async def test_response_end_flushes_a_padded_last_frame() -> None:
    bridge, _, sender = await _bridge(lead_ms=1000)
    bridge.on_audio(_delta(30), "item1")
    bridge.on_audio_done("item1")
    bridge.pump(5.0)
    assert sender.media_count() == 2  # 30 ms + filter tail, padded to two frames
    assert sender.marks()  # a mark at the end of the queue


async def test_audio_on_an_idle_call_is_pumped_at_once_not_at_the_next_tick() -> None:
    bridge, _, _ = await _bridge()
    bridge.on_audio(_delta(100), "item1")
    bridge.on_audio(_delta(100), "item1")
    assert bridge.pacer.kicks == 1  # only the idle -> busy edge


async def test_queue_is_bounded_and_overflow_counted() -> None:
    bridge, _, _ = await _bridge(max_queue_frames=50)
    bridge.on_audio(_delta(2000), "item1")
    assert len(bridge._queue) == 50
    assert bridge.dropped_frames == 50


async def test_slow_peer_is_skipped_not_awaited() -> None:
    bridge, _, sender = await _bridge(max_write_buffer=1000)
    bridge.on_audio(_delta(500), "item1")
    sender.buffered = 5000
    bridge.pump(1.0)
    assert sender.media_count() == 0
    sender.buffered = 0
    bridge.pump(1.0)
    assert sender.media_count() > 0


async def test_transcripts_and_tool_calls_without_a_brain() -> None:
    bridge, provider, _ = await _bridge()
    bridge.on_transcript("user", "what time is it", True)
    bridge.on_transcript("user", "partial", False)
    assert [e.text for e in bridge.session.transcript] == ["what time is it"]
    bridge.on_tool_call("call_1", "run_command", "{}")
    assert provider.tool_results and provider.tool_results[0][0] == "call_1"


async def test_close_closes_the_provider_once() -> None:
    bridge, provider, _ = await _bridge()
    await bridge.close("stream-stopped")
    await bridge.close("again")
    assert provider.closed


async def test_a_tick_sends_its_frames_and_marks_in_one_write_in_order() -> None:
    bridge, _, sender = await _bridge(lead_ms=200, mark_every_frames=4)
    bridge.on_audio(_delta(200), "item1")
    bridge.pump(7.0)
    assert sender.writes == 1
    kinds = [kind for kind, _ in sender.frames]
    # marks follow the 4th and 8th frames; the 10th frame empties the queue: a last mark
    assert kinds == (["media"] * 4 + ["mark"]) * 2 + ["media"] * 2 + ["mark"]
    assert sender.marks() == ["m1", "m2", "m3"]


async def _clocked_bridge(now: list[float], lead_ms: int
                         ) -> tuple[AudioBridge, RecordingProvider]:
    """A bridge whose clock is ``now[0]`` (marks every 10 frames)."""
    manager = CallManager()
    session = manager.create_inbound("CA" + "2" * 32, "+15551230000", "+15557654321")
    provider = RecordingProvider()
    bridge = AudioBridge(session, RecordingSender(), provider,  # type: ignore[arg-type]
                         ManualPacer(),  # type: ignore[arg-type]
                         settings=BridgeSettings(lead_ms=lead_ms, mark_every_frames=10),
                         clock=lambda: now[0])
    await bridge.start()
    return bridge, provider


async def test_truncate_point_runs_on_from_the_last_mark_with_playout_time() -> None:
    now = [50.0]
    bridge, provider = await _clocked_bridge(now, lead_ms=400)
    bridge.on_audio(_delta(1000), "item1")
    bridge.pump(1.0)  # 20 frames (400 ms) sent: marks at 200 and 400 ms
    bridge.on_mark("m1")  # Twilio played 200 ms ...
    now[0] += 0.130  # ... and 130 ms more since
    bridge.on_speech_started()
    assert provider.interrupts == [("item1", 330)]


async def test_interpolated_truncate_point_never_passes_what_was_sent() -> None:
    now = [50.0]
    bridge, provider = await _clocked_bridge(now, lead_ms=200)
    bridge.on_audio(_delta(1000), "item1")
    bridge.pump(1.0)  # 10 frames (200 ms) sent, one mark at 200 ms
    bridge.on_mark("m1")
    now[0] += 5.0  # the socket stalled: nothing more was sent
    bridge.on_speech_started()
    assert provider.interrupts == [("item1", 200)]


class RecordingConversation:
    """The brain's side of the bridge: what it was told."""

    def __init__(self) -> None:
        self.barge_ins = 0

    def on_barge_in(self, session: Any) -> None:
        self.barge_ins += 1

    def on_turn(self, *args: Any) -> None:
        pass

    def on_dtmf(self, *args: Any) -> None:
        pass

    def on_tool_call(self, *args: Any) -> None:
        pass

    def on_call_end(self, session: Any) -> None:
        pass


async def _paced_bridge(now: list[float]) -> tuple[AudioBridge, RecordingProvider,
                                                   RecordingSender, RecordingConversation]:
    """A bridge fed like a real-time-paced response: lead 200 ms, marks every 5 frames."""
    manager = CallManager()
    session = manager.create_inbound("CA" + "3" * 32, "+15551230000", "+15557654321")
    provider, sender, brain = RecordingProvider(), RecordingSender(), RecordingConversation()
    bridge = AudioBridge(session, sender, provider, ManualPacer(),  # type: ignore[arg-type]
                         settings=BridgeSettings(lead_ms=200, mark_every_frames=5),
                         conversation=brain,  # type: ignore[arg-type]
                         clock=lambda: now[0])
    await bridge.start()
    return bridge, provider, sender, brain


def _play_out(bridge: AudioBridge, sender: RecordingSender, now: list[float]) -> None:
    """Send everything queued and echo every mark: the caller heard it all by the time
    ``now`` has moved on half a second."""
    bridge.pump(now[0])
    for name in sender.marks():
        bridge.on_mark(name)
    assert not bridge.wants_pump
    now[0] += 0.5


@pytest.mark.parametrize("phase", ["before_first_delta", "queue_drained_between_deltas",
                                   "after_last_delta_before_playout_end",
                                   "after_response_done"])
async def test_barge_in_at_every_phase_of_a_real_time_paced_response(phase: str) -> None:
    """Caller speech is a barge-in whenever a response is in progress or sent audio is
    still playing; only after the response is done and heard is it a plain new turn."""
    now = [10.0]
    bridge, provider, sender, brain = await _paced_bridge(now)
    # an earlier response, all heard
    bridge.on_audio(_delta(100), "item0")
    bridge.on_audio_done("item0")
    _play_out(bridge, sender, now)
    sender.frames.clear()

    provider.response_active = True  # response.created for item1
    truncate: int | None = None
    if phase != "before_first_delta":
        bridge.on_audio(_delta(120), "item1")  # all of it fits in the lead
        if phase == "queue_drained_between_deltas":
            _play_out(bridge, sender, now)  # the next delta is late: the queue runs dry
            truncate = 20 * sender.media_count()  # all that was sent was heard
        else:
            bridge.on_audio_done("item1")
            bridge.pump(now[0])
            assert not bridge.wants_pump and sender.media_count() >= 6
            if phase == "after_response_done":
                provider.response_active = False
                for name in sender.marks():
                    bridge.on_mark(name)
            else:
                bridge.on_mark(sender.marks()[0])  # the first 100 ms were heard ...
                now[0] += 1 / 64  # ... and 15.625 ms more since (exact in binary)
                truncate = 115
    sender.frames.clear()

    bridge.on_speech_started()

    if phase == "after_response_done":
        assert bridge.barge_ins == 0 and brain.barge_ins == 0
        assert provider.interrupts == [] and sender.frames == []
        return
    assert bridge.barge_ins == 1 and brain.barge_ins == 1
    assert sender.frames == [("clear", "")]
    if phase == "before_first_delta":
        # item0 was all heard: nothing of it is truncated; the provider drops the
        # interrupted response's deltas (it knows the response)
        assert provider.interrupts == [(None, None)]
        return
    assert provider.interrupts == [("item1", truncate)]
    bridge.on_audio(_delta(100), "item1")  # a late delta of the interrupted item
    bridge.on_audio_done("item1")
    assert not bridge.wants_pump and sender.media_count() == 0


async def test_barge_in_counts_an_open_item_even_when_the_provider_cannot_tell() -> None:
    """A provider without ``response_active``: the item's audio has not ended (no
    ``on_audio_done``), so its response is still in progress."""
    now = [10.0]
    bridge, provider, sender, _ = await _paced_bridge(now)
    bridge.on_audio(_delta(60), "item1")
    _play_out(bridge, sender, now)
    sent_ms = 20 * sender.media_count()
    bridge.on_speech_started()
    assert provider.interrupts == [("item1", sent_ms)] and sent_ms > 0
