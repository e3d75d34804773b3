"""Speak a line to a Telnyx caller, then hang up (refusals, goodbyes).

Call Control v2 has no "say then hang up" command: we send ``speak`` with
``client_state`` = :data:`~agentic_fast.carriers.telnyx.media.HANGUP_AFTER_SPEAK`, and the
``call.speak.ended`` webhook carrying that marker hangs the call up (:meth:`TelnyxSpeaker.
spoken`), on whichever worker gets it: nothing is kept between the two. An unanswered call
is answered first (``answer`` without a stream); an answered one has its media stream
stopped first, so the model's audio does not talk over the line.

Bounded: a ``speak`` Telnyx refuses is followed by a plain ``hangup`` at once; and the worker
that sent the ``speak`` hangs up after ``telnyx.speak_timeout_s`` if ``call.speak.ended``
never reached it (lost webhook, another worker that failed to act). A hang-up of a call that
has already ended is refused by Telnyx: that refusal is expected and only counted.
"""

from __future__ import annotations

import asyncio
import contextlib

from agentic_fast.carriers.telnyx.media import HANGUP_AFTER_SPEAK
from agentic_fast.carriers.telnyx.rest import TelnyxRestClient
from agentic_fast.core import metrics
from agentic_fast.core.errors import TelnyxApiError
from agentic_fast.core.log import get_logger

__all__ = ["TelnyxSpeaker"]

log = get_logger("telnyx.speak")

#: Voices of Telnyx's ``basic`` service level (the speaker's gender only).
_BASIC_VOICES = frozenset({"male", "female"})


class TelnyxSpeaker:
    """``speak`` then ``hangup`` over ``rest``; one per carrier (its timers end in
    :meth:`close`)."""

    __slots__ = ("_language", "_timers", "_voice", "rest", "timeout_s")

    def __init__(self, rest: TelnyxRestClient, *, voice: str, language: str = "",
                 timeout_s: float = 30.0) -> None:
        self.rest = rest
        self._voice = voice
        self._language = language
        self.timeout_s = timeout_s
        self._timers: dict[str, asyncio.Task[None]] = {}

    async def answer_and_say(self, call_control_id: str, text: str) -> None:
        """An unanswered incoming call: answer it (no stream), speak ``text``, hang up
        once spoken; a failed answer or speak hangs up at once. Never raises
        :class:`TelnyxApiError` (each failure is logged and counted by the client)."""
        try:
            await self.rest.answer(call_control_id, stream=None)
        except TelnyxApiError as exc:
            metrics.incr("telnyx.speak.answer_failed")
            log.warning("telnyx.speak.answer_failed", call_control_id=call_control_id,
                        code=exc.code, error=str(exc)[:200])
            with contextlib.suppress(TelnyxApiError):
                await self.rest.hangup(call_control_id)
            return
        with contextlib.suppress(TelnyxApiError):
            await self.say(call_control_id, text)

    async def say_on_answered(self, call_control_id: str, text: str) -> None:
        """An answered call: stop its media stream (if one runs), speak ``text``, hang up
        once spoken. Raises :class:`TelnyxApiError` only when even the hang-up failed."""
        try:
            await self.rest.streaming_stop(call_control_id)
        except TelnyxApiError as exc:  # no stream (any more), or the call has ended
            log.info("telnyx.speak.stream_not_stopped", call_control_id=call_control_id,
                     code=exc.code)
        await self.say(call_control_id, text)

    async def say(self, call_control_id: str, text: str) -> None:
        """``speak`` with the hang-up marker, and the timer that bounds it; a refused
        ``speak`` is followed by ``hangup`` (raises if that fails too)."""
        try:
            await self.rest.speak(call_control_id, text, voice=self._voice,
                                  language=self._language_for(self._voice),
                                  service_level=self._service_level(),
                                  client_state=HANGUP_AFTER_SPEAK)
        except TelnyxApiError as exc:
            metrics.incr("telnyx.speak.refused")
            log.warning("telnyx.speak.refused", call_control_id=call_control_id,
                        code=exc.code, http_status=exc.status, error=str(exc)[:200],
                        fallback="hangup")
            await self.rest.hangup(call_control_id)
            return
        metrics.incr("telnyx.speak.sent")
        log.info("telnyx.speak.sent", call_control_id=call_control_id, chars=len(text))
        self._arm(call_control_id)

    async def spoken(self, call_control_id: str, status: str) -> None:
        """``call.speak.ended`` with our marker: hang up (unless the call already did)."""
        timer = self._timers.pop(call_control_id, None)
        if timer is not None:
            timer.cancel()
        if status == "call_hangup":  # the caller hung up while it was spoken
            metrics.incr("telnyx.speak.caller_hung_up")
            log.info("telnyx.speak.ended", call_control_id=call_control_id, status=status)
            return
        log.info("telnyx.speak.ended", call_control_id=call_control_id,
                 status=status or None, then="hangup")
        await self._hang_up(call_control_id, "ended")

    async def close(self) -> None:
        """Cancel the pending timers (the server is stopping)."""
        timers, self._timers = list(self._timers.values()), {}
        for timer in timers:
            timer.cancel()
        for timer in timers:
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    @property
    def pending(self) -> int:
        """Spoken lines whose ``call.speak.ended`` has not reached this worker yet."""
        return len(self._timers)

    # -- internals ---------------------------------------------------------------------------

    def _language_for(self, voice: str) -> str:
        if voice.startswith(("Polly.", "AWS.Polly.")):
            return ""  # ignored by Telnyx for Polly voices: not sent
        return "en-US" if voice in _BASIC_VOICES else self._language

    def _service_level(self) -> str:
        return "basic" if self._voice in _BASIC_VOICES else ""

    def _arm(self, call_control_id: str) -> None:
        old = self._timers.pop(call_control_id, None)
        if old is not None:
            old.cancel()
        timer = asyncio.get_running_loop().create_task(self._expire(call_control_id))
        self._timers[call_control_id] = timer

    async def _expire(self, call_control_id: str) -> None:
        await asyncio.sleep(self.timeout_s)  # a bound, not a synchronisation
        if self._timers.get(call_control_id) is asyncio.current_task():
            del self._timers[call_control_id]
        metrics.incr("telnyx.speak.timed_out")
        log.warning("telnyx.speak.timed_out", call_control_id=call_control_id,
                    timeout_s=self.timeout_s, then="hangup")
        await self._hang_up(call_control_id, "timed_out")

    async def _hang_up(self, call_control_id: str, why: str) -> None:
        try:
            await self.rest.hangup(call_control_id)
        except TelnyxApiError as exc:  # typically: ended meanwhile (logged by the client)
            metrics.incr(f"telnyx.speak.hangup_failed.{why}")
            log.info("telnyx.speak.hangup_failed", call_control_id=call_control_id,
                     code=exc.code, after=why)
            return
        metrics.incr(f"telnyx.speak.hung_up.{why}")
