"""Gemini Live provider: one call's socket(s), reader, goAway rotation and resumption.

The wire format lives in :mod:`gemini_events` (sans-I/O), one connection's handshake and the
resumption state in :mod:`gemini_session`; this module moves frames and keeps the call's
turn state. Shape and send path follow :mod:`openai_realtime`.

Send path. Frames are written synchronously, so ``send_audio`` never awaits: each is one
whole masked text frame and one ``transport.write``
(``FastClientConnection.write_text_now``), past websockets' ``protocol.send_text`` +
``send_data()``, which draws a mask key per frame with ``secrets.token_bytes(4)`` (a
``getrandom`` syscall each) and serialises the frame in Python; the framer uses pooled
``os.urandom`` keys and builds the frame in the native extension (details in
:mod:`openai_realtime`). websockets keeps the handshake, reading, control frames and
closing; whatever its protocol has pending (an automatic pong) is written before our frame.
When the transport's write buffer is above ``max_write_buffer`` caller audio is dropped and
counted (``gemini.audio.backpressure_dropped``); a server that stops reading altogether is
noticed by the carrying link's :class:`ws_client.StallWatch` within ``stall_timeout_s``
(counted ``gemini.stalled``) and handled as a lost connection (Reconnect, below). While no
connection carries the call (connecting, switching, reconnecting) caller audio goes to a
bounded backlog (the newest ``max_buffered_audio_ms``; older chunks dropped,
``gemini.audio.buffered_dropped``) and text / tool results to a bounded list; both are
flushed once a connection is installed.

Turns. :class:`gemini_session.TurnTracker` gives each model turn an id (``turn-<n>``),
sends ``on_audio_done`` once per turn, maps ``interrupted`` (Gemini's barge-in) to
``on_speech_started`` and stops forwarding that turn's audio, and joins transcription
fragments per turn.

Rotation (goAway, ~10 min connection cap). On ``goAway``, or after ``max_connection_s``
without one, the provider waits (bounded by the time left) for a resumable point, detaches
caller audio from the old socket (it buffers), opens a new one with ``setup`` carrying the
latest resumption handle, waits for ``setupComplete``, installs it (flushing the buffers),
then closes the old one. The bridge sees nothing but, at worst, a short delay.

Reconnect. An unexpected close (abrupt, 1011, any error) starts the same switch at once,
paced by :class:`reconnect.Backoff`. With a handle the session resumes; a rejected handle
(close 1007/1008 in answer to setup) falls back to a fresh session, seeded through the
*setup's system instruction* with a summary of the last transcript lines (never with
``clientContent``: Gemini 3.x closes 1007 on it after the first turn). When the bound is
exceeded, or the server refuses the setup itself, ``listener.on_failed`` runs once.

Replay. Protocols.md 3.6: "audio sent after the handle was issued is lost unless resent".
Caller audio written since the newest resumable handle (bounded by ``max_replay_ms``) is
kept and written again first on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff
from agentic_fast.core.config import GeminiConfig
from agentic_fast.core.errors import PeerUnavailableError
from agentic_fast.core.log import get_logger
from agentic_fast.providers.base import ProviderListener, RealtimeProvider, dispatch_event
from agentic_fast.providers.gemini import events as ge
from agentic_fast.providers.gemini.session import (
    PEER,
    GeminiLink,
    LinkOptions,
    Resumption,
    SetupRejected,
    TurnTracker,
    close_info,
    open_link,
)
from agentic_fast.providers.reconnect import ChunkBacklog, carry_over_summary
from agentic_fast.ws.client_connection import StallWatch

__all__ = ["GeminiLiveProvider"]

_audio = ge.realtime_audio  # HOT: one call per caller audio chunk
_B64_CHARS_PER_MS = ge.INPUT_RATE * 2 / 1000 * 4 / 3  # PCM16 16 kHz as base64 text

# A buffered control item: ("text", text, "") or ("tool", call_id, output).
_Item = tuple[str, str, str]


class _NullListener:
    """Events before ``attach`` (pre-warm) go nowhere."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class GeminiLiveProvider(RealtimeProvider):
    """:class:`RealtimeProvider` for the Gemini Live API (BidiGenerateContent)."""

    converter_format = "gemini"  # PCM16 16 kHz in, 24 kHz out

    def __init__(self, config: GeminiConfig, *, call_id: str, connect_timeout_s: float = 10.0,
                 tools: Sequence[Mapping[str, Any]] | None = None,
                 setup: ge.GeminiSetup | None = None, backoff: Backoff | None = None,
                 max_connection_s: float | None = 570.0, rotate_grace_s: float = 20.0,
                 go_away_margin_s: float = 3.0, max_buffered_audio_ms: int = 3000,
                 max_replay_ms: int = 5000, max_pending_items: int = 32,
                 max_write_buffer: int = 256 * 1024, recent_lines: int = 12,
                 ping_interval_s: float | None = 20.0, close_timeout_s: float = 2.0,
                 max_message_bytes: int = 4 * 2**20,
                 stall_timeout_s: float | None = 5.0) -> None:
        """``tools`` are wire Tool objects (see :func:`gemini_events.function_tool`);
        ``setup`` overrides the whole setup built from ``config``. The sliding-window
        context compression is on by default: without it an audio session ends after
        ~15 min, and phone calls can be longer."""
        self.config = config
        self.call_id = call_id
        self.log = get_logger("providers.gemini").bind(call_id=call_id)
        self._setup = setup or ge.GeminiSetup(
            config.model, voice=config.voice, system_instruction=config.instructions or None,
            tools=tools or None, compression=ge.ContextCompression())
        self._options = LinkOptions(config.url, config.api_key, timeout_s=connect_timeout_s,
                                    ping_interval_s=ping_interval_s,
                                    close_timeout_s=close_timeout_s,
                                    max_message_bytes=max_message_bytes)
        self._backoff = backoff or Backoff()
        self._max_connection_s = max_connection_s
        self._rotate_grace_s = rotate_grace_s
        self._go_away_margin_s = go_away_margin_s
        self._max_write_buffer = max_write_buffer
        self._close_timeout_s = close_timeout_s
        self._stall_timeout_s = stall_timeout_s or None  # None/0: no StallWatch
        self._listener: ProviderListener = _NullListener()  # type: ignore[assignment]
        self._link: GeminiLink | None = None
        self._links: set[GeminiLink] = set()
        self._seq = 0
        self._connect_task: asyncio.Task[None] | None = None
        self._switch_task: asyncio.Task[None] | None = None
        self._switch_deadline = 0.0
        self._switch_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected_once = False
        self._closed = False
        self._failed = False
        self._resume = Resumption()
        # buffers while no connection carries the call, and audio to replay after a switch
        self._backlog = ChunkBacklog(int(max_buffered_audio_ms * _B64_CHARS_PER_MS))
        self._replay = (ChunkBacklog(int(max_replay_ms * _B64_CHARS_PER_MS)) if max_replay_ms
                        else None)
        self._items: deque[_Item] = deque()
        self._max_items = max_pending_items
        self._turns = TurnTracker(self._listener, self._resume, recent_lines=recent_lines)
        self._opening: str | None = None
        #: per-provider counts (also in :mod:`metrics`), for the closing log line and tests
        self.stats: dict[str, int] = {
            "connections": 0, "resumed": 0, "fresh_sessions": 0, "reconnects": 0,
            "rotations": 0, "go_aways": 0, "resume_rejected": 0,
            "audio_buffered_dropped": 0, "audio_backpressure_dropped": 0,
            "audio_replayed": 0, "tokens": 0, "stalls": 0}
        turns = self._turns
        self._handlers: dict[type, Callable[[GeminiLink, Any], None]] = {
            ge.AudioChunk: turns.on_audio,
            ge.OutputTranscription: turns.on_output_transcription,
            ge.InputTranscription: turns.on_input_transcription,
            ge.Interrupted: turns.on_interrupted,
            ge.GenerationComplete: turns.on_generation_complete,
            ge.TurnComplete: turns.on_turn_complete,
            ge.ToolCall: turns.on_tool_call,
            ge.ToolCallCancellation: self._on_tool_call_cancellation,
            ge.SessionResumptionUpdate: self._on_resumption_update,
            ge.GoAway: self._on_go_away,
            ge.UsageMetadata: self._on_usage,
        }

    # -- RealtimeProvider ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A configured connection is carrying the call right now."""
        return self._link is not None

    @property
    def resumption_handle(self) -> str | None:
        """The newest resumable handle (None before the first one, or after a rejection)."""
        return self._resume.handle

    @property
    def response_active(self) -> bool:
        """A model turn is being generated (or ``interrupted`` just cut one)."""
        return self._turns.response_active

    def attach(self, listener: ProviderListener) -> None:
        self._listener = self._turns.listener = listener

    async def connect(self) -> None:
        """Open the first connection and wait for ``setupComplete`` (idempotent,
        concurrency-safe: pre-warm and the bridge may both await it).

        Raises :class:`PeerUnavailableError` (``peer="gemini"``) when that fails within
        ``connect_timeout_s``; a later call tries again.
        """
        if self._closed:
            raise PeerUnavailableError("provider is closed", peer=PEER)
        if self._connected_once:
            return
        task = self._connect_task
        if task is None or task.done():
            task = self._connect_task = asyncio.get_running_loop().create_task(
                self._first_connect())
            task.add_done_callback(_retrieve)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise PeerUnavailableError("closed while connecting", peer=PEER) from None
            raise

    def send_audio(self, chunk_b64: str) -> None:  # HOT
        """Caller audio (PCM16 16 kHz base64): written now, never awaits; buffered while
        no connection carries the call."""
        link = self._link
        if link is not None:
            ws = link.ws
            if ws.protocol.state is State.OPEN:
                transport = ws.transport
                if transport.get_write_buffer_size() > self._max_write_buffer:
                    self.stats["audio_backpressure_dropped"] += 1
                    metrics.incr("gemini.audio.backpressure_dropped")
                    return
                try:
                    ws.write_text_now(_audio(chunk_b64))
                except Exception as exc:
                    self._write_failed(link, exc)
                else:
                    if self._replay is not None:
                        self._replay.push(chunk_b64)
                    return
        self._buffer_audio(chunk_b64)

    def begin(self, *, speak_first: str | None) -> None:
        """``speak_first`` goes as ``realtimeInput.text``, never ``clientContent`` (Gemini
        3.x closes 1007 on clientContent after the first turn), and the model answers it."""
        if speak_first:
            self._opening = speak_first
            self._send_item(("text", speak_first, ""))

    def interrupt(self, item_id: str | None, audio_end_ms: int | None) -> None:
        """Stop forwarding the audio of turn ``item_id``; nothing goes on the wire.

        Gemini's server VAD (``START_OF_ACTIVITY_INTERRUPTS``) has already cut the
        generation: that is where ``interrupted`` (our ``on_speech_started``) came from.
        The Live API has no truncate (``audio_end_ms`` cannot be told), and the only
        client-side interrupt, ``clientContent``, is refused by 3.x models after the first
        turn (close 1007).
        """
        metrics.incr("gemini.interrupt")
        self._turns.cancel(item_id)

    def say(self, text: str) -> None:
        """Have the model speak ``text`` (realtime text: works on 3.x models too)."""
        if text:
            self._send_item(("text", f"Tell the caller: {text}", ""))

    def send_tool_result(self, call_id: str, output: str) -> None:
        """``toolResponse`` echoing the call's id and name; ``output`` is JSON (an object
        goes as is, anything else as ``{"result": ...}``) or plain text."""
        if self._turns.call(call_id) is None:
            metrics.incr("gemini.tool_result.unknown_call")
            self.log.warning("gemini.tool_result_dropped", call_id=call_id,
                             reason="unknown or cancelled call")
            return
        self._send_item(("tool", call_id, output))

    def request_rotation(self, reason: str = "manual") -> None:
        """Move the call to a new connection now (what goAway and the age cap do)."""
        if self._link is not None:
            self._ensure_switching(reason, grace_s=self._rotate_grace_s)

    async def close(self) -> None:
        """Stop every task and close every socket; idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        links: list[GeminiLink] = []
        try:
            me = asyncio.current_task()
            tasks = [t for t in (self._connect_task, self._switch_task, *self._tasks)
                     if t is not None and t is not me and not t.done()]
            for task in tasks:
                task.cancel()
            links = list(self._links)
            self._links.clear()
            self._link = None
            for link in links:
                self._stop(link)
            readers = [k.reader for k in links if k.reader is not None and k.reader is not me]
            await asyncio.gather(*(k.close(self._close_timeout_s + 0.5) for k in links),
                                 *tasks, *readers, return_exceptions=True)
            self.log.info("gemini.closed", **self.stats, turns=self._turns.turns,
                          interrupted_turns=self._turns.interrupted_turns)
        except Exception:
            self.log.exception("gemini.close_error")
        finally:
            self._release(links)

    def _release(self, links: Sequence[GeminiLink]) -> None:
        """Break the reference cycles of a closed provider so it is freed at once, not by a
        collector that may not run for thousands of calls: the handler table (bound methods
        of self and of the turn tracker), the listener (the bridge, which holds us), the done
        tasks (their exception's traceback holds the reader's frame, which holds the link,
        which holds the task) and each socket's message handler (a closure over the link)."""
        self._handlers.clear()
        self._listener = self._turns.listener = _NullListener()  # type: ignore[assignment]
        self._connect_task = self._switch_task = None
        self._tasks.clear()
        self._backlog.drain()
        if self._replay is not None:
            self._replay.drain()
        self._items.clear()
        for link in links:
            link.reader = None
            link.early = []
            link.ws.set_handlers(None)

    # -- connections -------------------------------------------------------------------------

    async def _first_connect(self) -> None:
        link = await self._open(None)
        if self._closed:
            link.ws.transport.abort()
            raise PeerUnavailableError("closed while connecting", peer=PEER)
        self._install(link)
        self._connected_once = True

    async def _open(self, handle: str | None) -> GeminiLink:
        """A new connection past ``setupComplete``: resumed with ``handle``, or a fresh
        session (after the first one, seeded with the recent transcript)."""
        self._seq += 1
        setup = self._setup
        if handle is None and self._connected_once:
            summary = carry_over_summary(list(self._turns.recent), self._opening)
            if summary is not None:
                base = setup.system_instruction
                setup = dataclasses.replace(
                    setup, system_instruction=f"{base}\n\n{summary}" if base else summary)
        started = time.perf_counter()
        metrics.incr("gemini.connect.attempts")
        try:
            link = await open_link(self._options, setup.to_json(handle), seq=self._seq,
                                   resumed=handle is not None)
        except PeerUnavailableError:
            metrics.incr("gemini.connect.failed")
            raise
        self.stats["connections"] += 1
        if link.resumed:
            self.stats["resumed"] += 1
        else:
            self.stats["fresh_sessions"] += 1
            if self._connected_once:
                self._turns.session_gen += 1
        metrics.incr("gemini.connections")
        self.log.info("gemini.connection_ready", connection=link.seq, resumed=link.resumed,
                      session_id=link.session_id,
                      connect_ms=round((time.perf_counter() - started) * 1000, 1))
        return link

    def _install(self, link: GeminiLink) -> None:
        """Make ``link`` carry the call: reader, age cap, then flush what waited."""
        loop = asyncio.get_running_loop()
        self._link = link
        self._links.add(link)
        link.reader = loop.create_task(self._read(link))
        if self._max_connection_s is not None:
            link.timer = loop.call_later(self._max_connection_s, self._age_cap, link)
        if self._stall_timeout_s is not None:
            link.watch = StallWatch(link.ws, lambda why: self._stalled(link, why),
                                    timeout_s=self._stall_timeout_s,
                                    max_buffer=self._max_write_buffer)
            link.watch.start()
        self._flush(link)

    def _flush(self, link: GeminiLink) -> None:
        replay = self._replay
        if replay is not None and len(replay):
            chunks = replay.drain()
            for chunk in chunks:
                replay.push(chunk)  # still not covered by a handle of this connection
                self._write(link, _audio(chunk))
            self.stats["audio_replayed"] += len(chunks)
            metrics.incr("gemini.audio.replayed", len(chunks))
        if len(self._backlog):
            chunks = self._backlog.drain()
            for chunk in chunks:
                if self._write(link, _audio(chunk)) and replay is not None:
                    replay.push(chunk)
            self.log.info("gemini.audio_flushed", chunks=len(chunks))
        items, self._items = list(self._items), deque()
        for item in items:
            self._send_item(item)

    def _age_cap(self, link: GeminiLink) -> None:
        link.timer = None
        if link is self._link and not self._closed:
            metrics.incr("gemini.rotate.max_age")
            self._ensure_switching("max_connection", grace_s=self._rotate_grace_s)

    def _ensure_switching(self, reason: str, *, grace_s: float) -> None:
        """Start moving the call to a new connection, after at most ``grace_s`` of waiting
        for a resumable point; a running switch only gets a shorter deadline."""
        if self._closed or self._failed:
            return
        deadline = asyncio.get_running_loop().time() + grace_s
        task = self._switch_task
        if task is not None and not task.done():
            self._switch_deadline = min(self._switch_deadline, deadline)
            self._switch_wake.set()
            return
        self._switch_deadline = deadline
        self._switch_task = asyncio.get_running_loop().create_task(self._switch(reason))
        self._switch_task.add_done_callback(_retrieve)

    async def _switch(self, reason: str) -> None:
        """Wait for a resumable point (bounded), then open a connection (resumed if we
        can, with backoff) and install it; the old one is closed afterwards."""
        await self._wait_resumable()
        old = self._link
        if old is not None:
            self._detach(old)
        run = self._backoff.start()
        last = reason
        new: GeminiLink | None = None
        while new is None:
            delay = run.next_delay()
            if delay is None:
                break
            if delay > 0:
                await asyncio.sleep(delay)
            handle = self._resume.handle
            metrics.incr("gemini.reconnect.attempts")
            try:
                new = await self._open(handle)
            except SetupRejected as exc:
                last = str(exc)
                if handle is not None and exc.fatal:  # handle expired/unknown: start afresh
                    self._resume.forget()
                    self.stats["resume_rejected"] += 1
                    metrics.incr("gemini.resume.rejected")
                    self.log.warning("gemini.resume_rejected", code=exc.code,
                                     detail=exc.reason[:200])
                elif exc.fatal:
                    break
                else:
                    self.log.warning("gemini.reconnect.attempt_failed", attempt=run.attempts,
                                     error=last[:200])
            except PeerUnavailableError as exc:
                last = str(exc)
                self.log.warning("gemini.reconnect.attempt_failed", attempt=run.attempts,
                                 error=last[:200])
        if new is None:
            self._fail(f"reconnect failed after {run.attempts} attempt(s): {last}")
            return
        self._turns.end_turn()  # the rest of a turn of the old connection will not come
        for link in list(self._links):
            if link.detached:
                self._retire(link)
        self._install(new)
        kind = "rotations" if old is not None else "reconnects"
        self.stats[kind] += 1
        metrics.incr(f"gemini.{kind}")
        self.log.info("gemini.switched", kind=kind, reason=reason, connection=new.seq,
                      resumed=new.resumed, attempts=run.attempts,
                      elapsed_s=round(run.elapsed, 3))

    async def _wait_resumable(self) -> None:
        while True:
            link = self._link
            if link is None or not link.open or self._resume.resumable:
                return
            remaining = self._switch_deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                metrics.incr("gemini.rotate.forced")
                self.log.info("gemini.rotate_forced", connection=link.seq)
                return
            self._switch_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._switch_wake.wait()

    def _lost(self, link: GeminiLink, reason: str) -> None:
        """``link``'s reader ended or a write failed. Only the carrying link's loss starts
        a reconnect; a detached one is being replaced already."""
        link.stop_timer()
        self._links.discard(link)
        if self._closed or link.retired:
            return
        self._switch_wake.set()
        if link is self._link:
            metrics.incr("gemini.connection_lost")
            self.log.warning("gemini.connection_lost", connection=link.seq, reason=reason)
            self._detach(link)
            self._turns.end_turn()
            self._ensure_switching(reason, grace_s=0.0)
        elif link.detached:
            self._turns.end_turn()

    def _detach(self, link: GeminiLink) -> None:
        """Caller audio no longer goes to ``link`` (it buffers); its events still count."""
        link.detached = True
        link.stop_timer()
        if self._link is link:
            self._link = None

    def _retire(self, link: GeminiLink) -> None:
        """Drop ``link`` on purpose: its reader stops, the socket closes in the background."""
        self._stop(link)
        self._links.discard(link)
        self._spawn(link.close(self._close_timeout_s + 0.5))

    @staticmethod
    def _stop(link: GeminiLink) -> None:
        link.retired = True
        link.stop_timer()
        if link.reader is not None and link.reader is not asyncio.current_task():
            link.reader.cancel()

    def _fail(self, reason: str) -> None:
        if self._failed or self._closed:
            return
        self._failed = True
        metrics.incr("gemini.failed")
        self.log.error("gemini.failed", reason=reason[:300])
        dropped = len(self._backlog.drain())
        if dropped:
            metrics.incr("gemini.audio.buffered_dropped", dropped)
        self._items.clear()
        for link in list(self._links):
            self._retire(link)
        self._link = None
        self._turns.end_turn()
        self._listener.on_failed(reason)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- writing -----------------------------------------------------------------------------

    def _write(self, link: GeminiLink, frame: str) -> bool:
        """Write one frame now (no await); False if ``link`` cannot take it."""
        ws = link.ws
        if ws.protocol.state is not State.OPEN or link.retired:
            return False
        try:
            ws.write_text_now(frame)
        except Exception as exc:
            self._write_failed(link, exc)
            return False
        return True

    def _write_failed(self, link: GeminiLink, exc: Exception) -> None:
        metrics.incr("gemini.write_failed")
        self.log.warning("gemini.write_failed", connection=link.seq, error=repr(exc)[:200])
        link.ws.transport.abort()
        self._lost(link, "write_failed")

    def _stalled(self, link: GeminiLink, reason: str) -> None:
        """The StallWatch saw the server stop reading: drop the socket, reconnect (resumed
        where a handle allows; the audio since that handle is replayed)."""
        self.stats["stalls"] += 1
        metrics.incr("gemini.stalled")
        self.log.warning("gemini.stalled", connection=link.seq, reason=reason)
        self._lost(link, f"stalled: {reason}")
        self._stop(link)
        link.ws.transport.abort()

    def _buffer_audio(self, chunk_b64: str) -> None:
        if self._closed or self._failed:
            metrics.incr("gemini.audio.dropped_closed")
            return
        dropped = self._backlog.push(chunk_b64)
        if dropped:
            self.stats["audio_buffered_dropped"] += dropped
            metrics.incr("gemini.audio.buffered_dropped", dropped)

    def _send_item(self, item: _Item) -> None:
        """Text or a tool result: written now, or kept (bounded) until a connection is up."""
        link = self._link
        if link is not None and self._write(link, self._render(item)):
            return
        if self._closed or self._failed:
            metrics.incr("gemini.items.dropped_closed")
            return
        self._items.append(item)
        if len(self._items) > self._max_items:
            self._items.popleft()
            metrics.incr("gemini.items.buffered_dropped")

    def _render(self, item: _Item) -> str:
        kind, a, b = item
        if kind == "text":
            return ge.realtime_text(a)
        name, gen = self._turns.call(a) or ("a tool", -1)
        if gen != self._turns.session_gen:  # asked by a session that is gone: tell it as text
            return ge.realtime_text(f"Result of the earlier call to {name}: {b}")
        try:
            value = orjson.loads(b)
        except orjson.JSONDecodeError:
            value = b
        response = value if isinstance(value, dict) else {"result": value}
        return ge.tool_response([ge.FunctionResponse(a, name, response)])

    # -- reading -----------------------------------------------------------------------------

    async def _read(self, link: GeminiLink) -> None:
        """The link's reader: delivers the events that came with ``setupComplete``, turns the
        fast path on, drains what is queued, and reports the close (module docstring)."""
        ws = link.ws
        recv = ws.recv
        handlers = self._handlers
        deliver = self._deliverer(link)
        reason = "closed"
        try:
            for event in link.early:
                dispatch_event(handlers, link, event, self.log, "gemini")
            # From here on whole frames (binary from the real server, or text) go straight
            # to ``deliver`` from data_received; recv() still returns what was queued before
            # (and fragmented messages), delivered synchronously, in order (ws_client's rule).
            ws.set_handlers(deliver, deliver)
            while not link.retired:
                deliver(await recv(decode=False))
        except ConnectionClosed as exc:
            code, why = close_info(exc)
            reason = f"closed {code} {why}".strip()
        except Exception as exc:
            reason = f"reader_error {exc!r:.100}"
            self.log.exception("gemini.reader_error", connection=link.seq)
        finally:
            if not link.retired:  # else keep it: it drops everything, so the socket's close
                ws.set_handlers(None)  # handshake is not stuck behind a full frame queue
        self._lost(link, reason)

    def _deliverer(self, link: GeminiLink) -> Callable[[bytes], None]:
        """``deliver(frame)``: parse one server frame of ``link`` and dispatch its events;
        runs in ``data_received`` (fast path) or in the reader (queued frames)."""
        handlers = self._handlers
        parse = ge.parse_server_message
        log = self.log

        def deliver(frame: bytes) -> None:  # HOT: one call per server message
            if link.retired:
                return  # dropped on purpose: its events are ignored
            try:
                events = parse(frame)
            except ge.GeminiProtocolError as exc:
                metrics.incr("gemini.messages.bad." + exc.reason)
                self.log.warning("gemini.message_bad", reason=exc.reason, field=exc.field,
                                 detail=str(exc)[:200])
                return
            except Exception as exc:  # a parser bug: this socket can no longer be trusted
                self._reader_failed(link, exc)
                return
            for event in events:
                dispatch_event(handlers, link, event, log, "gemini")

        return deliver

    def _reader_failed(self, link: GeminiLink, exc: Exception) -> None:
        """Reading ``link`` failed unexpectedly: lose it (switch if it carried the call) and
        close it."""
        self.log.exception("gemini.reader_error", connection=link.seq)
        self._lost(link, f"reader_error {exc!r:.100}")
        self._retire(link)

    def _on_tool_call_cancellation(self, link: GeminiLink,
                                   event: ge.ToolCallCancellation) -> None:
        self._turns.on_tool_call_cancellation(link, event)
        self.log.info("gemini.tool_calls_cancelled", ids=",".join(event.ids)[:200])

    def _on_resumption_update(self, link: GeminiLink,
                              event: ge.SessionResumptionUpdate) -> None:
        if self._resume.update(event) and link is self._link and self._replay is not None:
            self._replay.drain()  # the server holds everything written so far
        self._switch_wake.set()

    def _on_go_away(self, link: GeminiLink, event: ge.GoAway) -> None:
        left = event.time_left_s
        self.stats["go_aways"] += 1
        metrics.incr("gemini.go_away")
        self.log.info("gemini.go_away", connection=link.seq, time_left_s=left)
        if link is not self._link:
            return  # already being replaced
        grace = self._rotate_grace_s if left is None else min(
            self._rotate_grace_s, left - self._go_away_margin_s)
        self._ensure_switching("go_away", grace_s=max(0.0, grace))

    def _on_usage(self, link: GeminiLink, event: ge.UsageMetadata) -> None:
        self.stats["tokens"] += event.total_token_count


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as seen (callers get it through ``connect``)."""
    if not task.cancelled():
        task.exception()
