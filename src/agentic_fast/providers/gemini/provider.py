"""Gemini Live provider: one call's socket(s), reader, goAway rotation and resumption.

The wire format lives in :mod:`gemini_events` (sans-I/O), one connection's handshake and the
resumption state in :mod:`gemini_session`; the socket's life (connect, write path, reader,
loss, stall watch, backlog and replay, close) is :class:`connection.ModelConnection`. This
module is the Gemini policy on top: setup and resumption, goAway rotation, turn state.

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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff, BackoffRun
from agentic_fast.core.config import Config, GeminiConfig
from agentic_fast.core.errors import ConfigError, PeerUnavailableError, SetupRejected
from agentic_fast.core.log import get_logger
from agentic_fast.providers import health
from agentic_fast.providers.base import ProviderListener, RealtimeProvider
from agentic_fast.providers.connection import ModelConnection, NullListener
from agentic_fast.providers.gemini import events as ge
from agentic_fast.providers.gemini.session import (
    PEER,
    GeminiLink,
    Resumption,
    TurnTracker,
    link_options,
    open_link,
)
from agentic_fast.providers.reconnect import carry_over_summary
from agentic_fast.providers.registry import ProviderContext, register

if TYPE_CHECKING:
    from agentic_fast.call.manager import CallSession

__all__ = ["GeminiLiveProvider"]

_B64_CHARS_PER_MS = ge.INPUT_RATE * 2 / 1000 * 4 / 3  # PCM16 16 kHz as base64 text

# A buffered control item: ("text", text, "") or ("tool", call_id, output).
_Item = tuple[str, str, str]


class GeminiLiveProvider(ModelConnection):
    """:class:`RealtimeProvider` for the Gemini Live API (BidiGenerateContent)."""

    peer: ClassVar[str] = PEER
    converter_format = "gemini"  # PCM16 16 kHz in, 24 kHz out
    _many_events = True
    _audio_frame = staticmethod(ge.realtime_audio)  # HOT: one call per caller audio chunk

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
        super().__init__(
            call_id=call_id, log=get_logger("providers.gemini").bind(call_id=call_id),
            backoff=backoff, backlog_chars=int(max_buffered_audio_ms * _B64_CHARS_PER_MS),
            replay_chars=int(max_replay_ms * _B64_CHARS_PER_MS),
            max_pending_items=max_pending_items, max_write_buffer=max_write_buffer,
            close_timeout_s=close_timeout_s, stall_timeout_s=stall_timeout_s,
            max_link_s=max_connection_s,
            stats=("connections", "resumed", "fresh_sessions", "reconnects", "rotations",
                   "go_aways", "resume_rejected", "audio_replayed", "tokens"))
        self.config = config
        self._setup = setup or ge.GeminiSetup(
            config.model, voice=config.voice, system_instruction=config.instructions or None,
            tools=tools or None, compression=ge.ContextCompression())
        self._options = link_options(config.url, config.api_key, timeout_s=connect_timeout_s,
                                     ping_interval_s=ping_interval_s,
                                     close_timeout_s=close_timeout_s,
                                     max_message_bytes=max_message_bytes)
        self._rotate_grace_s = rotate_grace_s
        self._go_away_margin_s = go_away_margin_s
        self._resume = Resumption()
        self._turns = TurnTracker(self._listener, self._resume, recent_lines=recent_lines)
        self._opening: str | None = None
        self._attempt_handle: str | None = None
        turns = self._turns
        self._handlers.update({
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
        })

    # -- RealtimeProvider ------------------------------------------------------------------

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

    # -- the connection policy: resumption, goAway rotation --------------------------------

    def _parser(self, link: GeminiLink) -> Callable[[bytes], Any]:
        return ge.parse_server_message

    def _closing_fields(self) -> dict[str, Any]:
        return {"turns": self._turns.turns, "interrupted_turns": self._turns.interrupted_turns}

    def _release_more(self) -> None:
        self._turns.listener = NullListener()

    def _on_lost(self, link: GeminiLink) -> None:
        self._turns.end_turn()  # the rest of that turn will not come

    def _on_fail(self) -> None:
        self._turns.end_turn()

    def _link_aged(self, link: GeminiLink) -> None:
        metrics.incr("gemini.rotate.max_age")
        self._ensure_switching("max_connection", grace_s=self._rotate_grace_s)

    async def _open(self) -> GeminiLink:
        """A new connection past ``setupComplete``: resumed with the newest handle, or a
        fresh session (after the first one, seeded with the recent transcript)."""
        self._seq += 1
        handle = self._attempt_handle = self._resume.handle
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
        except PeerUnavailableError as exc:
            metrics.incr("gemini.connect.failed")
            if isinstance(exc, SetupRejected) and health.gemini_auth_refusal(exc.code, exc.reason):
                health.auth_rejected(PEER, str(exc))
            raise
        health.session_ok(PEER)
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

    def _may_retry(self, exc: PeerUnavailableError) -> bool:
        """A refused setup is final, unless it carried a handle (expired or unknown): then
        the next attempt starts a fresh session."""
        if not isinstance(exc, SetupRejected) or not exc.fatal:
            return True
        if self._attempt_handle is None:
            return False
        self._resume.forget()
        self.stats["resume_rejected"] += 1
        metrics.incr("gemini.resume.rejected")
        self.log.warning("gemini.resume_rejected", code=exc.code, detail=exc.reason[:200])
        return True

    async def _switch(self, reason: str, proactive: bool) -> None:
        """Wait for a resumable point (bounded), then open a connection (resumed if we
        can, with backoff) and install it; the old one is closed afterwards."""
        await self._wait_resumable()
        old = self._link
        if old is not None:
            self._detach(old)
        run: BackoffRun = self._backoff.start()
        new, last = await self._open_with_backoff(run, reason)
        if new is None:
            self._fail(f"reconnect failed after {run.attempts} attempt(s): {last}")
            return
        self._turns.end_turn()  # the rest of a turn of the old connection will not come
        for link in list(self._links):
            if link.detached:
                self._retire(link)
        self._install(new)
        self._switched(new, "rotations" if old is not None else "reconnects", reason, run,
                       resumed=new.resumed)

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

    # -- events ----------------------------------------------------------------------------

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


def build(config: Config, context: ProviderContext
          ) -> Callable[[CallSession], RealtimeProvider]:
    """:data:`registry.Builder` of ``gemini``. The brain's declarations go wrapped in one
    Tool (``[{"functionDeclarations": [...]}]``): the Live API closes a setup whose
    ``tools`` hold bare declarations (1007)."""
    if not config.gemini.api_key:
        raise ConfigError("gemini.api_key is not set (audio.provider is gemini)",
                          key="gemini.api_key")
    gemini = config.gemini
    tools = [ge.function_tool(*context.declarations)] if context.declarations else None

    def make(session: CallSession) -> RealtimeProvider:
        return GeminiLiveProvider(gemini, call_id=session.call_id,
                                  connect_timeout_s=context.connect_timeout_s,
                                  tools=tools, stall_timeout_s=context.stall_timeout_s)

    return make


register("gemini", build)
