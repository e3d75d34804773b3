"""The one small interface between a call's bridge and a speech-to-speech model.

A provider owns its socket (connect, reconnect, session carry-over) and speaks its own
wire format; the bridge owns the call's audio, pacing and barge-in. Audio crosses this
seam as base64 text in the provider's own format (the converter made it so), which is what
both providers put in their JSON anyway: no extra decode/encode per chunk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agentic_fast.core import metrics


def dispatch_event(handlers: Mapping[type, Callable[[Any, Any], None]], owner: Any,
                   event: object, log: Any, prefix: str) -> None:
    """Call the handler registered for ``type(event)`` (none: ignored) with ``(owner,
    event)``. A handler that raises costs that event only: counted as
    ``<prefix>.handler_errors`` and logged with its traceback, never raised into the
    socket's reader or ``data_received``."""
    handler = handlers.get(type(event))
    if handler is not None:
        try:
            handler(owner, event)
        except Exception:
            metrics.incr(prefix + ".handler_errors")
            log.exception(prefix + ".handler_error", event=type(event).__name__)


class ProviderListener(Protocol):
    """What a provider reports to its bridge. Called on the event loop; must not block."""

    def on_audio(self, audio_b64: str, item_id: str) -> None:
        """A chunk of assistant audio (provider output format) for assistant item ``item_id``."""

    def on_audio_done(self, item_id: str) -> None:
        """The assistant finished a response's audio (flush the last partial frame)."""

    def on_speech_started(self) -> None:
        """The caller started speaking (OpenAI ``speech_started``, Gemini ``interrupted``)."""

    def on_speech_stopped(self) -> None:
        """The caller stopped speaking."""

    def on_transcript(self, role: str, text: str, final: bool) -> None:
        """Caller (``user``) or assistant text; ``final`` marks a complete turn."""

    def on_tool_call(self, call_id: str, name: str, arguments: str) -> None:
        """The model asks us to run a function tool (``arguments``: JSON text)."""

    def on_failed(self, reason: str) -> None:
        """The provider is gone for good (reconnects exhausted): end the call gracefully."""


class RealtimeProvider(ABC):
    """One call's connection to a realtime voice model."""

    #: AudioConverter provider name whose formats this provider speaks
    converter_format: str

    @property
    def response_active(self) -> bool:
        """The model is generating a response (created and not done). Caller speech then
        is a barge-in even when none of the response's audio is queued or playing; a
        provider that cannot tell says False."""
        return False

    @abstractmethod
    async def connect(self) -> None:
        """Open the socket and configure the session (pre-warm); idempotent."""

    @abstractmethod
    def attach(self, listener: ProviderListener) -> None:
        """Route this provider's events to ``listener`` (the bridge)."""

    @abstractmethod
    def send_audio(self, chunk_b64: str) -> None:
        """Caller audio, one handoff chunk; never blocks (bounded buffer while reconnecting)."""

    @abstractmethod
    def begin(self, *, speak_first: str | None) -> None:
        """Audio starts flowing; ``speak_first`` makes the assistant open with that prompt."""

    @abstractmethod
    def interrupt(self, item_id: str | None, audio_end_ms: int | None) -> None:
        """Barge-in: stop the current response; ``audio_end_ms`` is what the caller heard."""

    @abstractmethod
    def say(self, text: str) -> None:
        """Have the assistant speak ``text`` (an answer from the agent, a filler line)."""

    @abstractmethod
    def send_tool_result(self, call_id: str, output: str) -> None:
        """Answer a function tool call (then the model speaks from it)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the socket and stop every task; idempotent."""
