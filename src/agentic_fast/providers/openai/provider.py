"""OpenAI Realtime (GA) provider: one call's socket, its events, reconnects and carry-over.

The socket's life (connect, write path, reader, loss, stall watch, backlog, switch with
backoff, close) is written once in :class:`connection.ModelConnection`; this module is the
OpenAI policy on top (session setup, carry-over, response bookkeeping). What follows
describes the whole behaviour.

The wire format lives in :mod:`openai_commands` (client events we send) and
:mod:`openai_events` (server events, parsing, state), both sans-I/O; this module is the I/O
shell around them (python-websockets ``asyncio/connection.py`` style): open and configure a
session, parsed events dispatched to the bridge through a dict of handlers, and synchronous
writes.

Receive path. Once a session is installed, server events are parsed and dispatched
synchronously from the socket's ``data_received``: the socket is a
:class:`ws_client.FastClientConnection` (passed as ``create_connection``), whose ``on_text``
gets every whole text frame as bytes. Why: the default path queues each frame in
websockets' ``Assembler`` and wakes the task blocked in ``recv()`` once per event (a queue
put/get and a task step per audio delta, plainly visible in profiles); we do neither. The
handshake (``session.created``, ``session.update`` -> ``session.updated``) still uses
``await ws.recv()``. One reader task per socket remains: it turns the fast path on when the
session is installed, drains with ``recv()`` whatever was queued before (events that came
while a carry-over waited for a quiet moment, say) or does not take the fast path
(fragmented or binary messages), handing each to the same ``deliver`` in order (the ordering
rule is in :mod:`ws_client`), and learns of the close from ``recv()``
(``ConnectionClosed``), which starts the reconnect below. A retired socket's events are
ignored. A frame that is not UTF-8 counts as malformed JSON (``openai.events.bad.*``) instead
of failing the socket with 1007.

Send path. Every client event is written synchronously, as one whole masked text frame built
by the connection's :class:`wsframe.ClientFramer` and handed to the transport in one
``transport.write`` (``FastClientConnection.write_text_now``). Nothing is awaited, so
``send_audio`` can run inside the Twilio media handler. Why not ``ws.protocol.send_text`` +
``ws.send_data()`` (what ``await ws.send()`` does minus its ``drain()``): python-websockets
draws every frame's mask key with ``secrets.token_bytes(4)``, one ``getrandom`` syscall per
frame (3.5% of the server's CPU under load), and builds the frame in Python (``Frame``
object, ``Frame.serialize``, header ``struct.pack`` and two concatenations); our framer
takes keys from a pooled ``os.urandom`` buffer and writes header, key and masked payload
into one bytes in the native extension (~4.5x less CPU to frame a 2.6 KB append, ~5x for 350
B: ``bench/bench_wsframe.py``). websockets still owns the handshake, frame parsing, control
frames (ping/pong/close) and closing: before our frame goes out, anything its sans-I/O
protocol has pending (``protocol.writes``, e.g. an automatic pong) is written first, so
frames stay whole and in order. We never use websockets' fragmented sends, so a data frame
of ours cannot fall inside one of its messages. Flow control is ours: when the transport's
write buffer is above ``max_write_buffer`` (a slow or stuck peer) caller audio is dropped
and counted (``openai.audio.backpressure_dropped``) instead of growing memory; control
events always go. Measured on loopback (client CPU per 40 ms PCM16 append, net of the loop
iteration), with websockets' framing: ~6 us with this synchronous path, ~10.5 us with a
deque drained by a writer task calling ``ws.send``.

Stalled peer. A server that stops reading (TCP backpressure) while the call goes on is
noticed by the session's :class:`ws_client.StallWatch` within ``stall_timeout_s`` (a probe
ping unanswered, or the write buffer above ``max_write_buffer``, for that long), counted
(``openai.stalled``) and handled as a lost socket: aborted, audio buffered, a new session
opened (below). Without it only the keepalive noticed, after ~40 s.

Reconnect. When the socket drops mid-call (abrupt close, 1011, any error close) the call
stays up: caller audio goes to a bounded deque (the last ``max_buffered_audio_ms``; older
chunks dropped and counted ``openai.audio.buffered_dropped``), ``say``/``begin``/tool
results to a bounded list, and a new session is opened under :class:`Backoff`
(``openai.reconnect.attempts``, ``openai.reconnects``). Once the new session is configured
the buffers are flushed (audio first, then items, then one ``response.create``). When the
bound is exceeded, or the server refuses us for good (HTTP 400/401/403/404, a rejected
``session.update``), ``listener.on_failed`` runs once.

Refusals and failed responses. An ``error`` sent instead of ``session.created`` (bad key,
retired model, no quota) is reported with its code and message (``openai.session_refused``,
``openai.connect.refused.<code>``, the ``PeerUnavailableError`` text); it is fatal (no
retry) unless it is a ``server_error``. A ``response.done`` whose status is ``failed``, or
``incomplete`` for ``max_output_tokens``/``content_filter`` (not a barge-in or cancel), is
logged with its ``status_details`` (``openai.response_failed``) and counted
(``openai.responses.failed[.<code>]``); the caller hears ``failed_response_message`` and the
call goes on. ``max_failed_responses`` failures in a row (a completed response resets the
run) end the call through ``listener.on_failed``. Only ``response.done`` is read for this:
the per-delta path is untouched.

Carry-over. OpenAI ends a session after 60 minutes (``session_expired``). A local cap
(``max_session_s``, default 55 min) renews it first: a new socket is opened and configured
while the old one still serves the call, the switch waits (at most ``carry_over_grace_s``)
for a quiet moment (no response active, caller not speaking), then audio moves to the new
socket and the old one is closed. A ``session_expired`` error switches at once. The
conversation itself cannot be copied over the socket, so the new session is seeded with a
system item summarising the last transcript lines (bounded, see
:func:`reconnect.carry_over_summary`); the same seed follows an abrupt reconnect. What is lost: the
server-side audio of a reply cut by the drop, and anything older than the summary.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from websockets.exceptions import InvalidStatus

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff
from agentic_fast.core.config import Config, OpenAIRealtimeConfig
from agentic_fast.core.errors import ConfigError, PeerUnavailableError
from agentic_fast.core.log import get_logger
from agentic_fast.providers import health
from agentic_fast.providers.base import RealtimeProvider
from agentic_fast.providers.connection import Link, LinkOptions, ModelConnection, open_socket
from agentic_fast.providers.openai import commands as oc
from agentic_fast.providers.openai import events as oe
from agentic_fast.providers.reconnect import carry_over_summary
from agentic_fast.providers.registry import ProviderContext, register
from agentic_fast.ws.client_connection import FastClientConnection

if TYPE_CHECKING:
    from agentic_fast.call.manager import CallSession

__all__ = ["OpenAIRealtimeProvider"]

PEER = "openai"
_FATAL_STATUS = frozenset({400, 401, 403, 404})
#: Error codes that are expected in normal operation (races of barge-in): logged at debug.
_BENIGN_ERRORS = frozenset({"response_cancel_not_active"})
_MAX_CALLS = 64  # tool call ids remembered (per session and per provider)


class _Fatal(Exception):
    """The peer refused us in a way a retry will not fix (cause of a PeerUnavailableError)."""


class _Refused(Exception):
    """The server's first frame was an ``error`` that a retry may fix (``server_error``)."""


class _Connection(Link):
    """One socket and what is known about its session."""

    __slots__ = ("calls", "pending", "requested", "state")

    def __init__(self, ws: FastClientConnection, state: oe.RealtimeState, seq: int) -> None:
        super().__init__(ws, seq)
        self.state = state
        self.requested = False  # response.create sent, response.created not seen yet
        self.pending = False    # a response is wanted once the active one is done
        self.calls: dict[str, str] = {}  # tool call ids of this session -> name


# A buffered conversation item: ("system", text, "") or ("tool", call_id, output).
_Item = tuple[str, str, str]


class OpenAIRealtimeProvider(ModelConnection):
    """:class:`RealtimeProvider` for the OpenAI Realtime API (GA shape only)."""

    peer: ClassVar[str] = PEER
    _bad_kind = "events"
    _audio_frame = staticmethod(oc.input_audio_append)  # HOT: one call per caller chunk

    def __init__(self, config: OpenAIRealtimeConfig, *, call_id: str, connect_timeout_s: float,
                 backoff: Backoff | None = None, tools: Sequence[Mapping[str, Any]] | None = None,
                 max_session_s: float | None = 55 * 60.0, carry_over_grace_s: float = 15.0,
                 interrupt_response: bool = True, max_buffered_audio_ms: int = 3000,
                 max_pending_items: int = 32, max_write_buffer: int = 256 * 1024,
                 recent_lines: int = 12, ping_interval_s: float | None = 20.0,
                 close_timeout_s: float = 2.0, max_message_bytes: int = 4 * 2**20,
                 stall_timeout_s: float | None = 5.0) -> None:
        fmt: oe.AudioFormat = "pcmu" if config.audio_format == "pcmu" else "pcm16"
        super().__init__(
            call_id=call_id, log=get_logger("providers.openai").bind(call_id=call_id),
            backoff=backoff,
            backlog_chars=max_buffered_audio_ms * oe.BYTES_PER_MS[fmt] * 4 // 3,
            max_pending_items=max_pending_items, max_write_buffer=max_write_buffer,
            close_timeout_s=close_timeout_s, stall_timeout_s=stall_timeout_s,
            max_link_s=max_session_s,
            stats=("reconnects", "carry_overs", "sessions", "errors", "responses_failed"))
        self.config = config
        self.converter_format = "openai-pcmu" if fmt == "pcmu" else "openai"
        self.audio_format: oe.AudioFormat = fmt
        # with server VAD's interrupt_response the server cancels the response itself on
        # speech_started; a second response.cancel from us would only earn an error
        self._server_cancels = interrupt_response
        self._grace_s = carry_over_grace_s
        self._options = LinkOptions(
            f"{config.url}?model={quote(config.model, safe='')}",
            {"Authorization": f"Bearer {config.api_key}"}, timeout_s=connect_timeout_s,
            ping_interval_s=ping_interval_s, close_timeout_s=close_timeout_s,
            max_message_bytes=max_message_bytes, max_queue=64)
        vad = config.vad
        self._session_update = oc.session_update(
            instructions=config.instructions, voice=config.voice, audio_format=fmt,
            vad=oc.server_vad(threshold=vad.threshold, prefix_padding_ms=vad.prefix_padding_ms,
                              silence_duration_ms=vad.silence_duration_ms,
                              create_response=True, interrupt_response=interrupt_response),
            input_transcription_model=config.transcription_model or None,
            output_modalities=["audio"], tools=tools or None,
            tool_choice="auto" if tools else None)
        self._ids = itertools.count(1)
        self._response_buffered = False  # a response.create waits with the kept items
        # what the listener has been told
        self._audio_item: str | None = None
        self._open_items: dict[str, None] = {}
        self._interrupted_response: str | None = None  # its late deltas are dropped
        self._user_speaking = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._recent: deque[tuple[str, str]] = deque(maxlen=recent_lines)
        self._opening: str | None = None
        self._call_names: dict[str, str] = {}
        # failed responses (response.done failed/incomplete): apology, then end after a run
        self._apology = config.failed_response_message
        self._max_failed = config.max_failed_responses
        self._failed_in_row = 0
        self._handlers.update({
            oe.OutputAudioDelta: self._on_audio_delta,
            oe.OutputAudioDone: self._on_audio_done,
            oe.ResponseCreated: self._on_response_created,
            oe.ResponseDone: self._on_response_done,
            oe.SpeechStarted: self._on_speech_started,
            oe.SpeechStopped: self._on_speech_stopped,
            oe.InputTranscriptionCompleted: lambda c, e: self._transcript("user", e.transcript),
            oe.OutputAudioTranscriptDone: lambda c, e: self._transcript("assistant",
                                                                         e.transcript),
            oe.OutputTextDone: lambda c, e: self._transcript("assistant", e.text),
            oe.InputTranscriptionFailed: self._on_transcription_failed,
            oe.FunctionCallArgumentsDone: self._on_function_call,
            oe.ErrorEvent: self._on_error,
        })

    # -- RealtimeProvider ------------------------------------------------------------------

    # -- RealtimeProvider ------------------------------------------------------------------

    @property
    def response_active(self) -> bool:
        """A response is in progress on the session carrying the call."""
        conn = self._link
        return conn is not None and conn.state.active_response_id is not None

    def begin(self, *, speak_first: str | None) -> None:
        if not speak_first:
            return
        self._opening = speak_first
        self._send_items([("system", f"The call has connected. {speak_first}", "")])

    def interrupt(self, item_id: str | None, audio_end_ms: int | None) -> None:
        conn = self._link
        if conn is None:
            metrics.incr("openai.interrupt.disconnected")
            self._response_buffered = False
            return
        conn.pending = False  # the caller's new turn gets a response of its own
        state = conn.state
        if state.active_response_id is not None:
            # deltas of it still in flight (or not yet begun) are not the caller's to hear
            self._interrupted_response = state.active_response_id
            if not self._server_cancels:
                self._write(conn, oc.response_cancel(state.active_response_id,
                                                  event_id=self._event_id("cx")))
                metrics.incr("openai.interrupt.cancel")
        if audio_end_ms is None or audio_end_ms <= 0 or not item_id:
            metrics.incr("openai.interrupt.truncate_skipped")
            return
        frame = oc.truncate_at(state, audio_end_ms, item_id, event_id=self._event_id("tr"))
        if frame is None:  # not an audio item of this session (e.g. before a reconnect)
            metrics.incr("openai.interrupt.truncate_unknown_item")
            self.log.debug("openai.truncate_skipped", item_id=item_id)
            return
        self._write(conn, frame)

    def say(self, text: str) -> None:
        self._send_items([("system", f"Tell the caller: {text}", "")])

    def send_tool_result(self, call_id: str, output: str) -> None:
        self._send_items([("tool", call_id, output)])

    def request_carry_over(self, reason: str = "manual") -> None:
        """Renew the session now (what the ``max_session_s`` timer does)."""
        if self._link is not None:
            self.log.info("openai.carry_over.due", reason=reason, session=self._link.seq)
            self._ensure_switching(reason, proactive=True)

    # -- the connection policy: sessions and their carry-over --------------------------------

    def _parser(self, link: _Connection) -> Callable[[bytes], Any]:
        return link.state.receive

    def _may_retry(self, exc: PeerUnavailableError) -> bool:
        return not isinstance(exc.__cause__, _Fatal)  # no retry fixes this

    def _link_aged(self, link: _Connection) -> None:
        self.request_carry_over("max_session")

    def _release_more(self) -> None:
        self._response_buffered = False

    async def _open(self) -> _Connection:
        """A new socket with its session configured (``session.updated`` received)."""
        self._seq += 1
        seq = self._seq
        started = time.perf_counter()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._options.timeout_s):
                ws = await open_socket(self._options)
                conn = _Connection(ws, oe.RealtimeState(self.audio_format), seq)
                self._links.add(conn)
                first = conn.state.receive(await ws.recv())
                if type(first) is oe.ErrorEvent:  # bad key, retired model, no quota...
                    raise self._refused(seq, first)
                if type(first) is not oe.SessionCreated:
                    raise _Fatal(f"expected session.created, got {type(first).__name__}")
                conn.session_id = first.session_id
                await ws.send(self._session_update)
                while True:
                    event = conn.state.receive(await ws.recv())
                    if type(event) is oe.SessionUpdated:
                        break
                    if type(event) is oe.ErrorEvent:
                        raise _Fatal(f"session.update rejected: {event.code}: "
                                     f"{event.message[:200]}")
        except asyncio.CancelledError:
            if conn is not None:
                self._discard(conn)
            raise
        except Exception as exc:
            if conn is not None:
                self._discard(conn)
            metrics.incr("openai.connect.failed")
            if isinstance(exc, InvalidStatus) and exc.response.status_code in _FATAL_STATUS:
                if exc.response.status_code in health.AUTH_STATUS:
                    health.auth_rejected(PEER, f"HTTP {exc.response.status_code}")
                exc = _Fatal(f"HTTP {exc.response.status_code}")
            err = PeerUnavailableError(f"session #{seq} failed: {_describe(exc)}", peer=PEER)
            raise err from exc
        metrics.incr("openai.sessions")
        health.session_ok(PEER)
        self.stats["sessions"] += 1
        self.log.info("openai.session_ready", session=seq, session_id=conn.session_id,
                      connect_ms=round((time.perf_counter() - started) * 1000, 1))
        return conn

    def _refused(self, seq: int, event: oe.ErrorEvent) -> Exception:
        """The exception for an ``error`` sent instead of ``session.created``: its code and
        message, fatal unless the server says it is its own fault (``server_error``)."""
        code = event.code or event.error_type
        metrics.incr("openai.connect.refused." + code[:60])
        if code in health.OPENAI_AUTH_CODES:
            health.auth_rejected(PEER, f"{code}: {event.message[:200]}")
        self.log.error("openai.session_refused", session=seq, code=event.code,
                       error_type=event.error_type, detail=event.message[:300])
        text = f"error {code}: {event.message[:300]}"
        return _Refused(text) if event.error_type == "server_error" else _Fatal(text)

    async def _switch(self, reason: str, proactive: bool) -> None:
        """Open a new session (with backoff) and switch the call to it: at a quiet moment
        (bounded by ``carry_over_grace_s``) when ``proactive``, else at once."""
        run = self._backoff.start()
        while True:
            new, last = await self._open_with_backoff(run, reason)
            if new is None:
                if proactive and self._link is not None:
                    metrics.incr("openai.carry_over.failed")
                    self.log.warning("openai.carry_over.failed", error=last[:200])
                    return  # the old session still serves; its loss will retry
                self._fail(f"reconnect failed after {run.attempts} attempt(s): {last}")
                return
            if proactive and self._link is not None:
                try:
                    async with asyncio.timeout(self._grace_s):
                        await self._idle.wait()
                except TimeoutError:
                    metrics.incr("openai.carry_over.forced")
            if new.open:
                break
            self._discard(new)  # died while we waited: try again
        old = self._link
        summary = carry_over_summary(list(self._recent), self._opening)
        if summary is not None:
            self._write(new, oc.conversation_item_create_system_text(
                summary, event_id=self._event_id("seed")))
        if old is not None:
            self._detach(old)
            self._retire(old)
        self._install(new)
        self._switched(new, "carry_overs" if proactive else "reconnects", reason, run,
                       seeded=summary is not None)

    def _on_detach(self, link: _Connection) -> None:
        """Close the open audio items (the bridge flushes them), forget who was speaking."""
        for item_id in list(self._open_items):
            self._close_item(item_id)
        self._audio_item = None
        self._user_speaking = False
        self._update_idle()

    def _flush_items(self, link: _Connection) -> None:
        self._update_idle()
        items, self._items = list(self._items), deque()
        want, self._response_buffered = self._response_buffered, False
        if items or want:
            self._send_items(items, want_response=want)

    # -- writing -----------------------------------------------------------------------------

    def _event_id(self, kind: str) -> str:
        return f"af_{kind}_{next(self._ids)}"

    def _send_items(self, items: Sequence[_Item], want_response: bool = True) -> None:
        """Conversation items then (at most) one response; buffered while no session."""
        conn = self._link
        if conn is not None and conn.open:
            for item in items:
                if not self._write(conn, self._render_item(conn, item)):
                    break
            else:
                if want_response:
                    self._request_response(conn)
                return
        if self._keep_items(items):
            self._response_buffered = self._response_buffered or want_response

    def _render(self, item: _Item) -> str:
        return self._render_item(self._link, item)

    def _render_item(self, conn: _Connection, item: _Item) -> str:
        kind, a, b = item
        eid = self._event_id("it")
        if kind == "tool":
            if a in conn.calls:
                return oc.conversation_item_create_function_output(a, b, event_id=eid)
            # the call was made in an earlier session: its id means nothing to this one
            name = self._call_names.get(a, "a tool")
            return oc.conversation_item_create_system_text(
                f"Result of the earlier call to {name}: {b}", event_id=eid)
        return oc.conversation_item_create_system_text(a, event_id=eid)

    def _request_response(self, conn: _Connection) -> None:
        """``response.create`` now, or once the active response is done (only one at a time)."""
        if conn.state.active_response_id is not None or conn.requested:
            conn.pending = True
            return
        conn.requested = True
        self._write(conn, oc.response_create(event_id=self._event_id("rc")))

    # -- reading -----------------------------------------------------------------------------

    # -- events ----------------------------------------------------------------------------

    def _on_audio_delta(self, conn: _Connection, event: oe.OutputAudioDelta) -> None:  # HOT
        if event.response_id == self._interrupted_response:
            metrics.incr("openai.audio.after_interrupt")
            return
        item_id = event.item_id
        if item_id != self._audio_item:
            self._audio_item = item_id
            self._open_items[item_id] = None
        self._listener.on_audio(event.delta, item_id)

    def _close_item(self, item_id: str) -> None:
        if self._open_items.pop(item_id, 0) is None:
            if item_id == self._audio_item:
                self._audio_item = None
            self._listener.on_audio_done(item_id)

    def _on_audio_done(self, conn: _Connection, event: oe.OutputAudioDone) -> None:
        self._close_item(event.item_id)

    def _on_response_created(self, conn: _Connection, event: oe.ResponseCreated) -> None:
        conn.requested = False
        self._update_idle()

    def _on_response_done(self, conn: _Connection, event: oe.ResponseDone) -> None:
        for item in event.output:
            item_id = item.get("id")
            if type(item_id) is str and item_id in self._open_items:
                self._close_item(item_id)
        for call in event.function_calls:
            self._tool_call(conn, call.call_id, call.name, call.arguments)
        if event.status == "completed":
            self._failed_in_row = 0
        elif event.failed and conn is self._link:
            self._response_failed(conn, event)  # may request the apology's response
        if conn.pending and conn is self._link:
            conn.pending = False
            if not conn.requested:  # else the response just requested covers the items
                self._request_response(conn)
        self._update_idle()

    def _response_failed(self, conn: _Connection, event: oe.ResponseDone) -> None:
        """The model could not answer (quota, rate limit, filter, server error): logged and
        counted; the caller hears the apology and the call goes on, unless this is the
        ``max_failed_responses``-th failure in a row: then the call ends (``on_failed``)."""
        self._failed_in_row += 1
        self.stats["responses_failed"] += 1
        error = event.error or {}
        kind = error.get("code") or error.get("type") or event.reason or event.status
        metrics.incr("openai.responses.failed")
        metrics.incr(f"openai.responses.failed.{str(kind)[:60]}")
        self.log.warning("openai.response_failed", session=conn.seq,
                         response_id=event.response_id, status=event.status,
                         reason=event.reason, error_type=error.get("type"),
                         code=error.get("code"), detail=str(error.get("message", ""))[:200],
                         status_details=event.status_details, in_a_row=self._failed_in_row)
        if self._max_failed and self._failed_in_row >= self._max_failed:
            self._fail(f"{self._failed_in_row} responses failed in a row "
                       f"(last: {event.describe()})")
            return
        if self._apology:
            self._send_items([("system", "Your last reply did not reach the caller. "
                               f"Say exactly this to them: {self._apology}", "")])

    def _on_speech_started(self, conn: _Connection, event: oe.SpeechStarted) -> None:
        self._user_speaking = True
        self._update_idle()
        self._listener.on_speech_started()

    def _on_speech_stopped(self, conn: _Connection, event: oe.SpeechStopped) -> None:
        self._user_speaking = False
        self._update_idle()
        self._listener.on_speech_stopped()

    def _transcript(self, role: str, text: str) -> None:
        if text:
            self._recent.append((role, text[:300]))
            self._listener.on_transcript(role, text, True)

    def _on_transcription_failed(self, conn: _Connection, event: oe.InputTranscriptionFailed
                                 ) -> None:
        metrics.incr("openai.transcription_failed")
        self.log.warning("openai.transcription_failed", code=event.code,
                         detail=event.message[:200])

    def _on_function_call(self, conn: _Connection, event: oe.FunctionCallArgumentsDone) -> None:
        self._tool_call(conn, event.call_id, event.name, event.arguments)

    def _tool_call(self, conn: _Connection, call_id: str, name: str, arguments: str) -> None:
        if call_id in conn.calls:
            return  # already reported (arguments.done, then response.done)
        for table in (conn.calls, self._call_names):
            table[call_id] = name
            if len(table) > _MAX_CALLS:
                table.pop(next(iter(table)))
        metrics.incr("openai.tool_calls")
        self._listener.on_tool_call(call_id, name, arguments)

    def _on_error(self, conn: _Connection, event: oe.ErrorEvent) -> None:
        code = event.code or "unknown"
        self.stats["errors"] += 1
        metrics.incr("openai.errors." + code[:60])
        source = event.client_event_id or ""
        log = self.log.debug if code in _BENIGN_ERRORS else self.log.warning
        log("openai.error", session=conn.seq, code=code, error_type=event.error_type,
            param=event.param, client_event_id=source, detail=event.message[:200])
        if source.startswith("af_rc_") or code == "conversation_already_has_active_response":
            conn.requested = False
            if code == "conversation_already_has_active_response":
                conn.pending = True  # retried when the active response is done
        if code == "session_expired" and conn is self._link:
            self._detach(conn)
            self._retire(conn)
            self._ensure_switching("session_expired")

    def _update_idle(self) -> None:
        conn = self._link
        busy = conn is not None and (self._user_speaking or conn.requested
                                     or conn.state.active_response_id is not None)
        if busy:
            self._idle.clear()
        else:
            self._idle.set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, (_Fatal, _Refused)):
        return str(exc)
    return f"{exc!r:.200}"


def build(config: Config, context: ProviderContext
          ) -> Callable[[CallSession], RealtimeProvider]:
    """:data:`registry.Builder` of ``openai`` and ``openai-pcmu``."""
    if not config.openai_realtime.api_key:
        raise ConfigError("openai_realtime.api_key is not set (audio.provider is "
                          f"{config.audio.provider})", key="openai_realtime.api_key")
    settings = config.openai_realtime
    tools = context.tools or None
    # a minimum barge-in speech duration needs us (not the server's VAD) to cancel
    server_cancels = config.bridge.barge_in_min_speech_ms == 0

    def make(session: CallSession) -> RealtimeProvider:
        return OpenAIRealtimeProvider(settings, call_id=session.call_id,
                                      connect_timeout_s=context.connect_timeout_s,
                                      tools=tools, interrupt_response=server_cancels,
                                      stall_timeout_s=context.stall_timeout_s)

    return make


register("openai", build)
register("openai-pcmu", build)
