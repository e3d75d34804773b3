"""A fake Telnyx Call Control v2 on loopback: REST commands, signed webhooks, media streams.

Built from Telnyx's Call Control docs and the official SDK's request types (bodies are
checked against ``CallDialParams``, ``ActionAnswerParams``, ... by
:mod:`tests.fakes.telnyx_params`); nothing here imports ``agentic_fast``. See
docs/telnyx-protocol.md for the rules it enforces.

    async with FakeTelnyx(webhook_url=our_url + "/telnyx/webhook") as fake:
        fake.base_url        # "http://127.0.0.1:<port>/v2"  (the SDK's base_url shape)
        fake.api_key         # accepted as "Authorization: Bearer <api_key>"
        fake.connection_id   # the Call Control App id ``dial`` must name
        fake.public_key_b64  # verifies every webhook (telnyx-signature-ed25519)
        call = await fake.incoming_call("+15551230000", "+15557654321")  # call.initiated
        await call.wait_answered(); media = await call.wait_media()       # our answer
        await media.say(audio); await fake.caller_hangup(call.call_control_id)
        fake.requests, fake.calls, fake.webhooks.deliveries

Endpoints: ``POST /v2/calls`` (dial), ``POST /v2/calls/{id}/actions/{answer, hangup,
speak, streaming_start, streaming_stop, record_start, transfer}``, ``GET /v2/calls/{id}``.
Errors use Telnyx's body ``{"errors": [{"code", "title", "detail", "source"}]}``: 401 for a
bad bearer key (10009), 400 for a non-JSON body (10015), 422 for an invalid body (10004
missing parameter, 10015 wrong type/enum, 10016 not +E.164), 404 for an unknown call or
action (10005), 422 for a call that has ended (90018).

A call with a ``stream_url`` opens the media stream (:class:`FakeTelnyxMediaClient`) when the
call is answered (or at ``streaming_start``), then sends ``streaming.started``; a refused
upgrade sends ``streaming.failed``; the stream's end sends ``streaming.stopped``.
Outbound calls are answered by the callee at once unless scripted with
``fake.script_outcome(to, "busy" | "no_answer" | "hold")``.

``speak`` (``ActionSpeakParams``: ``payload`` and ``voice`` required) is accepted on an
answered call only (422 90019 before, 90018 once ended); a ``voice`` naming no provider the
SDK documents (nor ``male`` / ``female``) is refused (422 10015), as is a payload over 3,000
characters. The text is recorded in ``call.spoken``, then ``call.speak.started`` and
``call.speak.ended`` (``status: completed``; ``call_hangup`` if the call ended first) are
sent with the call's ``client_state``. ``fake.speak_ended = False`` drops the
``call.speak.ended`` webhook (a lost delivery).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from telnyx.types.call_dial_params import CallDialParams
from telnyx.types.calls.action_answer_params import ActionAnswerParams
from telnyx.types.calls.action_hangup_params import ActionHangupParams
from telnyx.types.calls.action_speak_params import ActionSpeakParams
from telnyx.types.calls.action_start_recording_params import ActionStartRecordingParams
from telnyx.types.calls.action_start_streaming_params import ActionStartStreamingParams
from telnyx.types.calls.action_stop_streaming_params import ActionStopStreamingParams
from telnyx.types.calls.action_transfer_params import ActionTransferParams
from websockets.exceptions import InvalidHandshake, InvalidURI

from tests.fakes.telnyx_media import FakeTelnyxMediaClient
from tests.fakes.telnyx_params import Issue, check_params
from tests.fakes.telnyx_webhooks import (
    TelnyxKeyPair,
    TelnyxWebhookSender,
    event_envelope,
    iso_now,
    new_call_control_id,
)

ACTIONS: dict[str, type] = {
    "answer": ActionAnswerParams,
    "hangup": ActionHangupParams,
    "speak": ActionSpeakParams,
    "streaming_start": ActionStartStreamingParams,
    "streaming_stop": ActionStopStreamingParams,
    "record_start": ActionStartRecordingParams,
    "transfer": ActionTransferParams,
}
STREAM_KEYS = ("stream_url", "stream_track", "stream_codec", "stream_bidirectional_mode",
               "stream_bidirectional_codec", "stream_bidirectional_sampling_rate",
               "stream_auth_token", "stream_bidirectional_target_legs")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
#: ``voice`` providers ``ActionSpeakParams`` documents (``<Provider>.<...>``), plus the
#: legacy ``Polly.<VoiceId>``; ``male`` / ``female`` are the basic service level's voices.
SPEAK_PROVIDERS = ("AWS", "Polly", "Azure", "ElevenLabs", "Telnyx", "Minimax", "Resemble",
                   "Inworld", "FishAudio", "Soniox", "xAI", "Humain")
SPEAK_MAX_CHARS = 3000


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it (``body`` None when it was not a JSON object)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    authorized: bool
    status: int = 0
    unknown_params: list[str] = field(default_factory=list)

    @property
    def action(self) -> str | None:
        """``answer``, ``hangup``... for an action request, ``dial`` for ``POST /calls``."""
        if self.path.rstrip("/").endswith("/calls") and self.method == "POST":
            return "dial"
        _, sep, action = self.path.rpartition("/actions/")
        return action if sep else None


@dataclass
class FakeTelnyxCall:
    """One call leg as Telnyx tracks it."""

    call_control_id: str
    call_leg_id: str
    call_session_id: str
    direction: str  # "incoming" | "outgoing"
    from_number: str
    to_number: str
    connection_id: str
    webhook_url: str | None
    state: str = "parked"  # parked/bridging -> answered -> hangup
    client_state: str | None = None
    stream: dict[str, Any] = field(default_factory=dict)
    media: FakeTelnyxMediaClient | None = None
    recordings: list[dict[str, Any]] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    spoken: list[dict[str, Any]] = field(default_factory=list)  # accepted speak bodies
    hangup_cause: str | None = None
    hangup_source: str | None = None
    start_time: str = field(default_factory=iso_now)
    end_time: str | None = None
    events: list[str] = field(default_factory=list)  # webhooks delivered (answered), in order
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_alive(self) -> bool:
        return self.state != "hangup"

    def resource(self) -> dict[str, Any]:
        """``data`` of the dial answer / ``GET /calls/{id}``."""
        return {"record_type": "call", "call_control_id": self.call_control_id,
                "call_leg_id": self.call_leg_id, "call_session_id": self.call_session_id,
                "is_alive": self.is_alive, "client_state": self.client_state,
                "start_time": self.start_time, "end_time": self.end_time}

    def _touch(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()

    async def wait_answered(self, timeout: float = 10.0) -> None:
        await self.wait(lambda: self.state in ("answered", "hangup"), timeout)
        assert self.state == "answered", f"call ended instead: {self.hangup_cause}"

    async def wait_media(self, timeout: float = 10.0) -> FakeTelnyxMediaClient:
        """The media stream, once ``streaming.started`` has been sent."""
        await self.wait(lambda: "streaming.started" in self.events
                        or "streaming.failed" in self.events, timeout)
        assert self.media is not None and "streaming.started" in self.events, self.events
        return self.media

    async def wait_event(self, event_type: str, timeout: float = 10.0) -> None:
        await self.wait(lambda: event_type in self.events, timeout)

    async def wait_hangup(self, timeout: float = 10.0) -> None:
        await self.wait(lambda: "call.hangup" in self.events, timeout)


class _Reject(Exception):  # an error answer, raised to unwind a handler
    def __init__(self, status: int, code: str, title: str, detail: str,
                 pointer: str | None = None) -> None:
        super().__init__(detail)
        self.response = _error(status, code, title, detail, pointer)


@dataclass
class FakeTelnyx:
    """Fake ``api.telnyx.com/v2`` Call Control with webhooks and media streams.

    ``webhook_url``: the Call Control App's webhook URL (a dial's ``webhook_url`` overrides
    it per call). ``media_time_scale``/``media_continuous`` go to every media client.
    """

    webhook_url: str | None = None
    api_key: str = field(default_factory=lambda: "KEY" + secrets.token_hex(16).upper())
    connection_id: str = field(default_factory=lambda: str(secrets.randbelow(10**18)))
    user_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    keys: TelnyxKeyPair = field(default_factory=TelnyxKeyPair.generate)
    media_time_scale: float = 1.0
    media_continuous: bool = True
    webhook_clock: Callable[[], float] = time.time
    requests: list[RecordedRequest] = field(default_factory=list)
    calls: dict[str, FakeTelnyxCall] = field(default_factory=dict)
    base_url: str = ""
    _outcomes: dict[str, str] = field(default_factory=dict)
    _commands: set[tuple[str, str, str]] = field(default_factory=set)
    _dialed: dict[str, str] = field(default_factory=dict)  # dial command_id -> call id
    _answered: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _sender: TelnyxWebhookSender | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    speak_ended: bool = True  # False: call.speak.ended is never delivered

    @property
    def public_key_b64(self) -> str:
        return self.keys.public_key_b64

    @property
    def webhooks(self) -> TelnyxWebhookSender:
        assert self._sender is not None, "start() first"
        return self._sender

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v2/calls", self._dial)
        app.router.add_post("/v2/calls/{call_control_id}/actions/{action}", self._action)
        app.router.add_get("/v2/calls/{call_control_id}", self._retrieve)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._sender = TelnyxWebhookSender(self._session, self.keys, clock=self.webhook_clock)
        self.base_url = f"http://127.0.0.1:{port}/v2"
        return self.base_url

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for call in self.calls.values():
            if call.media is not None:
                await call.media.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FakeTelnyx:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- scripting ---------------------------------------------------------------------------

    def script_outcome(self, to_number: str, outcome: str) -> None:
        """What the callee at ``to_number`` does: ``answer`` (default), ``busy``,
        ``no_answer`` (hangup_cause ``timeout``) or ``hold`` (rings until hung up)."""
        assert outcome in ("answer", "busy", "no_answer", "hold"), outcome
        self._outcomes[to_number] = outcome

    async def incoming_call(self, from_number: str, to_number: str, *,
                            webhook_url: str | None = None) -> FakeTelnyxCall:
        """A call arrives: ``call.initiated`` (direction ``incoming``, state ``parked``) is
        delivered (returns once the webhook has been answered); our server should then
        ``answer`` it, with the stream options."""
        call = self._new_call("incoming", from_number, to_number, webhook_url or self.webhook_url)
        await self._webhook(call, "call.initiated", {
            "direction": "incoming", "state": "parked", "from": from_number,
            "to": to_number, "caller_id_name": from_number, "start_time": call.start_time,
            "connection_codecs": "G722,PCMU,PCMA,G729,OPUS,VP8,H264", "offered_codecs": "PCMU",
        })
        return call

    async def caller_hangup(self, call_control_id: str,
                            cause: str = "normal_clearing") -> None:
        """The far end hangs up: stream ``stop``, ``streaming.stopped``, ``call.hangup``."""
        call = self.calls[call_control_id]
        await self._end(call, cause, "caller")

    async def wait_request(self, predicate: Callable[[RecordedRequest], bool],
                           timeout: float = 10.0) -> RecordedRequest:
        """The first answered request (recorded so far or to come) matching ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                answered = self._answered
                found = next((r for r in self.requests if r.status and predicate(r)), None)
                if found is not None:
                    return found
                await answered.wait()

    # -- request plumbing --------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip(),
                                                                     self.api_key)

    async def _prologue(self, request: web.Request, params: type | None) -> RecordedRequest:
        """Record the request; raise :class:`_Reject` for auth, JSON and schema errors."""
        raw = await request.read()
        authorized = self._check_auth(request)
        body: dict[str, Any] | None = None
        parse_error = ""
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError as exc:
                parse_error = str(exc)
            else:
                if isinstance(parsed, dict):
                    body = parsed
                else:
                    parse_error = "the request body must be a JSON object"
        elif request.method == "POST":
            body = {}
        rec = RecordedRequest(request.method, request.path, dict(request.headers), body,
                              authorized)
        self.requests.append(rec)
        if not authorized:
            raise _Reject(401, "10009", "Authentication failed",
                          "The required authentication headers were either invalid or not "
                          "included in the request.")
        if parse_error:
            raise _Reject(400, "10015", "Bad Request", f"Invalid JSON: {parse_error}")
        if params is not None:
            check = check_params(params, body)
            rec.unknown_params = check.unknown
            if check.issues:
                raise _invalid(check.issues[0])
        return rec

    async def _handle(self, request: web.Request, params: type | None,
                      handler: Callable[[RecordedRequest, web.Request],
                                        Any]) -> web.Response:
        rec: RecordedRequest | None = None
        try:
            rec = await self._prologue(request, params)
            response: web.Response = await handler(rec, request)
        except _Reject as rej:
            response = rej.response
            rec = rec or self.requests[-1]
        rec.status = response.status
        self._answered.set()
        self._answered = asyncio.Event()
        return response

    # -- handlers ----------------------------------------------------------------------------

    async def _dial(self, request: web.Request) -> web.Response:
        return await self._handle(request, CallDialParams, self._do_dial)

    async def _do_dial(self, rec: RecordedRequest, _: web.Request) -> web.Response:
        body = rec.body or {}
        if body["connection_id"] != self.connection_id:
            raise _Reject(422, "10015", "Invalid value for connection_id",
                          "connection_id does not name a Call Control App of this account",
                          "/connection_id")
        if not _E164.match(body["from"]):
            raise _Reject(422, "10016", "Phone number must be in +E.164 format",
                          "The 'from' number must be in +E.164 format.", "/from")
        to = body["to"]
        if not isinstance(to, str):
            raise _Reject(422, "10015", "Invalid value for to",
                          "the fake dials a single destination", "/to")
        if not (_E164.match(to.split(",")[0]) or to.startswith("sip:")):
            raise _Reject(422, "10016", "Phone number must be in +E.164 format",
                          "The 'to' number must be in +E.164 format or a SIP URI.", "/to")
        self._check_common(body)
        command_id = body.get("command_id")
        if command_id in self._dialed:
            return _data(self.calls[self._dialed[command_id]].resource())  # duplicate: ignored
        call = self._new_call("outgoing", body["from"], to,
                              body.get("webhook_url") or self.webhook_url)
        if command_id is not None:
            self._dialed[command_id] = call.call_control_id
        call.client_state = body.get("client_state")
        call.stream = {k: body[k] for k in STREAM_KEYS if k in body}
        self._spawn(self._drive_outbound(call))
        return _data(call.resource())

    async def _action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        return await self._handle(request, ACTIONS.get(action), self._do_action)

    async def _do_action(self, rec: RecordedRequest, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise _Reject(404, "10005", "Resource not found",
                          f"The requested resource or URL could not be found: {rec.path}")
        call = self.calls.get(request.match_info["call_control_id"])
        if call is None:
            raise _Reject(404, "10005", "Resource not found",
                          "The requested call_control_id could not be found.")
        body = rec.body or {}
        self._check_common(body)
        async with self._locks.setdefault(call.call_control_id, asyncio.Lock()):
            if not call.is_alive:
                raise _Reject(422, "90018", "Call has already ended",
                              "This call is no longer active and can't receive commands.")
            command_id = body.get("command_id")
            if command_id is not None:
                key = (call.call_control_id, action, command_id)
                if key in self._commands:
                    return _data({"result": "ok"})  # duplicate command: ignored
                self._commands.add(key)
            await getattr(self, f"_act_{action}")(call, body)
            if "client_state" in body:  # a refused command changes nothing
                call.client_state = body["client_state"]
        return _data({"result": "ok"})

    async def _retrieve(self, request: web.Request) -> web.Response:
        async def fetch(rec: RecordedRequest, req: web.Request) -> web.Response:
            call = self.calls.get(req.match_info["call_control_id"])
            if call is None:
                raise _Reject(404, "10005", "Resource not found",
                              "The requested call_control_id could not be found.")
            return _data(call.resource())
        return await self._handle(request, None, fetch)

    def _check_common(self, body: dict[str, Any]) -> None:
        state = body.get("client_state")
        if state is not None:
            try:
                base64.b64decode(state, validate=True)
            except (binascii.Error, ValueError):
                raise _Reject(422, "90053", "Invalid client_state",  # code unverified
                              "client_state must be a valid Base-64 encoded string.",
                              "/client_state") from None
        url = body.get("stream_url")
        if url is not None and not url.startswith(("ws://", "wss://")):
            raise _Reject(422, "10003", "Invalid URL",
                          "stream_url must be a ws:// or wss:// URL.", "/stream_url")

    # -- actions -----------------------------------------------------------------------------

    async def _act_answer(self, call: FakeTelnyxCall, body: dict[str, Any]) -> None:
        if call.direction != "incoming" or call.state != "parked":
            raise _Reject(422, "90034", "Call already answered",  # code unverified
                          "Only a ringing incoming call can be answered.")
        call.stream = {k: body[k] for k in STREAM_KEYS if k in body}
        if body.get("webhook_url"):
            call.webhook_url = body["webhook_url"]
        call.state = "answered"
        call._touch()
        self._spawn(self._after_answer(call))

    async def _act_hangup(self, call: FakeTelnyxCall, body: dict[str, Any]) -> None:
        call.state = "hangup"  # no further command is accepted from here on
        call._touch()
        self._spawn(self._end(call, "normal_clearing", "callee" if call.direction ==
                              "incoming" else "caller", already_marked=True))

    async def _act_speak(self, call: FakeTelnyxCall, body: dict[str, Any]) -> None:
        if call.state != "answered":
            raise _Reject(422, "90019", "Call is not answered",  # code unverified
                          "Speak can only be used on an answered call.")
        voice = body["voice"]
        provider = voice.split(".", 1)[0]
        if voice not in ("male", "female") and (provider not in SPEAK_PROVIDERS
                                                 or "." not in voice):
            raise _Reject(422, "10015", "Invalid value for voice",
                          f"The 'voice' parameter is invalid: {voice!r}", "/voice")
        if not body["payload"] or len(body["payload"]) > SPEAK_MAX_CHARS:
            raise _Reject(422, "10015", "Invalid value for payload",
                          f"payload must be 1 to {SPEAK_MAX_CHARS} characters.", "/payload")
        if body.get("service_level") == "basic" and (
                body.get("language", "en-US") != "en-US"
                or body.get("payload_type", "text") != "text"):
            raise _Reject(422, "10015", "Invalid value for language",
                          "The basic service level speaks en-US text only.", "/language")
        call.spoken.append(dict(body))
        call._touch()
        self._spawn(self._speak(call))

    async def _speak(self, call: FakeTelnyxCall) -> None:
        """``call.speak.started`` then ``call.speak.ended`` (after ``call.answered``)."""
        await call.wait(lambda: "call.answered" in call.events or not call.is_alive)
        if call.is_alive:
            await self._webhook(call, "call.speak.started", {})
        if self.speak_ended:
            await self._webhook(call, "call.speak.ended",
                                {"status": "completed" if call.is_alive else "call_hangup"})

    async def _act_streaming_start(self, call: FakeTelnyxCall, body: dict[str, Any]) -> None:
        if call.state != "answered":
            raise _Reject(422, "90019", "Call is not answered",  # code unverified
                          "Streaming can only be started on an answered call.")
        if "stream_url" not in body:
            raise _Reject(422, "10004", "Missing required parameter",
                          "stream_url is required.", "/stream_url")
        if call.media is not None and not call.media.closed.is_set():
            raise _Reject(422, "90045", "Stream already active",  # code unverified
                          "This call already streams to a WebSocket.")
        call.stream = {k: body[k] for k in STREAM_KEYS if k in body}
        self._spawn(self._open_stream(call))

    async def _act_streaming_stop(self, call: FakeTelnyxCall, body: dict[str, Any]) -> None:
        media = call.media
        if media is None or media.closed.is_set():
            raise _Reject(422, "90046", "No active stream",  # code unverified
                          "This call has no active media stream.")
        if body.get("stream_id") not in (None, media.stream_id):
            raise _Reject(422, "10015", "Invalid value for stream_id",
                          "stream_id does not name a stream of this call.", "/stream_id")
        self._spawn(self._stop_stream(call))

    async def _act_record_start(self, call: FakeTelnyxCall, body: dict[str, Any]) -> None:
        if call.state != "answered":
            raise _Reject(422, "90019", "Call is not answered",  # code unverified
                          "Recording can only be started on an answered call.")
        call.recordings.append(dict(body, recording_id=str(uuid.uuid4())))

    async def _act_transfer(self, call: FakeTelnyxCall, body: dict[str, Any]) -> None:
        to = body["to"]
        if not (_E164.match(to) or to.startswith("sip:")):
            raise _Reject(422, "10016", "Phone number must be in +E.164 format",
                          "The 'to' number must be in +E.164 format or a SIP URI.", "/to")
        call.transfers.append(dict(body))
        call._touch()

    # -- call driving ------------------------------------------------------------------------

    def _new_call(self, direction: str, from_number: str, to_number: str,
                  webhook_url: str | None) -> FakeTelnyxCall:
        call = FakeTelnyxCall(new_call_control_id(), str(uuid.uuid4()), str(uuid.uuid4()),
                              direction, from_number, to_number, self.connection_id,
                              webhook_url,
                              state="parked" if direction == "incoming" else "bridging")
        self.calls[call.call_control_id] = call
        return call

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive_outbound(self, call: FakeTelnyxCall) -> None:
        await self._webhook(call, "call.initiated", {
            "direction": "outgoing", "state": "bridging", "from": call.from_number,
            "to": call.to_number, "start_time": call.start_time})
        outcome = self._outcomes.get(call.to_number, "answer")
        if outcome == "hold" or not call.is_alive:
            return
        if outcome in ("busy", "no_answer"):
            await self._end(call, "user_busy" if outcome == "busy" else "timeout", "callee")
            return
        call.state = "answered"
        call._touch()
        await self._after_answer(call)

    async def _after_answer(self, call: FakeTelnyxCall) -> None:
        await self._webhook(call, "call.answered", {
            "from": call.from_number, "to": call.to_number, "state": "answered",
            "start_time": call.start_time})
        if call.stream.get("stream_url") and call.is_alive:
            await self._open_stream(call)

    async def _open_stream(self, call: FakeTelnyxCall) -> None:
        s = call.stream
        inbound = s.get("stream_codec", "default")
        encoding = "PCMU" if inbound == "default" else inbound
        mode = s.get("stream_bidirectional_mode")
        rate = s.get("stream_bidirectional_sampling_rate", 8000)
        out_codec = s.get("stream_bidirectional_codec", "PCMU")
        try:
            media = FakeTelnyxMediaClient(
                s["stream_url"], call_control_id=call.call_control_id,
                call_session_id=call.call_session_id, user_id=self.user_id,
                client_state=call.client_state, from_number=call.from_number,
                to_number=call.to_number, encoding=encoding,
                sample_rate=rate if encoding == "L16" else 8000, bidirectional_mode=mode,
                bidirectional_codec=out_codec,
                bidirectional_rate=rate if out_codec == "L16" else 8000,
                auth_token=s.get("stream_auth_token"), time_scale=self.media_time_scale,
                continuous=self.media_continuous)
        except ValueError as exc:  # a codec the fake cannot frame (G722, OPUS, AMR-WB)
            await self._stream_failed(call, f"fake limitation: {exc}")
            return
        call.media = media
        try:
            await media.connect()
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            await self._stream_failed(call, f"{type(exc).__name__}: {exc}")
            return
        self._spawn(self._watch_stream(call, media))
        await self._webhook(call, "streaming.started", {"stream_url": s["stream_url"]})

    async def _stream_failed(self, call: FakeTelnyxCall, reason: str) -> None:
        await self._webhook(call, "streaming.failed", {
            "failure_reason": reason, "stream_id": str(uuid.uuid4()), "stream_type": "websocket",
            "stream_params": {"stream_url": call.stream.get("stream_url")}})

    async def _watch_stream(self, call: FakeTelnyxCall, media: FakeTelnyxMediaClient) -> None:
        """Our server closing the socket ends the stream (not the call)."""
        await media.closed.wait()
        if not media._stop_sent:
            await media.close()
            await self._webhook(call, "streaming.stopped",
                                {"stream_url": call.stream.get("stream_url")})

    async def _stop_stream(self, call: FakeTelnyxCall) -> None:
        media = call.media
        if media is None or media.closed.is_set() or media._stop_sent:
            return
        await media.hangup()
        await self._webhook(call, "streaming.stopped",
                            {"stream_url": call.stream.get("stream_url")})

    async def _end(self, call: FakeTelnyxCall, cause: str, source: str, *,
                   already_marked: bool = False) -> None:
        if not already_marked and not call.is_alive:
            return
        call.state = "hangup"
        call.hangup_cause, call.hangup_source = cause, source
        call.end_time = iso_now()
        call._touch()
        await self._stop_stream(call)
        await self._webhook(call, "call.hangup", {
            "from": call.from_number, "to": call.to_number, "state": "hangup",
            "hangup_cause": cause, "hangup_source": source, "sip_hangup_cause": "200"
            if cause == "normal_clearing" else "486" if cause == "user_busy" else "480",
            "start_time": call.start_time})
        for rec in call.recordings:
            await self._webhook(call, "call.recording.saved", {
                "recording_id": rec["recording_id"], "channels": rec["channels"],
                "recording_started_at": call.start_time, "recording_ended_at": call.end_time,
                "recording_urls": {rec["format"]: f"{self.base_url}/recordings/"
                                                  f"{rec['recording_id']}.{rec['format']}"},
                "public_recording_urls": {}})

    async def _webhook(self, call: FakeTelnyxCall, event_type: str,
                       extra: dict[str, Any]) -> None:
        payload = {"call_control_id": call.call_control_id, "call_leg_id": call.call_leg_id,
                   "call_session_id": call.call_session_id,
                   "connection_id": call.connection_id, "client_state": call.client_state,
                   **extra}
        if call.webhook_url:
            env = event_envelope(event_type, payload, delivered_to=call.webhook_url)
            await self.webhooks.post(call.webhook_url, env)
        call.events.append(event_type)  # once delivered and answered
        call._touch()


def _data(data: dict[str, Any]) -> web.Response:
    return web.json_response({"data": data})


def _error(status: int, code: str, title: str, detail: str,
           pointer: str | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "title": title, "detail": detail}
    if pointer is not None:
        err["source"] = {"pointer": pointer}
    return web.json_response({"errors": [err]}, status=status)


def _invalid(issue: Issue) -> _Reject:
    name = issue.pointer.lstrip("/")
    if issue.kind == "missing":
        return _Reject(422, "10004", "Missing required parameter",
                       f"The '{name}' parameter is required.", issue.pointer)
    return _Reject(422, "10015", f"Invalid value for {name}",
                   f"The '{name}' parameter is invalid: {issue.detail}", issue.pointer)
