"""A fake Gemini Live server (BidiGenerateContent over WebSocket) on loopback.

Built from protocols.md 3 only; it imports nothing from ``agentic_fast``. Client messages are
checked with google-genai's own Live types; server messages are lowerCamelCase JSON sent in
binary frames (text frames on request), like the real server.

    async with FakeGeminiLive(respond_after_audio_ms=600) as fake:
        url = fake.url                       # ws://127.0.0.1:<port>/ws/...BidiGenerateContent
        headers = {"x-goog-api-key": fake.api_key}      # or url + "?key=" + fake.api_key
        ...                                  # client sends setup, audio...
        await fake.wait_for(lambda: fake.connections[-1].turns_done >= 1)
        fake.audio_received, fake.setups, fake.handles_used, fake.violations

Every client message is validated against google-genai's ``LiveClientMessage`` (unknown keys
forbidden, see :func:`validate_client_message`); one it rejects closes the socket 1007
"Request contains an invalid argument." as the real server does (that code and reason are
what the SDK's users report for a malformed setup, e.g. google/adk-python#225).

Behaviour: auth by ``?key=`` or ``x-goog-api-key`` (missing key -> close 1008, wrong key ->
close 1007, both after the first client message); the first message must be a valid
``setup`` (else 1007; unknown model -> 1008); ``setupComplete``, then (with
``sessionResumption``) a ``sessionResumptionUpdate``. ``realtimeInput`` audio must be
``audio/pcm;rate=16000`` base64 PCM16 (else 1007); it is decoded and recorded. A model turn
(:class:`ModelTurn`) starts after ``respond_after_audio_ms`` of received audio (or
``respond_after_speech_ms`` of loud audio), on ``audioStreamEnd`` after audio, on
``realtimeInput.text``, on ``clientContent`` with ``turnComplete``, on ``activityEnd``
(manual VAD) or on demand (:meth:`play_turn`). A turn sends inputTranscription, an optional
toolCall (waits for the toolResponse), 24 kHz audio chunks with outputTranscription
fragments, generationComplete, turnComplete+usageMetadata, then a fresh resumption handle
(also every ``resumption_update_interval_s`` when idle). ``binary_frames=False`` sends text
frames; ``realtime=True`` paces audio in real time. Barge-in: ``interrupt_after_chunks``,
:meth:`interrupt`, or caller speech (peak >= ``speech_threshold``) while the model talks when
``barge_in_on_speech``. Gemini 3.x (``gemini3`` or a ``gemini-3`` model): ``clientContent``
is only accepted before the first model turn with ``historyConfig.
initialHistoryInClientContent``; otherwise close 1007. ``connection_cap_s``: ``goAway``
(``go_away_time_left_s`` before the cap) then close 1011. A ``setup`` with a handle this
fake issued resumes that session; an unknown handle -> 1007. Abrupt close:
:meth:`drop_connection`. Close codes and reasons follow protocols.md 3.6 (marked unverified
there).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import re
import secrets
import sys
from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pydantic
from google.genai import types
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
#: v1beta/v1alpha per protocols.md 3.1; google-genai 3.x defaults to v1 for the Gemini API.
PATHS = frozenset(PATH.replace("v1beta", v) for v in ("v1beta", "v1alpha", "v1"))
IN_RATE, OUT_RATE = 16000, 24000
IN_MIME_RE = re.compile(r"audio/pcm(?:;\s*rate=(\d+))?")
CLOSE_INVALID, CLOSE_POLICY, CLOSE_DEADLINE = 1007, 1008, 1011
REASON_INVALID = "Request contains an invalid argument."
REASON_BAD_KEY = "API key not valid. Please pass a valid API key."
REASON_NO_KEY = ("Method doesn't allow unregistered callers (callers without established "
                 "identity). Please use API Key or other form of API consumer identity to call "
                 "this API.")
REASON_DEADLINE = "Deadline expired before operation could complete."

_SNAKE: dict[str, str] = {}


def _get(obj: Mapping[str, Any], camel: str) -> Any:
    """``obj[camel]`` or its snake_case spelling (the server accepts both)."""
    value = obj.get(camel)
    if value is None:
        snake = _SNAKE.get(camel)
        if snake is None:
            snake = _SNAKE[camel] = re.sub(r"([A-Z])", r"_\1", camel).lower()
        value = obj.get(snake)
    return value


def validate_client_message(msg: dict[str, Any]) -> str | None:
    """None if google-genai's Live types accept ``msg`` (a decoded client frame), else why.

    The wire JSON (camelCase, or snake_case: the server reads both) is validated with
    ``LiveClientMessage.model_validate_json``. google-genai's models are pydantic with
    ``extra='forbid'`` (``_common.BaseModel``), so a key the type does not have anywhere in
    the message is an error, e.g. a bare function declaration in ``setup.tools`` (a Tool has
    ``functionDeclarations``, not ``name``/``parameters``); :func:`_check_sdk_strictness`
    makes sure of that at import.

    One exception, where the SDK's type lags its own converter and the documented wire
    (BidiGenerateContentSetup.realtimeInputConfig): ``LiveClientSetup`` has no
    ``realtimeInputConfig`` although ``_live_converters`` writes ``setup.realtimeInputConfig``
    from ``LiveConnectConfig``; exactly that key is taken out and checked as
    ``RealtimeInputConfig`` (extra keys forbidden there too).
    """
    try:
        body = msg.get("setup")
        if isinstance(body, dict):
            body = dict(body)
            for key in ("realtimeInputConfig", "realtime_input_config"):
                ric = body.pop(key, None)
                if ric is not None:
                    types.RealtimeInputConfig.model_validate_json(json.dumps(ric))
            if not isinstance(body.get("model"), str):
                return "setup.model is required"
            msg = {"setup": body}
        types.LiveClientMessage.model_validate_json(json.dumps(msg))
    except pydantic.ValidationError as exc:
        return str(exc)
    return None


def _check_sdk_strictness() -> None:
    """Refuse to run as a lax fake: the installed google-genai must reject unknown keys
    (else every wire defect of that kind would pass unnoticed)."""
    for bad in ({"setup": {"model": "models/m", "tools": [{"name": "f", "parameters": {}}]}},
                {"realtimeInput": {"audio": {"data": "", "mimeType": "audio/pcm"}, "x": 1}},
                {"toolResponse": {"functionResponses": [{"id": "1", "output": {}}]}}):
        if validate_client_message(bad) is None:
            raise RuntimeError("google-genai's Live types accept unknown keys "
                               f"({json.dumps(bad)}); the fake cannot validate client messages")


_check_sdk_strictness()


def tone(ms: int, rate: int = OUT_RATE, hz: float = 440.0, amplitude: int = 6000) -> bytes:
    """PCM16 LE mono sine, the default model voice."""
    n = rate * ms // 1000
    pcm = array("h", (int(amplitude * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)))
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm.tobytes()


@dataclass
class ModelTurn:
    """One scripted model reply. ``audio`` is PCM16 24 kHz (default: a tone of ``audio_ms``);
    ``tool_calls`` are ``functionCalls`` sent first (the turn waits for their responses);
    ``interrupt_after_chunks`` makes the server interrupt itself (barge-in) after that many."""

    audio_ms: int = 400
    audio: bytes | None = None
    chunk_ms: int = 40
    input_transcript: str | None = "Hello, I'd like to book a table."
    output_transcript: str | None = "Sure, for which day?"
    tool_calls: Sequence[Mapping[str, Any]] = ()
    interrupt_after_chunks: int | None = None
    usage: bool = True


@dataclass(frozen=True, slots=True)
class Violation:
    """A client message that breaks protocols.md 3 without the server closing."""

    connection: int
    reason: str
    detail: str


class _Interrupt(Exception):
    pass


def _b64decode(data: str) -> bytes:
    """proto3 JSON bytes: standard or URL-safe base64, padded or not (the SDK sends URL-safe)."""
    data = data.replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)


def _words(text: str | None) -> list[str]:
    """Transcript fragments that concatenate back to ``text``."""
    return re.findall(r"\S+\s*", text or "")


@dataclass
class LiveConnection:
    """What one WebSocket connection did (records), plus its private state."""

    index: int
    path: str
    auth: str  # "query", "header", "missing", "bad"
    setup: dict[str, Any] | None = None
    model: str | None = None
    resumed_handle: str | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    texts: list[str] = field(default_factory=list)
    client_contents: list[dict[str, Any]] = field(default_factory=list)
    tool_responses: list[dict[str, Any]] = field(default_factory=list)
    audio_stream_ends: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    turns_started: int = 0
    turns_done: int = 0
    interrupted_turns: int = 0
    close_code: int | None = None  # set when the server closed (None: client or abort)
    close_reason: str | None = None
    closed: bool = False
    reading_stopped: bool = False  # stop_reading(): it cannot see the client go away
    # -- private state
    ws: ServerConnection | None = field(default=None, repr=False)
    session: _Session | None = field(default=None, repr=False)
    setup_complete_sent: bool = field(default=False, repr=False)
    audio_ms_since_turn: float = field(default=0.0, repr=False)
    speech_ms: float = field(default=0.0, repr=False)
    turn_task: asyncio.Task[None] | None = field(default=None, repr=False)
    interrupt_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    tools_done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    pending_tool_ids: set[str] = field(default_factory=set, repr=False)
    cancelled_tool_ids: set[str] = field(default_factory=set, repr=False)
    tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    @property
    def resumption(self) -> bool:
        return self.setup is not None and _get(self.setup, "sessionResumption") is not None

    def flag(self, *path: str) -> Any:
        """A setup field by camelCase path (either spelling on the wire), or None."""
        node: Any = self.setup or {}
        for key in path:
            node = _get(node, key) if isinstance(node, dict) else None
        return node

    @property
    def manual_vad(self) -> bool:
        return self.flag("realtimeInputConfig", "automaticActivityDetection",
                          "disabled") is True

    @property
    def text_modality(self) -> bool:
        return self.flag("generationConfig", "responseModalities") == ["TEXT"]


@dataclass
class _Session:
    id: str
    turns: int = 0


@dataclass(eq=False, kw_only=True)
class FakeGeminiLive:
    """Fake ``generativelanguage.googleapis.com`` Live endpoint; see the module docstring."""

    api_key: str = "fake-gemini-key"
    binary_frames: bool = True  # the real server sends binary frames
    realtime: bool = False  # pace model audio in real time (else as fast as possible)
    respond_after_audio_ms: float | None = None  # any audio received while idle
    respond_after_speech_ms: float | None = None  # loud audio (peak >= speech_threshold)
    respond_on_stream_end: bool = True
    respond_to_text: bool = True
    turns: Sequence[ModelTurn] = ()  # replies for the next turns, then default_turn
    default_turn: ModelTurn = field(default_factory=ModelTurn)
    gemini3: bool | None = None  # None: from the model name
    known_models: frozenset[str] | None = None  # None: any models/... name
    connection_cap_s: float | None = None
    go_away_time_left_s: float = 0.2
    resumption_update_interval_s: float | None = None
    barge_in_on_speech: bool = False
    speech_threshold: int = 1000
    barge_in_speech_ms: float = 60.0
    strict_input_rate: bool = True  # only rate=16000 (the real server would resample)
    setup_complete_delay_s: float = 0.0
    # records
    connections: list[LiveConnection] = field(default_factory=list, init=False)
    setups: list[dict[str, Any]] = field(default_factory=list, init=False)
    handles_used: list[str] = field(default_factory=list, init=False)
    issued_handles: list[str] = field(default_factory=list, init=False)
    violations: list[Violation] = field(default_factory=list, init=False)
    rejected_paths: list[str] = field(default_factory=list, init=False)
    base_url: str = field(default="", init=False)
    url: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self._queue: deque[ModelTurn] = deque(self.turns)
        self._sessions: dict[str, _Session] = {}
        self._server: Server | None = None
        self._changed = asyncio.Event()

    # -- records -----------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    @property
    def current(self) -> LiveConnection:
        """The newest connection (the one on-demand scripting acts on by default)."""
        return self.connections[-1]

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every client message after ``setup``, over all connections, in order."""
        return [m for c in self.connections for m in c.received]

    @property
    def audio_received(self) -> bytes:
        """Every PCM16 16 kHz byte received, over all connections."""
        return b"".join(bytes(c.audio) for c in self.connections)

    @property
    def samples_received(self) -> int:
        return sum(len(c.audio) for c in self.connections) // 2

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> None:
        """Return once ``predicate()`` is true (re-checked on every recorded change)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        self._server = await serve(self._handler, "127.0.0.1", 0, ping_interval=None,
                                   process_request=self._process_request, max_size=2**22)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"ws://127.0.0.1:{port}"
        self.url = self.base_url + PATH
        return self.url

    async def close(self) -> None:
        for conn in self.connections:
            for task in [*conn.tasks, conn.turn_task]:
                if task is not None:
                    task.cancel()
            if conn.reading_stopped and conn.ws is not None:
                conn.ws.transport.abort()  # else the server's close waits for it
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeGeminiLive:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- scripting ---------------------------------------------------------------------------

    def queue_turn(self, turn: ModelTurn) -> None:
        """The reply for the next triggered turn (then ``default_turn`` again)."""
        self._queue.append(turn)

    async def play_turn(self, turn: ModelTurn | None = None,
                        conn: LiveConnection | None = None) -> None:
        """Run a model turn now (interrupting a running one) and wait until it is sent."""
        conn = conn or self.current
        await self._interrupt_turn(conn)
        self._start_turn(conn, turn)
        if conn.turn_task is not None:
            await asyncio.shield(conn.turn_task)

    async def interrupt(self, conn: LiveConnection | None = None) -> None:
        """Barge-in as if the caller spoke: ``interrupted`` then ``turnComplete``."""
        await self._interrupt_turn(conn or self.current)

    async def send(self, message: dict[str, Any], conn: LiveConnection | None = None) -> None:
        """Send any server message (e.g. ``toolCallCancellation``) as is."""
        await self._send(conn or self.current, message)

    async def send_resumption_update(self, conn: LiveConnection | None = None) -> str:
        """Issue a fresh resumable handle now."""
        return await self._send_handle(conn or self.current)

    async def go_away(self, time_left_s: float = 0.2, *, then_close: bool = True,
                      conn: LiveConnection | None = None) -> None:
        """``goAway`` with ``timeLeft``; then close 1011 after that time if ``then_close``."""
        conn = conn or self.current
        await self._send(conn, {"goAway": {"timeLeft": f"{time_left_s:g}s"}})
        if then_close:
            self._spawn(conn, self._deadline(conn, time_left_s))

    async def close_connection(self, code: int = 1000, reason: str = "",
                               conn: LiveConnection | None = None) -> None:
        await self._close(conn or self.current, code, reason)

    def stop_reading(self, conn: LiveConnection | None = None) -> None:
        """The server stops reading the connection (a hung or overloaded frontend): the TCP
        receive window fills, pings go unanswered, nothing is closed."""
        conn = conn or self.current
        if conn.ws is not None:
            conn.reading_stopped = True
            conn.ws.transport.pause_reading()

    def drop_connection(self, conn: LiveConnection | None = None) -> None:
        """Abrupt close: the TCP connection is aborted, no close frame (client sees 1006)."""
        conn = conn or self.current
        if conn.ws is not None:
            conn.ws.transport.abort()

    # -- connection --------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path not in PATHS:
            self.rejected_paths.append(path)
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    def _auth(self, request: Request) -> str:
        keys = parse_qs(urlsplit(request.path).query).get("key", [])
        header = request.headers.get("x-goog-api-key")
        if not keys and header is None:
            return "missing"
        if self.api_key in keys:
            return "query"
        return "header" if header == self.api_key else "bad"

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = LiveConnection(len(self.connections), ws.request.path, self._auth(ws.request))
        conn.ws = ws
        self.connections.append(conn)
        self._notify()
        try:
            if await self._on_setup(conn, await ws.recv()):
                async for frame in ws:
                    await self._on_message(conn, frame)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            for task in [*conn.tasks, conn.turn_task]:
                if task is not None and task is not asyncio.current_task():
                    task.cancel()
            self._notify()

    async def _on_setup(self, conn: LiveConnection, frame: str | bytes) -> bool:
        if conn.auth == "missing":
            return await self._close(conn, CLOSE_POLICY, REASON_NO_KEY)
        if conn.auth == "bad":
            return await self._close(conn, CLOSE_INVALID, REASON_BAD_KEY)
        msg = await self._decode(conn, frame)
        if msg is None:
            return False
        if list(msg) != ["setup"] or not isinstance(msg["setup"], dict):
            return await self._reject(conn, "first_not_setup", f"keys {list(msg)}")
        error = validate_client_message(msg)
        if error is not None:
            return await self._reject(conn, "invalid_setup", error)
        setup = msg["setup"]
        model = setup["model"]
        if not model.startswith("models/"):
            return await self._reject(conn, "model_prefix", model)
        if self.known_models is not None and model.removeprefix("models/") not in \
                self.known_models:
            return await self._close(conn, CLOSE_POLICY, f"{model} is not found for API "
                                     "version v1beta, or is not supported for bidiGenerateContent.")
        handle = _get(_get(setup, "sessionResumption") or {}, "handle")
        if handle:
            session = self._sessions.get(handle)
            if session is None:
                return await self._reject(conn, "unknown_handle", handle)
            self.handles_used.append(handle)
            conn.resumed_handle = handle
        else:
            session = _Session(secrets.token_hex(8))
        conn.setup, conn.model, conn.session = setup, model, session
        self.setups.append(setup)
        self._spawn(conn, self._complete_setup(conn))
        return True

    @staticmethod
    def _spawn(conn: LiveConnection, coro: Any) -> None:
        """A background task of ``conn`` (cancelled when it closes)."""
        async def guarded() -> None:
            with contextlib.suppress(ConnectionClosed):
                await coro
        conn.tasks.append(asyncio.create_task(guarded()))

    async def _complete_setup(self, conn: LiveConnection) -> None:
        if self.setup_complete_delay_s:
            await asyncio.sleep(self.setup_complete_delay_s)
        conn.setup_complete_sent = True  # before the await: the client may answer at once
        await self._send(conn, {"setupComplete": {}})
        if conn.resumption:
            await self._send_handle(conn)
        if self.connection_cap_s is not None:
            self._spawn(conn, self._cap(conn, self.connection_cap_s))
        if self.resumption_update_interval_s is not None and conn.resumption:
            self._spawn(conn, self._periodic_handles(conn))
        self._notify()

    async def _cap(self, conn: LiveConnection, cap_s: float) -> None:
        left = min(self.go_away_time_left_s, cap_s)
        await asyncio.sleep(cap_s - left)
        await self.go_away(left, then_close=False, conn=conn)
        await self._deadline(conn, left)

    async def _deadline(self, conn: LiveConnection, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self._close(conn, CLOSE_DEADLINE, REASON_DEADLINE)

    async def _periodic_handles(self, conn: LiveConnection) -> None:
        assert self.resumption_update_interval_s is not None
        while True:
            await asyncio.sleep(self.resumption_update_interval_s)
            if conn.turn_task is None:
                await self._send_handle(conn)

    # -- client messages ---------------------------------------------------------------------

    async def _decode(self, conn: LiveConnection, frame: str | bytes) -> dict[str, Any] | None:
        try:
            msg = json.loads(frame)
        except (ValueError, UnicodeDecodeError) as exc:
            await self._reject(conn, "malformed_json", str(exc))
            return None
        if not isinstance(msg, dict):
            await self._reject(conn, "not_object", repr(msg)[:60])
            return None
        return msg

    async def _on_message(self, conn: LiveConnection, frame: str | bytes) -> None:
        msg = await self._decode(conn, frame)
        if msg is None:
            return
        conn.received.append(msg)
        if not conn.setup_complete_sent:
            self._violation(conn, "before_setup_complete", next(iter(msg), ""))
        error = validate_client_message(msg)
        if error is not None or len(msg) != 1:
            await self._reject(conn, "invalid_message", error or f"keys {list(msg)}")
            return
        [(key, body)] = msg.items()
        handler = self._handlers.get(key) or self._handlers.get(re.sub(
            r"_([a-z])", lambda m: m[1].upper(), key))
        if handler is None or not isinstance(body, dict):
            await self._reject(conn, "unexpected_message", key)
            return
        await handler(self, conn, body)
        self._notify()

    async def _on_realtime_input(self, conn: LiveConnection, body: dict[str, Any]) -> None:
        audio = _get(body, "audio")
        for blob in ([audio] if audio else []) + list(_get(body, "mediaChunks") or []):
            if not await self._on_audio(conn, blob):
                return
        text = _get(body, "text")
        if text is not None:
            conn.texts.append(text)
            if self.respond_to_text:
                await self._interrupt_turn(conn)
                self._start_turn(conn)
        if _get(body, "audioStreamEnd"):
            conn.audio_stream_ends += 1
            if conn.manual_vad:
                self._violation(conn, "stream_end_with_manual_vad", "audioStreamEnd")
            elif self.respond_on_stream_end and conn.audio_ms_since_turn and not conn.turn_task:
                self._start_turn(conn)
        for key in ("activityStart", "activityEnd"):
            if _get(body, key) is not None:
                if not conn.manual_vad:
                    self._violation(conn, "activity_with_automatic_vad", key)
                elif key == "activityStart":
                    await self._interrupt_turn(conn)
                else:
                    self._start_turn(conn)

    async def _on_audio(self, conn: LiveConnection, blob: dict[str, Any]) -> bool:
        mime = _get(blob, "mimeType") or ""
        match = IN_MIME_RE.fullmatch(mime)
        if match is None or (self.strict_input_rate and match[1] != str(IN_RATE)):
            return await self._reject(conn, "bad_audio_mime", mime)
        try:
            pcm = _b64decode(blob.get("data") or "")
        except binascii.Error as exc:
            return await self._reject(conn, "bad_base64", str(exc))
        if len(pcm) % 2:
            return await self._reject(conn, "odd_pcm16_length", str(len(pcm)))
        conn.audio += pcm
        ms = len(pcm) * 1000 / (2 * int(match[1] or IN_RATE))
        loud = False
        if self.barge_in_on_speech or self.respond_after_speech_ms is not None:
            samples = array("h", pcm)
            if sys.byteorder == "big":
                samples.byteswap()
            loud = bool(samples) and max(max(samples), -min(samples)) >= self.speech_threshold
        conn.speech_ms = conn.speech_ms + ms if loud else 0.0
        if conn.turn_task is not None:
            if self.barge_in_on_speech and conn.speech_ms >= self.barge_in_speech_ms:
                await self._interrupt_turn(conn)
            return True
        conn.audio_ms_since_turn += ms
        if ((self.respond_after_audio_ms is not None
             and conn.audio_ms_since_turn >= self.respond_after_audio_ms)
                or (self.respond_after_speech_ms is not None
                    and conn.speech_ms >= self.respond_after_speech_ms)):
            self._start_turn(conn)
        return True

    async def _on_client_content(self, conn: LiveConnection, body: dict[str, Any]) -> None:
        gemini3 = self.gemini3 if self.gemini3 is not None else "gemini-3" in (conn.model or "")
        if gemini3:
            seeding = conn.flag("historyConfig", "initialHistoryInClientContent") is True
            if not seeding or conn.turns_started:
                await self._reject(conn, "client_content_gemini3", "after first turn"
                                   if seeding else "without historyConfig")
                return
        conn.client_contents.append(body)
        await self._interrupt_turn(conn)  # clientContent interrupts generation
        if _get(body, "turnComplete"):
            self._start_turn(conn)

    async def _on_tool_response(self, conn: LiveConnection, body: dict[str, Any]) -> None:
        for fr in _get(body, "functionResponses") or []:
            conn.tool_responses.append(fr)
            fid = fr.get("id")
            if fid in conn.pending_tool_ids:
                conn.pending_tool_ids.discard(fid)
            elif fid not in conn.cancelled_tool_ids:  # late answers to cancelled calls: ignored
                self._violation(conn, "unknown_tool_call_id", str(fid))
        if not conn.pending_tool_ids:
            conn.tools_done.set()

    async def _on_second_setup(self, conn: LiveConnection, body: dict[str, Any]) -> None:
        await self._reject(conn, "second_setup", "setup sent twice")

    _handlers: ClassVar[dict[str, Callable[[FakeGeminiLive, LiveConnection, dict[str, Any]],
                                           Any]]] = {
        "realtimeInput": _on_realtime_input,
        "clientContent": _on_client_content,
        "toolResponse": _on_tool_response,
        "setup": _on_second_setup,
    }

    # -- model turns -------------------------------------------------------------------------

    def _start_turn(self, conn: LiveConnection, turn: ModelTurn | None = None) -> None:
        if conn.closed or conn.turn_task is not None:
            return
        turn = turn or (self._queue.popleft() if self._queue else self.default_turn)
        conn.audio_ms_since_turn = 0.0
        conn.speech_ms = 0.0
        conn.interrupt_event = asyncio.Event()
        conn.turns_started += 1
        conn.turn_task = asyncio.create_task(self._run_turn(conn, turn))

    async def _interrupt_turn(self, conn: LiveConnection) -> None:
        task = conn.turn_task
        if task is not None and task is not asyncio.current_task():
            conn.interrupt_event.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def _wait(self, conn: LiveConnection, event: asyncio.Event | None,
                    timeout: float | None) -> None:
        """Wait for ``event`` (or ``timeout``); raise _Interrupt on barge-in."""
        waits = [asyncio.ensure_future(conn.interrupt_event.wait())]
        if event is not None:
            waits.append(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if conn.interrupt_event.is_set():
            raise _Interrupt

    async def _run_turn(self, conn: LiveConnection, turn: ModelTurn) -> None:
        try:
            try:
                await self._stream_turn(conn, turn)
            except _Interrupt:
                conn.interrupted_turns += 1
                await self._send(conn, {"serverContent": {"interrupted": True}})
                if conn.pending_tool_ids:
                    ids = sorted(conn.pending_tool_ids)
                    conn.cancelled_tool_ids.update(ids)
                    conn.pending_tool_ids.clear()
                    await self._send(conn, {"toolCallCancellation": {"ids": ids}})
                await self._finish_turn(conn, turn, 0)
        except ConnectionClosed:
            pass
        finally:
            conn.turn_task = None
            conn.audio_ms_since_turn = conn.speech_ms = 0.0
            conn.turns_done += 1
            self._notify()

    async def _content(self, conn: LiveConnection, key: str, words: Sequence[str]) -> None:
        for word in words:
            if key == "modelTurn":
                await self._send(conn, {"serverContent": {key: {"parts": [{"text": word}]}}})
            else:
                await self._send(conn, {"serverContent": {key: {"text": word}}})

    async def _stream_turn(self, conn: LiveConnection, turn: ModelTurn) -> None:
        assert conn.session is not None
        conn.session.turns += 1
        if conn.resumption:  # updates during generation are not resumable
            await self._send(conn, {"sessionResumptionUpdate": {"resumable": False}})
        if conn.flag("inputAudioTranscription") is not None:
            await self._content(conn, "inputTranscription", _words(turn.input_transcript))
        if turn.tool_calls:
            await self._tool_calls(conn, turn.tool_calls)
        words = _words(turn.output_transcript)
        audio = turn.audio if turn.audio is not None else tone(turn.audio_ms)
        if conn.text_modality:
            await self._content(conn, "modelTurn", words)
            words, audio = [], b""
        elif conn.flag("outputAudioTranscription") is None:
            words = []
        step = OUT_RATE * 2 * turn.chunk_ms // 1000
        chunks = [audio[i:i + step] for i in range(0, len(audio), step)]
        per_chunk = -(-len(words) // max(1, len(chunks)))  # spread fragments over the audio
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, chunk in enumerate(chunks):
            if i == turn.interrupt_after_chunks or conn.interrupt_event.is_set():
                raise _Interrupt
            await self._send(conn, {"serverContent": {"modelTurn": {"parts": [{"inlineData": {
                "mimeType": f"audio/pcm;rate={OUT_RATE}",
                "data": base64.b64encode(chunk).decode()}}]}}})
            await self._content(conn, "outputTranscription",
                                words[i * per_chunk:(i + 1) * per_chunk])
            if self.realtime:  # real-time pacing on a monotonic schedule (no drift)
                await self._wait(conn, None, t0 + (i + 1) * turn.chunk_ms / 1000 - loop.time())
        await self._content(conn, "outputTranscription", words[len(chunks) * per_chunk:])
        await self._send(conn, {"serverContent": {"generationComplete": True}})
        await self._finish_turn(conn, turn, len(audio))

    async def _tool_calls(self, conn: LiveConnection, calls: Sequence[Mapping[str, Any]]) -> None:
        calls = [{"id": f"fc-{secrets.token_hex(4)}", **c} for c in calls]
        conn.pending_tool_ids = {c["id"] for c in calls}
        conn.tools_done = asyncio.Event()
        await self._send(conn, {"toolCall": {"functionCalls": calls}})
        await self._wait(conn, conn.tools_done, None)  # generation pauses until answered

    async def _finish_turn(self, conn: LiveConnection, turn: ModelTurn, audio_bytes: int) -> None:
        msg: dict[str, Any] = {"serverContent": {"turnComplete": True}}
        if turn.usage:
            heard = len(conn.audio) // 640 + 1  # ~ 25 tokens/s of audio (20 ms per token)
            said = audio_bytes // 960
            msg["usageMetadata"] = {
                "promptTokenCount": heard, "responseTokenCount": said,
                "totalTokenCount": heard + said,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": heard}],
                "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": said}]}
        await self._send(conn, msg)
        if conn.resumption:
            await self._send_handle(conn)

    # -- server messages ---------------------------------------------------------------------

    async def _send(self, conn: LiveConnection, msg: dict[str, Any]) -> None:
        if conn.ws is None or conn.closed:
            raise ConnectionClosed(None, None)
        text = json.dumps(msg, separators=(",", ":"))
        await conn.ws.send(text.encode() if self.binary_frames else text)
        conn.sent.append(msg)
        self._notify()

    async def _send_handle(self, conn: LiveConnection) -> str:
        assert conn.session is not None
        handle = secrets.token_urlsafe(24)
        self._sessions[handle] = conn.session
        self.issued_handles.append(handle)
        await self._send(conn, {"sessionResumptionUpdate": {"newHandle": handle,
                                                            "resumable": True}})
        return handle

    async def _close(self, conn: LiveConnection, code: int, reason: str) -> bool:
        """Close with ``code``/``reason``; returns False (the connection is over)."""
        reason = reason.encode()[:123].decode(errors="ignore")  # close frames carry <= 125 B
        if conn.close_code is None:
            conn.close_code, conn.close_reason = code, reason
        self._notify()
        if conn.ws is not None:
            await conn.ws.close(code, reason)
        return False

    async def _reject(self, conn: LiveConnection, why: str, detail: str) -> bool:
        """Close 1007 (invalid argument) and record why."""
        self._violation(conn, why, detail)
        return await self._close(conn, CLOSE_INVALID, REASON_INVALID)

    def _violation(self, conn: LiveConnection, reason: str, detail: str) -> None:
        self.violations.append(Violation(conn.index, reason, detail[:500]))
        self._notify()
