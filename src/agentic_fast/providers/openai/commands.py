"""OpenAI Realtime client events we send: JSON text built and checked here (protocols.md 2).

Typed calls in, JSON text out (one text frame each), sans-I/O: the connection module writes
what these builders return. Server events, their parsing and :class:`RealtimeState` live in
:mod:`agentic_fast.providers.openai.events`::

    await ws.send(session_update(
        instructions=prompt, voice="marin", audio_format="pcmu", vad=server_vad(),
        input_transcription_model="gpt-4o-mini-transcribe", output_modalities=["audio"],
        tools=[function_tool("end_call", "Hang up.")], tool_choice="auto"))
    await ws.send(input_audio_append(chunk_b64))                    # 25-50 times a second
    await ws.send(response_cancel()); await ws.send(truncate_at(state, played_ms))  # barge-in

Only the GA shape is built (``session.type = "realtime"``, ``audio.input.format`` objects,
``output_modalities``). Misuse raises :class:`~agentic_fast.core.errors.LocalProtocolError`.

Hot path: :func:`input_audio_append` (25-50 per second) is string concatenation around the
base64 payload: base64 never needs JSON escaping, so no dict and no ``orjson`` per frame.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NoReturn

import orjson

from agentic_fast.core.errors import LocalProtocolError
from agentic_fast.providers.openai.events import AUDIO_FORMATS, PEER, AudioFormat, RealtimeState

__all__ = [
    "OMIT", "conversation_item_create_function_output", "conversation_item_create_system_text",
    "conversation_item_create_user_text", "conversation_item_truncate", "function_tool",
    "input_audio_append", "input_audio_clear", "input_audio_commit", "response_cancel",
    "response_create", "semantic_vad", "server_vad", "session_update", "truncate_at",
]

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
    for the item (:func:`truncate_at` clamps it).
    """
    if type(content_index) is not int or content_index < 0:
        _local(f"content_index must be an int >= 0, got {content_index!r:.20}")
    if type(audio_end_ms) is not int or audio_end_ms < 0:
        _local(f"audio_end_ms must be an int >= 0, got {audio_end_ms!r:.20}")
    return _dumps({"type": "conversation.item.truncate",
                   "item_id": _nonempty_str("item_id", item_id),
                   "content_index": content_index, "audio_end_ms": audio_end_ms}, event_id)


def truncate_at(state: RealtimeState, played_ms: int, item_id: str | None = None, *,
                event_id: str | None = None) -> str | None:
    """The truncate of ``item_id`` (default: the current audio item) after ``played_ms``,
    clamped to the audio that arrived for it (:meth:`RealtimeState.truncate_point`); None
    for an item this session has no audio of."""
    point = state.truncate_point(played_ms, item_id)
    if point is None:
        return None
    return conversation_item_truncate(*point, event_id=event_id)


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
