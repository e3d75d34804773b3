"""OpenClaw Gateway protocol v4, sans-I/O (protocols.md section 5).

Frames in (text) -> typed frames out; typed calls in -> frame bytes out. No sockets here:
:mod:`agentic_fast.gateway.client` feeds what the WebSocket receives and sends what these
builders return (the shape of python-websockets' ``protocol.py``).

Everything we *send* is a closed object built from named arguments, so we never send a
property the gateway would reject. What we *receive* is checked for the fields we use and
tolerates extra ones (newer gateways add optional properties such as ``stateVersion``).

Handshake theory (a table, as in h11's ``_state.py``): the server speaks first with
``connect.challenge``; the client answers with one ``connect`` request signed over the
challenge; the ``res`` to it is either ``hello-ok`` (the link is open) or an error (the link
is dead: retry later if the error is retryable, give up otherwise). Any other transition is
a protocol violation by the server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import orjson

from agentic_fast.core.errors import (
    GatewayError,
    GatewayProtocolError,
    LocalProtocolError,
    RemoteProtocolError,
)
from agentic_fast.core.jsonfields import JsonFields

__all__ = [
    "CLIENT_ID",
    "CLIENT_MODE",
    "OPERATOR_SCOPES",
    "PAIRING_REQUIRED",
    "PROTOCOL_VERSION",
    "ROLE",
    "TERMINAL_STATES",
    "ChatEvent",
    "ClientHandshake",
    "ErrorShape",
    "Event",
    "HandshakeOutput",
    "HandshakeState",
    "HelloOk",
    "PairingRequired",
    "Policy",
    "Request",
    "Response",
    "Signer",
    "chat_abort_params",
    "chat_send_params",
    "connect_params",
    "device_auth_payload_v3",
    "encode_request",
    "error_from_shape",
    "parse_chat_event",
    "parse_frame",
    "parse_hello_ok",
    "parse_pairing_required",
    "voice_session_key",
]

PEER = "openclaw"
PROTOCOL_VERSION = 4
CLIENT_ID = "gateway-client"
CLIENT_MODE = "backend"
ROLE = "operator"
OPERATOR_SCOPES: tuple[str, ...] = ("operator.read", "operator.write")
QUEUE_MODES = frozenset({"steer", "followup", "collect", "interrupt"})
#: ``error.details.code`` of a connect refused until the owner approves this device
#: (``error.code`` is ``NOT_PAIRED``; the socket then closes with 1008).
PAIRING_REQUIRED = "PAIRING_REQUIRED"

# chat event states (protocols.md 5.3)
STATUS, DELTA, FINAL, ERROR, ABORTED = "status", "delta", "final", "error", "aborted"
TERMINAL_STATES = frozenset({FINAL, ERROR, ABORTED})
CHAT_STATES = frozenset({STATUS, DELTA}) | TERMINAL_STATES


_FIELDS = JsonFields(GatewayProtocolError)


def _bad(message: str, reason: str = "bad_value",
         field: str | None = None) -> GatewayProtocolError:
    return GatewayProtocolError(message, reason=reason, field=field)


# --- frames -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """The ``error`` object of a failed ``res``."""

    code: str
    message: str
    details: Any = None
    retryable: bool | None = None
    retry_after_ms: int | None = None

    @property
    def details_code(self) -> str | None:
        """``details.code`` (``AUTH_TOKEN_MISMATCH``, ``MISSING_SCOPE``...) when present."""
        code = self.details.get("code") if isinstance(self.details, dict) else None
        return code if isinstance(code, str) else None

    @property
    def should_retry(self) -> bool:
        """Retry later: explicit ``retryable``, else ``UNAVAILABLE`` or a pending pairing.

        The gateway sends no ``retryable`` with ``PAIRING_REQUIRED`` for a backend client
        (only ``wait_then_retry`` for bootstrap / Control UI flows), but a server process
        must keep retrying until the owner approves the device, not stop until restarted.
        """
        if self.retryable is not None:
            return self.retryable
        return self.code == "UNAVAILABLE" or self.details_code == PAIRING_REQUIRED


@dataclass(frozen=True, slots=True)
class Request:
    """A ``req`` frame (only servers send these to us by mistake; we build bytes directly)."""

    id: str
    method: str
    params: Any = None


@dataclass(frozen=True, slots=True)
class Response:
    """A ``res`` frame: ``payload`` when ``ok``, else ``error``."""

    id: str
    ok: bool
    payload: Any = None
    error: ErrorShape | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """An ``event`` frame."""

    event: str
    payload: Any = None
    seq: int | None = None


Frame = Request | Response | Event


_nonempty_str = _FIELDS.get_nonempty_str


def _opt_int(obj: dict[str, Any], key: str, where: str) -> int | None:
    """A non-negative integer or absent."""
    return _FIELDS.get_opt_int(obj, key, where, minimum=0)


def _parse_error(obj: Any) -> ErrorShape:
    if not isinstance(obj, dict):
        raise _bad("res: error must be an object", "bad_type", "error")
    retryable = obj.get("retryable")
    if retryable is not None and not isinstance(retryable, bool):
        raise _bad("res: error.retryable must be a boolean", "bad_type", "error.retryable")
    message = obj.get("message")
    return ErrorShape(code=_nonempty_str(obj, "code", "res.error."),
                      message=message if isinstance(message, str) else "",
                      details=obj.get("details"), retryable=retryable,
                      retry_after_ms=_opt_int(obj, "retryAfterMs", "res.error."))


def _parse_res(obj: dict[str, Any]) -> Response:
    rid = _nonempty_str(obj, "id", "res.")
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise _bad(f"res {rid}: ok must be a boolean", "bad_type", "ok")
    if ok:
        return Response(rid, True, obj.get("payload"))
    return Response(rid, False, obj.get("payload"), _parse_error(obj.get("error")))


def _parse_event(obj: dict[str, Any]) -> Event:
    return Event(_nonempty_str(obj, "event", "event."), obj.get("payload"),
                 _opt_int(obj, "seq", "event."))


def _parse_req(obj: dict[str, Any]) -> Request:
    return Request(_nonempty_str(obj, "id", "req."), _nonempty_str(obj, "method", "req."),
                   obj.get("params"))


_FRAME_PARSERS: dict[str, Callable[[dict[str, Any]], Frame]] = {
    "res": _parse_res,
    "event": _parse_event,
    "req": _parse_req,
}


def parse_frame(data: str | bytes) -> Frame:
    """One text frame from the gateway; raises :class:`RemoteProtocolError` if malformed."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"frame is not JSON: {exc}", "malformed_json") from exc
    if not isinstance(obj, dict):
        raise _bad(f"frame is not a JSON object: {type(obj).__name__}", "not_object")
    parser = _FRAME_PARSERS.get(obj.get("type"))  # type: ignore[arg-type]
    if parser is None:
        raise _bad(f"unknown frame type {obj.get('type')!r:.40}", "unknown_type", "type")
    return parser(obj)


def encode_request(request_id: str, method: str, params: Mapping[str, Any]) -> bytes:
    """A ``req`` frame as UTF-8 JSON bytes (the size checked against ``maxPayload``)."""
    if not request_id or not method:
        raise LocalProtocolError("req needs a non-empty id and method", peer=PEER)
    return orjson.dumps({"type": "req", "id": request_id, "method": method, "params": params})


def error_from_shape(error: ErrorShape, method: str | None = None) -> GatewayError:
    """Our exception for an error ``res``, carrying code, details.code and retry hints."""
    where = f"{method}: " if method else ""
    text = f"{where}{error.code}"
    if error.details_code:
        text += f" ({error.details_code})"
    if error.message:
        text += f": {error.message}"
    return GatewayError(text, code=error.code, details_code=error.details_code,
                        details=error.details, retryable=error.should_retry,
                        retry_after_ms=error.retry_after_ms, method=method)


# --- handshake ------------------------------------------------------------------------------


class Signer(Protocol):
    """What the handshake needs of a device identity (:class:`device.DeviceIdentity`)."""

    device_id: str
    public_key_b64url: str

    def sign_text(self, text: str) -> str: ...


def _norm_meta(value: str | None) -> str:
    return (value or "").strip().lower()


def device_auth_payload_v3(*, device_id: str, client_id: str, client_mode: str, role: str,
                           scopes: Sequence[str], signed_at: int, token: str | None,
                           nonce: str, platform: str, device_family: str | None) -> str:
    """The exact string the device signs (protocols.md 5.2, ``v3|...``)."""
    return "|".join(["v3", device_id, client_id, client_mode, role, ",".join(scopes),
                     str(signed_at), token or "", nonce, _norm_meta(platform),
                     _norm_meta(device_family)])


def connect_params(*, signer: Signer, token: str, nonce: str, signed_at: int,
                   client_version: str, platform: str, device_family: str | None = None,
                   scopes: Sequence[str] = OPERATOR_SCOPES,
                   device_token: str | None = None) -> dict[str, Any]:
    """``connect`` params: protocol 4, operator role, token auth and a signed device.

    ``device_token`` (the one a paired device got in ``hello-ok.auth.deviceToken``) goes in
    ``auth.deviceToken``; the gateway checks it when the shared ``token`` is absent or wrong.
    The signature binds ``auth.token``, else ``auth.deviceToken`` (the gateway's order).
    """
    payload = device_auth_payload_v3(
        device_id=signer.device_id, client_id=CLIENT_ID, client_mode=CLIENT_MODE, role=ROLE,
        scopes=scopes, signed_at=signed_at, token=token or device_token, nonce=nonce,
        platform=platform, device_family=device_family)
    client: dict[str, Any] = {"id": CLIENT_ID, "version": client_version,
                              "platform": platform, "mode": CLIENT_MODE}
    if device_family:
        client["deviceFamily"] = device_family
    params: dict[str, Any] = {
        "minProtocol": PROTOCOL_VERSION, "maxProtocol": PROTOCOL_VERSION,
        "client": client, "role": ROLE, "scopes": list(scopes), "caps": [],
        "device": {"id": signer.device_id, "publicKey": signer.public_key_b64url,
                   "signature": signer.sign_text(payload), "signedAt": signed_at,
                   "nonce": nonce},
    }
    auth: dict[str, str] = {}
    if token:
        auth["token"] = token
    if device_token:
        auth["deviceToken"] = device_token
    if auth:
        params["auth"] = auth
    return params


@dataclass(frozen=True, slots=True)
class Policy:
    """``hello-ok.policy``: limits of this connection."""

    max_payload: int
    tick_interval_ms: int
    max_buffered_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class HelloOk:
    """The accepted handshake."""

    protocol: int
    policy: Policy
    role: str | None
    scopes: tuple[str, ...]
    server_version: str | None = None
    conn_id: str | None = None
    #: ``auth.deviceToken``: issued to a paired device; reuse it on later connects.
    device_token: str | None = None
    #: ``auth.method``: how the gateway authenticated us (``token``, ``device-token``...).
    auth_method: str | None = None
    device_token_issued_at_ms: int | None = None


def _positive(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _bad(f"hello-ok: policy.{key} must be a positive integer, got {value!r:.40}",
                   "bad_type", f"policy.{key}")
    return value


def parse_hello_ok(payload: Any) -> HelloOk:
    """Validate a ``hello-ok`` payload (type, protocol 4, policy limits)."""
    if not isinstance(payload, dict) or payload.get("type") != "hello-ok":
        raise _bad("connect answered ok without a hello-ok payload")
    if payload.get("protocol") != PROTOCOL_VERSION:
        raise _bad(f"hello-ok: protocol {payload.get('protocol')!r:.20}, "
                   f"we speak {PROTOCOL_VERSION}")
    policy = payload.get("policy")
    if not isinstance(policy, dict):
        raise _bad("hello-ok: policy must be an object")
    buffered = policy.get("maxBufferedBytes")
    raw_auth, raw_server = payload.get("auth"), payload.get("server")
    auth: dict[str, Any] = raw_auth if isinstance(raw_auth, dict) else {}
    server: dict[str, Any] = raw_server if isinstance(raw_server, dict) else {}
    scopes = auth.get("scopes")
    device_token = auth.get("deviceToken")
    issued = auth.get("issuedAtMs")
    return HelloOk(
        protocol=PROTOCOL_VERSION,
        policy=Policy(_positive(policy, "maxPayload"), _positive(policy, "tickIntervalMs"),
                      buffered if isinstance(buffered, int) else None),
        role=auth.get("role") if isinstance(auth.get("role"), str) else None,
        scopes=tuple(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else (),
        server_version=server.get("version") if isinstance(server.get("version"), str) else None,
        conn_id=server.get("connId") if isinstance(server.get("connId"), str) else None,
        device_token=device_token if isinstance(device_token, str) and device_token else None,
        auth_method=auth.get("method") if isinstance(auth.get("method"), str) else None,
        device_token_issued_at_ms=issued if isinstance(issued, int)
        and not isinstance(issued, bool) else None)


@dataclass(frozen=True, slots=True)
class PairingRequired:
    """``details`` of a connect refused with ``PAIRING_REQUIRED`` (device not approved yet)."""

    device_id: str | None
    request_id: str | None
    reason: str | None  # not-paired | role-upgrade | scope-upgrade | metadata-upgrade
    recommended_next_step: str | None = None

    @property
    def approve_command(self) -> str:
        """The OpenClaw CLI command that approves this request (it takes the request id)."""
        if self.request_id:
            return f"openclaw devices approve {self.request_id}"
        return "openclaw devices approve --latest"


_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def parse_pairing_required(details: Any) -> PairingRequired | None:
    """The pairing details of a connect error, or None if it is not ``PAIRING_REQUIRED``.

    Values are untrusted and end up in log lines: ids are kept only when they look like ids.
    """
    if not isinstance(details, dict) or details.get("code") != PAIRING_REQUIRED:
        return None

    def text(key: str, pattern: re.Pattern[str] = _REQUEST_ID) -> str | None:
        value = details.get(key)
        return value if isinstance(value, str) and pattern.match(value) else None

    return PairingRequired(device_id=text("deviceId"), request_id=text("requestId"),
                           reason=text("reason"),
                           recommended_next_step=text("recommendedNextStep"))


class HandshakeState(Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_HELLO = "await-hello"
    OPEN = "open"
    FAILED = "failed"


class _Input(Enum):
    CHALLENGE = "challenge"
    HELLO = "hello"
    ERROR = "error"
    OTHER_EVENT = "other-event"
    OTHER_RES = "other-res"


_S, _I = HandshakeState, _Input
#: (state, input) -> next state; anything missing is a protocol violation.
_HANDSHAKE: dict[tuple[HandshakeState, _Input], HandshakeState] = {
    (_S.AWAIT_CHALLENGE, _I.CHALLENGE): _S.AWAIT_HELLO,
    (_S.AWAIT_CHALLENGE, _I.OTHER_EVENT): _S.AWAIT_CHALLENGE,
    (_S.AWAIT_HELLO, _I.HELLO): _S.OPEN,
    (_S.AWAIT_HELLO, _I.ERROR): _S.FAILED,
    (_S.AWAIT_HELLO, _I.OTHER_EVENT): _S.AWAIT_HELLO,
}


@dataclass(frozen=True, slots=True)
class HandshakeOutput:
    """What to do after a frame: send ``send`` (bytes), and/or the link is open (``hello``)."""

    send: bytes | None = None
    hello: HelloOk | None = None


class ClientHandshake:
    """Client side of the v4 handshake; feed it every frame until ``hello`` comes out."""

    def __init__(self, *, signer: Signer, token: str, client_version: str, platform: str,
                 device_family: str | None = None, request_id: str = "connect",
                 scopes: Sequence[str] = OPERATOR_SCOPES,
                 device_token: str | None = None) -> None:
        self._signer = signer
        self._token = token
        self._device_token = device_token
        self._client_version = client_version
        self._platform = platform
        self._device_family = device_family
        self._scopes = tuple(scopes)
        self.request_id = request_id
        self.state = HandshakeState.AWAIT_CHALLENGE

    def _classify(self, frame: Frame) -> _Input:
        if isinstance(frame, Event):
            return _I.CHALLENGE if frame.event == "connect.challenge" else _I.OTHER_EVENT
        if isinstance(frame, Response) and frame.id == self.request_id:
            return _I.HELLO if frame.ok else _I.ERROR
        return _I.OTHER_RES

    def receive(self, frame: Frame) -> HandshakeOutput:
        """Advance on ``frame``; raises ``GatewayError`` (error res) or ``RemoteProtocolError``."""
        kind = self._classify(frame)
        nxt = _HANDSHAKE.get((self.state, kind))
        if nxt is None:
            state, self.state = self.state, HandshakeState.FAILED
            raise _bad(f"handshake: unexpected {kind.value} frame in state {state.value}")
        self.state = nxt
        if kind is _I.CHALLENGE:
            assert isinstance(frame, Event)
            return HandshakeOutput(send=self._connect_frame(frame.payload))
        if kind is _I.HELLO:
            assert isinstance(frame, Response)
            try:
                return HandshakeOutput(hello=parse_hello_ok(frame.payload))
            except RemoteProtocolError:
                self.state = HandshakeState.FAILED
                raise
        if kind is _I.ERROR:
            assert isinstance(frame, Response) and frame.error is not None
            raise error_from_shape(frame.error, "connect")
        return HandshakeOutput()

    def _connect_frame(self, payload: Any) -> bytes:
        if not isinstance(payload, dict):
            self.state = HandshakeState.FAILED
            raise _bad("connect.challenge: payload must be an object")
        try:
            nonce = _nonempty_str(payload, "nonce", "connect.challenge.")
            ts = _opt_int(payload, "ts", "connect.challenge.")
            if ts is None:
                raise _bad("connect.challenge: ts is missing")
        except RemoteProtocolError:
            self.state = HandshakeState.FAILED
            raise
        params = connect_params(signer=self._signer, token=self._token, nonce=nonce,
                                signed_at=ts, client_version=self._client_version,
                                platform=self._platform, device_family=self._device_family,
                                scopes=self._scopes, device_token=self._device_token)
        return encode_request(self.request_id, "connect", params)


# --- chat.send / chat events ------------------------------------------------------------------

_KEY_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def voice_session_key(voice_id: str, *, agent_id: str = "main") -> str:
    """``agent:<agent_id>:voice-<id>``: one session per call (call SID) or per caller.

    The id is lowercased (the gateway canonicalises keys to lower case) and every run of
    other characters than ``a-z 0-9 _ -`` becomes ``-`` (``+`` of E.164 numbers is dropped).
    """
    clean = _KEY_UNSAFE.sub("-", voice_id.strip().lstrip("+").lower()).strip("-")
    agent = _KEY_UNSAFE.sub("-", agent_id.strip().lower()).strip("-")
    if not clean or not agent:
        raise LocalProtocolError(f"session key needs a usable id, got {voice_id!r:.60}",
                                 peer=PEER)
    return f"agent:{agent}:voice-{clean[:200]}"


def chat_send_params(*, session_key: str, message: str, idempotency_key: str,
                     timeout_ms: int | None = None, queue_mode: str | None = None,
                     thinking: str | None = None) -> dict[str, Any]:
    """``chat.send`` params (closed: only these names)."""
    if not session_key or not idempotency_key:
        raise LocalProtocolError("chat.send needs sessionKey and idempotencyKey", peer=PEER)
    params: dict[str, Any] = {"sessionKey": session_key, "message": message,
                              "idempotencyKey": idempotency_key}
    if timeout_ms is not None:
        params["timeoutMs"] = max(0, int(timeout_ms))
    if queue_mode is not None:
        if queue_mode not in QUEUE_MODES:
            raise LocalProtocolError(f"chat.send: queueMode {queue_mode!r} not in "
                                     f"{sorted(QUEUE_MODES)}", peer=PEER)
        params["queueMode"] = queue_mode
    if thinking is not None:
        params["thinking"] = thinking
    return params


def chat_abort_params(*, session_key: str, run_id: str | None = None) -> dict[str, Any]:
    """``chat.abort`` params; without ``run_id`` it aborts the session's active run."""
    params: dict[str, Any] = {"sessionKey": session_key}
    if run_id:
        params["runId"] = run_id
    return params


@dataclass(frozen=True, slots=True)
class ChatEvent:
    """One ``chat`` event of a run. ``text`` is the cumulative assistant text when sent."""

    run_id: str
    session_key: str
    seq: int
    state: str
    phase: str | None = None
    delta_text: str = ""
    replace: bool = False
    text: str = ""
    stop_reason: str | None = None
    error_message: str | None = None
    error_kind: str | None = None

    @property
    def terminal(self) -> bool:
        """``final``, ``error`` or ``aborted``: no more events for this run."""
        return self.state in TERMINAL_STATES


def message_text(message: Any) -> str:
    """Text of ``{role, content: [{type: "text", text}]}`` (or a plain string content)."""
    if isinstance(message, str):
        return message
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content
                       if isinstance(part, dict) and part.get("type") == "text"
                       and isinstance(part.get("text"), str))
    text = message.get("text")
    return text if isinstance(text, str) else ""


def _opt_str(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) else None


def parse_chat_event(payload: Any) -> ChatEvent:
    """A ``chat`` event payload; raises :class:`RemoteProtocolError` without runId/state."""
    if not isinstance(payload, dict):
        raise _bad("chat event: payload must be an object")
    state = _nonempty_str(payload, "state", "chat.")
    delta = payload.get("deltaText")
    return ChatEvent(
        run_id=_nonempty_str(payload, "runId", "chat."),
        session_key=_nonempty_str(payload, "sessionKey", "chat."),
        seq=_opt_int(payload, "seq", "chat.") or 0,
        state=state,
        phase=_opt_str(payload, "phase"),
        delta_text=delta if isinstance(delta, str) else "",
        replace=payload.get("replace") is True,
        text=message_text(payload.get("message")),
        stop_reason=_opt_str(payload, "stopReason"),
        error_message=_opt_str(payload, "errorMessage"),
        error_kind=_opt_str(payload, "errorKind"))
