"""AudioBridge: one call's audio both ways, paced playout, marks and barge-in.

Carrier-neutral: the carrier is known only through its stream sender and leg format
(``carriers/base.py``); nothing here imports a carrier.

Inbound: carrier payload -> ``AudioConverter`` -> provider chunks (synchronous, no awaits).
Outbound: provider deltas -> 20 ms carrier frames in a bounded queue, sent by the shared
pacer with a small lead over the caller's playout, with a ``mark`` every few frames so the
bridge knows, per assistant item, how much audio the caller has really heard.

Barge-in: on caller speech the bridge sends ``clear``, drops queued audio, and asks the
provider to stop, passing the milliseconds heard: the last mark the carrier confirmed plus the
playout time since that confirmation (clamped to what was sent and to what the item really
had; ``None`` when nothing was heard yet), so marks can be sparse (every 200 ms by default:
each one costs an echo message) without coarsening the truncate point. Marks that the carrier
echoes because of the ``clear`` belong to an older epoch and are not counted as heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agentic_fast.audio.legs import converter_for
from agentic_fast.call.manager import CallSession
from agentic_fast.call.pacer import SharedPacer
from agentic_fast.call.stream_handler import StreamSender
from agentic_fast.call.timers import CallLimits, CallTimers, Scheduler
from agentic_fast.carriers.base import FRAME_MS, PCMU_8K, LegFormat
from agentic_fast.core import metrics
from agentic_fast.core.errors import (
    AudioFormatError,
    PeerUnavailableError,
    ProviderUnreachableError,
)
from agentic_fast.core.tasks import TaskSet
from agentic_fast.providers.base import ProviderListener, RealtimeProvider

__all__ = ["FRAME_MS", "AudioBridge", "BridgeSettings", "ConversationSink"]


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """Knobs of the outbound path and barge-in (from config)."""

    handoff_ms: int = 20
    #: how far ahead of the caller's playout we keep the carrier's buffer (ms)
    lead_ms: int = 120
    #: a mark every N frames (200 ms at 10)
    mark_every_frames: int = 10
    #: bound of queued outbound audio (frames of 20 ms); beyond it audio is dropped, counted
    max_queue_frames: int = 3000
    #: caller speech must last this long while the assistant talks to cut it off (0 = at once)
    barge_in_min_speech_ms: int = 0
    #: carrier socket write buffer above which a tick skips this call (slow peer)
    max_write_buffer: int = 64 * 1024
    #: bound on reaching the provider when the stream starts (beyond: spoken fallback)
    connect_timeout_s: float = 10.0


class ConversationSink(Protocol):
    """Where a call's conversation goes (the ConversationBrain). Every method must return
    at once: it enqueues (bounded) and never awaits, so the audio path never waits on it."""

    def on_turn(self, session: CallSession, role: str, text: str) -> None:
        """A final transcript turn: ``role`` is ``user`` or ``assistant``."""

    def on_dtmf(self, session: CallSession, digit: str) -> None:
        """The caller pressed a key."""

    def on_tool_call(self, session: CallSession, call_id: str, name: str,
                     arguments: str) -> None:
        """The model delegated a function tool call; answer with provider.send_tool_result."""

    def on_barge_in(self, session: CallSession) -> None:
        """The caller interrupted the assistant."""

    def on_call_end(self, session: CallSession) -> None:
        """The call is over: abort what is still running for it."""


class AudioBridge(ProviderListener):
    """Owns one call's audio path; built when the media stream is authenticated."""

    def __init__(self, session: CallSession, sender: StreamSender,
                 provider: RealtimeProvider, pacer: SharedPacer, *,
                 settings: BridgeSettings | None = None, speak_first: str | None = None,
                 conversation: ConversationSink | None = None,
                 on_provider_failed: Callable[[CallSession, str], Any] | None = None,
                 write_buffer: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 limits: CallLimits | None = None,
                 on_call_limit: Callable[[CallSession, str, str | None], Any] | None = None,
                 scheduler: Scheduler | None = None, leg: LegFormat = PCMU_8K) -> None:
        self.session = session
        self.sender = sender
        self.provider = provider
        self.pacer = pacer
        self.settings = settings or BridgeSettings()
        #: the carrier's audio format: the converter cuts outbound audio into its frames
        self.leg = leg
        self.converter = converter_for(provider.converter_format, leg,
                                       self.settings.handoff_ms)
        self.speak_first = speak_first
        self.conversation = conversation
        self.on_provider_failed = on_provider_failed
        self._write_buffer = write_buffer or (lambda: 0)
        self.log = session.log
        # outbound queue: payloads, and runs of (item_id, frames) saying whose they are
        self._queue: deque[str] = deque()
        self._runs: deque[list[Any]] = deque()
        self._epoch = 0
        self._t0 = 0.0           # loop time the current playout started
        self._sent_ms = 0        # ms sent since _t0
        self._since_mark = 0
        self._mark_seq = 0
        self._marks: dict[str, tuple[int, str, int]] = {}   # name -> (epoch, item, item_ms)
        self._item_sent_ms: dict[str, int] = {}
        self._item_heard_ms: dict[str, int] = {}
        self._last_heard: tuple[str, int, float] | None = None  # (item, ms, clock) of a mark
        self._clock = clock
        self._item_audio_ms: dict[str, int] = {}
        self._current_item: str | None = None
        self._item_open = False  # the current item's audio is still arriving
        self._cancelled: deque[str] = deque(maxlen=8)
        self._speech_timer: asyncio.TimerHandle | None = None
        self._started_at = clock()  # when the model session began (first-audio latency)
        self._closed = False
        self._tasks = TaskSet("bridge", self.log)
        # counters for the closing log line and tests
        self.frames_out = 0
        self.dropped_frames = 0
        self.barge_ins = 0
        self.barge_in_latencies_ms: deque[float] = deque(maxlen=64)
        # call time limits (max duration, silence): armed in start(), off in close()
        self._limits = limits
        self.on_call_limit = on_call_limit
        self._scheduler = scheduler
        self.timers: CallTimers | None = None
        # metrics: time our code on 1 audio frame in N each way (0: never; see metrics.observe)
        self._sample_every = self._in_sample = self._out_sample = metrics.sample_every()
        self._stream_started = 0.0

    # -- MediaSink: what the media stream feeds ---------------------------------------------

    async def start(self) -> None:
        """Connect the provider (bounded) and start the conversation.

        If the provider cannot be reached, the caller is told (``on_provider_failed``: a
        spoken fallback and a clean end, status ``failed``) and ``ProviderUnreachableError``
        is raised so the stream handler ends the stream.
        """
        self._stream_started = self._clock()
        self.provider.attach(self)
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await self.provider.connect()
        except (PeerUnavailableError, TimeoutError, OSError) as exc:
            reason = f"connect failed: {exc!r}"[:200]
            self.log.error("bridge.provider_unreachable", error=reason)
            metrics.incr("bridge.provider_unreachable")
            if self.on_provider_failed is not None:
                await self._run_failed(reason)
            raise ProviderUnreachableError(reason, peer="provider") from exc
        self.provider.begin(speak_first=self.speak_first)
        self._started_at = self._clock()
        self.pacer.register(self)
        self._start_timers()

    def on_media(self, payload_b64: str, timestamp_ms: int) -> None:
        self._in_sample -= 1
        if self._in_sample == 0:  # 1 frame in N is timed (never when N is 0: it goes below)
            self._timed_media(payload_b64)
            return
        send = self.provider.send_audio
        for chunk in self.converter.feed_twilio_b64(payload_b64):
            send(chunk)

    def _timed_media(self, payload_b64: str) -> None:
        """``on_media`` for a sampled frame: the time our code spends on it is observed."""
        self._in_sample = self._sample_every
        started = self._clock()
        send = self.provider.send_audio
        for chunk in self.converter.feed_twilio_b64(payload_b64):
            send(chunk)
        metrics.observe("bridge_latency", self._clock() - started, "inbound")

    def on_mark(self, name: str) -> None:
        entry = self._marks.pop(name, None)
        if entry is None:
            metrics.incr("bridge.marks.unknown")
            return
        if self.timers is not None:
            self.timers.note_assistant()  # assistant audio has just played
        epoch, item, item_ms = entry
        if epoch != self._epoch:
            metrics.incr("bridge.marks.flushed")  # echoed by a clear: not heard
            return
        if item_ms > self._item_heard_ms.get(item, 0):
            self._item_heard_ms[item] = item_ms
            self._last_heard = (item, item_ms, self._clock())

    def on_dtmf(self, digit: str) -> None:
        if self.timers is not None:
            self.timers.note_caller()
        if self.conversation is not None:
            self.conversation.on_dtmf(self.session, digit)

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.pacer.unregister(self)
        if self.timers is not None:
            self.timers.cancel()
            self.timers = None  # it refers back to this bridge: no cycle left for the GC
        if self.conversation is not None:
            try:
                self.conversation.on_call_end(self.session)
            except Exception:
                metrics.incr("bridge.conversation.error")
                self.log.exception("bridge.conversation_error")
        if self._speech_timer is not None:
            self._speech_timer.cancel()
        self._tasks.cancel_all()
        with contextlib.suppress(Exception):
            await self.provider.close()
        metrics.incr("bridge.closed")
        self.log.info("bridge.closed", reason=reason, frames_out=self.frames_out,
                      dropped=self.dropped_frames, barge_ins=self.barge_ins)

    # -- ProviderListener: what the model sends ---------------------------------------------

    def on_audio(self, audio_b64: str, item_id: str) -> None:
        self._out_sample -= 1
        if self._out_sample == 0:  # 1 delta in N is timed (never when N is 0)
            self._out_sample = self._sample_every
            started = self._clock()
            self._take_audio(audio_b64, item_id)
            metrics.observe("bridge_latency", self._clock() - started, "outbound")
            return
        self._take_audio(audio_b64, item_id)

    def _take_audio(self, audio_b64: str, item_id: str) -> None:
        if item_id in self._cancelled:
            metrics.incr("bridge.audio.after_cancel")
            return
        try:
            frames = self.converter.feed_provider_b64(audio_b64)
        except AudioFormatError as exc:
            metrics.incr("bridge.audio.bad_provider_audio")
            self.log.warning("bridge.bad_provider_audio", detail=str(exc)[:200])
            return
        if item_id != self._current_item:
            self._new_item(item_id)
        self._enqueue(frames, item_id)

    def _new_item(self, item_id: str) -> None:
        if self._current_item is None:  # the call's first assistant audio
            self.session.emit("call.first_audio", {
                "after_start_ms": round((self._clock() - self._started_at) * 1000.0, 1)})
        self._current_item = item_id
        self._item_open = True
        for table in (self._item_sent_ms, self._item_heard_ms, self._item_audio_ms):
            while len(table) >= 16:  # only recent items can still be truncated
                table.pop(next(iter(table)))

    def on_audio_done(self, item_id: str) -> None:
        if item_id == self._current_item:
            self._item_open = False
        if item_id in self._cancelled:
            return
        self._enqueue(self.converter.flush_provider(), item_id)

    def _enqueue(self, frames: list[str], item_id: str) -> None:
        if not frames:
            return
        room = self.settings.max_queue_frames - len(self._queue)
        if len(frames) > room:
            dropped = len(frames) - max(room, 0)
            self.dropped_frames += dropped
            metrics.incr("bridge.queue.overflow_frames", dropped)
            self.log.warning("bridge.queue_overflow", dropped=dropped)
            frames = frames[:max(room, 0)]
            if not frames:
                return
        was_idle = not self._queue
        self._queue.extend(frames)
        if was_idle and hasattr(self.pacer, "kick"):
            self.pacer.kick(self)
        self._item_audio_ms[item_id] = self._item_audio_ms.get(item_id, 0) + FRAME_MS * len(frames)
        if self._runs and self._runs[-1][0] == item_id:
            self._runs[-1][1] += len(frames)
        else:
            self._runs.append([item_id, len(frames)])

    def on_speech_started(self) -> None:
        timers = self.timers
        if timers is not None:
            timers.note_caller_speaking(True)
            if timers.ending is not None:  # the goodbye is not interrupted
                return
        if not self.barge_in_due:
            return
        wait = self.settings.barge_in_min_speech_ms
        if wait <= 0:
            self._barge_in(self._clock())
        elif self._speech_timer is None:
            started = self._clock()
            self._speech_timer = asyncio.get_running_loop().call_later(
                wait / 1000.0, self._confirm_barge_in, started)

    def _confirm_barge_in(self, started: float) -> None:
        self._speech_timer = None
        if self.barge_in_due:
            self._barge_in(started)

    def on_speech_stopped(self) -> None:
        if self.timers is not None:
            self.timers.note_caller_speaking(False)
        if self._speech_timer is not None:  # too short to count ("mhm", line noise)
            self._speech_timer.cancel()
            self._speech_timer = None
            metrics.incr("bridge.barge_in.ignored_short")

    def on_transcript(self, role: str, text: str, final: bool) -> None:
        if self.timers is not None and text:
            if role == "user":
                self.timers.note_caller()
            else:
                self.timers.note_assistant()
        if final and text:
            self.session.add_transcript(role, text)
            if self.conversation is not None:
                self.conversation.on_turn(self.session, role, text)

    def on_tool_call(self, call_id: str, name: str, arguments: str) -> None:
        if self.conversation is not None:
            self.conversation.on_tool_call(self.session, call_id, name, arguments)
        else:
            self.provider.send_tool_result(call_id, '{"error": "no tools are available"}')

    def on_failed(self, reason: str) -> None:
        self.log.error("bridge.provider_failed", reason=reason)
        metrics.incr("bridge.provider_failed")
        if self.on_provider_failed is not None:
            self._spawn(self._run_failed(reason))

    async def _run_failed(self, reason: str) -> None:
        result = self.on_provider_failed(self.session, reason) if self.on_provider_failed else None
        if asyncio.iscoroutine(result):
            await result

    # -- outbound pacing (called by the shared pacer) -----------------------------------------

    @property
    def wants_pump(self) -> bool:
        return bool(self._queue)

    @property
    def assistant_speaking(self) -> bool:
        """The current item's audio is still arriving, queued here, or sent and not yet
        confirmed played (the last frame sent always carries a mark)."""
        return (self._item_open or bool(self._queue)
                or any(e[0] == self._epoch for e in self._marks.values()))

    @property
    def barge_in_due(self) -> bool:
        """Caller speech now interrupts the assistant: its audio is arriving, queued or
        playing, or the provider is generating a response none of whose audio has arrived
        (or whose queue has just run dry: a real-time-paced response)."""
        return self.assistant_speaking or self.provider.response_active

    def pump(self, now: float) -> None:
        """Send what is due at loop time ``now``: frames up to the lead and their marks, in
        one write (synchronous: the pacer ticks every bridge without a coroutine each)."""
        sender = self.sender
        if sender.closed:
            return
        if self._write_buffer() > self.settings.max_write_buffer:
            metrics.incr("bridge.slow_peer_ticks")
            return
        played_ms = (now - self._t0) * 1000.0
        if self._sent_ms <= played_ms:  # playout idle: a new stretch starts now
            self._t0, self._sent_ms = self._stretch_origin(now), 0
            played_ms = (now - self._t0) * 1000.0
            if not self.frames_out and self._queue:  # the call's first assistant audio
                metrics.observe("first_audio", self._clock() - self._stream_started)
        budget = int((self.settings.lead_ms - (self._sent_ms - played_ms) + 1e-6) // FRAME_MS)
        queue, runs = self._queue, self._runs
        count = min(budget, len(queue))
        if count <= 0:
            return
        every = self.settings.mark_every_frames
        item_sent = self._item_sent_ms
        batch: list[tuple[str, str]] = []
        for _ in range(count):
            run = runs[0]
            item = run[0]
            batch.append(("media", queue.popleft()))
            run[1] -= 1
            if run[1] == 0:
                runs.popleft()
            item_ms = item_sent.get(item, 0) + FRAME_MS
            item_sent[item] = item_ms
            self._since_mark += 1
            if self._since_mark >= every or not queue:
                batch.append(("mark", self._new_mark(item, item_ms)))
        self._sent_ms += FRAME_MS * count
        self.frames_out += count
        sender.send(batch)

    def _stretch_origin(self, now: float) -> float:
        """Playout origin of a stretch that starts at ``now``: on the pacer's tick grid
        shifted by half a tick (at most one frame before ``now``), so every frame boundary
        falls midway between two ticks. A tick a few ms early or late then still finds
        exactly one frame due; with the origin at ``now`` (any phase) a call whose
        boundaries sat on the ticks got two frames in one tick and none in the next
        whenever the timer wobbled by a millisecond, ~20 ms of jitter each time. The
        first burst is the same (``lead_ms`` worth); the lead runs up to one frame longer."""
        pacer = self.pacer
        tick: float | None = getattr(pacer, "next_tick", None)
        if tick is None:
            return now
        frame_s = FRAME_MS / 1000.0
        half_tick: float = getattr(pacer, "tick_s", frame_s) / 2
        return now - (now - tick + half_tick) % frame_s

    def _new_mark(self, item: str, item_ms: int) -> str:
        self._since_mark = 0
        self._mark_seq += 1
        name = f"m{self._mark_seq}"
        self._marks[name] = (self._epoch, item, item_ms)
        if len(self._marks) > 512:  # the carrier never echoed: do not grow
            self._marks.pop(next(iter(self._marks)))
            metrics.incr("bridge.marks.evicted")
        return name

    # -- call time limits (CallAudio: what CallTimers drives) ----------------------------------

    def _start_timers(self) -> None:
        limits = self._limits
        if limits is None or not limits.enabled:
            return
        scheduler = self._scheduler or asyncio.get_running_loop()
        self.timers = CallTimers(limits, self, scheduler, self.log)
        self.timers.start(self.session.duration)

    @property
    def assistant_busy(self) -> bool:
        return self.barge_in_due

    @property
    def assistant_item(self) -> str | None:
        return self._current_item

    def speak(self, text: str) -> None:
        if text and not self._closed:
            self.provider.say(text)

    def hang_up(self, reason: str, unsaid: str | None) -> None:
        """A time limit ends the call (goodbye played, or ``unsaid`` by the model)."""
        if self._closed:
            return
        if self.on_call_limit is not None:
            result = self.on_call_limit(self.session, reason, unsaid)
            if asyncio.iscoroutine(result):
                self._spawn(result)
        else:  # no server wiring (tests): end the stream
            self._spawn(self.sender.close())

    # -- barge-in -------------------------------------------------------------------------------

    def _heard_now(self, item: str) -> int:
        """Milliseconds of ``item`` the caller has heard: the last confirmed mark, plus the
        time since the carrier confirmed it while playout went on (clamped by the caller to what
        was sent), so sparse marks still give a truncate point to the frame."""
        heard = self._item_heard_ms.get(item, 0)
        last = self._last_heard
        if last is not None and last[0] == item and last[1] == heard:
            heard += int((self._clock() - last[2]) * 1000.0)
        return heard

    def _barge_in(self, started: float) -> None:
        # the current item is interrupted only while it is live; otherwise its audio was
        # all heard and the response in progress has none here yet (its late deltas are
        # the provider's to drop: it knows which response was interrupted)
        item = self._current_item if self.assistant_speaking else None
        self._item_open = False
        self._epoch += 1
        dropped = len(self._queue)
        self._queue.clear()
        self._runs.clear()
        self.converter.clear_outbound()
        self._sent_ms = 0
        self._t0 = 0.0
        self._since_mark = 0
        heard = None
        if item is not None:
            self._cancelled.append(item)
            played = min(self._heard_now(item), self._item_sent_ms.get(item, 0),
                         self._item_audio_ms.get(item, 0))
            heard = played if played > 0 else None
        self.barge_ins += 1
        metrics.incr("bridge.barge_in")
        self.sender.clear()  # before any newer audio: sends are synchronous and in order
        reaction = self._clock() - started
        self.barge_in_latencies_ms.append(reaction * 1000.0)
        metrics.observe("barge_in", reaction)
        self.provider.interrupt(item, heard)
        if self.conversation is not None:
            self.conversation.on_barge_in(self.session)
        self.log.info("bridge.barge_in", item_id=item, audio_end_ms=heard,
                      dropped_frames=dropped)
        self.session.emit("call.barge_in", {"audio_end_ms": heard, "dropped_frames": dropped,
                                            "reaction_ms": self.barge_in_latencies_ms[-1]})

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)
