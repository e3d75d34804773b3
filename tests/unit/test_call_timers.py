"""CallTimers: max duration (warning, goodbye, hang-up) and silence (prompt, goodbye, hang-up),
driven by a manual clock: nothing here waits on the wall clock."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from agentic_fast.call.timers import GOODBYE_POLL_S, CallLimits, CallTimers
from agentic_fast.core.log import get_logger


class ManualHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """``time()`` and ``call_at()`` like an asyncio loop; ``advance`` runs what is due."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._heap: list[tuple[float, int, ManualHandle, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> ManualHandle:
        handle = ManualHandle()
        heapq.heappush(self._heap, (when, next(self._seq), handle, callback, args))
        return handle

    @property
    def pending(self) -> int:
        return sum(1 for entry in self._heap if not entry[2].cancelled)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._heap and self._heap[0][0] <= end + 1e-9:
            when, _, handle, callback, args = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback(*args)
        self.now = end


class FakeAudio:
    """The bridge as the timers see it: what was said, whether audio is busy, hang-ups."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.hangups: list[tuple[str, str | None]] = []
        self.assistant_busy = False
        self.assistant_item: str | None = None

    def speak(self, text: str) -> None:
        self.said.append(text)

    def hang_up(self, reason: str, unsaid: str | None) -> None:
        self.hangups.append((reason, unsaid))


def _timers(elapsed: float = 0.0, **limits: Any) -> tuple[CallTimers, FakeAudio, ManualScheduler]:
    audio, sched = FakeAudio(), ManualScheduler()
    timers = CallTimers(CallLimits(**limits), audio, sched, get_logger("test"))
    timers.start(elapsed)
    return timers, audio, sched


def _voice(audio: FakeAudio, sched: ManualScheduler, timers: CallTimers, item: str,
           seconds: float) -> None:
    """The assistant speaks a new item for ``seconds`` (marks echoed every 200 ms)."""
    audio.assistant_item, audio.assistant_busy = item, True
    for _ in range(round(seconds / 0.2)):
        sched.advance(0.2)
        timers.note_assistant()
    audio.assistant_busy = False


def test_max_duration_warns_then_says_goodbye_then_hangs_up_with_the_reason() -> None:
    timers, audio, sched = _timers(max_duration_s=100, duration_warning_s=30,
                                   silence_timeout_s=0)
    sched.advance(69.9)
    assert audio.said == []
    sched.advance(0.1)
    assert audio.said == ["Just so you know, this call will end in about 30 seconds."]
    sched.advance(29.9)
    assert len(audio.said) == 1 and timers.ending is None
    sched.advance(0.1)
    assert audio.said[-1] == CallLimits().duration_goodbye_message
    assert timers.ending == "max-duration" and audio.hangups == []
    _voice(audio, sched, timers, "goodbye", 2.0)  # the goodbye plays for 2 s
    assert audio.hangups == []  # not cut off while it played
    sched.advance(GOODBYE_POLL_S)
    assert audio.hangups == [("max-duration", None)]
    sched.advance(3600)
    assert audio.hangups == [("max-duration", None)] and sched.pending == 0


def test_max_duration_counts_from_the_answer() -> None:
    _, audio, sched = _timers(elapsed=880, max_duration_s=900, duration_warning_s=30,
                              silence_timeout_s=0)
    sched.advance(19.9)
    assert audio.said == []  # 20 s left at start: too late for a 30 s warning
    sched.advance(0.1)
    assert audio.said == [CallLimits().duration_goodbye_message]


def test_a_goodbye_the_model_never_voices_is_handed_to_the_hang_up() -> None:
    timers, audio, sched = _timers(max_duration_s=10, duration_warning_s=0,
                                   silence_timeout_s=0, goodbye_timeout_s=5)
    sched.advance(10)
    assert timers.ending == "max-duration"
    sched.advance(4.9)
    assert audio.hangups == []
    sched.advance(0.2)
    assert audio.hangups == [("max-duration", CallLimits().duration_goodbye_message)]


def test_a_goodbye_that_plays_too_long_is_cut_at_the_bound() -> None:
    _, audio, sched = _timers(max_duration_s=10, duration_warning_s=0,
                              silence_timeout_s=0, goodbye_timeout_s=5)
    sched.advance(10)
    audio.assistant_item, audio.assistant_busy = "goodbye", True
    sched.advance(5.2)
    assert audio.hangups == [("max-duration", None)]  # voiced: Twilio need not say it


def test_silence_prompts_once_then_says_goodbye_and_hangs_up() -> None:
    timers, audio, sched = _timers(max_duration_s=0, silence_timeout_s=60, silence_grace_s=15)
    sched.advance(59.9)
    assert audio.said == []
    sched.advance(0.1)
    assert audio.said == ["Are you still there?"]
    _voice(audio, sched, timers, "prompt", 1.0)  # the prompt plays: not an answer
    sched.advance(14.9)
    assert timers.ending is None  # the grace counts from the end of the prompt's audio
    sched.advance(0.2)
    assert timers.ending == "silence-timeout"
    assert audio.said[-1] == CallLimits().silence_goodbye_message
    _voice(audio, sched, timers, "goodbye", 1.0)
    sched.advance(GOODBYE_POLL_S)
    assert audio.hangups == [("silence-timeout", None)]
    assert audio.said.count("Are you still there?") == 1


def test_caller_speech_resets_the_silence_timer() -> None:
    timers, audio, sched = _timers(max_duration_s=0, silence_timeout_s=60)
    sched.advance(50)
    timers.note_caller_speaking(True)
    sched.advance(30)  # a long utterance: never silence while the caller speaks
    timers.note_caller_speaking(False)
    assert audio.said == []
    sched.advance(59.9)
    assert audio.said == []
    sched.advance(0.1)
    assert audio.said == ["Are you still there?"]


def test_a_transcript_or_a_key_press_counts_as_the_caller_speaking() -> None:
    timers, audio, sched = _timers(max_duration_s=0, silence_timeout_s=60)
    sched.advance(59)
    timers.note_caller()
    sched.advance(59)
    assert audio.said == []
    sched.advance(1)
    assert audio.said == ["Are you still there?"]


def test_assistant_audio_counts_as_speech() -> None:
    timers, audio, sched = _timers(max_duration_s=0, silence_timeout_s=60)
    sched.advance(30)
    _voice(audio, sched, timers, "answer", 45.0)  # a long answer until t=75
    audio.assistant_busy = True  # ... still queued at the first deadline (t=60)
    sched.advance(0)
    audio.assistant_busy = False
    sched.advance(59.8)
    assert audio.said == []
    sched.advance(0.4)  # 60 s after the last of its audio played
    assert audio.said == ["Are you still there?"]


def test_answering_the_prompt_starts_a_new_silence_cycle() -> None:
    timers, audio, sched = _timers(max_duration_s=0, silence_timeout_s=60, silence_grace_s=15)
    sched.advance(60)
    assert audio.said == ["Are you still there?"]
    sched.advance(10)
    timers.note_caller()  # "yes, I'm here"
    sched.advance(59)
    assert timers.ending is None and len(audio.said) == 1
    sched.advance(1)
    assert audio.said == ["Are you still there?"] * 2 and timers.ending is None


def test_cancel_stops_everything_and_zero_turns_the_limits_off() -> None:
    timers, audio, sched = _timers(max_duration_s=100, silence_timeout_s=60)
    timers.cancel()
    sched.advance(10_000)
    assert audio.said == [] and audio.hangups == []
    assert not CallLimits(max_duration_s=0, silence_timeout_s=0).enabled
    timers, audio, sched = _timers(max_duration_s=0, silence_timeout_s=0)
    assert sched.pending == 0


def test_config_names_the_key_of_a_bad_limit() -> None:
    import pytest

    from agentic_fast.core.config import Config
    from agentic_fast.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"calls\.duration_warning_s: must be below"):
        Config.from_text("calls:\n  max_duration_s: 20\n", source="t", env={})
    with pytest.raises(ConfigError, match=r"calls\.silence_prompt_message: must not be empty"):
        Config.from_text("calls:\n  silence_prompt_message: ' '\n", source="t", env={})
    calls = Config.from_text("calls:\n  max_duration_s: 0\n  silence_timeout_s: 0\n",
                             source="t", env={}).calls
    assert (calls.max_duration_s, calls.silence_timeout_s, calls.duration_warning_s) == (0, 0, 30)
