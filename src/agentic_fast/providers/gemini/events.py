"""Gemini Live API (BidiGenerateContent) messages, sans-I/O (protocols.md 3).

Builders return the JSON text of one client frame (lowerCamelCase, as the server emits);
:func:`parse_server_message` turns one server frame (the real server sends *binary* frames
of UTF-8 JSON; text frames are accepted too) into a list of typed events, because one
message can carry several things (audio parts, transcriptions, ``turnComplete`` and
``usageMetadata`` together).

A connection module drives it like this::

    setup = GeminiSetup("gemini-2.5-flash-native-audio-preview-09-2025", voice="Puck",
                        system_instruction=prompt)
    await ws.send(setup.to_json(resumption_handle=latest_handle))   # every (re)connect
    for event in parse_server_message(await ws.recv()):            # bytes or str
        handler = HANDLERS[type(event)]                             # a dispatch table
    await ws.send(realtime_audio(chunk_b64))                        # 25-50 times a second

Hot paths: :func:`realtime_audio` is two string concatenations around the base64 text (which
never needs JSON escaping); parsing an audio message is one ``orjson.loads`` plus a few dict
lookups and yields an :class:`AudioChunk` holding the base64 text undecoded (the audio layer
decodes it). No per-message model validation anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

import orjson

from agentic_fast.core.errors import GeminiProtocolError, LocalProtocolError
from agentic_fast.core.jsonfields import JsonFields
from agentic_fast.core.metrics import incr

__all__ = [
    "AUTH_HEADER", "CLOSE_DEADLINE", "CLOSE_INVALID_ARGUMENT", "CLOSE_POLICY", "INPUT_MIME",
    "INPUT_RATE", "OUTPUT_MIME", "OUTPUT_RATE", "AudioChunk", "ContextCompression", "FunctionCall",
    "FunctionResponse", "GeminiEvent", "GeminiSetup", "GenerationComplete",
    "GoAway", "InputTranscription", "Interrupted", "ModelText", "OutputTranscription",
    "SessionResumptionUpdate", "SetupComplete", "ToolCall", "ToolCallCancellation", "TurnComplete",
    "UsageMetadata", "VadSettings", "activity_end", "activity_start", "audio_stream_end",
    "client_content", "function_tool", "live_url", "parse_server_message", "realtime_audio",
    "realtime_text", "setup_message", "tool_response",
]

PEER = "gemini"
INPUT_RATE = 16000
OUTPUT_RATE = 24000
INPUT_MIME = "audio/pcm;rate=16000"
OUTPUT_MIME = "audio/pcm;rate=24000"
#: Header the official SDK uses for the API key (``?key=`` in the URL works too).
AUTH_HEADER = "x-goog-api-key"
#: Close codes seen in practice (protocols.md 3.6, unverified): bad setup field, invalid key,
#: rejected resume handle, Gemini 3.x ``clientContent`` after the first turn.
CLOSE_INVALID_ARGUMENT = 1007
#: Model not found / not supported for bidiGenerateContent.
CLOSE_POLICY = 1008
#: Internal error, or "Deadline expired" at the connection limit (after ``goAway``).
CLOSE_DEADLINE = 1011

_LIVE_PATH = "/ws/google.ai.generativelanguage.{}.GenerativeService.BidiGenerateContent"


def live_url(base_url: str = "wss://generativelanguage.googleapis.com",
             api_version: str = "v1beta") -> str:
    """The BidiGenerateContent WebSocket URL (send the key in :data:`AUTH_HEADER`).

    ``v1beta`` per protocols.md 3.1; google-genai 3.x itself defaults to ``v1``.
    """
    if api_version not in ("v1beta", "v1alpha", "v1"):
        _local(f"api_version must be 'v1beta', 'v1alpha' or 'v1', got {api_version!r}")
    return base_url.rstrip("/") + _LIVE_PATH.format(api_version)


_FIELDS = JsonFields(GeminiProtocolError)
_fail = _FIELDS.fail
_str = _FIELDS.check_str


def _local(message: str) -> NoReturn:
    raise LocalProtocolError(message, peer=PEER)


def _dumps(obj: Any) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError as exc:
        raise LocalProtocolError(f"not JSON-serialisable: {exc}", peer=PEER) from exc


# =========================================================================== client side

_START_SENSITIVITY = frozenset({"START_SENSITIVITY_HIGH", "START_SENSITIVITY_LOW"})
_END_SENSITIVITY = frozenset({"END_SENSITIVITY_HIGH", "END_SENSITIVITY_LOW"})
_ACTIVITY_HANDLING = frozenset({"START_OF_ACTIVITY_INTERRUPTS", "NO_INTERRUPTION"})
_TURN_COVERAGE = frozenset({"TURN_INCLUDES_ONLY_ACTIVITY", "TURN_INCLUDES_ALL_INPUT",
                            "TURN_INCLUDES_AUDIO_ACTIVITY_AND_ALL_VIDEO"})
_SCHEDULING = frozenset({"SILENT", "WHEN_IDLE", "INTERRUPT"})
_MODALITIES = frozenset({"AUDIO", "TEXT"})


def _opt_enum(name: str, value: str | None, allowed: frozenset[str]) -> None:
    if value is not None and value not in allowed:
        _local(f"{name} must be one of {sorted(allowed)}, got {value!r}")


def _opt_ms(name: str, value: int | None) -> None:
    if value is not None and (type(value) is not int or value < 0):
        _local(f"{name} must be a non-negative int, got {value!r}")


@dataclass(frozen=True, slots=True)
class VadSettings:
    """``setup.realtimeInputConfig``: server VAD tuning; ``None`` fields are left out.

    ``disabled=True`` switches to manual turns (:func:`activity_start`/:func:`activity_end`;
    then :func:`audio_stream_end` must not be sent).
    """

    disabled: bool = False
    start_of_speech_sensitivity: str | None = None  # START_SENSITIVITY_HIGH / _LOW
    end_of_speech_sensitivity: str | None = None  # END_SENSITIVITY_HIGH / _LOW
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    activity_handling: str | None = None  # START_OF_ACTIVITY_INTERRUPTS / NO_INTERRUPTION
    turn_coverage: str | None = None  # TURN_INCLUDES_ONLY_ACTIVITY / _ALL_INPUT / ...

    def __post_init__(self) -> None:
        if type(self.disabled) is not bool:
            _local(f"VadSettings.disabled must be a bool, got {self.disabled!r}")
        _opt_enum("start_of_speech_sensitivity", self.start_of_speech_sensitivity,
                  _START_SENSITIVITY)
        _opt_enum("end_of_speech_sensitivity", self.end_of_speech_sensitivity, _END_SENSITIVITY)
        _opt_enum("activity_handling", self.activity_handling, _ACTIVITY_HANDLING)
        _opt_enum("turn_coverage", self.turn_coverage, _TURN_COVERAGE)
        _opt_ms("prefix_padding_ms", self.prefix_padding_ms)
        _opt_ms("silence_duration_ms", self.silence_duration_ms)

    def to_dict(self) -> dict[str, Any]:
        aad: dict[str, Any] = {"disabled": self.disabled}
        for key, value in (("startOfSpeechSensitivity", self.start_of_speech_sensitivity),
                           ("endOfSpeechSensitivity", self.end_of_speech_sensitivity),
                           ("prefixPaddingMs", self.prefix_padding_ms),
                           ("silenceDurationMs", self.silence_duration_ms)):
            if value is not None:
                aad[key] = value
        out: dict[str, Any] = {"automaticActivityDetection": aad}
        if self.activity_handling is not None:
            out["activityHandling"] = self.activity_handling
        if self.turn_coverage is not None:
            out["turnCoverage"] = self.turn_coverage
        return out


@dataclass(frozen=True, slots=True)
class ContextCompression:
    """``setup.contextWindowCompression`` (sliding window); ``None`` = server default."""

    trigger_tokens: int | None = None
    target_tokens: int | None = None

    def __post_init__(self) -> None:
        _opt_ms("trigger_tokens", self.trigger_tokens)
        _opt_ms("target_tokens", self.target_tokens)

    def to_dict(self) -> dict[str, Any]:
        window = {} if self.target_tokens is None else {"targetTokens": self.target_tokens}
        out: dict[str, Any] = {"slidingWindow": window}
        if self.trigger_tokens is not None:
            out = {"triggerTokens": self.trigger_tokens, **out}
        return out


def _model_name(model: str) -> str:
    """``models/`` prefix rule of raw ``setup`` (as the SDK's ``t_model`` for the Gemini API)."""
    if type(model) is not str or not model or any(s in model for s in ("..", "?", "&", " ")):
        _local(f"invalid model name {model!r}")
    if model.startswith(("models/", "tunedModels/")):
        return model
    return "models/" + model


def function_tool(*declarations: Mapping[str, Any]) -> dict[str, Any]:
    """A Tool of function declarations (``{name, description, parameters}`` each): what
    ``setup.tools`` holds, e.g. ``tools=[function_tool(decl)]``; a bare declaration there
    makes the server close the connection (1007).

    ``parameters`` may be written as JSON Schema (``"type": "object"``, shared with OpenAI);
    its ``type`` names go out as the Schema enum (``OBJECT``), as google-genai sends them.
    """
    if not declarations:
        _local("function_tool needs at least one function declaration")
    out = []
    for decl in declarations:
        if not isinstance(decl, Mapping) or type(decl.get("name")) is not str:
            _local(f"a function declaration needs a string 'name': {decl!r:.80}")
        decl = dict(decl)
        if isinstance(decl.get("parameters"), Mapping):
            decl["parameters"] = _schema(decl["parameters"])
        out.append(decl)
    return {"functionDeclarations": out}


def _schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a (JSON-Schema-like) Schema with its ``type`` names in upper case."""
    out = dict(schema)
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].upper()
    if isinstance(out.get("properties"), Mapping):
        out["properties"] = {k: _schema(v) if isinstance(v, Mapping) else v
                             for k, v in out["properties"].items()}
    if isinstance(out.get("items"), Mapping):
        out["items"] = _schema(out["items"])
    for key in ("anyOf", "any_of"):
        if isinstance(out.get(key), list):
            out[key] = [_schema(v) if isinstance(v, Mapping) else v for v in out[key]]
    return out


#: Keys of a FunctionDeclaration: a Tool holding one of them is a bare declaration.
_DECLARATION_KEYS = frozenset({"name", "description", "parameters", "parametersJsonSchema",
                               "parameters_json_schema"})


@dataclass(frozen=True, slots=True)
class GeminiSetup:
    """Everything ``setup`` says, kept for the life of a call: each (re)connection sends
    :meth:`to_json` with the latest resumption handle. ``model`` is stored with its
    ``models/`` prefix. ``tools`` are wire Tool objects (camelCase), see :func:`function_tool`.
    ``session_resumption`` asks for handles (``sessionResumption: {}``).
    ``initial_history_in_client_content`` lets Gemini 3.x take one history seed via
    :func:`client_content` before the first model turn.
    """

    model: str
    voice: str | None = None
    system_instruction: str | None = None
    input_transcription: bool = True
    output_transcription: bool = True
    session_resumption: bool = True
    tools: Sequence[Mapping[str, Any]] | None = field(default=None, hash=False)
    vad: VadSettings | None = None
    compression: ContextCompression | None = None
    language_code: str | None = None
    temperature: float | None = None
    response_modality: str = "AUDIO"
    initial_history_in_client_content: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", _model_name(self.model))
        for name in ("voice", "system_instruction", "language_code"):
            value = getattr(self, name)
            if value is not None and (type(value) is not str or not value):
                _local(f"{name} must be a non-empty string or None, got {value!r:.60}")
        if self.response_modality not in _MODALITIES:
            _local(f"response_modality must be AUDIO or TEXT, got {self.response_modality!r}")
        if self.tools is not None:
            if isinstance(self.tools, str | bytes | Mapping) or not all(
                    isinstance(t, Mapping) for t in self.tools):
                _local("tools must be a sequence of Tool objects (mappings)")
            for tool in self.tools:
                if _DECLARATION_KEYS.intersection(tool):
                    _local(f"tools holds a bare function declaration ({tool.get('name')!r:.40}); "
                           "wrap declarations in a Tool: function_tool(*declarations)")
            object.__setattr__(self, "tools", tuple(self.tools))
        if self.vad is not None and not isinstance(self.vad, VadSettings):
            _local(f"vad must be VadSettings, got {type(self.vad).__name__}")
        if self.compression is not None and not isinstance(self.compression,
                                                           ContextCompression):
            _local(f"compression must be ContextCompression, got {type(self.compression)}")
        if self.temperature is not None and not isinstance(self.temperature, int | float):
            _local(f"temperature must be a number, got {self.temperature!r}")

    def to_dict(self, resumption_handle: str | None = None) -> dict[str, Any]:
        """The ``{"setup": {...}}`` object; ``resumption_handle`` resumes a session."""
        gen: dict[str, Any] = {"responseModalities": [self.response_modality]}
        speech: dict[str, Any] = {}
        if self.voice is not None:
            speech["voiceConfig"] = {"prebuiltVoiceConfig": {"voiceName": self.voice}}
        if self.language_code is not None:
            speech["languageCode"] = self.language_code
        if speech:
            gen["speechConfig"] = speech
        if self.temperature is not None:
            gen["temperature"] = self.temperature
        setup: dict[str, Any] = {"model": self.model, "generationConfig": gen}
        if self.system_instruction is not None:
            setup["systemInstruction"] = {"parts": [{"text": self.system_instruction}]}
        if self.tools:
            setup["tools"] = [dict(t) for t in self.tools]
        if self.vad is not None:
            setup["realtimeInputConfig"] = self.vad.to_dict()
        if self.input_transcription:
            setup["inputAudioTranscription"] = {}
        if self.output_transcription:
            setup["outputAudioTranscription"] = {}
        if resumption_handle is not None:
            if not self.session_resumption:
                _local("a resumption handle was given but session_resumption is off")
            if type(resumption_handle) is not str or not resumption_handle:
                _local(f"resumption handle must be a non-empty string, "
                       f"got {resumption_handle!r:.40}")
            setup["sessionResumption"] = {"handle": resumption_handle}
        elif self.session_resumption:
            setup["sessionResumption"] = {}
        if self.compression is not None:
            setup["contextWindowCompression"] = self.compression.to_dict()
        if self.initial_history_in_client_content:
            setup["historyConfig"] = {"initialHistoryInClientContent": True}
        return {"setup": setup}

    def to_json(self, resumption_handle: str | None = None) -> str:
        """JSON text of :meth:`to_dict`: the first frame of every connection."""
        return _dumps(self.to_dict(resumption_handle))


def setup_message(model: str, voice: str | None = None, system_instruction: str | None = None,
                  *, input_transcription: bool = True, output_transcription: bool = True,
                  resumption_handle: str | None = None, session_resumption: bool = True,
                  tools: Sequence[Mapping[str, Any]] | None = None,
                  vad: VadSettings | None = None, compression: ContextCompression | None = None,
                  language_code: str | None = None, temperature: float | None = None,
                  initial_history_in_client_content: bool = False) -> str:
    """One-off ``setup`` frame (protocols.md 3.3); per call keep a :class:`GeminiSetup`."""
    return GeminiSetup(
        model, voice, system_instruction, input_transcription=input_transcription,
        output_transcription=output_transcription, session_resumption=session_resumption,
        tools=tools, vad=vad, compression=compression, language_code=language_code,
        temperature=temperature,
        initial_history_in_client_content=initial_history_in_client_content,
    ).to_json(resumption_handle)


_AUDIO_PREFIX = '{"realtimeInput":{"audio":{"mimeType":"' + INPUT_MIME + '","data":"'
_AUDIO_SUFFIX = '"}}}'
_AUDIO_STREAM_END = '{"realtimeInput":{"audioStreamEnd":true}}'
_ACTIVITY_START = '{"realtimeInput":{"activityStart":{}}}'
_ACTIVITY_END = '{"realtimeInput":{"activityEnd":{}}}'


def realtime_audio(pcm16_16k_b64: str) -> str:
    """``realtimeInput.audio`` for base64 PCM16 LE mono 16 kHz (trusted to be base64 text:
    the audio layer made it; base64 never needs JSON escaping). Hot path."""
    return _AUDIO_PREFIX + pcm16_16k_b64 + _AUDIO_SUFFIX


def realtime_text(text: str) -> str:
    """``realtimeInput.text``: text that does not interrupt the model (unlike clientContent)."""
    if type(text) is not str or not text:
        _local(f"realtime text must be a non-empty string, got {text!r:.40}")
    return _dumps({"realtimeInput": {"text": text}})


def audio_stream_end() -> str:
    """``realtimeInput.audioStreamEnd``: the mic paused (automatic VAD only)."""
    return _AUDIO_STREAM_END


def activity_start() -> str:
    """``realtimeInput.activityStart`` (only with ``VadSettings(disabled=True)``)."""
    return _ACTIVITY_START


def activity_end() -> str:
    """``realtimeInput.activityEnd`` (only with ``VadSettings(disabled=True)``)."""
    return _ACTIVITY_END


@dataclass(frozen=True, slots=True)
class FunctionResponse:
    """One entry of ``toolResponse.functionResponses``; ``id`` echoes the call's id."""

    id: str
    name: str
    response: Mapping[str, Any] = field(hash=False)
    scheduling: str | None = None  # SILENT / WHEN_IDLE / INTERRUPT (non-blocking functions)
    will_continue: bool | None = None

    def __post_init__(self) -> None:
        for key in ("id", "name"):
            value = getattr(self, key)
            if type(value) is not str or not value:
                _local(f"function response {key} must be a non-empty string, got {value!r:.40}")
        if not isinstance(self.response, Mapping):
            _local(f"function response must be a JSON object, got {self.response!r:.60}")
        _opt_enum("scheduling", self.scheduling, _SCHEDULING)
        if self.will_continue is not None and type(self.will_continue) is not bool:
            _local(f"will_continue must be a bool, got {self.will_continue!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "response": dict(self.response)}
        if self.scheduling is not None:
            out["scheduling"] = self.scheduling
        if self.will_continue is not None:
            out["willContinue"] = self.will_continue
        return out


def tool_response(function_responses: Iterable[FunctionResponse | Mapping[str, Any]]) -> str:
    """``toolResponse`` answering one or more ``toolCall.functionCalls``.

    Items are :class:`FunctionResponse` or wire mappings (``id``, ``name``, ``response``...).
    """
    items = []
    for fr in function_responses:
        if not isinstance(fr, FunctionResponse):
            if not isinstance(fr, Mapping):
                _local(f"function response must be FunctionResponse or a mapping: {fr!r:.60}")
            extra = {k: fr[k] for k in ("scheduling", "willContinue") if k in fr}
            # __post_init__ checks the types of what the mapping holds
            fr = FunctionResponse(fr.get("id"), fr.get("name"), fr.get("response"),  # type: ignore[arg-type]
                                  extra.get("scheduling"), extra.get("willContinue"))
        items.append(fr.to_dict())
    if not items:
        _local("tool_response needs at least one function response")
    return _dumps({"toolResponse": {"functionResponses": items}})


def client_content(turns: str | Iterable[Mapping[str, Any] | tuple[str, str]],
                   turn_complete: bool = True) -> str:
    """``clientContent``: append turns to history; ``turn_complete`` makes the model answer.

    ``turns`` is a user text, or ``(role, text)`` pairs (role ``user``/``model``), or wire
    Content mappings. It **interrupts** current generation. Gemini 3.x (e.g.
    ``gemini-3.1-flash-live-preview``) accepts it only to seed history before the first model
    turn, with ``GeminiSetup(initial_history_in_client_content=True)``; after the first turn
    it closes the connection with 1007 (invalid argument). For text mid-session use
    :func:`realtime_text`, for tool results :func:`tool_response`.
    """
    if type(turn_complete) is not bool:
        _local(f"turn_complete must be a bool, got {turn_complete!r}")
    if isinstance(turns, str):
        turns = [("user", turns)]
    contents: list[dict[str, Any]] = []
    for turn in turns:
        if isinstance(turn, tuple):
            role, text = turn
            content: dict[str, Any] = {"role": role, "parts": [{"text": text}]}
            if type(text) is not str:
                _local(f"turn text must be a string, got {text!r:.40}")
        elif isinstance(turn, Mapping):
            content = dict(turn)
        else:
            _local(f"a turn is a (role, text) pair or a Content mapping, got {turn!r:.60}")
        if content.get("role") not in ("user", "model"):
            _local(f"turn role must be 'user' or 'model', got {content.get('role')!r}")
        if type(content.get("parts")) is not list:
            _local("a Content needs a 'parts' list")
        contents.append(content)
    if not contents:
        _local("client_content needs at least one turn")
    return _dumps({"clientContent": {"turns": contents, "turnComplete": turn_complete}})


# =========================================================================== server side


@dataclass(slots=True)
class AudioChunk:
    """Model audio: base64 PCM16 LE mono, undecoded. Hot path, hence not frozen (a frozen
    dataclass's ``__init__`` costs 2.5x); treat it as read-only."""

    data: str
    rate: int = OUTPUT_RATE


@dataclass(frozen=True, slots=True)
class SetupComplete:
    """The server accepted ``setup``; other messages may flow now."""

    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class ModelText:
    """A text part of the model turn (TEXT modality, or a ``thought`` summary)."""

    text: str
    thought: bool = False


@dataclass(frozen=True, slots=True)
class InputTranscription:
    """A fragment of what the caller said (concatenate fragments)."""

    text: str
    finished: bool = False


@dataclass(frozen=True, slots=True)
class OutputTranscription:
    """A fragment of what the model says (concatenate fragments)."""

    text: str
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Interrupted:
    """Barge-in (or clientContent): drop queued playback; ``TurnComplete`` follows."""


@dataclass(frozen=True, slots=True)
class GenerationComplete:
    """The model generated everything of this turn (playback may still be running)."""


@dataclass(frozen=True, slots=True)
class TurnComplete:
    """The model's turn is over; ``reason`` is ``turnCompleteReason`` when given."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """One ``toolCall.functionCalls`` entry; answer with :meth:`reply`."""

    id: str | None
    name: str
    args: Mapping[str, Any] = field(hash=False)

    @property
    def args_json(self) -> str:
        """``args`` as JSON text (what ``ProviderListener.on_tool_call`` takes)."""
        return orjson.dumps(dict(self.args)).decode()

    def reply(self, response: Mapping[str, Any], **kw: Any) -> FunctionResponse:
        """The :class:`FunctionResponse` echoing this call's id and name."""
        return FunctionResponse(self.id or "", self.name, response, **kw)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asks for function calls (generation pauses until the toolResponse)."""

    calls: tuple[FunctionCall, ...]


@dataclass(frozen=True, slots=True)
class ToolCallCancellation:
    """Abandon these call ids (the user interrupted); late responses are ignored."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GoAway:
    """The server will close this connection in ``time_left_s`` seconds: reconnect."""

    time_left_s: float | None


@dataclass(frozen=True, slots=True)
class SessionResumptionUpdate:
    """A resume handle; store ``new_handle`` only when ``resumable`` (it is None otherwise)."""

    new_handle: str | None
    resumable: bool
    last_consumed_client_message_index: int | None = None


@dataclass(frozen=True, slots=True)
class UsageMetadata:
    """Token counts; ``raw`` keeps every field (per-modality details...) as received."""

    prompt_token_count: int
    response_token_count: int
    total_token_count: int
    raw: Mapping[str, Any] = field(hash=False, compare=False)


GeminiEvent = (SetupComplete | AudioChunk | ModelText | InputTranscription
               | OutputTranscription | Interrupted | GenerationComplete | TurnComplete
               | ToolCall | ToolCallCancellation | GoAway | SessionResumptionUpdate
               | UsageMetadata)

_INTERRUPTED = Interrupted()
_GENERATION_COMPLETE = GenerationComplete()
_PCM_RATE_RE = re.compile(r"audio/pcm(?:;\s*rate=(\d+))?")
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)s")
Out = list[GeminiEvent]


def _int(value: Any, where: str) -> int:
    """int32 as a JSON number, or int64 as a proto3 JSON string of digits."""
    if type(value) is int:
        return value
    if type(value) is str and value.isdigit() and value.isascii():
        return int(value)
    _fail("bad_type", f"{where} must be an integer, got {value!r:.40}", where)


def _inline(inline: dict[str, Any], out: Out) -> None:
    data = inline["data"]
    if type(data) is not str:
        _fail("bad_type", "inlineData.data must be a base64 string", "inlineData.data")
    mime = inline.get("mimeType")
    if mime == OUTPUT_MIME:
        out.append(AudioChunk(data))
        return
    match = _PCM_RATE_RE.fullmatch(mime) if type(mime) is str else None
    if match is None:
        incr("gemini.part.ignored")
        return
    out.append(AudioChunk(data, int(match[1]) if match[1] else OUTPUT_RATE))


def _model_turn(turn: Any, out: Out) -> None:
    for part in turn.get("parts") or ():
        inline = part.get("inlineData")
        if inline is not None:
            _inline(inline, out)
            continue
        text = part.get("text")
        if text is not None:
            out.append(ModelText(_str(text, "part.text"), part.get("thought") is True))
        else:
            incr("gemini.part.ignored")  # executableCode, codeExecutionResult, ...


def _transcription(kind: type[InputTranscription | OutputTranscription],
                   where: str) -> Callable[[Any, Out], None]:
    def parse(tr: Any, out: Out) -> None:
        out.append(kind(_str(tr.get("text", ""), where), tr.get("finished") is True))
    return parse


def _interrupted(value: Any, out: Out) -> None:
    if value is True:
        out.append(_INTERRUPTED)


def _generation_complete(value: Any, out: Out) -> None:
    if value is True:
        out.append(_GENERATION_COMPLETE)


def _turn_complete(value: Any, out: Out, reason: Any = None) -> None:
    if value is True:
        out.append(TurnComplete(reason if type(reason) is str else None))


#: serverContent fields in the order their events are emitted (a turn-ending field last).
_CONTENT_FIELDS: dict[str, Callable[[Any, Out], None]] = {
    "interrupted": _interrupted,
    "inputTranscription": _transcription(InputTranscription, "inputTranscription.text"),
    "modelTurn": _model_turn,
    "outputTranscription": _transcription(OutputTranscription, "outputTranscription.text"),
    "generationComplete": _generation_complete,
    "turnComplete": _turn_complete,
}


def _server_content(sc: Any, out: Out) -> None:
    if type(sc) is not dict:
        _fail("bad_type", "serverContent must be a JSON object", "serverContent")
    if len(sc) == 1:  # the common case: one audio chunk or one transcription fragment
        for key, value in sc.items():
            handler = _CONTENT_FIELDS.get(key)
            if handler is not None and value is not None:
                handler(value, out)
        return
    for key, handler in _CONTENT_FIELDS.items():
        value = sc.get(key)
        if value is not None:
            if key == "turnComplete":
                _turn_complete(value, out, sc.get("turnCompleteReason"))
            else:
                handler(value, out)


def _setup_complete(value: Any, out: Out) -> None:
    sid = value.get("sessionId") if type(value) is dict else None
    out.append(SetupComplete(sid if type(sid) is str else None))


def _tool_call(value: Any, out: Out) -> None:
    calls = []
    for fc in value.get("functionCalls") or ():
        cid = fc.get("id")
        args = fc.get("args") or {}
        if type(args) is not dict:
            _fail("bad_type", "functionCalls[].args must be a JSON object", "toolCall.args")
        calls.append(FunctionCall(None if cid is None else _str(cid, "toolCall.id"),
                                  _str(fc["name"], "toolCall.name"), MappingProxyType(args)))
    out.append(ToolCall(tuple(calls)))


def _tool_call_cancellation(value: Any, out: Out) -> None:
    ids = value.get("ids") or ()
    out.append(ToolCallCancellation(tuple(_str(i, "toolCallCancellation.ids") for i in ids)))


def _duration_s(value: Any) -> float | None:
    if value is None:
        return None
    if type(value) is int or type(value) is float:
        return float(value)
    match = _DURATION_RE.fullmatch(value) if type(value) is str else None
    if match is None:
        _fail("bad_value", f"goAway.timeLeft is not a duration: {value!r:.40}", "goAway.timeLeft")
    return float(match[1])


def _go_away(value: Any, out: Out) -> None:
    out.append(GoAway(_duration_s(value.get("timeLeft"))))


def _resumption_update(value: Any, out: Out) -> None:
    handle = value.get("newHandle") or None
    index = value.get("lastConsumedClientMessageIndex")
    out.append(SessionResumptionUpdate(
        None if handle is None else _str(handle, "sessionResumptionUpdate.newHandle"),
        value.get("resumable") is True,
        None if index is None else _int(index, "lastConsumedClientMessageIndex")))


def _usage(value: Any, out: Out) -> None:
    w = "usageMetadata."
    out.append(UsageMetadata(_int(value.get("promptTokenCount", 0), w + "promptTokenCount"),
                             _int(value.get("responseTokenCount", 0), w + "responseTokenCount"),
                             _int(value.get("totalTokenCount", 0), w + "totalTokenCount"),
                             MappingProxyType(value)))


#: Top-level keys in the order their events are emitted.
_MESSAGE_FIELDS: dict[str, Callable[[Any, Out], None]] = {
    "setupComplete": _setup_complete,
    "toolCallCancellation": _tool_call_cancellation,
    "serverContent": _server_content,
    "toolCall": _tool_call,
    "sessionResumptionUpdate": _resumption_update,
    "goAway": _go_away,
    "usageMetadata": _usage,
}
#: Known keys we do not turn into events (newer server-side VAD signals).
_IGNORED_FIELDS = frozenset({"voiceActivity", "voiceActivityDetectionSignal"})


def parse_server_message(data: str | bytes) -> list[GeminiEvent]:
    """Events of one server frame (binary or text: both carry UTF-8 JSON), in this order:
    setupComplete, toolCallCancellation, serverContent (interrupted, inputTranscription,
    modelTurn parts, outputTranscription, generationComplete, turnComplete), toolCall,
    sessionResumptionUpdate, goAway, usageMetadata.

    Unknown fields are skipped (unknown top-level keys counted as
    ``gemini.message.unknown_key``). Raises :class:`GeminiProtocolError` on malformed JSON or
    a known field of the wrong shape.
    """
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise GeminiProtocolError(f"malformed JSON: {exc}", reason="malformed_json") from exc
    if type(msg) is not dict:
        _fail("not_object", f"message must be a JSON object, got {type(msg).__name__}")
    out: Out = []
    try:
        if len(msg) == 1:
            sc = msg.get("serverContent")
            if sc is not None:  # fast path: one audio chunk / transcription fragment
                _server_content(sc, out)
                return out
        handled = 0
        for key, handler in _MESSAGE_FIELDS.items():
            value = msg.get(key)
            if value is not None:
                if key != "serverContent" and type(value) is not dict:
                    _fail("bad_type", f"{key} must be a JSON object", key)
                handler(value, out)
                handled += 1
        if handled != len(msg) and any(k not in _MESSAGE_FIELDS and k not in _IGNORED_FIELDS
                                       for k in msg):
            incr("gemini.message.unknown_key")
    except KeyError as exc:
        raise GeminiProtocolError(f"message is missing field {exc.args[0]!r}",
                                  reason="missing_field", field=str(exc.args[0])) from None
    except (TypeError, AttributeError) as exc:
        raise GeminiProtocolError(f"message has a field of the wrong shape: {exc}",
                                  reason="bad_type") from exc
    return out
