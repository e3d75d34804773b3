"""OpenAI Realtime API events (GA shape), sans-I/O (protocols.md section 2).

Typed calls in, JSON text out (one text frame each); text in, typed events out. No sockets:
the connection module writes what the builders return and feeds received frames to
:func:`parse_server_event` (or to :class:`RealtimeState`, which also keeps the little state
the bridge needs: the active response and how much audio each assistant item has)::

    state = RealtimeState("pcmu")
    state.receive(await ws.recv())                                  # SessionCreated
    await ws.send(session_update(
        instructions=prompt, voice="marin", audio_format="pcmu", vad=server_vad(),
        input_transcription_model="gpt-4o-mini-transcribe", output_modalities=["audio"],
        tools=[function_tool("end_call", "Hang up.")], tool_choice="auto"))
    await ws.send(input_audio_append(chunk_b64))                    # 25-50 times a second
    event = state.receive(frame)                                    # dispatch on type(event)
    await ws.send(response_cancel()); await ws.send(state.truncate(played_ms))  # barge-in

Only the GA shape is built (``session.type = "realtime"``, ``audio.input.format`` objects,
``output_modalities``). The parser also maps the beta names of the audio/transcript/text
deltas and ``conversation.item.created`` to the same events (protocols.md 2.7).

Hot paths, per call:

* :func:`input_audio_append` (25-50 per second) is string concatenation around the base64
  payload: base64 never needs JSON escaping, so no dict and no ``orjson`` per frame.
* ``response.output_audio.delta`` is parsed with one ``orjson.loads`` and a few ``type()``
  checks into :class:`OutputAudioDelta`, a slotted but *not frozen* dataclass: a frozen one
  costs four times as much to build. No model validation on this path.

Every other event is a frozen slotted dataclass (h11 ``_events.py`` style). Unknown event
types become :class:`UnknownServerEvent` and are counted (``openai.events.unknown``): OpenAI
adds event types, that is not a protocol error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import orjson

from agentic_fast import metrics
from agentic_fast.errors import LocalProtocolError, RemoteProtocolError
from agentic_fast.log import get_logger

__all__ = [
    "AUDIO_FORMATS", "BYTES_PER_MS", "OMIT", "ConversationItemAdded", "ConversationItemDone",
    "ConversationItemTruncated", "ErrorEvent", "FunctionCall", "FunctionCallArgumentsDelta",
    "FunctionCallArgumentsDone", "InputAudioCleared", "InputAudioCommitted",
    "InputTranscriptionCompleted", "InputTranscriptionDelta", "InputTranscriptionFailed",
    "OpenAIProtocolError", "OutputAudioDelta", "OutputAudioDone", "OutputAudioTranscriptDelta",
    "OutputAudioTranscriptDone", "OutputTextDelta", "OutputTextDone", "RateLimit",
    "RateLimitsUpdated", "RealtimeState", "ResponseContentPartAdded", "ResponseContentPartDone",
    "ResponseCreated", "ResponseDone", "ResponseOutputItemAdded", "ResponseOutputItemDone",
    "ServerEvent", "SessionCreated", "SessionUpdated", "SpeechStarted", "SpeechStopped",
    "UnknownServerEvent", "conversation_item_create_function_output",
    "conversation_item_create_system_text", "conversation_item_create_user_text",
    "conversation_item_truncate", "function_tool", "input_audio_append", "input_audio_clear",
    "input_audio_commit", "parse_server_event", "response_cancel", "response_create",
    "semantic_vad", "server_vad", "session_update",
]

PEER = "openai"
_log = get_logger("providers.openai")

AudioFormat = Literal["pcm16", "pcmu", "pcma"]

#: Our short format names -> the GA ``audio.*.format`` objects (protocols.md 2.3).
AUDIO_FORMATS: Mapping[str, Mapping[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "pcmu": {"type": "audio/pcmu"},
    "pcma": {"type": "audio/pcma"},
}
#: Bytes of audio per millisecond for each format (protocols.md 4.1).
BYTES_PER_MS: Mapping[str, int] = {"pcm16": 48, "pcmu": 8, "pcma": 8}
_FORMAT_BY_WIRE_TYPE = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}

_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_VAD_KEYS = {
    "server_vad": frozenset({"type", "threshold", "prefix_padding_ms", "silence_duration_ms",
                             "create_response", "interrupt_response", "idle_timeout_ms"}),
    "semantic_vad": frozenset({"type", "eagerness", "create_response", "interrupt_response"}),
}


class _Omit(enum.Enum):
    OMIT = "OMIT"


#: "Leave this session field as it is" (``session.update`` is a partial update). Used where
#: ``None`` already means "send null" (turn detection off, transcription off).
OMIT = _Omit.OMIT


class OpenAIProtocolError(RemoteProtocolError):
    """OpenAI sent something that breaks protocols.md section 2.

    ``reason`` is a short token for counters: ``malformed_json``, ``not_object``,
    ``missing_field``, ``bad_type``, ``bad_value``. ``field`` names the offending field.
    """

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(message, peer=PEER)


# --------------------------------------------------------------------------- builders


def _local(message: str) -> NoReturn:
    raise LocalProtocolError(message, peer=PEER)


def _dumps(event: dict[str, Any], event_id: str | None) -> str:
    if event_id is not None:
        if type(event_id) is not str or not event_id:
            _local(f"event_id must be a non-empty string, got {event_id!r:.40}")
        event["event_id"] = event_id
    return orjson.dumps(event).decode()


def _nonempty_str(name: str, value: object) -> str:
    if type(value) is not str or not value:
        _local(f"{name} must be a non-empty string, got {value!r:.60}")
    return value


def _audio_format(name: str, value: str) -> dict[str, Any]:
    fmt = AUDIO_FORMATS.get(value)
    if fmt is None:
        _local(f"{name} must be one of {sorted(AUDIO_FORMATS)}, got {value!r:.40}")
    return dict(fmt)


def _tool_choice(value: str | Mapping[str, Any]) -> str | dict[str, Any]:
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            _local(f"tool_choice must be auto, none, required or a function, got {value!r:.40}")
        return value
    if value.get("type") != "function" or type(value.get("name")) is not str:
        _local(f"tool_choice object must be {{'type': 'function', 'name': ...}}, got {value!r:.80}")
    return dict(value)


def _tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool.get("type") != "function" or type(tool.get("name")) is not str:
            _local(f"each tool must have type 'function' and a name, got {tool!r:.80}")
        out.append(dict(tool))
    return out


def _modalities(value: Sequence[str]) -> list[str]:
    mods = list(value)
    if mods not in (["audio"], ["text"]):
        _local(f"output_modalities must be ['audio'] or ['text'] (GA), got {mods!r:.40}")
    return mods


def function_tool(name: str, description: str, parameters: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """A function tool for ``session.update``/``response.create`` (``parameters``: JSON Schema)."""
    return {"type": "function", "name": _nonempty_str("tool name", name),
            "description": description,
            "parameters": dict(parameters) if parameters is not None
            else {"type": "object", "properties": {}}}


def server_vad(*, threshold: float = 0.5, prefix_padding_ms: int = 300,
               silence_duration_ms: int = 500, create_response: bool = True,
               interrupt_response: bool = True, idle_timeout_ms: int | None = None
               ) -> dict[str, Any]:
    """A ``server_vad`` turn-detection object (protocols.md 2.3 defaults)."""
    if not 0.0 <= threshold <= 1.0:
        _local(f"server_vad threshold must be within 0..1, got {threshold!r}")
    vad: dict[str, Any] = {"type": "server_vad", "threshold": threshold,
                           "prefix_padding_ms": prefix_padding_ms,
                           "silence_duration_ms": silence_duration_ms,
                           "create_response": create_response,
                           "interrupt_response": interrupt_response}
    if idle_timeout_ms is not None:
        vad["idle_timeout_ms"] = idle_timeout_ms
    return vad


def semantic_vad(*, eagerness: Literal["low", "medium", "high", "auto"] = "auto",
                 create_response: bool = True, interrupt_response: bool = True
                 ) -> dict[str, Any]:
    """A ``semantic_vad`` turn-detection object."""
    return {"type": "semantic_vad", "eagerness": eagerness,
            "create_response": create_response, "interrupt_response": interrupt_response}


def _vad(vad: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if vad is None:
        return None
    allowed = _VAD_KEYS.get(vad.get("type"))  # type: ignore[arg-type]
    if allowed is None:
        _local(f"vad type must be server_vad or semantic_vad, got {vad.get('type')!r:.40}")
    extra = set(vad) - allowed
    if extra:
        _local(f"unknown {vad['type']} field(s): {sorted(extra)}")
    return dict(vad)


def session_update(
    *,
    instructions: str | None = None,
    voice: str | None = None,
    audio_format: AudioFormat | None = None,
    output_audio_format: AudioFormat | None = None,
    vad: Mapping[str, Any] | _Omit | None = OMIT,
    input_transcription_model: str | _Omit | None = OMIT,
    transcription_language: str | None = None,
    noise_reduction: Literal["near_field", "far_field"] | _Omit | None = OMIT,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: str | Mapping[str, Any] | None = None,
    output_modalities: Sequence[str] | None = None,
    max_output_tokens: int | Literal["inf"] | None = None,
    speed: float | None = None,
    event_id: str | None = None,
) -> str:
    """``session.update`` (GA). A partial update: arguments left at ``None``/``OMIT`` are not sent.

    ``audio_format`` sets both directions (``output_audio_format`` overrides the output one):
    ``pcm16`` -> ``{"type": "audio/pcm", "rate": 24000}``, ``pcmu`` -> ``{"type":
    "audio/pcmu"}``. ``vad``: a :func:`server_vad`/:func:`semantic_vad` object, or ``None``
    for manual turns (``turn_detection: null``). ``input_transcription_model``: a model id,
    or ``None``/``""`` to switch input transcription off.
    """
    session: dict[str, Any] = {"type": "realtime"}
    if instructions is not None:
        if type(instructions) is not str:
            _local(f"instructions must be a string, got {type(instructions).__name__}")
        session["instructions"] = instructions
    if output_modalities is not None:
        session["output_modalities"] = _modalities(output_modalities)
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    if audio_format is not None:
        audio_in["format"] = _audio_format("audio_format", audio_format)
        audio_out["format"] = _audio_format("audio_format", audio_format)
    if output_audio_format is not None:
        audio_out["format"] = _audio_format("output_audio_format", output_audio_format)
    if noise_reduction is not OMIT:
        if noise_reduction not in (None, "near_field", "far_field"):
            _local(f"noise_reduction must be near_field, far_field or None, "
                   f"got {noise_reduction!r:.40}")
        audio_in["noise_reduction"] = None if noise_reduction is None else {
            "type": noise_reduction}
    if input_transcription_model is not OMIT:
        if not input_transcription_model:
            audio_in["transcription"] = None
        else:
            tr = {"model": _nonempty_str("input_transcription_model",
                                         input_transcription_model)}
            if transcription_language:
                tr["language"] = transcription_language
            audio_in["transcription"] = tr
    if vad is not OMIT:
        audio_in["turn_detection"] = _vad(vad)
    if voice is not None:
        audio_out["voice"] = _nonempty_str("voice", voice)
    if speed is not None:
        if not 0.25 <= speed <= 1.5:
            _local(f"speed must be within 0.25..1.5, got {speed!r}")
        audio_out["speed"] = speed
    if audio_in or audio_out:
        audio: dict[str, Any] = {}
        if audio_in:
            audio["input"] = audio_in
        if audio_out:
            audio["output"] = audio_out
        session["audio"] = audio
    if tools is not None:
        session["tools"] = _tools(tools)
    if tool_choice is not None:
        session["tool_choice"] = _tool_choice(tool_choice)
    if max_output_tokens is not None:
        session["max_output_tokens"] = max_output_tokens
    return _dumps({"type": "session.update", "session": session}, event_id)


_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = '"}'


def input_audio_append(audio_b64: str, event_id: str | None = None) -> str:
    """``input_audio_buffer.append`` around base64 audio in the session's input format.

    HOT PATH: the payload is trusted to be base64 text (what the audio layer produces) and is
    not checked; no acknowledgement comes back.
    """
    if event_id is None:
        return _APPEND_HEAD + audio_b64 + _APPEND_TAIL
    return (_APPEND_HEAD + audio_b64 + '","event_id":'
            + orjson.dumps(_nonempty_str("event_id", event_id)).decode() + "}")


def input_audio_commit(event_id: str | None = None) -> str:
    """``input_audio_buffer.commit`` (manual turns; an empty buffer is an error)."""
    return _dumps({"type": "input_audio_buffer.commit"}, event_id)


def input_audio_clear(event_id: str | None = None) -> str:
    """``input_audio_buffer.clear``: drop uncommitted input audio."""
    return _dumps({"type": "input_audio_buffer.clear"}, event_id)


def response_create(
    instructions: str | None = None,
    *,
    output_modalities: Sequence[str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: str | Mapping[str, Any] | None = None,
    conversation: Literal["auto", "none"] | None = None,
    input_items: Sequence[Mapping[str, Any]] | None = None,
    metadata: Mapping[str, str] | None = None,
    max_output_tokens: int | Literal["inf"] | None = None,
    event_id: str | None = None,
) -> str:
    """``response.create``; with no arguments the session defaults apply."""
    response: dict[str, Any] = {}
    if instructions is not None:
        response["instructions"] = instructions
    if output_modalities is not None:
        response["output_modalities"] = _modalities(output_modalities)
    if tools is not None:
        response["tools"] = _tools(tools)
    if tool_choice is not None:
        response["tool_choice"] = _tool_choice(tool_choice)
    if conversation is not None:
        if conversation not in ("auto", "none"):
            _local(f"conversation must be auto or none, got {conversation!r:.40}")
        response["conversation"] = conversation
    if input_items is not None:
        response["input"] = [dict(item) for item in input_items]
    if metadata is not None:
        response["metadata"] = dict(metadata)
    if max_output_tokens is not None:
        response["max_output_tokens"] = max_output_tokens
    event: dict[str, Any] = {"type": "response.create"}
    if response:
        event["response"] = response
    return _dumps(event, event_id)


def response_cancel(response_id: str | None = None, *, event_id: str | None = None) -> str:
    """``response.cancel`` of the active response (or of ``response_id``)."""
    event: dict[str, Any] = {"type": "response.cancel"}
    if response_id is not None:
        event["response_id"] = _nonempty_str("response_id", response_id)
    return _dumps(event, event_id)


def conversation_item_truncate(item_id: str, content_index: int, audio_end_ms: int, *,
                               event_id: str | None = None) -> str:
    """``conversation.item.truncate`` of an *assistant* audio item after a barge-in.

    ``audio_end_ms`` is what the caller actually heard; it must not exceed the audio generated
    for the item (:meth:`RealtimeState.truncate` clamps it).
    """
    if type(content_index) is not int or content_index < 0:
        _local(f"content_index must be an int >= 0, got {content_index!r:.20}")
    if type(audio_end_ms) is not int or audio_end_ms < 0:
        _local(f"audio_end_ms must be an int >= 0, got {audio_end_ms!r:.20}")
    return _dumps({"type": "conversation.item.truncate",
                   "item_id": _nonempty_str("item_id", item_id),
                   "content_index": content_index, "audio_end_ms": audio_end_ms}, event_id)


def _text_message(role: str, text: str, previous_item_id: str | None,
                  event_id: str | None) -> str:
    if type(text) is not str:
        _local(f"text must be a string, got {type(text).__name__}")
    event: dict[str, Any] = {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": role,
                 "content": [{"type": "input_text", "text": text}]}}
    if previous_item_id is not None:
        event["previous_item_id"] = previous_item_id
    return _dumps(event, event_id)


def conversation_item_create_user_text(text: str, *, previous_item_id: str | None = None,
                                       event_id: str | None = None) -> str:
    """``conversation.item.create`` of a user text message (``input_text``)."""
    return _text_message("user", text, previous_item_id, event_id)


def conversation_item_create_system_text(text: str, *, previous_item_id: str | None = None,
                                         event_id: str | None = None) -> str:
    """``conversation.item.create`` of a system message (context mid-call)."""
    return _text_message("system", text, previous_item_id, event_id)


def conversation_item_create_function_output(call_id: str, output: str | Mapping[str, Any], *,
                                             previous_item_id: str | None = None,
                                             event_id: str | None = None) -> str:
    """``conversation.item.create`` of a ``function_call_output``; a mapping is JSON-encoded.

    The model does not continue on its own: send :func:`response_create` afterwards.
    """
    if not isinstance(output, str):
        output = orjson.dumps(output).decode()
    event: dict[str, Any] = {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": _nonempty_str("call_id", call_id),
                 "output": output}}
    if previous_item_id is not None:
        event["previous_item_id"] = previous_item_id
    return _dumps(event, event_id)


# --------------------------------------------------------------------------- events


def _format_of(session: Mapping[str, Any], direction: str) -> str | None:
    """``pcm16``/``pcmu``/``pcma`` from ``session.audio.<direction>.format`` (None if absent)."""
    try:
        wire_type = session["audio"][direction]["format"]["type"]
    except (KeyError, TypeError):
        return None
    return _FORMAT_BY_WIRE_TYPE.get(wire_type)


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """First event of a connection: the full session object (``session``, read-only)."""

    session: Mapping[str, Any] = field(hash=False)
    event_id: str = ""

    @property
    def session_id(self) -> str | None:
        sid = self.session.get("id")
        return sid if type(sid) is str else None

    @property
    def output_format(self) -> str | None:
        return _format_of(self.session, "output")


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """Answer to ``session.update``: the full *effective* session."""

    session: Mapping[str, Any] = field(hash=False)
    event_id: str = ""

    @property
    def output_format(self) -> str | None:
        return _format_of(self.session, "output")


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Server VAD heard the caller start speaking (barge-in trigger)."""

    audio_start_ms: int
    item_id: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class InputAudioCommitted:
    item_id: str
    previous_item_id: str | None = None
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class InputAudioCleared:
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class InputTranscriptionDelta:
    """Partial transcript of a caller turn (asynchronous; may come after the reply starts)."""

    item_id: str
    content_index: int
    delta: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class InputTranscriptionCompleted:
    """Final transcript of a caller turn (``item_id`` is the user item)."""

    item_id: str
    content_index: int
    transcript: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class InputTranscriptionFailed:
    item_id: str
    content_index: int
    code: str | None
    message: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ConversationItemAdded:
    """``conversation.item.added`` (GA) or ``conversation.item.created`` (beta)."""

    item_id: str
    item: Mapping[str, Any] = field(hash=False)
    previous_item_id: str | None = None
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ConversationItemDone:
    item_id: str
    item: Mapping[str, Any] = field(hash=False)
    previous_item_id: str | None = None
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ConversationItemTruncated:
    item_id: str
    content_index: int
    audio_end_ms: int
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str
    status: str
    response: Mapping[str, Any] = field(hash=False)
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ResponseOutputItemAdded:
    response_id: str
    output_index: int
    item_id: str
    item: Mapping[str, Any] = field(hash=False)
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ResponseOutputItemDone:
    response_id: str
    output_index: int
    item_id: str
    item: Mapping[str, Any] = field(hash=False)
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ResponseContentPartAdded:
    """A content part opens (``part``: ``{"type": "audio"|"text", ...}``)."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: Mapping[str, Any] = field(hash=False)
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ResponseContentPartDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: Mapping[str, Any] = field(hash=False)
    event_id: str = ""


@dataclass(slots=True)
class OutputAudioDelta:
    """One chunk of assistant audio: ``delta`` is base64 in the session's output format.

    HOT PATH: slotted but not frozen (a frozen dataclass costs ~4x to build); treat it as
    read-only. Beta ``response.audio.delta`` parses to this too.
    """

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class OutputAudioDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class OutputAudioTranscriptDelta:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class OutputAudioTranscriptDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    transcript: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class OutputTextDelta:
    """Text modality output (``output_modalities: ["text"]``)."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class OutputTextDone:
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    text: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCallArgumentsDelta:
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCallArgumentsDone:
    """The model called a tool; ``arguments`` is a JSON *string* (not parsed here)."""

    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A ``function_call`` item found in ``response.done`` output."""

    call_id: str
    name: str
    arguments: str
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """End of a response. ``status``: completed, cancelled, failed, incomplete.

    ``status_details`` (or None) has ``reason``: ``turn_detected`` (VAD barge-in),
    ``client_cancelled``, ``max_output_tokens``, ``content_filter``.
    """

    response_id: str
    status: str
    status_details: Mapping[str, Any] | None = field(default=None, hash=False)
    output: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    usage: Mapping[str, Any] | None = field(default=None, hash=False)
    event_id: str = ""

    @property
    def reason(self) -> str | None:
        details = self.status_details
        reason = details.get("reason") if details else None
        return reason if type(reason) is str else None

    @property
    def function_calls(self) -> tuple[FunctionCall, ...]:
        return tuple(
            FunctionCall(item["call_id"], item["name"], item.get("arguments", ""), item.get("id"))
            for item in self.output
            if item.get("type") == "function_call"
            and type(item.get("call_id")) is str and type(item.get("name")) is str)


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """``error``: most leave the session open. ``client_event_id`` names our offending event.

    ``error_type`` is e.g. ``invalid_request_error``; ``code`` e.g.
    ``conversation_already_has_active_response``, ``response_cancel_not_active``.
    """

    error_type: str
    code: str | None
    message: str
    param: str | None = None
    client_event_id: str | None = None
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class RateLimit:
    name: str
    limit: int | None
    remaining: int | None
    reset_seconds: float | None


@dataclass(frozen=True, slots=True)
class RateLimitsUpdated:
    """Optional (never block on it)."""

    rate_limits: tuple[RateLimit, ...]
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class UnknownServerEvent:
    """A well-formed event of a type we do not handle (counted, not an error)."""

    type: str
    raw: Mapping[str, Any] = field(hash=False)
    event_id: str = ""


ServerEvent = (
    SessionCreated | SessionUpdated | SpeechStarted | SpeechStopped | InputAudioCommitted
    | InputAudioCleared | InputTranscriptionDelta | InputTranscriptionCompleted
    | InputTranscriptionFailed | ConversationItemAdded | ConversationItemDone
    | ConversationItemTruncated | ResponseCreated | ResponseOutputItemAdded
    | ResponseOutputItemDone | ResponseContentPartAdded | ResponseContentPartDone
    | OutputAudioDelta | OutputAudioDone | OutputAudioTranscriptDelta
    | OutputAudioTranscriptDone | OutputTextDelta | OutputTextDone | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone | ResponseDone | ErrorEvent | RateLimitsUpdated
    | UnknownServerEvent
)


# --------------------------------------------------------------------------- field access


def _fail(reason: str, message: str, fld: str | None = None) -> NoReturn:
    raise OpenAIProtocolError(message, reason=reason, field=fld)


def _str(msg: dict[str, Any], key: str, where: str = "") -> str:
    value = msg[key]
    if type(value) is not str:
        _fail("bad_type", f"{where}{key!r} must be a string, got {value!r:.40}", where + key)
    return value


def _opt_str(msg: dict[str, Any], key: str, where: str = "") -> str | None:
    value = msg.get(key)
    if value is not None and type(value) is not str:
        _fail("bad_type", f"{where}{key!r} must be a string or null, got {value!r:.40}",
              where + key)
    return value


def _int(msg: dict[str, Any], key: str, where: str = "") -> int:
    value = msg[key]
    if type(value) is not int:
        _fail("bad_type", f"{where}{key!r} must be an integer, got {value!r:.40}", where + key)
    return value


def _obj(msg: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = msg[key]
    if type(value) is not dict:
        _fail("bad_type", f"{where}{key!r} must be a JSON object, got {type(value).__name__}",
              where + key)
    return value


def _eid(msg: dict[str, Any]) -> str:
    eid = msg.get("event_id")
    return eid if type(eid) is str else ""


def _part_ids(msg: dict[str, Any]) -> tuple[str, str, int, int]:
    return (_str(msg, "response_id"), _str(msg, "item_id"), _int(msg, "output_index"),
            _int(msg, "content_index"))


# --------------------------------------------------------------------------- parsers


def _audio_delta(msg: dict[str, Any]) -> OutputAudioDelta:
    rid = msg["response_id"]
    iid = msg["item_id"]
    oix = msg["output_index"]
    cix = msg["content_index"]
    delta = msg["delta"]
    if (type(delta) is not str or type(iid) is not str or type(rid) is not str
            or type(oix) is not int or type(cix) is not int):
        _part_ids(msg)  # names the offending id field
        _str(msg, "delta")
    eid = msg.get("event_id")
    return OutputAudioDelta(rid, iid, oix, cix, delta, eid if type(eid) is str else "")


def _session(cls: type[SessionCreated] | type[SessionUpdated]
             ) -> Callable[[dict[str, Any]], ServerEvent]:
    def parse(msg: dict[str, Any]) -> ServerEvent:
        return cls(_obj(msg, "session"), _eid(msg))
    return parse


def _item_event(cls: type[ConversationItemAdded] | type[ConversationItemDone]
                ) -> Callable[[dict[str, Any]], ServerEvent]:
    def parse(msg: dict[str, Any]) -> ServerEvent:
        item = _obj(msg, "item")
        return cls(_str(item, "id", "item."), item, _opt_str(msg, "previous_item_id"),
                   _eid(msg))
    return parse


def _output_item(cls: type[ResponseOutputItemAdded] | type[ResponseOutputItemDone]
                 ) -> Callable[[dict[str, Any]], ServerEvent]:
    def parse(msg: dict[str, Any]) -> ServerEvent:
        item = _obj(msg, "item")
        return cls(_str(msg, "response_id"), _int(msg, "output_index"),
                   _str(item, "id", "item."), item, _eid(msg))
    return parse


def _response_done(msg: dict[str, Any]) -> ResponseDone:
    resp = _obj(msg, "response")
    details = resp.get("status_details")
    if details is not None and type(details) is not dict:
        _fail("bad_type", "response.status_details must be an object or null",
              "response.status_details")
    output = resp.get("output")
    if output is None:
        output = []
    if type(output) is not list or any(type(i) is not dict for i in output):
        _fail("bad_type", "response.output must be a list of objects", "response.output")
    usage = resp.get("usage")
    return ResponseDone(_str(resp, "id", "response."), _str(resp, "status", "response."),
                        details, tuple(output), usage if type(usage) is dict else None,
                        _eid(msg))


def _error(msg: dict[str, Any]) -> ErrorEvent:
    err = _obj(msg, "error")
    w = "error."
    return ErrorEvent(_str(err, "type", w), _opt_str(err, "code", w), _str(err, "message", w),
                      _opt_str(err, "param", w), _opt_str(err, "event_id", w), _eid(msg))


def _rate_limits(msg: dict[str, Any]) -> RateLimitsUpdated:
    limits = msg["rate_limits"]
    if type(limits) is not list or any(type(x) is not dict for x in limits):
        _fail("bad_type", "'rate_limits' must be a list of objects", "rate_limits")
    return RateLimitsUpdated(tuple(
        RateLimit(str(x.get("name", "")), x.get("limit"), x.get("remaining"),
                  x.get("reset_seconds")) for x in limits), _eid(msg))


def _transcription_failed(msg: dict[str, Any]) -> InputTranscriptionFailed:
    err = msg.get("error")
    err = err if type(err) is dict else {}
    return InputTranscriptionFailed(_str(msg, "item_id"), _int(msg, "content_index"),
                                    _opt_str(err, "code", "error."),
                                    str(err.get("message", "")), _eid(msg))


def _fn_args_done(m: dict[str, Any]) -> FunctionCallArgumentsDone:
    return FunctionCallArgumentsDone(_str(m, "response_id"), _str(m, "item_id"),
                                     _int(m, "output_index"), _str(m, "call_id"),
                                     _str(m, "name"), _str(m, "arguments"), _eid(m))


_PARSERS: dict[str, Callable[[dict[str, Any]], ServerEvent]] = {
    # hot first (dict order does not matter for lookups, it documents the priority)
    "response.output_audio.delta": _audio_delta,
    "response.output_audio_transcript.delta": lambda m: OutputAudioTranscriptDelta(
        *_part_ids(m), _str(m, "delta"), _eid(m)),
    "input_audio_buffer.speech_started": lambda m: SpeechStarted(
        _int(m, "audio_start_ms"), _str(m, "item_id"), _eid(m)),
    "input_audio_buffer.speech_stopped": lambda m: SpeechStopped(
        _int(m, "audio_end_ms"), _str(m, "item_id"), _eid(m)),
    "input_audio_buffer.committed": lambda m: InputAudioCommitted(
        _str(m, "item_id"), _opt_str(m, "previous_item_id"), _eid(m)),
    "input_audio_buffer.cleared": lambda m: InputAudioCleared(_eid(m)),
    "conversation.item.input_audio_transcription.delta": lambda m: InputTranscriptionDelta(
        _str(m, "item_id"), m.get("content_index", 0), _str(m, "delta"), _eid(m)),
    "conversation.item.input_audio_transcription.completed":
        lambda m: InputTranscriptionCompleted(_str(m, "item_id"), m.get("content_index", 0),
                                              _str(m, "transcript"), _eid(m)),
    "conversation.item.input_audio_transcription.failed": _transcription_failed,
    "conversation.item.added": _item_event(ConversationItemAdded),
    "conversation.item.created": _item_event(ConversationItemAdded),  # beta name
    "conversation.item.done": _item_event(ConversationItemDone),
    "conversation.item.truncated": lambda m: ConversationItemTruncated(
        _str(m, "item_id"), _int(m, "content_index"), _int(m, "audio_end_ms"), _eid(m)),
    "response.created": lambda m: ResponseCreated(
        _str(_obj(m, "response"), "id", "response."),
        _str(m["response"], "status", "response."), m["response"], _eid(m)),
    "response.output_item.added": _output_item(ResponseOutputItemAdded),
    "response.output_item.done": _output_item(ResponseOutputItemDone),
    "response.content_part.added": lambda m: ResponseContentPartAdded(
        *_part_ids(m), _obj(m, "part"), _eid(m)),
    "response.content_part.done": lambda m: ResponseContentPartDone(
        *_part_ids(m), _obj(m, "part"), _eid(m)),
    "response.output_audio.done": lambda m: OutputAudioDone(*_part_ids(m), _eid(m)),
    "response.output_audio_transcript.done": lambda m: OutputAudioTranscriptDone(
        *_part_ids(m), _str(m, "transcript"), _eid(m)),
    "response.output_text.delta": lambda m: OutputTextDelta(
        *_part_ids(m), _str(m, "delta"), _eid(m)),
    "response.output_text.done": lambda m: OutputTextDone(
        *_part_ids(m), _str(m, "text"), _eid(m)),
    "response.function_call_arguments.delta": lambda m: FunctionCallArgumentsDelta(
        _str(m, "response_id"), _str(m, "item_id"), _int(m, "output_index"),
        _str(m, "call_id"), _str(m, "delta"), _eid(m)),
    "response.function_call_arguments.done": _fn_args_done,
    "response.done": _response_done,
    "session.created": _session(SessionCreated),
    "session.updated": _session(SessionUpdated),
    "error": _error,
    "rate_limits.updated": _rate_limits,
}
# Beta names of the same deltas (protocols.md 2.7): accept both.
for _beta, _ga in (("response.audio.delta", "response.output_audio.delta"),
                   ("response.audio.done", "response.output_audio.done"),
                   ("response.audio_transcript.delta", "response.output_audio_transcript.delta"),
                   ("response.audio_transcript.done", "response.output_audio_transcript.done"),
                   ("response.text.delta", "response.output_text.delta"),
                   ("response.text.done", "response.output_text.done")):
    _PARSERS[_beta] = _PARSERS[_ga]

#: Unknown types already logged (bounded: a misbehaving peer cannot grow it without limit).
_unknown_logged: set[str] = set()


def _unknown(kind: str, msg: dict[str, Any]) -> UnknownServerEvent:
    metrics.incr("openai.events.unknown")
    if kind not in _unknown_logged and len(_unknown_logged) < 256:
        _unknown_logged.add(kind)
        _log.info("openai.event.unknown", type=kind[:80])
    return UnknownServerEvent(kind, msg, _eid(msg))


def parse_server_event(text: str | bytes) -> ServerEvent:
    """Parse one server text frame into an event.

    Raises :class:`OpenAIProtocolError` (a ``RemoteProtocolError``, ``peer="openai"``) with a
    ``reason`` for malformed JSON, a non-object, or a missing/mistyped field we rely on.
    """
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise OpenAIProtocolError(f"malformed JSON: {exc}", reason="malformed_json") from exc
    if type(msg) is not dict:
        _fail("not_object", f"event must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if type(kind) is not str:
        if kind is None:
            _fail("missing_field", "event has no 'type' field", "type")
        _fail("bad_type", f"'type' must be a string, got {kind!r:.40}", "type")
    parser = _PARSERS.get(kind)
    if parser is None:
        return _unknown(kind, msg)
    try:
        return parser(msg)
    except KeyError as exc:
        key = exc.args[0] if exc.args else "?"
        raise OpenAIProtocolError(f"{kind} event is missing field {key!r}",
                                  reason="missing_field", field=str(key)) from None


# --------------------------------------------------------------------------- state


class RealtimeState:
    """What one connection knows between frames, for the bridge (python-websockets style).

    Theory: the server streams at most one active response; its audio arrives as deltas of one
    assistant item at a time. We track the active response id and the audio received per
    assistant item (the current one, plus the last few before it), because a truncate must not
    name more audio than the item has (protocols.md 2.8). The output format comes from
    ``session.created``/``session.updated``.
    """

    __slots__ = ("_bytes_per_ms", "_earlier", "active_response_id", "audio_bytes",
                 "audio_content_index", "audio_item_id", "output_format", "session")

    #: Earlier audio items remembered for a late truncate (bounded).
    MAX_EARLIER_ITEMS = 8

    def __init__(self, output_format: AudioFormat = "pcm16") -> None:
        self.session: Mapping[str, Any] | None = None
        self.output_format: str = output_format
        self._bytes_per_ms = BYTES_PER_MS[output_format]
        self.active_response_id: str | None = None
        self.audio_item_id: str | None = None
        self.audio_content_index = 0
        self.audio_bytes = 0
        self._earlier: dict[str, tuple[int, int]] = {}  # item id -> (bytes, content index)

    def receive(self, text: str | bytes) -> ServerEvent:
        """Parse a frame (see :func:`parse_server_event`) and update the state."""
        event = parse_server_event(text)
        if type(event) is OutputAudioDelta:  # fast path
            delta = event.delta
            if event.item_id != self.audio_item_id:
                self._switch_item(event.item_id, event.content_index)
            pad = 2 if delta.endswith("==") else 1 if delta.endswith("=") else 0
            self.audio_bytes += len(delta) // 4 * 3 - pad
        elif type(event) is ResponseCreated:
            self.active_response_id = event.response_id
        elif type(event) is ResponseDone:
            if event.response_id == self.active_response_id:
                self.active_response_id = None
        elif type(event) is SessionCreated or type(event) is SessionUpdated:
            self.session = event.session
            fmt = event.output_format
            if fmt is not None:
                self.output_format = fmt
                self._bytes_per_ms = BYTES_PER_MS[fmt]
        elif type(event) is ConversationItemTruncated:
            cut = event.audio_end_ms * self._bytes_per_ms
            if event.item_id == self.audio_item_id:
                self.audio_bytes = min(self.audio_bytes, cut)
            elif event.item_id in self._earlier:
                nbytes, index = self._earlier[event.item_id]
                self._earlier[event.item_id] = (min(nbytes, cut), index)
        return event

    def _switch_item(self, item_id: str, content_index: int) -> None:
        if self.audio_item_id is not None:
            self._earlier[self.audio_item_id] = (self.audio_bytes, self.audio_content_index)
            if len(self._earlier) > self.MAX_EARLIER_ITEMS:
                del self._earlier[next(iter(self._earlier))]
        self.audio_item_id = item_id
        self.audio_content_index = content_index
        self.audio_bytes = 0

    @property
    def response_active(self) -> bool:
        return self.active_response_id is not None

    @property
    def audio_ms(self) -> int:
        """Milliseconds of audio received for the current assistant audio item."""
        return self.audio_bytes // self._bytes_per_ms

    def audio_ms_of(self, item_id: str) -> int | None:
        """Milliseconds of audio received for ``item_id`` (None if not a known audio item)."""
        if item_id == self.audio_item_id:
            return self.audio_ms
        earlier = self._earlier.get(item_id)
        return None if earlier is None else earlier[0] // self._bytes_per_ms

    def truncate(self, played_ms: int, item_id: str | None = None, *,
                 event_id: str | None = None) -> str | None:
        """``conversation.item.truncate`` at ``played_ms`` of ``item_id`` (default: the current
        audio item), clamped to the audio received for it; None for an unknown item."""
        item_id = item_id or self.audio_item_id
        if item_id is None:
            return None
        have_ms = self.audio_ms_of(item_id)
        if have_ms is None:
            return None
        index = (self.audio_content_index if item_id == self.audio_item_id
                 else self._earlier[item_id][1])
        end_ms = max(0, min(int(played_ms), have_ms))
        return conversation_item_truncate(item_id, index, end_ms, event_id=event_id)
