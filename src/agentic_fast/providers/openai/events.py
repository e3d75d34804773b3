"""OpenAI Realtime server events (GA shape), sans-I/O: parsing and state (protocols.md 2).

Text in, typed events out. No sockets: the connection module feeds received frames to
:func:`parse_server_event` (or to :class:`RealtimeState`, which also keeps the little state
the bridge needs: the active response and how much audio each assistant item has). The
client events we send are built in :mod:`agentic_fast.providers.openai.commands`::

    state = RealtimeState("pcmu")
    state.receive(await ws.recv())                                  # SessionCreated
    event = state.receive(frame)                                    # dispatch on type(event)
    await ws.send(response_cancel()); await ws.send(truncate_at(state, played_ms))  # barge-in

The parser maps the GA names and also the beta names of the audio/transcript/text deltas
and ``conversation.item.created`` to the same events (protocols.md 2.7). The format maps
(:data:`AUDIO_FORMATS`, :data:`BYTES_PER_MS`) and :class:`OpenAIProtocolError` live here:
``openai_commands`` imports from this module, not the reverse.

Hot path: ``response.output_audio.delta`` is parsed with one ``orjson.loads`` and a few
``type()`` checks into :class:`OutputAudioDelta`, a slotted but *not frozen* dataclass: a
frozen one costs four times as much to build. No model validation on this path.

Every other event is a frozen slotted dataclass (h11 ``_events.py`` style). Unknown event
types become :class:`UnknownServerEvent` and are counted (``openai.events.unknown``): OpenAI
adds event types, that is not a protocol error.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from agentic_fast.core import metrics
from agentic_fast.core.errors import OpenAIProtocolError
from agentic_fast.core.jsonfields import JsonFields
from agentic_fast.core.log import get_logger

__all__ = [
    "AUDIO_FORMATS", "BYTES_PER_MS", "NORMAL_STOP_REASONS", "ConversationItemAdded",
    "ConversationItemDone", "ConversationItemTruncated", "ErrorEvent", "FunctionCall",
    "FunctionCallArgumentsDelta", "FunctionCallArgumentsDone", "InputAudioCleared",
    "InputAudioCommitted", "InputTranscriptionCompleted", "InputTranscriptionDelta",
    "InputTranscriptionFailed", "OutputAudioDelta", "OutputAudioDone",
    "OutputAudioTranscriptDelta", "OutputAudioTranscriptDone", "OutputTextDelta",
    "OutputTextDone", "RateLimit", "RateLimitsUpdated", "RealtimeState",
    "ResponseContentPartAdded", "ResponseContentPartDone", "ResponseCreated", "ResponseDone",
    "ResponseOutputItemAdded", "ResponseOutputItemDone", "ServerEvent", "SessionCreated",
    "SessionUpdated", "SpeechStarted", "SpeechStopped", "UnknownServerEvent",
    "parse_server_event",
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


#: ``status_details.reason`` of a response the caller or we stopped: not a failure.
NORMAL_STOP_REASONS = frozenset({"turn_detected", "client_cancelled"})


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """End of a response. ``status``: completed, cancelled, failed, incomplete.

    ``status_details`` (or None) has ``type`` (the status), ``reason``: ``turn_detected``
    (VAD barge-in), ``client_cancelled``, ``max_output_tokens``, ``content_filter``; and,
    when ``failed``, ``error{type, code, message}`` (quota, rate limit, server error).
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
    def error(self) -> Mapping[str, Any] | None:
        """``status_details.error`` of a failed response (``type``, ``code``, ``message``)."""
        details = self.status_details
        error = details.get("error") if details else None
        return error if type(error) is dict else None

    @property
    def failed(self) -> bool:
        """The model could not answer: ``failed``, or ``incomplete`` for a reason other than
        a barge-in/cancel (``max_output_tokens``, ``content_filter``)."""
        status = self.status
        return status == "failed" or (status == "incomplete"
                                      and self.reason not in NORMAL_STOP_REASONS)

    def describe(self) -> str:
        """Short text for logs and a call's end reason, e.g. ``failed rate_limit_exceeded:
        Rate limit reached`` or ``incomplete max_output_tokens``."""
        error = self.error or {}
        code = error.get("code") or error.get("type") or self.reason
        text = f"{self.status} {code}" if code else self.status
        message = error.get("message")
        return f"{text}: {message}"[:300] if message else text

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


_FIELDS = JsonFields(OpenAIProtocolError)
_fail = _FIELDS.fail
_str = _FIELDS.get_str
_opt_str = _FIELDS.get_opt_str
_int = _FIELDS.get_int
_obj = _FIELDS.get_obj


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

    def truncate_point(self, played_ms: int,
                       item_id: str | None = None) -> tuple[str, int, int] | None:
        """Where a ``conversation.item.truncate`` after ``played_ms`` of ``item_id``
        (default: the current audio item) must cut: ``(item_id, content_index,
        audio_end_ms)``, clamped to the audio received for the item; None for an unknown
        item. :func:`openai_commands.truncate_at` builds the event from it."""
        item_id = item_id or self.audio_item_id
        if item_id is None:
            return None
        have_ms = self.audio_ms_of(item_id)
        if have_ms is None:
            return None
        index = (self.audio_content_index if item_id == self.audio_item_id
                 else self._earlier[item_id][1])
        return item_id, index, max(0, min(int(played_ms), have_ms))
