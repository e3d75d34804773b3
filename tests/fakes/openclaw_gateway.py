"""A fake OpenClaw Gateway, protocol v4, written from protocols.md section 5 (not our code).

It must not import agentic_fast. It speaks the v4 frames on a loopback WebSocket:

- ``connect.challenge`` first; the first frame must be a ``connect`` req (a JSON-RPC frame
  closes with 1008); connect params are closed objects (unknown properties rejected),
  protocol range, client id / mode closed lists, the Ed25519 device signature over the v3
  payload (its token is ``auth.token``, else ``auth.deviceToken``), then auth: the shared
  token, else the device token of a paired device (``AUTH_TOKEN_MISSING``,
  ``AUTH_TOKEN_MISMATCH`` with ``recommendedNextStep: retry_with_device_token``,
  ``AUTH_DEVICE_TOKEN_MISMATCH``); then ``hello-ok`` with ``policy``.
- Pairing, as OpenClaw 2026.9.6 does it (its ``connect-device-pairing`` and
  ``connect-error-details`` modules, checked live): with ``require_pairing`` (a remote
  gateway) an unknown device gets ``NOT_PAIRED`` with details ``{code: PAIRING_REQUIRED,
  reason: not-paired, requestId, remediationHint, deviceId, requestedRole,
  requestedScopes}`` (no ``retryable`` for a backend client) and close 1008 ``pairing
  required: device is not approved yet (requestId: <id>)``; a retry reuses the pending
  request. :meth:`approve` (``openclaw devices approve <requestId>``) pairs it; a paired
  device gets ``auth.deviceToken`` (+ ``issuedAtMs``, ``method``) in every ``hello-ok``.
  Without ``require_pairing`` the fake behaves like a loopback gateway to a
  ``gateway-client`` backend: unpaired devices get in, with no device token.
- ``tick`` events every ``tick_interval_ms`` (per connection; ``stop_ticking`` silences).
- ``chat.send`` (``idempotencyKey`` required, ``operator.write`` scope) -> ``res`` with
  ``{runId, status: "started"}``, then scripted ``chat`` events (:class:`ChatScript`):
  status phases, deltas, ``final`` / ``error`` / ``aborted`` or ``hang`` until aborted;
  optional delays, a first event before the ``res``, events of another runId, ``agent``
  events, an abrupt drop after N events.
- ``chat.abort``; ``UNAVAILABLE`` with ``retryAfterMs`` on demand (also for ``connect``);
  abrupt close of every connection. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

PROTOCOL = 4
CLIENT_IDS = frozenset({
    "webchat-ui", "openclaw-control-ui", "webchat", "cli", "gateway-client", "openclaw-macos",
    "openclaw-ios", "openclaw-android", "node-host", "test", "fingerprint", "openclaw-probe",
})
CLIENT_MODES = frozenset({"webchat", "cli", "ui", "backend", "node", "worker", "probe", "test"})
ALL_OPERATOR_SCOPES = frozenset({
    "operator.read", "operator.write", "operator.admin", "operator.approvals",
    "operator.pairing", "operator.talk",
})
METHOD_SCOPES = {"chat.send": "operator.write", "chat.abort": "operator.write",
                 "health": "operator.read"}

REQ_KEYS = frozenset({"type", "id", "method", "params"})
CONNECT_KEYS = frozenset({"minProtocol", "maxProtocol", "client", "caps", "commands",
                          "permissions", "role", "scopes", "auth", "locale", "userAgent",
                          "device", "pathEnv"})
CLIENT_KEYS = frozenset({"id", "displayName", "version", "platform", "deviceFamily",
                         "modelIdentifier", "mode", "instanceId"})
AUTH_KEYS = frozenset({"token", "password", "deviceToken", "bootstrapToken"})
DEVICE_KEYS = frozenset({"id", "publicKey", "signature", "signedAt", "nonce"})
CHAT_SEND_KEYS = frozenset({"sessionKey", "message", "idempotencyKey", "timeoutMs",
                            "queueMode", "thinking", "deliver", "agentId"})
CHAT_ABORT_KEYS = frozenset({"sessionKey", "runId", "agentId"})


class _Reject(Exception):
    """An error ``res`` to send (and maybe a close code to follow it)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None,
                 close: int | None = None, close_reason: str = "connect failed",
                 **extra: Any) -> None:
        super().__init__(message)
        self.error: dict[str, Any] = {"code": code, "message": message}
        if details is not None:
            self.error["details"] = details
        self.error.update(extra)
        self.close = close
        self.close_reason = close_reason


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _closed(obj: Any, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _Reject("INVALID_REQUEST", f"invalid {where}: must be an object")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise _Reject("INVALID_REQUEST", f"invalid {where}: unexpected property '{extra[0]}'")
    return obj


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _Reject("INVALID_REQUEST", f"invalid {where}: {key} must be a non-empty string")
    return value


@dataclass
class ChatScript:
    """What the fake does for one ``chat.send``."""

    reply: str | None = "Done."  # None: answer "echo: <message>"
    phases: Sequence[str] = ("preparing_context", "starting_model")
    chunks: Sequence[str] | None = None  # delta texts; default: the reply in two halves
    outcome: str = "final"  # final | error | aborted | hang (until chat.abort)
    error_message: str = "model failed"
    error_kind: str = "unknown"
    event_delay_s: float = 0.0
    first_event_before_res: bool = False
    noise: bool = True  # interleave events of another runId (same session) and agent events
    drop_after_events: int | None = None  # abort the transport after this many chat events


@dataclass
class PairedDevice:
    """A device the owner approved, and the token the fake issued to it."""

    device_id: str
    public_key: str
    role: str
    scopes: list[str]
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    issued_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class FakeRun:
    """A run the fake started."""

    run_id: str
    session_key: str
    message: str
    idempotency_key: str
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    events_sent: int = 0
    ended: str | None = None


class _Conn:
    def __init__(self, ws: ServerConnection, number: int) -> None:
        self.ws = ws
        self.number = number
        self.seq = 0
        self.ticking = True
        self.scopes: set[str] = set()
        self.nonce = str(uuid.uuid4())
        self.ts = int(time.time() * 1000)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def event(self, name: str, payload: dict[str, Any]) -> None:
        self.seq += 1
        await self.send({"type": "event", "event": name, "payload": payload, "seq": self.seq})

    async def res_ok(self, rid: str, payload: dict[str, Any]) -> None:
        await self.send({"type": "res", "id": rid, "ok": True, "payload": payload})

    async def res_error(self, rid: str, error: dict[str, Any]) -> None:
        await self.send({"type": "res", "id": rid, "ok": False, "error": error})


class FakeOpenClawGateway:
    """The fake gateway on 127.0.0.1 (random port). ``async with`` starts and stops it."""

    def __init__(self, *, token: str = "fake-token", tick_interval_ms: int = 30_000,
                 max_payload: int = 1024 * 1024, protocol: int = PROTOCOL,
                 allowed_scopes: frozenset[str] = ALL_OPERATOR_SCOPES,
                 require_device: bool = True, default_script: ChatScript | None = None,
                 require_pairing: bool = False) -> None:
        self.token = token
        self.tick_interval_ms = tick_interval_ms
        self.max_payload = max_payload
        self.protocol = protocol
        self.allowed_scopes = allowed_scopes
        self.require_device = require_device
        self.require_pairing = require_pairing
        self.paired: dict[str, PairedDevice] = {}
        self.pairing_requests: dict[str, dict[str, Any]] = {}  # requestId -> pending request
        self.pairing_refusals = 0
        self.auth_methods: list[str] = []  # of accepted handshakes: token | device-token
        self.default_script = default_script or ChatScript()
        self.scripts: deque[ChatScript] = deque()
        self.requests: list[dict[str, Any]] = []  # {"conn", "method", "params", "id"}
        self.runs: dict[str, FakeRun] = {}
        self.device_ids: list[str] = []  # of accepted handshakes
        self.connections_opened = 0
        self.hellos = 0
        self.unavailable_connects = 0
        self.retry_after_ms: int | None = 150
        self._failures: dict[str, deque[dict[str, Any]]] = {}
        self._stalled: set[str] = set()
        self._conns: set[_Conn] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self.url = ""

    # --- control ----------------------------------------------------------------------------

    async def start(self) -> str:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=self.max_payload,
                                   compression=None, ping_interval=None)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeOpenClawGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def queue_chat(self, *scripts: ChatScript) -> None:
        """Scripts for the next ``chat.send`` requests, in order (then ``default_script``)."""
        self.scripts.extend(scripts)

    def fail_next(self, method: str, *, code: str = "UNAVAILABLE", times: int = 1,
                  retry_after_ms: int | None = 150, details: dict[str, Any] | None = None,
                  retryable: bool | None = True) -> None:
        """Answer the next ``times`` requests of ``method`` with an error."""
        error: dict[str, Any] = {"code": code, "message": f"{method} unavailable (fake)"}
        if details is not None:
            error["details"] = details
        if retryable is not None:
            error["retryable"] = retryable
        if retry_after_ms is not None:
            error["retryAfterMs"] = retry_after_ms
        self._failures.setdefault(method, deque()).extend([error] * times)

    def stall(self, method: str) -> None:
        """Never answer requests of ``method`` (to test requests in flight during a drop)."""
        self._stalled.add(method)

    def stop_ticking(self) -> None:
        """Silence ticks on the connections open now (new connections tick again)."""
        for conn in self._conns:
            conn.ticking = False

    def drop_connections(self) -> None:
        """Abruptly close every open connection (no close frame)."""
        for conn in list(self._conns):
            conn.ws.transport.abort()

    def approve(self, request_id: str) -> PairedDevice:
        """``openclaw devices approve <requestId>``: pair the pending device."""
        request = self.pairing_requests.pop(request_id)
        device = PairedDevice(request["deviceId"], request["publicKey"], request["role"],
                              list(request["scopes"]))
        self.paired[device.device_id] = device
        self._notify()
        return device

    def pair(self, device_id: str, public_key: str,
             scopes: Sequence[str] = ("operator.read", "operator.write")) -> PairedDevice:
        """A device approved earlier (state a real gateway keeps across restarts)."""
        device = PairedDevice(device_id, public_key, "operator", list(scopes))
        self.paired[device_id] = device
        return device

    def rotate_device_token(self, device_id: str) -> str:
        """``openclaw devices rotate``: the old token stops working."""
        device = self.paired[device_id]
        device.token = secrets.token_urlsafe(32)
        device.issued_at_ms = int(time.time() * 1000)
        return device.token

    async def wait_pairing_refusals(self, n: int) -> None:
        await self.wait_until(lambda: self.pairing_refusals >= n, f"{n} pairing refusals")

    def methods(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]

    async def wait_until(self, predicate: Callable[[], bool], what: str,
                         timeout: float = 10.0) -> None:
        """Wait for ``predicate`` to hold (re-checked on every recorded change)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"fake gateway: no {what} within {timeout} s") from None

    async def wait_request(self, method: str, n: int = 1) -> dict[str, Any]:
        """The ``n``-th recorded request of ``method`` (waits for it)."""
        await self.wait_until(lambda: len(self.methods(method)) >= n, f"{n} x {method}")
        return self.methods(method)[n - 1]

    async def wait_hellos(self, n: int) -> None:
        await self.wait_until(lambda: self.hellos >= n, f"{n} hellos")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- connection -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections_opened += 1
        conn = _Conn(ws, self.connections_opened)
        self._notify()
        try:
            await conn.event("connect.challenge", {"nonce": conn.nonce, "ts": conn.ts})
            if not await self._handshake(conn):
                return
            self._conns.add(conn)
            ticker = asyncio.create_task(self._tick(conn))
            try:
                async for raw in ws:
                    await self._on_frame(conn, raw)
            finally:
                ticker.cancel()
                self._conns.discard(conn)
        except ConnectionClosed:
            pass
        finally:
            self._notify()

    async def _handshake(self, conn: _Conn) -> bool:
        raw = await conn.ws.recv()
        try:
            frame = json.loads(raw)
        except ValueError:
            await conn.ws.close(1008, "invalid frame")
            return False
        if not isinstance(frame, dict) or "jsonrpc" in frame or frame.get("type") != "req":
            await conn.ws.close(1008, "invalid handshake: first frame must be connect")
            return False
        rid = frame.get("id") if isinstance(frame.get("id"), str) else ""
        self._record(conn, frame)
        try:
            _closed(frame, REQ_KEYS, "request frame")
            if frame.get("method") != "connect":
                raise _Reject("INVALID_REQUEST", "first request must be connect", close=1008)
            if self.unavailable_connects > 0:
                self.unavailable_connects -= 1
                hint = {} if self.retry_after_ms is None else {"retryAfterMs": self.retry_after_ms}
                raise _Reject("UNAVAILABLE", "gateway starting", {"reason": "startup-sidecars"},
                              close=1013, retryable=True, **hint)
            granted, method, paired = self._check_connect(conn, frame.get("params"))
        except _Reject as rej:
            await conn.res_error(rid, rej.error)
            await conn.ws.close(rej.close or 1008, rej.close_reason)
            return False
        conn.scopes = granted
        self.hellos += 1
        self.auth_methods.append(method)
        self._notify()
        auth: dict[str, Any] = {"method": method, "role": "operator", "scopes": sorted(granted)}
        if paired is not None:
            auth.update(deviceToken=paired.token, issuedAtMs=paired.issued_at_ms)
        await conn.res_ok(rid, {
            "type": "hello-ok", "protocol": self.protocol,
            "server": {"version": "fake-2026.9", "connId": f"conn-{conn.number}"},
            "features": {"methods": sorted(METHOD_SCOPES), "events": ["chat", "agent", "tick"]},
            "snapshot": {},
            "auth": auth,
            "policy": {"maxPayload": self.max_payload, "maxBufferedBytes": 2 * self.max_payload,
                       "tickIntervalMs": self.tick_interval_ms},
        })
        return True

    def _check_connect(self, conn: _Conn, params: Any
                       ) -> tuple[set[str], str, PairedDevice | None]:
        p = _closed(params, CONNECT_KEYS, "connect params")
        lo, hi = p.get("minProtocol"), p.get("maxProtocol")
        if not isinstance(lo, int) or not isinstance(hi, int):
            raise _Reject("INVALID_REQUEST", "invalid connect params: min/maxProtocol")
        if not lo <= self.protocol <= hi:
            raise _Reject("INVALID_REQUEST", "protocol mismatch",
                          {"code": "PROTOCOL_MISMATCH", "expectedProtocol": self.protocol})
        client = _closed(p.get("client"), CLIENT_KEYS, "connect params: at /client")
        client_id, mode = _text(client, "id", "client"), _text(client, "mode", "client")
        _text(client, "version", "client")
        platform = _text(client, "platform", "client")
        if client_id not in CLIENT_IDS or mode not in CLIENT_MODES:
            raise _Reject("INVALID_REQUEST", "invalid connect params: client id or mode")
        role = p.get("role", "operator")
        if role not in ("operator", "node"):
            raise _Reject("INVALID_REQUEST", f"invalid role {role!r}")
        scopes = p.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise _Reject("INVALID_REQUEST", "invalid connect params: scopes")
        auth = _closed(p.get("auth", {}), AUTH_KEYS, "connect params: at /auth")
        token, device_token = auth.get("token"), auth.get("deviceToken")
        for name, value in (("token", token), ("deviceToken", device_token)):
            if value is not None and (not isinstance(value, str) or not value):
                raise _Reject("INVALID_REQUEST", f"invalid connect params: at /auth/{name}")
        device = p.get("device")
        device_id = None
        if device is not None:
            device_id = self._check_device(
                conn, device, client_id, mode, role, scopes,
                token or device_token or auth.get("bootstrapToken") or "", platform,
                client.get("deviceFamily"))
        elif self.require_device:
            raise _Reject("INVALID_REQUEST", "device identity required",
                          {"code": "DEVICE_IDENTITY_REQUIRED"})
        method = self._authenticate(token, device_token, device_id)
        paired = self._check_pairing(device, device_id, role, scopes)
        if device_id is not None:
            self.device_ids.append(device_id)
        return {s for s in scopes if s in self.allowed_scopes}, method, paired

    def _authenticate(self, token: str | None, device_token: str | None,
                      device_id: str | None) -> str:
        """Shared token first; else the device token (explicit, or ``auth.token``)."""
        if not self.token or token == self.token:
            return "token"
        candidate = (device_token or token) if device_id else None
        paired = self.paired.get(device_id or "")
        if candidate and paired is not None and paired.token == candidate:
            return "device-token"
        if device_token and device_id:
            raise _Reject("INVALID_REQUEST", "unauthorized: device token mismatch "
                          "(rotate/reissue device token)",
                          {"code": "AUTH_DEVICE_TOKEN_MISMATCH",
                           "authReason": "device_token_mismatch",
                           "canRetryWithDeviceToken": False,
                           "recommendedNextStep": "update_auth_credentials"})
        if token:
            raise _Reject("INVALID_REQUEST", "unauthorized: gateway token mismatch",
                          {"code": "AUTH_TOKEN_MISMATCH", "authReason": "token_mismatch",
                           "canRetryWithDeviceToken": device_id is not None,
                           "recommendedNextStep": "retry_with_device_token"
                           if device_id is not None else "update_auth_credentials"})
        raise _Reject("INVALID_REQUEST", "unauthorized: gateway token missing",
                      {"code": "AUTH_TOKEN_MISSING", "authReason": "token_missing",
                       "canRetryWithDeviceToken": False,
                       "recommendedNextStep": "update_auth_configuration"})

    def _check_pairing(self, device: Any, device_id: str | None, role: str,
                       scopes: list[str]) -> PairedDevice | None:
        """The paired device (gets a token), None (let in unpaired), or NOT_PAIRED."""
        if device_id is None:
            return None
        public_key = device["publicKey"]
        paired = self.paired.get(device_id)
        if paired is not None and paired.public_key == public_key:
            return paired
        if not self.require_pairing:
            return None
        request_id = next((rid for rid, req in self.pairing_requests.items()
                           if req["deviceId"] == device_id
                           and req["publicKey"] == public_key), None)
        if request_id is None:
            request_id = str(uuid.uuid4())
            self.pairing_requests[request_id] = {
                "requestId": request_id, "deviceId": device_id, "publicKey": public_key,
                "role": role, "scopes": list(scopes)}
        self.pairing_refusals += 1
        message = "pairing required: device is not approved yet"
        raise _Reject("NOT_PAIRED", message, {
            "code": "PAIRING_REQUIRED", "reason": "not-paired", "requestId": request_id,
            "remediationHint": "Approve this device from the pending pairing requests.",
            "deviceId": device_id, "requestedRole": role, "requestedScopes": list(scopes),
        }, close=1008, close_reason=f"{message} (requestId: {request_id})")

    def _check_device(self, conn: _Conn, device: Any, client_id: str, mode: str, role: str,
                      scopes: list[str], token: str, platform: str,
                      family: str | None) -> str:
        d = _closed(device, DEVICE_KEYS, "connect params: at /device")
        device_id = _text(d, "id", "device")
        try:
            raw = _b64url_decode(_text(d, "publicKey", "device"))
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise _Reject("INVALID_REQUEST", "device public key invalid",
                          {"code": "DEVICE_AUTH_PUBLIC_KEY_INVALID"}) from exc
        if hashlib.sha256(raw).hexdigest() != device_id:
            raise _Reject("INVALID_REQUEST", "device id mismatch",
                          {"code": "DEVICE_AUTH_DEVICE_ID_MISMATCH"})
        if d.get("nonce") != conn.nonce:
            raise _Reject("INVALID_REQUEST", "device nonce mismatch",
                          {"code": "DEVICE_AUTH_NONCE_MISMATCH"})
        signed_at = d.get("signedAt")
        if signed_at != conn.ts:
            raise _Reject("INVALID_REQUEST", "device signature expired",
                          {"code": "DEVICE_AUTH_SIGNATURE_EXPIRED"})
        payload = "|".join(["v3", device_id, client_id, mode, role, ",".join(scopes),
                            str(signed_at), token, conn.nonce, platform.strip().lower(),
                            (family or "").strip().lower()])
        try:
            key.verify(_b64url_decode(_text(d, "signature", "device")), payload.encode())
        except (InvalidSignature, ValueError) as exc:
            raise _Reject("INVALID_REQUEST", "device signature invalid",
                          {"code": "DEVICE_AUTH_SIGNATURE_INVALID"}) from exc
        return device_id

    async def _tick(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.tick_interval_ms / 1000)
                if conn.ticking:
                    await conn.event("tick", {"ts": int(time.time() * 1000)})

    def _record(self, conn: _Conn, frame: dict[str, Any]) -> None:
        self.requests.append({"conn": conn.number, "id": frame.get("id"),
                              "method": frame.get("method"), "params": frame.get("params")})
        self._notify()

    # --- methods ----------------------------------------------------------------------------

    async def _on_frame(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            await conn.ws.close(1008, "invalid frame")
            return
        if not isinstance(frame, dict) or frame.get("type") != "req":
            await conn.ws.close(1008, "invalid frame")
            return
        self._record(conn, frame)
        rid = frame.get("id")
        if not isinstance(rid, str) or not rid:
            await conn.ws.close(1008, "request id must be a string")
            return
        try:
            _closed(frame, REQ_KEYS, "request frame")
            method = _text(frame, "method", "request frame")
            if method in self._stalled:
                return
            failures = self._failures.get(method)
            if failures:
                raise _Reject(**{**failures.popleft()})
            handler = self._methods.get(method)
            if handler is None:  # unknown methods are admin-scoped
                raise _Reject("FORBIDDEN", f"missing scope: operator.admin ({method})",
                              {"code": "MISSING_SCOPE", "missingScope": "operator.admin"})
            needed = METHOD_SCOPES[method]
            if needed not in conn.scopes:
                raise _Reject("FORBIDDEN", f"missing scope: {needed}",
                              {"code": "MISSING_SCOPE", "missingScope": needed})
            await handler(self, conn, rid, frame.get("params"))
        except _Reject as rej:
            await conn.res_error(rid, rej.error)

    async def _chat_send(self, conn: _Conn, rid: str, params: Any) -> None:
        p = _closed(params, CHAT_SEND_KEYS, "chat.send params")
        session_key = _text(p, "sessionKey", "chat.send params")
        if not isinstance(p.get("message"), str):
            raise _Reject("INVALID_REQUEST", "invalid chat.send params: message")
        key = _text(p, "idempotencyKey", "chat.send params")
        for run in self.runs.values():
            if run.idempotency_key == key:  # a retry: same run, nothing new starts
                await conn.res_ok(rid, {"runId": run.run_id, "status": "in_flight"})
                return
        run = FakeRun(str(uuid.uuid4()), session_key, p["message"], key)
        self.runs[run.run_id] = run
        script = self.scripts.popleft() if self.scripts else self.default_script
        phases = list(script.phases)
        if script.first_event_before_res and phases:
            await self._chat(conn, run, "status", phase=phases.pop(0))
        await conn.res_ok(rid, {"runId": run.run_id, "status": "started"})
        self._spawn(self._play(conn, run, script, phases))

    async def _chat_abort(self, conn: _Conn, rid: str, params: Any) -> None:
        p = _closed(params, CHAT_ABORT_KEYS, "chat.abort params")
        session_key = _text(p, "sessionKey", "chat.abort params")
        run_id = p.get("runId")
        hit = [r for r in self.runs.values() if r.ended is None and r.session_key == session_key
               and (run_id is None or r.run_id == run_id)]
        for run in hit:
            run.aborted.set()
        await conn.res_ok(rid, {"ok": True, "aborted": bool(hit),
                                "runIds": [r.run_id for r in hit]})

    async def _health(self, conn: _Conn, rid: str, params: Any) -> None:
        await conn.res_ok(rid, {"ok": True})

    _methods: ClassVar[dict[str, Callable[..., Any]]] = {
        "chat.send": _chat_send, "chat.abort": _chat_abort, "health": _health,
    }

    async def _chat(self, conn: _Conn, run: FakeRun, state: str, **fields: Any) -> None:
        run.events_sent += 1
        await conn.event("chat", {"runId": run.run_id, "sessionKey": run.session_key,
                                  "seq": run.events_sent, "state": state, **fields})

    async def _play(self, conn: _Conn, run: FakeRun, script: ChatScript,
                    phases: list[str]) -> None:
        other = FakeRun(str(uuid.uuid4()), run.session_key, "", "")
        reply = script.reply if script.reply is not None else f"echo: {run.message}"
        chunks = list(script.chunks) if script.chunks is not None else _halves(reply)
        text = ""
        steps: list[tuple[str, dict[str, Any]]] = [("status", {"phase": ph}) for ph in phases]
        for chunk in chunks:
            text += chunk
            steps.append(("delta", {"deltaText": chunk, "message": _assistant(text)}))
        if script.outcome == "final":
            steps.append(("final", {"message": _assistant(reply), "stopReason": "stop"}))
        elif script.outcome == "error":
            steps.append(("error", {"errorMessage": script.error_message,
                                    "errorKind": script.error_kind}))
        elif script.outcome == "aborted":
            steps.append(("aborted", {"stopReason": "aborted"}))
        try:
            if script.noise:
                await conn.event("agent", {"runId": run.run_id, "stream": "lifecycle",
                                           "data": {"phase": "start"}})
                await self._chat(conn, other, "status", phase="starting_model")
            for state, fields in steps:
                if await self._pause(script, run):
                    break
                await self._chat(conn, run, state, **fields)
                if script.noise:
                    await self._chat(conn, other, "delta", deltaText="noise",
                                     message=_assistant("noise"))
                if script.drop_after_events is not None and \
                        run.events_sent >= script.drop_after_events:
                    conn.ws.transport.abort()
                    return
            else:
                if script.outcome == "hang":
                    await run.aborted.wait()
            if run.aborted.is_set():
                run.ended = "aborted"
                await self._chat(conn, run, "aborted", stopReason="aborted")
            else:
                run.ended = steps[-1][0] if steps else "final"
        except ConnectionClosed:
            run.ended = "dropped"
        finally:
            self._notify()

    @staticmethod
    async def _pause(script: ChatScript, run: FakeRun) -> bool:
        """Wait the scripted delay (cut short by an abort); True when aborted."""
        if script.event_delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.aborted.wait(), script.event_delay_s)
        return run.aborted.is_set()


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _halves(text: str) -> list[str]:
    mid = len(text) // 2
    return [part for part in (text[:mid], text[mid:]) if part]
