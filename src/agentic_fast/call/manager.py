"""Call registry and lifecycle: ``CallSession`` (one call's state) and ``CallManager``.

The manager owns every call from the moment we accept it (inbound webhook, or an outbound
request before the REST create) until it ends, then keeps it in a bounded history so
``GET /calls/{id}`` still answers for a while. It parses no wire format: the server maps
the carrier's call status into :class:`~agentic_fast.call.status.CallStatus` and calls
``apply_status``; the lifecycle table lives in ``call/status.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Protocol

from agentic_fast.call.status import CallStatus, Transition, check_transition
from agentic_fast.core import metrics
from agentic_fast.core.errors import CallLimitError, DrainingError
from agentic_fast.core.events import EventHub
from agentic_fast.core.log import BoundLogger, get_logger

_log = get_logger("calls")


class CallDirection(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


# End reasons of calls our side ends on a limit (``CallSession.reason``; see call/timers.py).
END_MAX_DURATION: Final = "max-duration"
END_SILENCE_TIMEOUT: Final = "silence-timeout"


# ---------------------------------------------------------------------------------------------
# Clock and session
# ---------------------------------------------------------------------------------------------


class Clock(Protocol):
    """Time source: ``monotonic()`` for durations and deadlines, ``time()`` for display."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK: Final = SystemClock()

TRANSCRIPT_LIMIT: Final = 2000
COMMANDS_LIMIT: Final = 200
STREAM_ERRORS_LIMIT: Final = 20
#: Characters of Twilio's ``StreamError`` text kept per error.
STREAM_ERROR_CHARS: Final = 500
#: DTMF digits kept per call (the latest; older ones are dropped and counted).
DTMF_LIMIT: Final = 256
#: Characters kept of one transcript entry (a longer utterance is cut, counted).
TRANSCRIPT_TEXT_CHARS: Final = 4000
#: Transcript entries ``GET /calls/{id}`` shows by default (the latest), and at most.
TRANSCRIPT_PAGE_DEFAULT: Final = 100
TRANSCRIPT_PAGE_MAX: Final = 500


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One utterance: ``role`` is ``"caller"`` or ``"agent"``; ``ts`` is wall-clock epoch s."""

    role: str
    text: str
    ts: float


#: Takes every event a call emits (the session, the type, its data); O(1), never raises.
Recorder = Callable[["CallSession", str, dict[str, Any]], None]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(slots=True, eq=False)
class CallSession:
    """One call. Status changes go through ``CallManager``; the rest is plain data.

    Timestamps come in pairs: ``*_at`` is wall clock (epoch seconds, for display) and
    ``*_mono`` is monotonic (for durations and deadlines).
    """

    direction: CallDirection
    from_number: str
    to_number: str
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)
    call_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    call_sid: str | None = None
    #: the carrier the call is on (``carriers.registry`` name); "" = the ``carrier:`` default
    carrier: str = ""
    prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    status: CallStatus = CallStatus.INITIATING
    reason: str | None = None
    created_at: float = field(init=False)
    created_mono: float = field(init=False)
    answered_at: float | None = None
    answered_mono: float | None = None
    ended_at: float | None = None
    ended_mono: float | None = None
    stream_started: bool = False
    stream_token_id: str | None = None
    # Monotonic time by which the next expected step (answer, media stream) must happen.
    deadline_mono: float | None = field(default=None, repr=False)
    last_sequence: int | None = field(default=None, repr=False)
    transcript: deque[TranscriptEntry] = field(
        default_factory=lambda: deque(maxlen=TRANSCRIPT_LIMIT), repr=False)
    dtmf: str = ""
    dtmf_dropped: int = 0
    commands: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=COMMANDS_LIMIT), repr=False)
    # Twilio's stream-error reports (<Stream statusCallback>), oldest first, bounded.
    stream_errors: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=STREAM_ERRORS_LIMIT), repr=False)
    bridge: Any = field(default=None, repr=False)
    log: BoundLogger = field(default=_log, repr=False)
    #: Registration order in the manager (the ``GET /calls`` paging cursor).
    serial: int = field(default=0, repr=False)
    #: Where this call's live events go (``GET /calls/events``); set by the manager.
    events: EventHub | None = field(default=None, repr=False)
    #: Where this call's record goes (the call store's recorder); set by the manager.
    recorder: Recorder | None = field(default=None, repr=False)
    #: Who answered (Twilio's ``AnsweredBy``: ``human``, ``machine_start``...), when known.
    answered_by: str | None = None
    #: Taken over from another process or instance (its webhook was answered there).
    adopted: bool = False

    def __post_init__(self) -> None:
        self.created_at = self.clock.time()
        self.created_mono = self.clock.monotonic()
        self.log = _log.bind(call_id=self.call_id, call_sid=self.call_sid)

    @property
    def duration(self) -> float:
        """Seconds since answer (until end, or now while active); 0.0 if never answered."""
        if self.answered_mono is None:
            return 0.0
        end = self.ended_mono if self.ended_mono is not None else self.clock.monotonic()
        return max(0.0, end - self.answered_mono)

    @property
    def ended(self) -> bool:
        return self.status.terminal

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        """Publish a live event about this call (a no-op without watchers)."""
        if self.events is not None:
            self.events.publish(type_, self.call_id, data)
        if self.recorder is not None:
            self.recorder(self, type_, data)

    def add_transcript(self, role: str, text: str) -> None:
        """Append an utterance (bounded: the oldest entries go first, counted)."""
        if len(self.transcript) == TRANSCRIPT_LIMIT:
            metrics.incr("calls.transcript.dropped")
        if len(text) > TRANSCRIPT_TEXT_CHARS:
            metrics.incr("calls.transcript.truncated")
            text = text[:TRANSCRIPT_TEXT_CHARS]
        entry = TranscriptEntry(role, text, self.clock.time())
        self.transcript.append(entry)
        self.emit("call.transcript", {"role": role, "text": text, "ts": _iso(entry.ts)})

    def add_dtmf(self, digits: str) -> None:
        """Record pressed keys: the latest ``DTMF_LIMIT`` are kept, older ones counted."""
        dtmf = self.dtmf + digits
        if len(dtmf) > DTMF_LIMIT:
            over = len(dtmf) - DTMF_LIMIT
            self.dtmf_dropped += over
            metrics.incr("calls.dtmf.dropped", over)
            dtmf = dtmf[over:]
        self.dtmf = dtmf

    def add_command(self, command: dict[str, Any]) -> None:
        """Record a command the caller asked for (bounded like the transcript)."""
        if len(self.commands) == COMMANDS_LIMIT:
            metrics.incr("calls.commands.dropped")
        self.commands.append(command)
        self.emit("call.command", command)

    def add_stream_error(self, error: str, *, code: str | None = None,
                         stream_sid: str | None = None) -> None:
        """Record a media stream error Twilio reported (bounded like the transcript)."""
        if len(self.stream_errors) == STREAM_ERRORS_LIMIT:
            metrics.incr("calls.stream_errors.dropped")
        self.stream_errors.append({"ts": _iso(self.clock.time()), "code": code,
                                   "error": error[:STREAM_ERROR_CHARS],
                                   "stream_sid": stream_sid})

    def summary(self) -> dict[str, Any]:
        """The small view of ``GET /calls``: no transcript, prompt or metadata (those are
        in ``to_dict``), so one page costs the same whatever the calls have said."""
        return {
            "call_id": self.call_id,
            "call_sid": self.call_sid,
            "direction": self.direction.value,
            "from": self.from_number,
            "to": self.to_number,
            "status": self.status.value,
            "reason": self.reason,
            "created_at": _iso(self.created_at),
            "answered_at": _iso(self.answered_at),
            "ended_at": _iso(self.ended_at),
            "duration_s": round(self.duration, 3),
            "stream_started": self.stream_started,
            "transcript_turns": len(self.transcript),
        }

    def to_dict(self, transcript_limit: int | None = None) -> dict[str, Any]:
        """The JSON view of ``GET /calls/{id}`` (no prompt text beyond what was given).

        ``transcript_limit`` keeps only the latest entries; ``transcript_total`` and
        ``transcript_truncated`` say how many there are and whether some were left out.
        """
        entries = list(self.transcript)
        total = len(entries)
        if transcript_limit is not None and total > transcript_limit:
            entries = entries[total - transcript_limit:] if transcript_limit > 0 else []
        return {
            **self.summary(),
            "prompt": self.prompt,
            "metadata": self.metadata,
            "transcript": [
                {"role": e.role, "text": e.text, "ts": _iso(e.ts)} for e in entries
            ],
            "transcript_total": total,
            "transcript_truncated": len(entries) < total,
            "dtmf": self.dtmf,
            "dtmf_dropped": self.dtmf_dropped,
            "commands": list(self.commands),
            "stream_errors": list(self.stream_errors),
        }


# ---------------------------------------------------------------------------------------------
# Manager
# ---------------------------------------------------------------------------------------------

EndCallback = Callable[[CallSession], None]


class CallManager:
    """Registry of pending and active calls, limits, timeouts and a bounded history.

    Timeouts are enforced by one sweeper task (``start()``/``close()``) that calls ``sweep()``
    every ``sweep_interval_s``; tests call ``sweep()`` directly with a manual clock.

    - inbound calls must see their media stream within ``stream_timeout_s`` of the webhook;
    - outbound calls must be answered within ``answer_timeout_s`` of creation, then see their
      stream within ``stream_timeout_s`` of the answer.

    ``on_end(session)`` runs once when a call reaches a terminal state (close the bridge, hang
    up at Twilio...); it must not raise (if it does, the error is logged and counted).
    """

    def __init__(self, *, max_concurrent_calls: int = 100, stream_timeout_s: float = 15.0,
                 answer_timeout_s: float = 120.0, history_size: int = 200,
                 sweep_interval_s: float = 1.0, clock: Clock = SYSTEM_CLOCK,
                 on_end: EndCallback | None = None) -> None:
        if max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1, got {max_concurrent_calls}")
        if history_size < 0:
            raise ValueError(f"history_size must be >= 0, got {history_size}")
        self.max_concurrent_calls = max_concurrent_calls
        self.stream_timeout_s = stream_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.history_size = history_size
        self.sweep_interval_s = sweep_interval_s
        self.clock = clock
        self.on_end = on_end
        #: More end listeners (e.g. the post-call notifier), called once per call after
        #: ``on_end``, each under the same never-raise rule; they must return at once.
        self.on_call_ended: list[EndCallback] = []
        #: The live event hub (``GET /calls/events``), or None: calls publish nothing.
        self.events: EventHub | None = None
        #: The call store's recorder (every call's record), or None.
        self.recorder: Recorder | None = None
        self._active: dict[str, CallSession] = {}
        self._history: OrderedDict[str, CallSession] = OrderedDict()
        self._by_sid: dict[str, CallSession] = {}
        self._by_token: dict[str, CallSession] = {}
        self._draining = False
        self._serial = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle of the manager ---------------------------------------------------------

    def start(self) -> None:
        """Start the single sweeper task (call from the running loop, e.g. on app startup)."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="calls-sweeper")

    async def close(self) -> None:
        """Stop the sweeper. Calls are left as they are (the server drains them first)."""
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                self.sweep()
            except Exception:  # keep sweeping; a bug here must not stop all timeouts
                metrics.incr("calls.sweep.error")
                _log.exception("calls.sweep.error")

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Refuse new calls from now on; active calls continue (see ``wait_idle``)."""
        if not self._draining:
            self._draining = True
            _log.info("calls.draining", active=len(self._active))

    @property
    def active_count(self) -> int:
        """Calls not yet ended (pending and connected)."""
        return len(self._active)

    def active_sessions(self) -> list[CallSession]:
        return list(self._active.values())

    def recent_sessions(self) -> list[CallSession]:
        """Every call still known (active, and ended ones in the history), newest first."""
        return sorted([*self._active.values(), *self._history.values()],
                      key=lambda s: s.serial, reverse=True)

    def active_page(self, after: int, limit: int) -> tuple[list[CallSession], int | None]:
        """Up to ``limit`` active calls registered after the one with serial ``after``
        (oldest first), and the cursor of the next page (``None`` on the last one).

        Calls keep their place while others start and end: a page never repeats a call
        and a call active all along is on exactly one page.
        """
        page: list[CallSession] = []
        for session in self._active.values():  # registration (serial) order
            if session.serial <= after:
                continue
            if len(page) == limit:
                return page, page[-1].serial
            page.append(session)
        return page, None

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no call is active; ``False`` if ``timeout`` passed first."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- creation --------------------------------------------------------------------------

    def _admit(self) -> None:
        if self._draining:
            metrics.incr("calls.refused.draining")
            _log.warning("calls.refused", reason="draining")
            raise DrainingError()
        if len(self._active) >= self.max_concurrent_calls:
            metrics.incr("calls.refused.limit")
            _log.warning("calls.refused", reason="limit", limit=self.max_concurrent_calls)
            raise CallLimitError(self.max_concurrent_calls)

    def _register(self, session: CallSession) -> None:
        self._serial += 1
        session.serial = self._serial
        self._active[session.call_id] = session
        if session.call_sid:
            self._by_sid[session.call_sid] = session
        self._idle.clear()
        session.events = self.events
        session.recorder = self.recorder

    def create_inbound(self, call_sid: str, from_number: str, to_number: str, *,
                       prompt: str | None = None,
                       metadata: dict[str, Any] | None = None,
                       carrier: str = "") -> CallSession:
        """Register an inbound call (status ``ringing``), idempotent on ``call_sid``.

        A replayed webhook returns the existing session (active or in history) and creates
        nothing. Raises ``CallLimitError`` / ``DrainingError`` for a new call we must refuse.
        """
        existing = self._by_sid.get(call_sid)
        if existing is not None:
            metrics.incr("calls.inbound.replayed")
            existing.log.info("call.inbound.replayed", status=existing.status.value)
            return existing
        self._admit()
        session = CallSession(CallDirection.INBOUND, from_number, to_number, clock=self.clock,
                              call_sid=call_sid, prompt=prompt, metadata=metadata or {},
                              status=CallStatus.RINGING, carrier=carrier)
        session.deadline_mono = session.created_mono + self.stream_timeout_s
        self._register(session)
        metrics.incr("calls.created.inbound")
        session.emit("call.created", session.summary())
        session.log.info("call.created", direction="inbound", status=session.status.value)
        return session

    def create_outbound(self, to_number: str, prompt: str | None = None,
                        metadata: dict[str, Any] | None = None, *,
                        from_number: str = "", carrier: str = "") -> CallSession:
        """Register an outbound call in ``initiating``, before the REST create.

        Attach the Twilio SID with ``attach_call_sid`` once the create succeeded, or ``fail``
        the session if it did not.
        """
        self._admit()
        session = CallSession(CallDirection.OUTBOUND, from_number, to_number, clock=self.clock,
                              prompt=prompt, metadata=metadata or {}, carrier=carrier)
        session.deadline_mono = session.created_mono + self.answer_timeout_s
        self._register(session)
        metrics.incr("calls.created.outbound")
        session.emit("call.created", session.summary())
        session.log.info("call.created", direction="outbound", status=session.status.value)
        return session

    def adopt(self, call_id: str, direction: str, from_number: str, to_number: str, *,
              call_sid: str | None, carrier: str = "") -> CallSession:
        """Register a call whose webhook another process or instance answered (its record
        is in the shared store) because its media stream landed here; ``ringing``, waiting
        for the stream that is starting. Same limits as a new call."""
        self._admit()
        session = CallSession(CallDirection(direction), from_number, to_number,
                              clock=self.clock, call_id=call_id, call_sid=call_sid,
                              carrier=carrier, status=CallStatus.RINGING, adopted=True)
        session.deadline_mono = session.created_mono + self.stream_timeout_s
        self._register(session)
        metrics.incr("calls.adopted")
        session.emit("call.created", session.summary())
        session.log.info("call.adopted", direction=direction)
        return session

    def attach_call_sid(self, session: CallSession, call_sid: str) -> None:
        """Record the SID Twilio gave an outbound call (indexes it for status callbacks)."""
        if session.call_sid == call_sid:
            return
        if session.call_sid is not None:
            self._by_sid.pop(session.call_sid, None)
        session.call_sid = call_sid
        session.log = _log.bind(call_id=session.call_id, call_sid=call_sid)
        self._by_sid[call_sid] = session
        session.log.info("call.sid_attached")
        session.emit("call.updated", session.summary())

    def bind_stream_token(self, session: CallSession, token_id: str) -> None:
        """Index ``session`` under the id of the stream token issued for it."""
        if session.stream_token_id is not None:
            self._by_token.pop(session.stream_token_id, None)
        session.stream_token_id = token_id
        if not session.ended:
            self._by_token[token_id] = session

    # -- lookup ----------------------------------------------------------------------------

    def get(self, call_id: str) -> CallSession | None:
        """An active call, or a recently ended one still in the history."""
        return self._active.get(call_id) or self._history.get(call_id)

    def get_by_sid(self, call_sid: str) -> CallSession | None:
        return self._by_sid.get(call_sid)

    def get_by_stream_token(self, token_id: str) -> CallSession | None:
        """The active call a stream token was issued for (``None`` once it ended)."""
        return self._by_token.get(token_id)

    # -- status changes --------------------------------------------------------------------

    def transition(self, session: CallSession, status: CallStatus | str, *,
                   reason: str | None = None, sequence: int | None = None) -> bool:
        """Move ``session`` to ``status`` if the lifecycle table allows it.

        ``sequence`` is Twilio's ``SequenceNumber``: a callback not newer than the last one
        applied is stale. Stale and invalid changes are logged and counted, never raised.
        Returns ``True`` if the status changed.
        """
        try:
            target = CallStatus(status)
        except ValueError:
            metrics.incr("calls.status.unknown")
            session.log.warning("call.status.unknown", status=status)
            return False
        current = session.status
        if (sequence is not None and session.last_sequence is not None
                and sequence <= session.last_sequence):
            verdict = Transition.STALE
        else:
            verdict = check_transition(current, target, reason)
        if verdict is not Transition.APPLY:
            fields = {"status": current.value, "target": target.value, "reason": reason,
                      "sequence": sequence}
            if verdict is Transition.STALE:
                metrics.incr("calls.status.stale")
                session.log.info("call.status.stale", **fields)
            else:
                metrics.incr("calls.status.invalid")
                session.log.warning("call.status.invalid", **fields)
            return False
        if sequence is not None:
            session.last_sequence = sequence
        session.status = target
        if target is CallStatus.IN_PROGRESS:
            self._on_answered(session)
        session.log.info("call.status", status=target.value, previous=current.value,
                         reason=reason, sequence=sequence)
        if target.terminal:
            session.reason = reason
            self._on_ended(session)
        session.emit("call.status", session.summary())
        return True

    def apply_status(self, call_sid: str, status: CallStatus | str, *,
                     reason: str | None = None, sequence: int | None = None) -> bool:
        """``transition`` for a status callback, found by ``call_sid``; unknown SIDs ignored."""
        session = self._by_sid.get(call_sid)
        if session is None:
            metrics.incr("calls.status.unknown_sid")
            _log.info("call.status.unknown_sid", call_sid=call_sid, status=status)
            return False
        return self.transition(session, status, reason=reason, sequence=sequence)

    def mark_stream_started(self, session: CallSession) -> bool:
        """The media stream (``start`` message) arrived: the call is connected.

        Returns ``False`` (and changes nothing) if the call already ended.
        """
        if session.ended:
            metrics.incr("calls.stream.after_end")
            session.log.warning("call.stream_after_end", status=session.status.value)
            return False
        session.stream_started = True
        session.deadline_mono = None
        session.log.info("call.stream_started")
        session.emit("call.updated", session.summary())
        if session.status is not CallStatus.IN_PROGRESS:
            self.transition(session, CallStatus.IN_PROGRESS)
        return True

    def stream_error(self, session: CallSession, error: str, *, code: str | None = None,
                     stream_sid: str | None = None) -> bool:
        """Twilio reports that the call's media stream failed: record it on the session.

        Before the stream started this is a failed handshake: no stream will come, so the
        call fails now (reason ``stream-error[-<code>]``) instead of at the stream timeout.
        Returns ``True`` if that ended the call.
        """
        session.add_stream_error(error, code=code, stream_sid=stream_sid)
        if session.ended or session.stream_started:
            return False
        return self.fail(session, f"stream-error-{code}" if code else "stream-error")

    def complete(self, session: CallSession, reason: str | None = None) -> bool:
        return self.transition(session, CallStatus.COMPLETED, reason=reason)

    def fail(self, session: CallSession, reason: str) -> bool:
        return self.transition(session, CallStatus.FAILED, reason=reason)

    def _on_answered(self, session: CallSession) -> None:
        session.answered_at = self.clock.time()
        session.answered_mono = self.clock.monotonic()
        if not session.stream_started:
            session.deadline_mono = session.answered_mono + self.stream_timeout_s

    def _on_ended(self, session: CallSession) -> None:
        session.ended_at = self.clock.time()
        session.ended_mono = self.clock.monotonic()
        session.deadline_mono = None
        metrics.incr(f"calls.ended.{session.status.value}")
        metrics.observe("call_duration", session.duration, session.status.value)
        self._active.pop(session.call_id, None)
        if session.stream_token_id is not None:
            self._by_token.pop(session.stream_token_id, None)
        self._remember(session)
        if not self._active:
            self._idle.set()
        for callback in (self.on_end, *self.on_call_ended):
            if callback is None:
                continue
            try:
                callback(session)
            except Exception:
                metrics.incr("calls.on_end.error")
                session.log.exception("call.on_end.error")

    def _remember(self, session: CallSession) -> None:
        """Keep an ended call for ``GET /calls/{id}``; drop the oldest beyond the bound."""
        if self.history_size:
            self._history[session.call_id] = session
        elif session.call_sid:
            self._by_sid.pop(session.call_sid, None)
        while len(self._history) > self.history_size:
            _, old = self._history.popitem(last=False)
            if old.call_sid and self._by_sid.get(old.call_sid) is old:
                del self._by_sid[old.call_sid]
            old.bridge = None
            metrics.incr("calls.history.evicted")

    # -- timeouts ----------------------------------------------------------------------------

    def sweep(self) -> int:
        """Fail every call whose answer or media stream is overdue; returns how many."""
        now = self.clock.monotonic()
        overdue = [s for s in self._active.values()
                   if s.deadline_mono is not None and now >= s.deadline_mono]
        for session in overdue:
            answered = (session.direction is CallDirection.INBOUND
                        or session.status is CallStatus.IN_PROGRESS)
            reason = "stream-timeout" if answered else "answer-timeout"
            metrics.incr(f"calls.timeout.{reason}")
            session.log.warning("call.timeout", reason=reason, status=session.status.value)
            self.fail(session, reason)
        return len(overdue)
