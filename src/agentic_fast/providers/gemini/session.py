"""One Gemini Live connection and the session's resumption state (protocols.md 3.1, 3.6).

:func:`open_link` is the whole handshake of one WebSocket: connect with the API key in
``x-goog-api-key``, send ``setup`` (with the latest resumption handle, if any), and wait for
``setupComplete``, all inside one deadline, on a :class:`ws_client.FastClientConnection`
(a plain ``recv()`` socket during the handshake; the provider's reader later hands its
messages to a synchronous handler: no queue, no task wake-up per message). A close in
answer to ``setup`` becomes :class:`SetupRejected` carrying the close code, so the caller can
tell a rejected resume handle (1007/1008 with a handle) from a network failure.
:class:`Resumption` keeps the newest *resumable* handle and whether the session is at a
resumable point right now (the server sends ``resumable: false`` during generation and while
tool calls are pending).

:class:`TurnTracker` turns server events into what the bridge hears (turn ids, audio done,
barge-in, joined transcripts, tool calls), without I/O. The provider owns the reader and the
receive path, the writes and the switch between links
(:mod:`agentic_fast.providers.gemini.provider`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentic_fast.core import metrics
from agentic_fast.core.errors import GeminiProtocolError, PeerUnavailableError, SetupRejected
from agentic_fast.providers.base import ProviderListener
from agentic_fast.providers.connection import Link, LinkOptions, close_info, open_socket
from agentic_fast.providers.gemini.events import (
    AUTH_HEADER,
    CLOSE_INVALID_ARGUMENT,
    CLOSE_POLICY,
    OUTPUT_RATE,
    AudioChunk,
    GeminiEvent,
    GenerationComplete,
    InputTranscription,
    Interrupted,
    OutputTranscription,
    SessionResumptionUpdate,
    SetupComplete,
    ToolCall,
    ToolCallCancellation,
    TurnComplete,
    parse_server_message,
)
from agentic_fast.ws.client_connection import FastClientConnection

__all__ = ["PEER", "GeminiLink", "Resumption", "TurnTracker", "close_info",
           "link_options", "open_link"]

PEER = "gemini"
#: Close codes that answer a bad ``setup`` (invalid argument, invalid key, rejected resume
#: handle / model not found): retrying the *same* setup will not help.
SETUP_REFUSED = frozenset({CLOSE_INVALID_ARGUMENT, CLOSE_POLICY})
#: HTTP refusals of the WebSocket upgrade that no retry fixes.
FATAL_STATUS = frozenset({400, 401, 403, 404})


class GeminiLink(Link):
    """One configured WebSocket (``setupComplete`` received): a :class:`Link` that knows
    whether it resumed a session."""

    __slots__ = ("resumed",)

    def __init__(self, ws: FastClientConnection, seq: int, resumed: bool,
                 session_id: str | None, early: list[GeminiEvent]) -> None:
        super().__init__(ws, seq, session_id, list(early))
        self.resumed = resumed


def link_options(url: str, api_key: str, *, timeout_s: float,
                 ping_interval_s: float | None = 20.0, close_timeout_s: float = 2.0,
                 max_message_bytes: int = 4 * 2**20) -> LinkOptions:
    """Socket settings of every Gemini link (the key goes in ``x-goog-api-key``)."""
    return LinkOptions(url, {AUTH_HEADER: api_key}, timeout_s=timeout_s,
                       ping_interval_s=ping_interval_s, close_timeout_s=close_timeout_s,
                       max_message_bytes=max_message_bytes, max_queue=256)


async def open_link(options: LinkOptions, setup_json: str, *, seq: int,
                    resumed: bool) -> GeminiLink:
    """Connect, send ``setup_json`` and wait for ``setupComplete``, all within
    ``options.timeout_s``.

    Raises :class:`SetupRejected` when the server closes in answer to the setup (or refuses
    the upgrade), :class:`PeerUnavailableError` for timeouts and network errors.
    """
    ws: FastClientConnection | None = None
    try:
        async with asyncio.timeout(options.timeout_s):
            ws = await open_socket(options)
            await ws.send(setup_json)
            while True:
                frame = await ws.recv()  # binary frames (real server) or text
                try:
                    events = parse_server_message(frame)
                except GeminiProtocolError as exc:
                    metrics.incr("gemini.messages.bad." + exc.reason)
                    continue
                for i, event in enumerate(events):
                    if type(event) is SetupComplete:
                        return GeminiLink(ws, seq, resumed, event.session_id, events[i + 1:])
                metrics.incr("gemini.messages.before_setup_complete")
    except asyncio.CancelledError:
        if ws is not None:
            ws.transport.abort()
        raise
    except ConnectionClosed as exc:
        code, reason = close_info(exc)
        raise SetupRejected(f"connection #{seq} closed during setup: {code} {reason}".strip(),
                            code=code, reason=reason, fatal=code in SETUP_REFUSED) from exc
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise SetupRejected(f"connection #{seq} refused: HTTP {status}", code=1006,
                            reason=f"HTTP {status}", fatal=status in FATAL_STATUS) from exc
    except Exception as exc:
        if ws is not None:
            ws.transport.abort()
        what = "timed out" if isinstance(exc, TimeoutError) else f"{exc!r:.200}"
        raise PeerUnavailableError(f"connection #{seq} failed: {what}", peer=PEER) from exc


class Resumption:
    """The newest resumable handle and whether the session is at a resumable point."""

    __slots__ = ("handle", "resumable", "updates")

    def __init__(self) -> None:
        self.handle: str | None = None
        self.resumable = False
        self.updates = 0

    def update(self, event: SessionResumptionUpdate) -> bool:
        """Take ``event``; True when it brought a new resumable handle."""
        self.updates += 1
        self.resumable = event.resumable
        if event.resumable and event.new_handle:
            self.handle = event.new_handle
            return True
        return False

    def busy(self) -> None:
        """The model started generating (or called a tool): not a resumable point."""
        self.resumable = False

    def forget(self) -> None:
        """The handle was rejected (expired after 2 h, unknown): start afresh."""
        self.handle = None
        self.resumable = False


class TurnTracker:
    """The call's model turns, transcripts and tool calls as the bridge sees them (sans-I/O).

    Gemini has no item ids: each model turn gets ``turn-<n>`` (unique per provider) from its
    first audio / transcription / tool call until ``turnComplete``. ``on_audio_done`` runs
    once per turn (at ``generationComplete``, else at ``turnComplete`` or :meth:`end_turn`).
    ``interrupted`` is Gemini's barge-in: ``on_speech_started``, and the rest of that turn's
    audio is not forwarded. Transcription fragments are joined per turn: the caller's when
    the model starts answering (or ``finished``), the assistant's at the turn's end.
    Handlers take ``(link, event)`` so the provider's dispatch table can hold them directly.
    """

    def __init__(self, listener: ProviderListener, resumption: Resumption, *,
                 recent_lines: int = 12, max_calls: int = 64) -> None:
        self.listener = listener
        self.resumption = resumption
        self.turn_id: str | None = None
        self.cancelled = False  # the current turn's audio is not forwarded any more
        self.done = False  # on_audio_done was sent for the current turn
        self.session_gen = 0  # +1 per fresh (not resumed) session: call ids die with it
        self._interrupted = False
        self._ids = itertools.count(1)
        self._user: list[str] = []
        self._model: list[str] = []
        self._calls: dict[str, tuple[str, int]] = {}  # call id -> (name, session_gen)
        self._max_calls = max_calls
        #: the last transcript lines ``(role, text)``, for a fresh session's seed
        self.recent: deque[tuple[str, str]] = deque(maxlen=recent_lines)
        self.turns = 0
        self.interrupted_turns = 0
        self.audio_after_interrupt = 0

    def call(self, call_id: str) -> tuple[str, int] | None:
        """``(name, session_gen)`` of a pending tool call, None if unknown or cancelled."""
        return self._calls.get(call_id)

    @property
    def response_active(self) -> bool:
        """The model is generating a turn (audio not complete), or the server has just
        ``interrupted`` one: Gemini sends that only when a generation was cut."""
        return (self.turn_id is not None and not self.done) or self._interrupted

    def cancel(self, item_id: str | None) -> None:
        """Stop forwarding turn ``item_id``'s audio (the bridge's barge-in)."""
        if item_id is not None and item_id == self.turn_id:
            self.cancelled = True

    def start_turn(self) -> str:
        item = f"turn-{next(self._ids)}"
        self.turn_id = item
        self.cancelled = self.done = False
        self.resumption.busy()
        self.turns += 1
        self._flush("user", self._user)
        return item

    def end_turn(self) -> None:
        """The current turn is over (turnComplete, or its connection is gone)."""
        item = self.turn_id
        if item is None:
            return
        self.turn_id = None
        if not self.done:
            self.done = True
            self.listener.on_audio_done(item)
        self._flush("assistant", self._model)

    def _flush(self, role: str, parts: list[str]) -> None:
        if not parts:
            return
        text = "".join(parts).strip()
        parts.clear()
        if text:
            self.recent.append((role, text[:300]))
            self.listener.on_transcript(role, text, True)

    # -- handlers (link, event) -------------------------------------------------------------

    def on_audio(self, link: object, event: AudioChunk) -> None:  # HOT
        item = self.turn_id
        if item is None:
            item = self.start_turn()
        elif self.cancelled:
            self.audio_after_interrupt += 1
            return
        if event.rate != OUTPUT_RATE:
            metrics.incr("gemini.audio.bad_rate")
            return
        self.listener.on_audio(event.data, item)

    def on_output_transcription(self, link: object, event: OutputTranscription) -> None:
        if self.turn_id is None:
            self.start_turn()
        self._model.append(event.text)

    def on_input_transcription(self, link: object, event: InputTranscription) -> None:
        self._user.append(event.text)
        if event.finished:
            self._flush("user", self._user)

    def on_interrupted(self, link: object, event: Interrupted) -> None:
        self._interrupted = True
        if self.turn_id is not None and not self.cancelled:
            self.cancelled = True
            self.interrupted_turns += 1
            metrics.incr("gemini.interrupted")
        self.listener.on_speech_started()

    def on_generation_complete(self, link: object, event: GenerationComplete) -> None:
        item = self.turn_id
        if item is not None and not self.done:
            self.done = True
            self.listener.on_audio_done(item)

    def on_turn_complete(self, link: object, event: TurnComplete) -> None:
        # After an interruption the caller's fragments belong to the turn being spoken now.
        if not self._interrupted:
            self._flush("user", self._user)
        self._interrupted = False
        self.end_turn()

    def on_tool_call(self, link: object, event: ToolCall) -> None:
        if self.turn_id is None:
            self.start_turn()
        self.resumption.busy()
        for fc in event.calls:
            call_id = fc.id or f"call-{next(self._ids)}"
            self._calls[call_id] = (fc.name, self.session_gen)
            if len(self._calls) > self._max_calls:
                self._calls.pop(next(iter(self._calls)))
            metrics.incr("gemini.tool_calls")
            self.listener.on_tool_call(call_id, fc.name, fc.args_json)

    def on_tool_call_cancellation(self, link: object, event: ToolCallCancellation) -> None:
        for call_id in event.ids:
            self._calls.pop(call_id, None)
        metrics.incr("gemini.tool_calls.cancelled", len(event.ids))
