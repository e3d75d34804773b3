"""Call time limits: a maximum duration and a silence timeout, each ending with a goodbye.

``CallTimers`` belongs to one call's bridge. It keeps at most two loop timers (``call_at``):
one for the duration limit (the spoken warning, then the end), one for silence. Nothing is
re-armed per event: the bridge only stamps the time of caller and assistant activity (an
attribute set on speech events, transcripts, DTMF and mark echoes, never per audio frame),
and the silence timer, when it fires, compares the stamps with its deadline and re-arms
itself at the real deadline if something happened meanwhile (a lazy deadline).

Silence: neither side has spoken for ``silence_timeout_s`` (the assistant's audio counts
while it is queued or playing) -> one prompt ("Are you still there?"); if the caller still
says nothing for ``silence_grace_s`` after the prompt has played, goodbye and hang-up with
end reason ``silence-timeout``. Any caller activity after the prompt resets the cycle.

Duration: ``duration_warning_s`` before ``max_duration_s`` (counted from the answer) the
assistant says the warning; at the limit, goodbye and hang-up with reason ``max-duration``.

Ending: the goodbye is said through the model, then the call is hung up once the goodbye's
audio has played out (a new assistant item started and the bridge is no longer busy: queue
empty, marks echoed, no response live), bounded by ``goodbye_timeout_s``. A goodbye the model
never voiced is handed to the hang-up, which has Twilio say it instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agentic_fast.call.manager import END_MAX_DURATION, END_SILENCE_TIMEOUT
from agentic_fast.core import metrics
from agentic_fast.core.log import BoundLogger

#: How often the end of a goodbye's playout is checked (only while a call is ending).
GOODBYE_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class CallLimits:
    """The ``calls.*`` time limits of one call (0 disables a limit)."""

    max_duration_s: float = 900.0
    duration_warning_s: float = 30.0
    duration_warning_message: str = (
        "Just so you know, this call will end in about {seconds} seconds.")
    duration_goodbye_message: str = "We have reached the time limit for this call. Goodbye!"
    silence_timeout_s: float = 60.0
    silence_grace_s: float = 15.0
    silence_prompt_message: str = "Are you still there?"
    silence_goodbye_message: str = "I haven't heard from you, so I will hang up now. Goodbye!"
    goodbye_timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.max_duration_s > 0 or self.silence_timeout_s > 0


class Handle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Loop time and timers: the running ``asyncio`` loop, or a manual clock in tests."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Handle: ...


class CallAudio(Protocol):
    """What the timers need from the call's bridge."""

    @property
    def assistant_busy(self) -> bool:
        """Assistant audio is arriving, queued or playing, or a response is live."""

    @property
    def assistant_item(self) -> str | None:
        """The id of the latest assistant item whose audio arrived."""

    def speak(self, text: str) -> None:
        """Have the assistant say ``text``."""

    def hang_up(self, reason: str, unsaid: str | None) -> None:
        """End the call with end reason ``reason``; ``unsaid``: a goodbye still to say."""


class CallTimers:
    """One call's duration and silence limits (see the module docstring)."""

    __slots__ = ("_audio", "_duration", "_goodbye", "_log", "_sched", "_silence", "_started",
                 "assistant_at", "caller_at", "caller_speaking", "ending", "limits",
                 "prompted_at")

    def __init__(self, limits: CallLimits, audio: CallAudio, scheduler: Scheduler,
                 log: BoundLogger) -> None:
        self.limits = limits
        self._audio = audio
        self._sched = scheduler
        self._log = log
        self._duration: Handle | None = None
        self._silence: Handle | None = None
        self._started = 0.0
        #: loop time of the last caller / assistant activity (stamped by the bridge)
        self.caller_at = 0.0
        self.assistant_at = 0.0
        self.caller_speaking = False
        #: loop time the silence prompt was said (None: not prompted)
        self.prompted_at: float | None = None
        #: the end reason once the call is being ended (then every timer is off)
        self.ending: str | None = None
        # (said at, assistant item before the goodbye, goodbye text) while ending
        self._goodbye: tuple[float, str | None, str] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, elapsed_s: float = 0.0) -> None:
        """Arm the timers; ``elapsed_s``: how long the call has been answered already."""
        limits, now = self.limits, self._sched.time()
        self._started = self.caller_at = self.assistant_at = now
        if limits.max_duration_s > 0:
            remaining = max(limits.max_duration_s - elapsed_s, 0.0)
            warning = limits.duration_warning_s
            if 0 < warning < remaining:
                self._duration = self._sched.call_at(now + remaining - warning,
                                                     self._warn, now + remaining)
            else:
                self._duration = self._sched.call_at(now + remaining, self._expire)
        if limits.silence_timeout_s > 0:
            self._silence = self._sched.call_at(now + limits.silence_timeout_s,
                                                self._check_silence)

    def cancel(self) -> None:
        """The call is over: stop every timer (idempotent)."""
        for handle in (self._duration, self._silence):
            if handle is not None:
                handle.cancel()
        self._duration = self._silence = None

    # -- activity (O(1): called by the bridge on events, never per audio frame) -------------

    def note_caller(self) -> None:
        """The caller spoke (speech event, transcript, DTMF)."""
        self.caller_at = self._sched.time()
        if self.prompted_at is not None:
            self.prompted_at = None
            metrics.incr("calls.silence.answered")

    def note_caller_speaking(self, speaking: bool) -> None:
        self.caller_speaking = speaking
        self.note_caller()

    def note_assistant(self) -> None:
        """Assistant audio played (a mark echoed) or its transcript arrived."""
        self.assistant_at = self._sched.time()

    # -- duration --------------------------------------------------------------------------

    def _warn(self, end_at: float) -> None:
        self._duration = self._sched.call_at(end_at, self._expire)
        if self.ending is not None:
            return
        left = f"{self.limits.duration_warning_s:g}"  # what the timer was set for
        metrics.incr("calls.max_duration.warned")
        self._log.info("call.max_duration.warning", seconds_left=left)
        self._audio.speak(self.limits.duration_warning_message.replace("{seconds}", left))

    def _expire(self) -> None:
        self._duration = None
        self._end(END_MAX_DURATION, self.limits.duration_goodbye_message)

    # -- silence -----------------------------------------------------------------------------

    def _check_silence(self) -> None:
        self._silence = None
        if self.ending is not None:
            return
        limits, now = self.limits, self._sched.time()
        prompted = self.prompted_at
        span = limits.silence_timeout_s if prompted is None else limits.silence_grace_s
        if self.caller_speaking or self._audio.assistant_busy:
            self._rearm(now + span)  # the stamps will have moved on by then
            return
        if prompted is None:
            deadline = max(self.caller_at, self.assistant_at, self._started) + span
        else:  # only the caller answers a prompt; its own audio only delays the deadline
            deadline = max(prompted, self.assistant_at) + span
        if now < deadline:
            self._rearm(deadline)
        elif prompted is None:
            self.prompted_at = now
            metrics.incr("calls.silence.prompted")
            self._log.info("call.silence.prompt", silent_s=round(now - deadline + span, 1))
            self._audio.speak(limits.silence_prompt_message)
            self._rearm(now + limits.silence_grace_s)
        else:
            self._end(END_SILENCE_TIMEOUT, limits.silence_goodbye_message)

    def _rearm(self, when: float) -> None:
        self._silence = self._sched.call_at(when, self._check_silence)

    # -- ending ----------------------------------------------------------------------------------

    def _end(self, reason: str, goodbye: str) -> None:
        if self.ending is not None:
            return
        self.ending = reason
        self.cancel()
        metrics.incr(f"calls.limit.{reason}")
        self._log.info("call.limit_reached", reason=reason)
        now = self._sched.time()
        self._goodbye = (now, self._audio.assistant_item, goodbye)
        self._audio.speak(goodbye)
        self._duration = self._sched.call_at(now + GOODBYE_POLL_S, self._check_goodbye)

    def _check_goodbye(self) -> None:
        self._duration = None
        if self._goodbye is None or self.ending is None:
            return
        said_at, item_before, text = self._goodbye
        audio = self._audio
        voiced = audio.assistant_item != item_before
        now = self._sched.time()
        if voiced and not audio.assistant_busy:
            self._finish(None)
        elif now - said_at >= self.limits.goodbye_timeout_s:
            metrics.incr("calls.limit.goodbye_timeout")
            self._log.warning("call.goodbye_timeout", voiced=voiced,
                              timeout_s=self.limits.goodbye_timeout_s)
            self._finish(None if voiced else text)
        else:
            self._duration = self._sched.call_at(now + GOODBYE_POLL_S, self._check_goodbye)

    def _finish(self, unsaid: str | None) -> None:
        reason = self.ending
        self._goodbye = None
        if reason is not None:
            self._audio.hang_up(reason, unsaid)
