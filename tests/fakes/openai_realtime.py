"""A fake OpenAI Realtime server (GA shape) on loopback, built from protocols.md section 2.

    async with FakeOpenAIRealtime() as fake:
        fake.url             # ws://127.0.0.1:<port>/v1/realtime?model=gpt-realtime
        fake.api_key         # send "Authorization: Bearer <api_key>"
        s = await fake.wait_session()              # the first connection (FakeRealtimeSession)
        await s.wait_received("session.update")    # every wait has a timeout, no sleeps
        s.received, s.rejected, s.sent             # client events (valid), (raw, error), sent
        s.audio_bytes, s.truncates, s.cancels, s.function_outputs, s.config, s.headers

Behaviour (GA only): 401 without the Bearer key; ``OpenAI-Beta: realtime=v1`` is closed with
4000 ``beta_api_shape_disabled``; ``session.created`` first; every client event is validated
(:func:`validate_client_event`) with the openai SDK's client-event models
(``openai.types.realtime``) in pydantic's strict mode, plus checks for unknown fields and for
``null`` where the SDK's request ``*Param`` types allow none; an invalid one is answered with
an ``error`` event (``invalid_request_error``, ``code``, ``param``, its ``event_id``).

Scripting: ``s.script_response(ResponseScript(...))`` for the next response (audio or tone,
transcript, function call, chunking, pace, ``hold_after_chunks`` to keep it active until
``s.release()``); ``auto_turn_ms`` turns received audio into a VAD turn; ``s.user_turn()``
does it on demand; ``s.speech_started()`` injects a barge-in; ``s.send_error()``,
``s.abort()`` (no close frame), ``s.close(1011)``; ``max_session_s`` expires sessions;
``fake.reject_next(status)`` fails handshakes; ``fake.refuse_next(code)`` opens with an
``error`` instead of ``session.created``; ``ResponseScript.failed()`` /
``ResponseScript.incomplete()`` end a response ``failed`` / ``incomplete`` (``s.statuses``).
Nothing here imports agentic_fast.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import binascii
import contextlib
import copy
import functools
import importlib
import inspect
import itertools
import json
import secrets
import time
import types
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pydantic
import typing_extensions
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}
SPEECH_START_MS = 100  # auto turns: speech_started after this much audio of a turn


def _models(union: Any) -> dict[str, type[pydantic.BaseModel]]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


CLIENT_MODELS = _models(RealtimeClientEvent)
SERVER_MODELS = _models(RealtimeServerEvent)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def tone(fmt: str, ms: int, hz: float = 440.0) -> bytes:
    """``ms`` of a sine tone in a GA wire format (mu-law per protocols.md 4.4)."""
    rate = 24000 if fmt == "audio/pcm" else 8000
    t = np.arange(rate * ms // 1000) / rate
    pcm = (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)
    if fmt == "audio/pcm":
        return pcm.astype("<i2").tobytes()
    if fmt == "audio/pcma":
        return b"\xd5" * len(pcm)  # A-law silence: enough for a fake
    x = pcm.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 33
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    return (((seg << 4) | ((mag >> (seg + 1)) & 0x0F)) ^ mask).astype(np.uint8).tobytes()


@dataclass
class ResponseScript:
    """How the fake answers one response. ``audio`` is raw bytes in the output format (a tone
    of ``audio_ms`` if None). ``pace``: 0 = as fast as possible (the real server is faster
    than real time), 1.0 = real time. ``function_call=(name, arguments_json)`` answers with a
    tool call instead of audio. ``hold_after_chunks=n`` stops after n chunks until released.

    ``status``: ``completed``; ``failed`` (no output, ``status_details.error`` = ``error``,
    e.g. a quota or server error: see :meth:`failed`); ``incomplete`` (the audio, cut, then
    ``status_details.reason`` = ``reason``: ``max_output_tokens`` or ``content_filter``)."""

    transcript: str = "Hello, this is the fake assistant."
    audio: bytes | None = None
    audio_ms: int = 600
    chunk_ms: int = 100
    pace: float = 0.0
    hold_after_chunks: int | None = None
    function_call: tuple[str, str] | None = None
    status: str = "completed"
    reason: str | None = None
    error: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in ("completed", "failed", "incomplete"):
            raise ValueError(f"ResponseScript.status {self.status!r}")

    @classmethod
    def failed(cls, code: str | None = "server_error", message: str = "The server had an "
               "error while processing your request. Sorry about that!",
               error_type: str = "server_error") -> ResponseScript:
        """A response that fails before any output (``status: failed``)."""
        return cls(status="failed",
                   error={"type": error_type, "code": code, "message": message})

    @classmethod
    def incomplete(cls, reason: str = "max_output_tokens", **kw: Any) -> ResponseScript:
        """A response whose audio is cut (``status: incomplete``, ``reason``)."""
        return cls(status="incomplete", reason=reason, **kw)


@dataclass
class _Response:
    id: str
    task: asyncio.Task[None] | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    item: dict[str, Any] | None = None
    part_open: bool = False
    transcript: str = ""


class InvalidEvent(Exception):
    """A client event the real server would answer with an ``error`` (code, message, param)."""

    def __init__(self, code: str | None, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _param_path(data: Any, loc: tuple[Any, ...]) -> str:
    """The JSON path of a pydantic error location, skipping union member names."""
    path, node = "", data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            path, node = (f"{path}.{part}" if path else part), node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path, node = f"{path}[{part}]", node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part in loc[-1:]:
            path = f"{path}.{part}" if path else part
    return path


def _unknown_field(model: Any, path: str) -> str | None:
    """First field the SDK model kept as an 'extra' (it allows extras; the real API does not)."""
    if isinstance(model, pydantic.BaseModel):
        for key in model.__pydantic_extra__ or {}:
            return f"{path}.{key}" if path else key
        for name, value in model:
            found = _unknown_field(value, f"{path}.{name}" if path else name)
            if found:
                return found
    elif isinstance(model, list):
        for i, value in enumerate(model):
            found = _unknown_field(value, f"{path}[{i}]")
            if found:
                return found
    return None


@functools.cache
def _nullable_keys(model_cls: type[pydantic.BaseModel]) -> frozenset[str] | None:
    """Wire keys of ``model_cls`` that may be ``null``, from its request ``*Param`` TypedDict.

    The SDK's response-side models make every optional field ``Optional`` (absent and null
    look alike); the ``*Param`` TypedDicts in the sibling ``*_param`` module say which fields
    really are nullable. None when the SDK has no such TypedDict (then nothing is checked).
    """
    try:
        module = importlib.import_module(model_cls.__module__ + "_param")
    except ImportError:
        return None
    param = (getattr(module, model_cls.__name__ + "Param", None)
             or getattr(module, model_cls.__name__, None))
    if param is None or not typing_extensions.is_typeddict(param):
        return None
    hints = typing.get_type_hints(param)
    return frozenset(key for key, hint in hints.items() if _allows_none(hint)) | _doc_nullable(
        module, param.__name__)


def _doc_nullable(module: Any, class_name: str) -> frozenset[str]:
    """Fields whose SDK docstring says they can be `null` though the annotation does not (e.g.
    ``audio.input.transcription``: "can be set to `null` to turn off once on")."""
    tree = ast.parse(inspect.getsource(module))
    found: set[str] = set()
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name == class_name:
            for field_, doc in itertools.pairwise(cls.body):
                if isinstance(field_, ast.AnnAssign) and isinstance(field_.target, ast.Name) \
                        and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) \
                        and "`null`" in str(doc.value.value):
                    found.add(field_.target.id)
    return frozenset(found)


def _allows_none(hint: Any) -> bool:
    if hint is type(None) or hint is Any or hint is object:
        return True
    return any(_allows_none(arg) for arg in typing.get_args(hint)
               if typing.get_origin(hint) in (typing.Union, types.UnionType))


def _null_field(model: Any, path: str) -> str | None:
    """First field sent as ``null`` that the API does not let be null (e.g. ``instructions``)."""
    if isinstance(model, pydantic.BaseModel):
        cls = type(model)
        nullable = _nullable_keys(cls)
        for name in model.model_fields_set:
            value = getattr(model, name)
            key = cls.model_fields[name].alias or name if name in cls.model_fields else name
            where = f"{path}.{key}" if path else key
            if value is None:
                if nullable is not None and key not in nullable:
                    return where
                continue
            found = _null_field(value, where)
            if found:
                return found
    elif isinstance(model, list):
        for i, value in enumerate(model):
            found = _null_field(value, f"{path}[{i}]")
            if found:
                return found
    return None


def validate_client_event(event: Any) -> pydantic.BaseModel:
    """Validate one client event like the real server; raises :class:`InvalidEvent`.

    The SDK's client-event model for the ``type`` validates the dict in pydantic's *strict*
    mode (no ``"100"`` for an integer, no ``true`` for a number); the fields the model kept as
    extras are unknown parameters, and a ``null`` where the SDK's request ``*Param`` type does
    not allow one is an invalid type: the real server rejects all three.
    """
    if not isinstance(event, dict):
        raise InvalidEvent("invalid_type", "Expected an object as the event.")
    kind = event.get("type")
    if kind is None:
        raise InvalidEvent("missing_required_parameter", "Missing required parameter: 'type'.",
                           "type")
    model = CLIENT_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidEvent("invalid_value", f"Invalid value: '{kind}'. Supported values are: "
                           + ", ".join(f"'{k}'" for k in sorted(CLIENT_MODELS)) + ".", "type")
    try:
        parsed = model.model_validate(event, strict=True)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        param = _param_path(event, err["loc"])
        if err["type"] == "missing":
            raise InvalidEvent("missing_required_parameter",
                               f"Missing required parameter: '{param}'.", param) from None
        code = "invalid_type" if err["type"].endswith("_type") else "invalid_value"
        raise InvalidEvent(code, f"Invalid value for '{param}': {err['msg']}", param) from None
    unknown = _unknown_field(parsed, "")
    if unknown:
        raise InvalidEvent("unknown_parameter", f"Unknown parameter: '{unknown}'.", unknown)
    null = _null_field(parsed, "")
    if null:
        raise InvalidEvent("invalid_type", f"Invalid type for '{null}': expected a value, "
                           "but got null instead.", null)
    for key in ("session", "response"):
        mods = event.get(key, {}).get("output_modalities") if isinstance(
            event.get(key), dict) else None
        if mods is not None and len(mods) != 1:  # the SDK's List allows both; the API not
            raise InvalidEvent("invalid_value", f"Invalid '{key}.output_modalities': "
                               "supported values are ['audio'] or ['text'].",
                               f"{key}.output_modalities")
    return parsed


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if key in ("audio", "input", "output") and isinstance(value, dict) \
                and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _default_session(model: str) -> dict[str, Any]:
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime", "object": "realtime.session", "id": new_id("sess"), "model": model,
        "output_modalities": ["audio"], "instructions": "You are a helpful assistant.",
        "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None,
        "truncation": "auto", "prompt": None, "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {"format": dict(pcm), "transcription": None, "noise_reduction": None,
                      "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                         "prefix_padding_ms": 300, "silence_duration_ms": 200,
                                         "idle_timeout_ms": None, "create_response": True,
                                         "interrupt_response": True}},
            "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0}},
    }


class FakeRealtimeSession:
    """One accepted WebSocket: its records, its scripted behaviour and its fault injection."""

    def __init__(self, fake: FakeOpenAIRealtime, ws: ServerConnection) -> None:
        self.fake = fake
        self.ws = ws
        request = ws.request
        assert request is not None
        self.headers: dict[str, str] = {k.lower(): v for k, v in request.headers.raw_items()}
        split = urlsplit(request.path)
        self.path = split.path
        self.query = {k: v[0] for k, v in parse_qs(split.query).items()}
        self.config = _default_session(self.query.get("model", ""))
        self.received: list[dict[str, Any]] = []
        self.rejected: list[tuple[Any, dict[str, Any]]] = []
        self.sent: list[dict[str, Any]] = []
        self.audio_in: dict[str, bytearray] = {}
        self.truncates: list[dict[str, Any]] = []
        self.cancels: list[dict[str, Any]] = []
        self.function_outputs: list[dict[str, Any]] = []
        self.items: dict[str, dict[str, Any]] = {}
        self.audio_sent: dict[str, int] = {}  # assistant item id -> audio bytes sent
        self.responses: deque[ResponseScript] = deque()
        self.statuses: list[str] = []  # final status of each response this session ended
        self.user_transcripts: deque[str] = deque()
        self.active: _Response | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.reading_stopped = False  # stop_reading(): it cannot see the client go away
        self._release = asyncio.Event()
        self._buffer = bytearray()
        self._audio_ms = 0.0  # total input audio received, ms
        self._turn_ms = 0.0
        self._speech_item: str | None = None
        self._last_item: str | None = None
        self._tick = asyncio.Event()

    # -- records and waits ---------------------------------------------------------------------

    @property
    def audio_bytes(self) -> dict[str, int]:
        """Input audio bytes received per GA format type (``audio/pcm``, ``audio/pcmu``...)."""
        return {fmt: len(buf) for fmt, buf in self.audio_in.items()}

    def received_types(self) -> list[str]:
        return [e["type"] for e in self.received]

    def sent_types(self) -> list[str]:
        return [e["type"] for e in self.sent]

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0,
                         what: str = "condition") -> None:
        """Wait (no polling) until ``predicate()`` holds; AssertionError after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    tick = self._tick
                    if predicate():
                        return
                    await tick.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; received "
                                 f"{self.received_types()[-10:]}, sent "
                                 f"{self.sent_types()[-10:]}") from None

    async def wait_received(self, kind: str, count: int = 1, timeout: float = 5.0
                            ) -> dict[str, Any]:
        """The ``count``-th valid client event of type ``kind``."""
        def hits() -> list[dict[str, Any]]:
            return [e for e in self.received if e["type"] == kind]
        await self.wait_until(lambda: len(hits()) >= count, timeout, f"received {kind}")
        return hits()[count - 1]

    async def wait_sent(self, kind: str, count: int = 1, timeout: float = 5.0
                        ) -> dict[str, Any]:
        """The ``count``-th event of type ``kind`` this fake sent."""
        def hits() -> list[dict[str, Any]]:
            return [e for e in self.sent if e["type"] == kind]
        await self.wait_until(lambda: len(hits()) >= count, timeout, f"sent {kind}")
        return hits()[count - 1]

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await self.wait_until(self.closed.is_set, timeout, "connection closed")

    # -- scripting and faults ------------------------------------------------------------------

    def script_response(self, script: ResponseScript | None = None, **kw: Any) -> None:
        """Queue how the next response is produced (else ``fake.default_response``)."""
        self.responses.append(script or ResponseScript(**kw))

    def release(self) -> None:
        """Let a response held by ``hold_after_chunks`` continue."""
        self._release.set()

    async def send(self, event: dict[str, Any]) -> None:
        """Send one server event (an ``event_id`` is added); checked against the SDK model."""
        event.setdefault("event_id", new_id("event"))
        model = SERVER_MODELS.get(event["type"])
        if self.fake.validate_outgoing and model is not None:
            try:
                model.model_validate(event)
            except pydantic.ValidationError as exc:
                self.fake.internal_errors.append(f"{event['type']}: {exc}")
        self.sent.append(event)
        self._notify()
        await self.ws.send(json.dumps(event))

    async def send_error(self, code: str | None, message: str, *,
                         error_type: str = "invalid_request_error", param: str | None = None,
                         event_id: str | None = None) -> None:
        await self.send({"type": "error", "error": {
            "type": error_type, "code": code, "message": message, "param": param,
            "event_id": event_id}})

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        self._stop_response()
        assert self.ws.transport is not None
        self.ws.transport.abort()

    def stop_reading(self) -> None:
        """The server stops reading this socket (a hung or overloaded frontend): the TCP
        receive window fills, pings go unanswered, nothing is closed."""
        assert self.ws.transport is not None
        self.reading_stopped = True
        self.ws.transport.pause_reading()

    async def close(self, code: int = 1011, reason: str = "internal error") -> None:
        self._stop_response()
        await self.ws.close(code, reason)

    async def speech_started(self) -> str:
        """Server VAD hears the caller: ``speech_started`` and, during a response with turn
        detection on and ``interrupt_response``, a cancel with reason ``turn_detected``."""
        self._speech_item = self._speech_item or new_id("item")
        await self.send({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": int(self._audio_ms), "item_id": self._speech_item})
        vad = self.config["audio"]["input"]["turn_detection"]
        if self.active is not None and vad is not None and vad.get("interrupt_response", True):
            await self._cancel("turn_detected")
        return self._speech_item

    async def user_turn(self, transcript: str | None = None) -> str:
        """A whole caller turn on demand: started, stopped, committed, transcript, reply."""
        if transcript is not None:
            self.user_transcripts.append(transcript)
        if self._speech_item is None:
            await self.speech_started()
        item_id = self._speech_item
        assert item_id is not None
        await self.send({"type": "input_audio_buffer.speech_stopped",
                         "audio_end_ms": int(self._audio_ms), "item_id": item_id})
        self._speech_item = None
        self._turn_ms = 0.0
        await self._commit(item_id)
        vad = self.config["audio"]["input"]["turn_detection"]
        if vad is not None and vad.get("create_response", True) and self.active is None:
            await self._start_response()
        return item_id

    # -- client events -------------------------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        """Validate one client frame, record it, apply it; answer ``error`` if invalid."""
        raw: Any = message
        try:
            if isinstance(message, bytes):
                raise InvalidEvent("invalid_value", "Binary frames are not supported.")
            try:
                raw = json.loads(message)
            except ValueError:
                raise InvalidEvent("invalid_json", "We could not parse the JSON body of "
                                   "your request.") from None
            validate_client_event(raw)
            self.received.append(raw)  # before the events it causes
            self._notify()
            try:
                await getattr(self, "_on_" + raw["type"].replace(".", "_"))(raw)
            except InvalidEvent:
                self.received.remove(raw)
                raise
        except InvalidEvent as exc:
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            error = {"type": "invalid_request_error", "code": exc.code, "message": exc.message,
                     "param": exc.param, "event_id": event_id}
            self.rejected.append((raw, error))
            await self.send({"type": "error", "error": error})

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        update = event["session"]
        if update.get("type") != "realtime":
            raise InvalidEvent("invalid_value", "This fake only serves realtime sessions.",
                               "session.type")
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if voice is not None and voice != self.config["audio"]["output"]["voice"] \
                and any(self.audio_sent.values()):
            raise InvalidEvent("cannot_update_voice", "Cannot update a conversation's voice "
                               "if assistant audio is present.", "session.audio.output.voice")
        _merge(self.config, update)
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.config)})

    async def _on_input_audio_buffer_append(self, event: dict[str, Any]) -> None:
        fmt = self.config["audio"]["input"]["format"].get("type", "audio/pcm")
        try:
            data = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEvent("invalid_value", "Invalid 'audio'. Expected base64-encoded "
                               "audio.", "audio") from None
        if fmt == "audio/pcm" and len(data) % 2:
            raise InvalidEvent("invalid_value", f"Invalid 'audio': {len(data)} bytes is not "
                               "whole 16-bit PCM samples.", "audio")
        self.audio_in.setdefault(fmt, bytearray()).extend(data)
        self._buffer.extend(data)
        ms = len(data) / BYTES_PER_MS[fmt]
        self._audio_ms += ms
        vad = self.config["audio"]["input"]["turn_detection"]
        auto = self.fake.auto_turn_ms
        if vad is None or auto is None:
            return
        self._turn_ms += ms
        if self._speech_item is None and self._turn_ms >= min(SPEECH_START_MS, auto):
            await self.speech_started()
        if self._turn_ms >= auto:
            await self.user_turn()

    async def _on_input_audio_buffer_commit(self, event: dict[str, Any]) -> None:
        if not self._buffer:
            raise InvalidEvent("input_audio_buffer_commit_empty", "Error committing input "
                               "audio buffer: the buffer is empty.")
        await self._commit(new_id("item"))

    async def _on_input_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        self._buffer.clear()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _on_output_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        raise InvalidEvent("invalid_value", "output_audio_buffer.clear is only supported for "
                           "WebRTC and SIP connections.", "type")

    async def _on_conversation_item_create(self, event: dict[str, Any]) -> None:
        item = {**copy.deepcopy(event["item"]), "object": "realtime.item", "status": "completed"}
        item.setdefault("id", new_id("item"))
        if item["type"] == "function_call_output":
            self.function_outputs.append(item)
        await self._add_item(item, event.get("previous_item_id"))

    async def _on_conversation_item_truncate(self, event: dict[str, Any]) -> None:
        item_id, end_ms = event["item_id"], event["audio_end_ms"]
        item = self.items.get(item_id)
        if item is None:
            raise InvalidEvent("invalid_value", f"Item with item_id '{item_id}' not found.",
                               "item_id")
        if item.get("role") != "assistant" or item_id not in self.audio_sent:
            raise InvalidEvent("invalid_value", "Only assistant messages with audio can be "
                               "truncated.", "item_id")
        if event["content_index"] != 0:
            raise InvalidEvent("invalid_value", "Invalid content_index: the item has no audio "
                               f"content part {event['content_index']}.", "content_index")
        fmt = self.config["audio"]["output"]["format"].get("type", "audio/pcm")
        have_ms = self.audio_sent[item_id] / BYTES_PER_MS[fmt]
        if end_ms > have_ms:
            raise InvalidEvent("invalid_value", f"Audio content of {int(have_ms)}ms is "
                               f"already shorter than {end_ms}ms", "audio_end_ms")
        self.audio_sent[item_id] = end_ms * BYTES_PER_MS[fmt]
        self.truncates.append(event)
        await self.send({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": 0, "audio_end_ms": end_ms})

    async def _on_conversation_item_delete(self, event: dict[str, Any]) -> None:
        if self.items.pop(event["item_id"], None) is None:
            raise InvalidEvent("invalid_value", f"Item with item_id '{event['item_id']}' not "
                               "found.", "item_id")
        await self.send({"type": "conversation.item.deleted", "item_id": event["item_id"]})

    async def _on_conversation_item_retrieve(self, event: dict[str, Any]) -> None:
        item = self.items.get(event["item_id"])
        if item is None:
            raise InvalidEvent("invalid_value", f"Item with item_id '{event['item_id']}' not "
                               "found.", "item_id")
        await self.send({"type": "conversation.item.retrieved", "item": copy.deepcopy(item)})

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        if self.active is not None:
            raise InvalidEvent("conversation_already_has_active_response",
                               "Conversation already has an active response in progress: "
                               f"{self.active.id}. Wait until the response is finished "
                               "before creating a new one.")
        await self._start_response(event.get("response") or {})

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self.active is None or (wanted is not None and wanted != self.active.id):
            raise InvalidEvent("response_cancel_not_active",
                               "Cancellation failed: no active response found")
        self.cancels.append(event)
        await self._cancel("client_cancelled")

    # -- conversation and responses ------------------------------------------------------------

    async def _add_item(self, item: dict[str, Any], previous: str | None = None) -> None:
        previous = previous or self._last_item
        self.items[item["id"]] = item
        self._last_item = item["id"]
        await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": copy.deepcopy(item)})
        if item["status"] == "completed":
            await self.send({"type": "conversation.item.done", "previous_item_id": previous,
                             "item": copy.deepcopy(item)})

    async def _commit(self, item_id: str) -> None:
        self._buffer.clear()
        previous = self._last_item
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                         "previous_item_id": previous})
        await self._add_item({"id": item_id, "type": "message", "object": "realtime.item",
                              "status": "completed", "role": "user",
                              "content": [{"type": "input_audio", "transcript": None}]})
        if self.config["audio"]["input"].get("transcription"):
            text = (self.user_transcripts.popleft() if self.user_transcripts
                    else self.fake.user_transcript)
            await self.send({"type": "conversation.item.input_audio_transcription.delta",
                             "item_id": item_id, "content_index": 0, "delta": text})
            await self.send({"type": "conversation.item.input_audio_transcription.completed",
                             "item_id": item_id, "content_index": 0, "transcript": text,
                             "usage": {"type": "duration", "seconds": 1.0}})

    async def _start_response(self, params: dict[str, Any] | None = None) -> None:
        script = self.responses.popleft() if self.responses else self.fake.default_response
        resp = _Response(new_id("resp"))
        self.active = resp
        self._release.clear()
        await self.send({"type": "response.created",
                         "response": self._response_obj(resp, "in_progress")})
        task = asyncio.get_running_loop().create_task(self._stream(resp, script, params or {}))
        if self.active is resp:  # not cancelled while response.created was being sent
            resp.task = task
        else:
            task.cancel()

    def _response_obj(self, resp: _Response, status: str,
                      details: dict[str, Any] | None = None) -> dict[str, Any]:
        out = self.config["audio"]["output"]
        done = status != "in_progress"
        return {"object": "realtime.response", "id": resp.id, "status": status,
                "status_details": details, "conversation_id": "conv_fake",
                "output_modalities": self.config["output_modalities"],
                "max_output_tokens": self.config["max_output_tokens"],
                "audio": {"output": {"format": out["format"], "voice": out["voice"]}},
                "output": copy.deepcopy(resp.output) if done else [],
                "usage": {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
                          "input_token_details": {"text_tokens": 10, "audio_tokens": 10},
                          "output_token_details": {"text_tokens": 4, "audio_tokens": 6}}
                if done else None, "metadata": None}

    async def _stream(self, resp: _Response, script: ResponseScript,
                      params: dict[str, Any]) -> None:
        try:
            if self.fake.rate_limits:
                await self.send({"type": "rate_limits.updated", "rate_limits": [
                    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 1},
                    {"name": "tokens", "limit": 50000, "remaining": 49000,
                     "reset_seconds": 0.5}]})
            details: dict[str, Any] | None = None
            if script.status == "failed":
                details = {"type": "failed", "error": copy.deepcopy(script.error) or {
                    "type": "server_error", "code": None, "message": "Server error."}}
            elif script.function_call is not None:
                await self._stream_function_call(resp, *script.function_call)
            else:
                text_only = params.get("output_modalities",
                                       self.config["output_modalities"]) == ["text"]
                await self._stream_message(resp, script, text_only)
            if script.status == "incomplete":
                details = {"type": "incomplete", "reason": script.reason}
            self.active = None
            self.statuses.append(script.status)
            await self.send({"type": "response.done",
                             "response": self._response_obj(resp, script.status, details)})
        except ConnectionClosed:
            self.active = None

    async def _stream_message(self, resp: _Response, script: ResponseScript,
                              text_only: bool) -> None:
        fmt = self.config["audio"]["output"]["format"].get("type", "audio/pcm")
        item_id = new_id("item")
        item: dict[str, Any] = {"id": item_id, "type": "message", "object": "realtime.item",
                                "status": "in_progress", "role": "assistant", "content": []}
        resp.item = item
        ids = {"response_id": resp.id, "item_id": item_id, "output_index": 0,
               "content_index": 0}
        await self.send({"type": "response.output_item.added", "response_id": resp.id,
                         "output_index": 0, "item": copy.deepcopy(item)})
        await self._add_item(item)
        part = {"type": "text", "text": ""} if text_only else {"type": "audio", "transcript": ""}
        await self.send({"type": "response.content_part.added", **ids, "part": part})
        resp.part_open = True
        words = [w + " " for w in script.transcript.split(" ")]
        words[-1] = words[-1].rstrip()
        if text_only:
            for word in words:
                resp.transcript += word
                await self.send({"type": "response.output_text.delta", **ids, "delta": word})
        else:
            self.audio_sent[item_id] = 0
            audio = script.audio if script.audio is not None else tone(fmt, script.audio_ms)
            step = max(1, script.chunk_ms * BYTES_PER_MS[fmt])
            chunks = [audio[i:i + step] for i in range(0, len(audio), step)] or [b""]
            for n, chunk in enumerate(chunks):
                if n == script.hold_after_chunks:
                    await self._release.wait()
                await self.send({"type": "response.output_audio.delta", **ids,
                                 "delta": base64.b64encode(chunk).decode()})
                self.audio_sent[item_id] += len(chunk)
                if n < len(words):
                    await self._transcript_delta(resp, ids, words[n])
                await asyncio.sleep(script.pace * len(chunk) / BYTES_PER_MS[fmt] / 1000)
            for word in words[len(chunks):]:
                await self._transcript_delta(resp, ids, word)
        await self._close_message(resp, "incomplete" if script.status == "incomplete"
                                  else "completed")

    async def _transcript_delta(self, resp: _Response, ids: dict[str, Any], word: str) -> None:
        resp.transcript += word
        await self.send({"type": "response.output_audio_transcript.delta", **ids,
                         "delta": word})

    async def _close_message(self, resp: _Response, status: str) -> None:
        """The ``.done`` events of the open assistant item (also after a cancel)."""
        item = resp.item
        if item is None or not resp.part_open:
            return
        resp.part_open = False
        ids = {"response_id": resp.id, "item_id": item["id"], "output_index": 0,
               "content_index": 0}
        if item["id"] in self.audio_sent:
            content = {"type": "output_audio", "transcript": resp.transcript}
            await self.send({"type": "response.output_audio.done", **ids})
            await self.send({"type": "response.output_audio_transcript.done", **ids,
                             "transcript": resp.transcript})
            part = {"type": "audio", "transcript": resp.transcript}
        else:
            content = {"type": "output_text", "text": resp.transcript}
            await self.send({"type": "response.output_text.done", **ids,
                             "text": resp.transcript})
            part = {"type": "text", "text": resp.transcript}
        await self.send({"type": "response.content_part.done", **ids, "part": part})
        item.update(status=status, content=[content])
        resp.output.append(item)
        await self.send({"type": "response.output_item.done", "response_id": resp.id,
                         "output_index": 0, "item": copy.deepcopy(item)})
        await self.send({"type": "conversation.item.done", "previous_item_id": None,
                         "item": copy.deepcopy(item)})

    async def _stream_function_call(self, resp: _Response, name: str, arguments: str) -> None:
        call_id = new_id("call")
        item: dict[str, Any] = {"id": new_id("item"), "type": "function_call",
                                "object": "realtime.item", "status": "in_progress",
                                "call_id": call_id, "name": name, "arguments": ""}
        await self.send({"type": "response.output_item.added", "response_id": resp.id,
                         "output_index": 0, "item": copy.deepcopy(item)})
        await self._add_item(item)
        ids = {"response_id": resp.id, "item_id": item["id"], "output_index": 0,
               "call_id": call_id}
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            await self.send({"type": "response.function_call_arguments.delta", **ids,
                             "delta": piece})
        await self.send({"type": "response.function_call_arguments.done", **ids, "name": name,
                         "arguments": arguments})
        item.update(status="completed", arguments=arguments)
        resp.output.append(item)
        await self.send({"type": "response.output_item.done", "response_id": resp.id,
                         "output_index": 0, "item": copy.deepcopy(item)})
        await self.send({"type": "conversation.item.done", "previous_item_id": None,
                         "item": copy.deepcopy(item)})

    async def _cancel(self, reason: str) -> None:
        resp = self.active
        if resp is None:
            return
        self._stop_response()
        self.statuses.append("cancelled")
        await self._close_message(resp, "incomplete")
        await self.send({"type": "response.done", "response": self._response_obj(
            resp, "cancelled", {"type": "cancelled", "reason": reason})})

    def _stop_response(self) -> None:
        resp, self.active = self.active, None
        if resp is not None and resp.task is not None:
            resp.task.cancel()


@dataclass
class FakeOpenAIRealtime:
    """The server. ``auto_turn_ms``: with turn detection on, every this many ms of received
    audio make one caller turn (``user_transcript`` unless a session queued others).
    ``max_session_s``: after it, an ``error`` ``session_expired`` and a close (1000).
    ``validate_outgoing`` checks every event the fake sends against the SDK server models;
    failures land in ``internal_errors`` and fail the ``async with`` block on exit."""

    api_key: str = field(default_factory=lambda: "sk-fake-" + secrets.token_hex(8))
    model: str = "gpt-realtime"
    auto_turn_ms: int | None = None
    user_transcript: str = "I would like to book an appointment."
    default_response: ResponseScript = field(default_factory=ResponseScript)
    max_session_s: float | None = None
    rate_limits: bool = False
    validate_outgoing: bool = True
    sessions: list[FakeRealtimeSession] = field(default_factory=list)
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    port: int = 0
    _server: Server | None = None
    _rejects: deque[int] = field(default_factory=deque)
    _open_errors: deque[dict[str, Any]] = field(default_factory=deque)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _tick: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model={self.model}"

    @property
    def connection_count(self) -> int:
        """Accepted WebSocket connections (rejected handshakes are in ``handshakes``)."""
        return len(self.sessions)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def reject_next(self, status: int = 503, times: int = 1) -> None:
        """Answer the next ``times`` handshakes with HTTP ``status`` (for reconnect tests)."""
        self._rejects.extend([status] * times)

    def refuse_next(self, code: str | None = "invalid_api_key",
                    message: str = "Incorrect API key provided: sk-fake-***. You can find "
                    "your API key at https://platform.openai.com/account/api-keys.",
                    *, error_type: str = "invalid_request_error", times: int = 1) -> None:
        """Accept the next ``times`` upgrades, then send an ``error`` as the first frame
        (instead of ``session.created``) and close 1000: what the real server does for a
        bad key or a model that does not exist (``model_not_found``)."""
        error = {"type": error_type, "code": code, "message": message, "param": None,
                 "event_id": None}
        self._open_errors.extend(copy.deepcopy(error) for _ in range(times))

    async def start(self) -> FakeOpenAIRealtime:
        self._server = await serve(self._handler, "127.0.0.1", 0,
                                   process_request=self._process_request, max_size=16 * 2**20)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for session in self.sessions:
            session._stop_response()
            if session.reading_stopped and session.ws.transport is not None:
                session.ws.transport.abort()  # else the server's close waits for it
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeOpenAIRealtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        if self.internal_errors and exc[0] is None:
            raise AssertionError("fake sent events the SDK rejects: "
                                 + "; ".join(self.internal_errors[:3]))

    async def wait_session(self, index: int = 0, timeout: float = 5.0) -> FakeRealtimeSession:
        """The ``index``-th accepted connection, once it exists."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.sessions) <= index:
                    tick = self._tick
                    await tick.wait()
        except TimeoutError:
            raise AssertionError(f"no connection #{index} within {timeout}s "
                                 f"(handshakes: {self.handshakes})") from None
        return self.sessions[index]

    def _process_request(self, connection: ServerConnection, request: Request
                         ) -> Response | None:
        split = urlsplit(request.path)
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        record: dict[str, Any] = {"path": request.path, "headers": headers, "status": 101}
        self.handshakes.append(record)
        status, body = 101, ""
        if split.path != "/v1/realtime":
            status, body = 404, "Not Found"
        elif "model" not in parse_qs(split.query):
            status, body = 400, "Missing required parameter: 'model'."
        elif headers.get("authorization") != f"Bearer {self.api_key}":
            status, body = 401, json.dumps({"error": {
                "type": "invalid_request_error", "code": "invalid_api_key",
                "message": "Incorrect API key provided.", "param": None}})
        elif self._rejects:
            status, body = self._rejects.popleft(), "Service Unavailable"
        if status == 101:
            return None
        record["status"] = status
        self._notify()
        return connection.respond(status, body)

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def _handler(self, ws: ServerConnection) -> None:
        session = FakeRealtimeSession(self, ws)
        self.sessions.append(session)
        self._notify()
        expiry: asyncio.TimerHandle | None = None
        try:
            if session.headers.get("openai-beta", "").startswith("realtime"):
                await ws.close(4000, "beta_api_shape_disabled")
                return
            if self._open_errors:
                await session.send({"type": "error", "error": self._open_errors.popleft()})
                await ws.close(1000)
                return
            await session.send({"type": "session.created",
                                "session": copy.deepcopy(session.config)})
            if self.max_session_s is not None:
                loop = asyncio.get_running_loop()
                expiry = loop.call_later(self.max_session_s,
                                         lambda: self._spawn(self._expire(session)))
            async for message in ws:
                await session.on_message(message)
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            session._stop_response()
            session.close_code = ws.close_code
            session.closed.set()
            session._notify()

    def _spawn(self, coro: typing.Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, session: FakeRealtimeSession) -> None:
        with contextlib.suppress(ConnectionClosed):
            await session.send_error("session_expired", "Your session hit the maximum "
                                     f"duration of {self.max_session_s} seconds.")
            await session.close(1000, "session_expired")
