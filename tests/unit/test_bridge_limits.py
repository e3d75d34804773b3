"""The bridge's hooks for the call time limits: its audio (queued, sent, marks echoed) is
what "the assistant is speaking" means, caller speech resets the silence timer, the goodbye
is not cut by a barge-in, and the hang-up waits until the goodbye has played out.

The timers run on a manual clock (``ManualScheduler``) and the pacer is driven by hand."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agentic_fast.call.bridge import AudioBridge, BridgeSettings
from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.call.timers import CallLimits
from tests.unit.test_bridge import ManualPacer, RecordingProvider, RecordingSender
from tests.unit.test_call_timers import ManualScheduler

pytestmark = pytest.mark.asyncio


class SayingProvider(RecordingProvider):
    def __init__(self) -> None:
        super().__init__()
        self.said: list[str] = []

    def say(self, text: str) -> None:
        self.said.append(text)


def _delta(ms: int) -> str:
    return base64.b64encode(bytes(48 * ms)).decode()  # PCM16 24 kHz


async def _bridge(**limits: Any) -> tuple[AudioBridge, SayingProvider, RecordingSender,
                                          ManualScheduler, list[tuple[Any, ...]]]:
    manager = CallManager()
    session = manager.create_inbound("CA" + "2" * 32, "+15551230000", "+15557654321")
    manager.mark_stream_started(session)
    provider, sender, sched = SayingProvider(), RecordingSender(), ManualScheduler()
    ended: list[tuple[Any, ...]] = []

    def on_limit(s: CallSession, reason: str, unsaid: str | None) -> None:
        ended.append((s, reason, unsaid))

    bridge = AudioBridge(session, sender, provider, ManualPacer(),  # type: ignore[arg-type]
                         settings=BridgeSettings(mark_every_frames=10), speak_first=None,
                         write_buffer=sender.write_buffer_size, clock=sched.time,
                         limits=CallLimits(**limits), on_call_limit=on_limit,
                         scheduler=sched)
    await bridge.start()
    return bridge, provider, sender, sched, ended


def _play(bridge: AudioBridge, sender: RecordingSender, sched: ManualScheduler,
          seconds: float) -> None:
    """Real-time playout for ``seconds``: pump every 20 ms, echo marks as Twilio would."""
    echoed = len(sender.marks())
    for _ in range(round(seconds / 0.02)):
        sched.advance(0.02)
        bridge.pump(sched.time())
        marks = sender.marks()
        for name in marks[echoed:]:
            bridge.on_mark(name)
        echoed = len(marks)


async def test_goodbye_plays_out_before_the_hang_up_with_the_reason() -> None:
    bridge, provider, sender, sched, ended = await _bridge(
        max_duration_s=60, duration_warning_s=10, silence_timeout_s=0)
    sched.advance(50)
    assert provider.said == ["Just so you know, this call will end in about 10 seconds."]
    sched.advance(10)
    assert provider.said[-1] == CallLimits().duration_goodbye_message
    bridge.on_audio(_delta(1500), "goodbye")  # the model's goodbye: 1.5 s of audio
    bridge.on_audio_done("goodbye")
    _play(bridge, sender, sched, 1.0)
    assert ended == []  # still playing: not cut off
    bridge.on_speech_started()  # the caller talks over the goodbye
    assert provider.interrupts == [] and bridge.barge_ins == 0
    _play(bridge, sender, sched, 1.0)
    sched.advance(0.2)
    assert [(s.call_id, r, u) for s, r, u in ended] == [
        (bridge.session.call_id, "max-duration", None)]
    assert not bridge.assistant_speaking and sender.media_count() >= 75  # all of it sent
    await bridge.close("stop")
    sched.advance(3600)
    assert len(ended) == 1 and sched.pending == 0


async def test_assistant_audio_through_the_bridge_counts_as_speech() -> None:
    bridge, provider, sender, sched, _ = await _bridge(max_duration_s=0, silence_timeout_s=10)
    sched.advance(5)
    bridge.on_audio(_delta(8000), "answer")  # 8 s answer, queued at once
    bridge.on_audio_done("answer")
    _play(bridge, sender, sched, 8.2)  # plays until t=13: the timer at t=10 sees it busy
    assert provider.said == []
    sched.advance(9.5)
    assert provider.said == []
    sched.advance(0.6)  # 10 s after its last audio played
    assert provider.said == ["Are you still there?"]


async def test_caller_speech_resets_the_silence_timer_and_answers_the_prompt() -> None:
    bridge, provider, _, sched, ended = await _bridge(max_duration_s=0, silence_timeout_s=10,
                                                      silence_grace_s=5)
    sched.advance(9)
    bridge.on_speech_started()
    sched.advance(3)
    bridge.on_speech_stopped()
    bridge.on_transcript("user", "hmm, let me think", True)
    sched.advance(9.9)
    assert provider.said == []
    sched.advance(0.1)
    assert provider.said == ["Are you still there?"]
    sched.advance(2)
    bridge.on_dtmf("5")  # a key press answers too
    sched.advance(9.9)
    assert provider.said == ["Are you still there?"] and ended == []
    sched.advance(0.1)
    assert provider.said == ["Are you still there?"] * 2
    sched.advance(5 + 10)  # no answer: goodbye, never voiced -> handed to the hang-up
    assert [(r, u) for _, r, u in ended] == [
        ("silence-timeout", CallLimits().silence_goodbye_message)]


async def test_no_limits_no_timers() -> None:
    bridge, _, _, sched, _ = await _bridge(max_duration_s=0, silence_timeout_s=0)
    assert bridge.timers is None and sched.pending == 0
