"""Sans-I/O gateway protocol (protocols.md 5): frames, handshake table, signing, device keys."""

from __future__ import annotations

import hashlib
import os
import stat

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff
from agentic_fast.core.errors import (
    ConfigError,
    GatewayError,
    LocalProtocolError,
    RemoteProtocolError,
)
from agentic_fast.gateway.device import (
    DeviceIdentity,
    DeviceTokenStore,
    StoredDeviceToken,
    b64url_decode,
    b64url_encode,
    device_id_for,
    load_or_create_identity,
)
from agentic_fast.gateway.protocol import (
    ClientHandshake,
    ErrorShape,
    Event,
    HandshakeState,
    Request,
    Response,
    chat_abort_params,
    chat_send_params,
    connect_params,
    device_auth_payload_v3,
    encode_request,
    error_from_shape,
    parse_chat_event,
    parse_frame,
    parse_hello_ok,
    parse_pairing_required,
    voice_session_key,
)
from agentic_fast.gateway.run import PendingRunBuffer

HELLO = {"type": "hello-ok", "protocol": 4, "server": {"version": "2026.9.6", "connId": "c1"},
         "features": {}, "snapshot": {}, "auth": {"role": "operator",
                                                  "scopes": ["operator.read", "operator.write"]},
         "policy": {"maxPayload": 26214400, "maxBufferedBytes": 52428800,
                    "tickIntervalMs": 30000}}


def frame(obj: dict) -> bytes:
    return orjson.dumps(obj)


# --- frames -----------------------------------------------------------------------------------


def test_parse_ok_response_event_and_request():
    assert parse_frame(frame({"type": "res", "id": "r1", "ok": True, "payload": {"a": 1}})) == \
        Response("r1", True, {"a": 1})
    assert parse_frame(frame({"type": "event", "event": "tick", "payload": {"ts": 5},
                              "seq": 3})) == Event("tick", {"ts": 5}, 3)
    assert parse_frame('{"type":"req","id":"x","method":"m"}') == Request("x", "m", None)


def test_parse_error_response_keeps_codes_and_retry_hints():
    res = parse_frame(frame({"type": "res", "id": "r2", "ok": False, "error": {
        "code": "UNAVAILABLE", "message": "starting", "details": {"reason": "startup-sidecars"},
        "retryable": True, "retryAfterMs": 500}}))
    assert isinstance(res, Response) and res.error is not None
    assert res.error == ErrorShape("UNAVAILABLE", "starting", {"reason": "startup-sidecars"},
                                   True, 500)


def test_received_frames_tolerate_extra_properties():
    event = parse_frame(frame({"type": "event", "event": "chat", "payload": {},
                               "stateVersion": {"presence": 1}}))
    assert isinstance(event, Event)


@pytest.mark.parametrize("data", [
    b"not json", b"[1,2]", b'{"type":"nope"}', b'{"type":"res","ok":true}',
    b'{"type":"res","id":"r","ok":"yes"}', b'{"type":"event","event":""}',
    b'{"type":"event","event":"x","seq":-1}', b'{"type":"res","id":"r","ok":false}',
    b'{"type":"res","id":"r","ok":false,"error":{"code":"X","retryAfterMs":"soon"}}',
    b'{"jsonrpc":"2.0","method":"sessions_send","id":1}',
])
def test_malformed_frames_are_remote_protocol_errors(data):
    with pytest.raises(RemoteProtocolError) as info:
        parse_frame(data)
    assert info.value.peer == "openclaw"


def test_encode_request_is_a_closed_req_frame():
    data = encode_request("r7", "chat.abort", {"sessionKey": "main"})
    assert orjson.loads(data) == {"type": "req", "id": "r7", "method": "chat.abort",
                                  "params": {"sessionKey": "main"}}
    with pytest.raises(LocalProtocolError):
        encode_request("", "x", {})


@pytest.mark.parametrize(("shape", "retryable"), [
    (ErrorShape("UNAVAILABLE", "m"), True),
    (ErrorShape("UNAVAILABLE", "m", retryable=False), False),
    (ErrorShape("INVALID_REQUEST", "m"), False),
    (ErrorShape("SOMETHING", "m", retryable=True), True),
])
def test_error_retryability_follows_the_flag_then_the_code(shape, retryable):
    assert error_from_shape(shape, "chat.send").retryable is retryable


def test_error_exposes_code_and_details_code_not_just_text():
    exc = error_from_shape(ErrorShape("FORBIDDEN", "missing scope: operator.write",
                                      {"code": "MISSING_SCOPE"}), "chat.send")
    assert isinstance(exc, GatewayError)
    assert (exc.code, exc.details_code, exc.method) == ("FORBIDDEN", "MISSING_SCOPE",
                                                        "chat.send")


# --- signing and connect ------------------------------------------------------------------


def test_v3_payload_matches_protocols_md_exactly():
    payload = device_auth_payload_v3(
        device_id="abc", client_id="gateway-client", client_mode="backend", role="operator",
        scopes=["operator.read", "operator.write"], signed_at=1737264000000, token="tok",
        nonce="n-1", platform=" Linux ", device_family=None)
    assert payload == ("v3|abc|gateway-client|backend|operator|operator.read,operator.write|"
                       "1737264000000|tok|n-1|linux|")


def test_connect_params_are_closed_and_signed():
    identity = DeviceIdentity.generate()
    params = connect_params(signer=identity, token="tok", nonce="n-1", signed_at=42,
                            client_version="0.1.0", platform="linux")
    assert set(params) == {"minProtocol", "maxProtocol", "client", "role", "scopes", "caps",
                           "auth", "device"}
    assert set(params["client"]) == {"id", "version", "platform", "mode"}
    assert set(params["device"]) == {"id", "publicKey", "signature", "signedAt", "nonce"}
    device = params["device"]
    raw = b64url_decode(device["publicKey"])
    assert device["id"] == hashlib.sha256(raw).hexdigest() == identity.device_id
    assert (device["signedAt"], device["nonce"]) == (42, "n-1")
    signed = device_auth_payload_v3(
        device_id=identity.device_id, client_id="gateway-client", client_mode="backend",
        role="operator", scopes=["operator.read", "operator.write"], signed_at=42,
        token="tok", nonce="n-1", platform="linux", device_family=None)
    Ed25519PublicKey.from_public_bytes(raw).verify(b64url_decode(device["signature"]),
                                                   signed.encode())


def test_connect_without_token_sends_no_auth_and_signs_an_empty_token():
    identity = DeviceIdentity.generate()
    params = connect_params(signer=identity, token="", nonce="n", signed_at=1,
                            client_version="0.1.0", platform="linux")
    assert "auth" not in params
    signed = "v3|" + identity.device_id + "|gateway-client|backend|operator|" \
        "operator.read,operator.write|1||n|linux|"
    assert identity.verify(b64url_decode(params["device"]["signature"]), signed.encode())


def test_connect_carries_the_device_token_and_signs_the_shared_token_first():
    identity = DeviceIdentity.generate()
    params = connect_params(signer=identity, token="tok", nonce="n", signed_at=1,
                            client_version="0.1.0", platform="linux", device_token="dev-tok")
    assert params["auth"] == {"token": "tok", "deviceToken": "dev-tok"}
    signed = "v3|" + identity.device_id + "|gateway-client|backend|operator|" \
        "operator.read,operator.write|1|tok|n|linux|"
    assert identity.verify(b64url_decode(params["device"]["signature"]), signed.encode())


def test_connect_with_only_a_device_token_signs_the_device_token():
    identity = DeviceIdentity.generate()
    params = connect_params(signer=identity, token="", nonce="n", signed_at=1,
                            client_version="0.1.0", platform="linux", device_token="dev-tok")
    assert params["auth"] == {"deviceToken": "dev-tok"}
    signed = "v3|" + identity.device_id + "|gateway-client|backend|operator|" \
        "operator.read,operator.write|1|dev-tok|n|linux|"
    assert identity.verify(b64url_decode(params["device"]["signature"]), signed.encode())


# What OpenClaw 2026.9.6 answered live to an unapproved backend device (connect from a LAN
# address): error.code NOT_PAIRED, no retryable flag, then close 1008.
PAIRING_ERROR = ErrorShape("NOT_PAIRED", "pairing required: device is not approved yet", {
    "code": "PAIRING_REQUIRED", "reason": "not-paired",
    "requestId": "73135b20-713e-4a35-9df8-a837abcefab1",
    "remediationHint": "Approve this device from the pending pairing requests.",
    "deviceId": "34b290718003aa7db1bee75f51ed84d6f6e9c18953e313bb0610bf8f90c36afa",
    "requestedRole": "operator", "requestedScopes": ["operator.read", "operator.write"]})


def test_pairing_required_is_retryable_and_names_the_approve_command():
    exc = error_from_shape(PAIRING_ERROR, "connect")
    assert (exc.code, exc.details_code, exc.retryable) == ("NOT_PAIRED", "PAIRING_REQUIRED",
                                                           True)
    pairing = parse_pairing_required(exc.details)
    assert pairing is not None
    assert pairing.request_id == "73135b20-713e-4a35-9df8-a837abcefab1"
    assert pairing.device_id == PAIRING_ERROR.details["deviceId"]
    assert pairing.reason == "not-paired"
    assert pairing.approve_command == \
        "openclaw devices approve 73135b20-713e-4a35-9df8-a837abcefab1"


def test_pairing_details_are_untrusted():
    pairing = parse_pairing_required({"code": "PAIRING_REQUIRED",
                                      "requestId": "x; rm -rf / #", "deviceId": 42})
    assert pairing is not None
    assert (pairing.request_id, pairing.device_id) == (None, None)
    assert pairing.approve_command == "openclaw devices approve --latest"
    assert parse_pairing_required({"code": "AUTH_TOKEN_MISMATCH"}) is None
    assert parse_pairing_required(None) is None
    explicit = ErrorShape("NOT_PAIRED", "m", {"code": "PAIRING_REQUIRED"}, retryable=False)
    assert error_from_shape(explicit).retryable is False


# --- handshake table ----------------------------------------------------------------------


def new_handshake() -> ClientHandshake:
    return ClientHandshake(signer=DeviceIdentity.generate(), token="tok",
                           client_version="0.1.0", platform="linux", request_id="c1")


def challenge(nonce: str = "n-1", ts: int = 99) -> Event:
    return Event("connect.challenge", {"nonce": nonce, "ts": ts})


def test_handshake_happy_path():
    hs = new_handshake()
    assert hs.state is HandshakeState.AWAIT_CHALLENGE
    assert hs.receive(Event("tick", {"ts": 1})).send is None  # ignored before the challenge
    out = hs.receive(challenge())
    assert hs.state is HandshakeState.AWAIT_HELLO
    sent = orjson.loads(out.send)
    assert (sent["id"], sent["method"]) == ("c1", "connect")
    assert sent["params"]["device"]["nonce"] == "n-1"
    assert sent["params"]["device"]["signedAt"] == 99
    hello = hs.receive(Response("c1", True, HELLO)).hello
    assert hs.state is HandshakeState.OPEN
    assert hello is not None
    assert (hello.policy.max_payload, hello.policy.tick_interval_ms) == (26214400, 30000)
    assert hello.server_version == "2026.9.6"


def test_handshake_error_response_raises_gateway_error():
    hs = new_handshake()
    hs.receive(challenge())
    error = ErrorShape("INVALID_REQUEST", "unauthorized", {"code": "AUTH_TOKEN_MISMATCH"})
    with pytest.raises(GatewayError) as info:
        hs.receive(Response("c1", False, None, error))
    assert info.value.details_code == "AUTH_TOKEN_MISMATCH"
    assert hs.state is HandshakeState.FAILED


@pytest.mark.parametrize("frames", [
    [Response("c1", True, HELLO)],                      # hello before the challenge
    [challenge(), challenge()],                         # a second challenge
    [challenge(), Response("other", True, {})],         # a response to nothing we sent
    [Event("connect.challenge", {"nonce": "n"})],       # challenge without ts
    [Event("connect.challenge", "nonce")],              # payload not an object
    [challenge(), Response("c1", True, {**HELLO, "protocol": 3})],
    [challenge(), Response("c1", True, {**HELLO, "policy": {"maxPayload": 1}})],
    [challenge(), Response("c1", True, {"type": "something-else"})],
])
def test_handshake_violations_fail(frames):
    hs = new_handshake()
    with pytest.raises(RemoteProtocolError):
        for f in frames:
            hs.receive(f)
    assert hs.state is HandshakeState.FAILED


def test_parse_hello_ok_reads_policy_and_auth():
    hello = parse_hello_ok(HELLO)
    assert hello.policy.max_buffered_bytes == 52428800
    assert hello.scopes == ("operator.read", "operator.write")
    assert hello.role == "operator"
    assert hello.device_token is None


def test_parse_hello_ok_reads_the_device_token():
    auth = {**HELLO["auth"], "method": "token", "deviceToken": "irzme-tok",
            "issuedAtMs": 1796506077173}
    hello = parse_hello_ok({**HELLO, "auth": auth})
    assert (hello.device_token, hello.auth_method, hello.device_token_issued_at_ms) == (
        "irzme-tok", "token", 1796506077173)
    assert parse_hello_ok({**HELLO, "auth": {**auth, "deviceToken": ""}}).device_token is None


# --- chat -----------------------------------------------------------------------------------


def test_chat_send_params_are_closed():
    assert chat_send_params(session_key="agent:main:voice-1", message="hi",
                            idempotency_key="k") == {
        "sessionKey": "agent:main:voice-1", "message": "hi", "idempotencyKey": "k"}
    full = chat_send_params(session_key="s", message="m", idempotency_key="k",
                            timeout_ms=8000, queue_mode="interrupt", thinking="off")
    assert set(full) == {"sessionKey", "message", "idempotencyKey", "timeoutMs", "queueMode",
                         "thinking"}
    with pytest.raises(LocalProtocolError):
        chat_send_params(session_key="s", message="m", idempotency_key="")
    with pytest.raises(LocalProtocolError):
        chat_send_params(session_key="s", message="m", idempotency_key="k", queue_mode="now")


def test_chat_abort_params():
    assert chat_abort_params(session_key="s", run_id="r") == {"sessionKey": "s", "runId": "r"}
    assert chat_abort_params(session_key="s") == {"sessionKey": "s"}


def test_parse_chat_events():
    delta = parse_chat_event({"runId": "r", "sessionKey": "s", "seq": 3, "state": "delta",
                              "deltaText": " on", "message": {"role": "assistant", "content": [
                                  {"type": "text", "text": "Lights on"}]}})
    assert (delta.delta_text, delta.text, delta.terminal) == (" on", "Lights on", False)
    status = parse_chat_event({"runId": "r", "sessionKey": "s", "seq": 1, "state": "status",
                               "phase": "starting_model", "agentId": "main"})
    assert status.phase == "starting_model"
    final = parse_chat_event({"runId": "r", "sessionKey": "s", "seq": 9, "state": "final",
                              "stopReason": "stop",
                              "message": {"role": "assistant", "content": "plain"}})
    assert (final.text, final.stop_reason, final.terminal) == ("plain", "stop", True)
    error = parse_chat_event({"runId": "r", "sessionKey": "s", "seq": 2, "state": "error",
                              "errorMessage": "boom", "errorKind": "timeout"})
    assert (error.error_kind, error.terminal) == ("timeout", True)
    with pytest.raises(RemoteProtocolError):
        parse_chat_event({"sessionKey": "s", "seq": 1, "state": "final"})


@pytest.mark.parametrize(("voice_id", "key"), [
    ("CA0123ABCdef", "agent:main:voice-ca0123abcdef"),
    ("+15551234567", "agent:main:voice-15551234567"),
    ("a:b c", "agent:main:voice-a-b-c"),
])
def test_voice_session_keys(voice_id, key):
    assert voice_session_key(voice_id) == key


def test_voice_session_key_needs_an_id():
    with pytest.raises(LocalProtocolError):
        voice_session_key(" + ")
    assert voice_session_key("x", agent_id="Ops") == "agent:ops:voice-x"


# --- early event buffer ---------------------------------------------------------------------


def chat(run_id: str, session: str = "agent:main:voice-1", seq: int = 1):
    return parse_chat_event({"runId": run_id, "sessionKey": session, "seq": seq,
                             "state": "status", "phase": "starting_model"})


def test_buffer_keeps_events_only_while_a_send_is_in_flight_for_the_session():
    buf = PendingRunBuffer(max_events=8)
    assert not buf.offer(chat("r1"))
    buf.begin_send("agent:main:VOICE-1")  # the gateway canonicalises keys to lower case
    assert buf.offer(chat("r1", seq=1))
    assert buf.offer(chat("r1", seq=2))
    assert not buf.offer(chat("r9", session="agent:main:voice-2"))
    assert [e.seq for e in buf.claim("r1")] == [1, 2]
    assert buf.claim("r1") == []
    assert buf.offer(chat("r2"))
    buf.end_send("agent:main:VOICE-1")
    assert len(buf) == 0  # nothing in flight: let everything go
    assert not buf.offer(chat("r2"))


def test_buffer_is_bounded_dropping_the_oldest():
    buf = PendingRunBuffer(max_events=3)
    buf.begin_send("agent:main:voice-1")
    for seq in range(1, 6):
        buf.offer(chat("r1", seq=seq))
    assert len(buf) == 3
    assert [e.seq for e in buf.claim("r1")] == [3, 4, 5]


# --- backoff --------------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap():
    delays = Backoff.endless(rand=lambda: 0.5).delays()
    assert [next(delays) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_jitter_stays_within_bounds():
    low = Backoff.endless(jitter=0.2, rand=lambda: 0.0).delays()
    high = Backoff.endless(jitter=0.2, rand=lambda: 1.0).delays()
    assert next(low) == pytest.approx(0.8)
    assert next(high) == pytest.approx(1.2)
    for _ in range(10):
        assert next(high) <= 30.0


# --- device identity ------------------------------------------------------------------------


def test_b64url_round_trip_without_padding():
    for n in range(0, 40):
        data = os.urandom(n)
        text = b64url_encode(data)
        assert "=" not in text and "+" not in text and "/" not in text
        assert b64url_decode(text) == data


def test_key_file_is_created_0600_and_the_device_id_is_stable(tmp_path):
    path = tmp_path / "keys" / "gateway_device_key"
    first = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    second = load_or_create_identity(path)
    assert first.device_id == second.device_id == device_id_for(first.public_key_raw)
    assert len(first.device_id) == 64
    assert not list(path.parent.glob(".*.tmp"))


def test_loose_key_file_permissions_are_tightened(tmp_path):
    path = tmp_path / "key"
    identity = load_or_create_identity(path)
    os.chmod(path, 0o644)
    assert load_or_create_identity(path).device_id == identity.device_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_key_file_names_the_config_key(tmp_path):
    path = tmp_path / "key"
    path.write_text("not a key")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as info:
        load_or_create_identity(path)
    assert info.value.key == "gateway.device_key_path"


# --- device token file --------------------------------------------------------------------

URL = "ws://127.0.0.1:18789"


def record(identity: DeviceIdentity, token: str = "dev-tok") -> StoredDeviceToken:
    return StoredDeviceToken(token=token, device_id=identity.device_id, role="operator",
                             gateway_url=URL, scopes=("operator.read",), issued_at_ms=7)


def test_token_file_is_written_0600_by_atomic_replace_and_read_back(tmp_path):
    identity = DeviceIdentity.generate()
    store = DeviceTokenStore.beside(tmp_path / "keys" / "gateway_device_key")
    assert store.path == tmp_path / "keys" / "gateway_device_key.token"
    assert store.load(device_id=identity.device_id, role="operator", gateway_url=URL) is None
    store.path.parent.mkdir()
    store.path.write_text("old")
    os.chmod(store.path, 0o644)
    old_inode = store.path.stat().st_ino
    assert store.save(record(identity))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.path.stat().st_ino != old_inode  # replaced, not rewritten in place
    assert sorted(p.name for p in store.path.parent.iterdir()) == [store.path.name]
    assert store.load(device_id=identity.device_id, role="operator",
                      gateway_url=URL) == record(identity)
    store.clear()
    assert not store.path.exists()


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"version": 1, "token": ""}',
                                     b'{"version": 99}', b"\xff\xfe"])
def test_corrupt_token_file_is_a_logged_warning_and_ignored(tmp_path, caplog, content):
    identity = DeviceIdentity.generate()
    store = DeviceTokenStore(tmp_path / "key.token")
    store.path.write_bytes(content)
    before = metrics.get("gateway.device_token.corrupt")
    with caplog.at_level("WARNING", logger="agentic_fast.gateway"):
        assert store.load(device_id=identity.device_id, role="operator",
                          gateway_url=URL) is None
    assert metrics.get("gateway.device_token.corrupt") == before + 1
    line = next(r.getMessage() for r in caplog.records
                if "gateway.device_token.corrupt" in r.getMessage())
    assert str(store.path) in line


def test_unreadable_token_file_is_a_logged_warning_and_ignored(tmp_path, caplog):
    identity = DeviceIdentity.generate()
    store = DeviceTokenStore(tmp_path / "key.token")
    store.path.mkdir()  # reading it fails with an OSError
    with caplog.at_level("WARNING", logger="agentic_fast.gateway"):
        assert store.load(device_id=identity.device_id, role="operator",
                          gateway_url=URL) is None
    assert any("gateway.device_token.unreadable" in r.getMessage() for r in caplog.records)


def test_loose_token_file_permissions_are_tightened(tmp_path):
    identity = DeviceIdentity.generate()
    store = DeviceTokenStore(tmp_path / "key.token")
    assert store.save(record(identity))
    os.chmod(store.path, 0o644)
    assert store.load(device_id=identity.device_id, role="operator", gateway_url=URL)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_token_of_another_device_or_gateway_is_not_used(tmp_path):
    identity, other = DeviceIdentity.generate(), DeviceIdentity.generate()
    store = DeviceTokenStore(tmp_path / "key.token")
    assert store.save(record(other))
    assert store.load(device_id=identity.device_id, role="operator", gateway_url=URL) is None
    assert store.save(record(identity))
    assert store.load(device_id=identity.device_id, role="operator",
                      gateway_url="wss://elsewhere.example") is None


def test_a_token_that_cannot_be_written_is_logged_not_raised(tmp_path, caplog):
    identity = DeviceIdentity.generate()
    (tmp_path / "file").write_text("x")
    store = DeviceTokenStore(tmp_path / "file" / "key.token")  # parent is not a folder
    with caplog.at_level("WARNING", logger="agentic_fast.gateway"):
        assert store.save(record(identity)) is False
    assert any("gateway.device_token.save_failed" in r.getMessage() for r in caplog.records)
