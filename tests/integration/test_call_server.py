"""The call server end to end with the fake Twilio (REST, webhooks, media streams)."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agentic_fast.audio import AudioConverter
from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.call.stream_token import StreamTokenSigner
from agentic_fast.core import metrics
from agentic_fast.server.app import begin_drain, drain, stream_token_secret
from tests.fakes.audio import load_speech_ulaw
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_twiml import read_connect_stream
from tests.fakes.twilio_webhooks import (
    HMAC_SHA256,
    SETTINGS_HEADER,
    SIGNATURE_HEADER,
    SharedKey,
    incoming_call_form,
    new_shared_key,
    new_sid,
    sign_json_body,
    status_callback_form,
    stream_status_form,
    twilio_signature,
)
from tests.integration.harness import (
    PUBLIC_URL,
    Harness,
    make_config,
    start_harness,
    stream_parameters,
)

pytestmark = pytest.mark.asyncio
FAST = 10.0  # the fake caller sends its audio 10x faster than real time


async def _connected_call(harness: Harness, **client_kwargs):
    call_sid, params, _ = await harness.incoming_call()
    client = harness.media_client(call_sid, params, time_scale=FAST, **client_kwargs)
    await client.connect()
    bridge = await asyncio.wait_for(harness.bridge_ready.get(), 5)
    await asyncio.wait_for(bridge.started.wait(), 5)
    return call_sid, params, client, bridge


async def test_inbound_call_reaches_the_bridge_as_provider_audio(harness: Harness) -> None:
    call_sid, params, client, bridge = await _connected_call(harness, continuous=False)
    session = harness.services.manager.get(params["callId"])
    assert session is not None and session.call_sid == call_sid
    assert session.status.value == "in-progress"

    speech = load_speech_ulaw()
    await asyncio.wait_for(client.say(speech), 10)
    await client.send_dtmf("5")
    await bridge.wait_until(lambda: bridge.digits == ["5"])
    await client.hangup()
    assert await asyncio.wait_for(bridge.closed, 5) == "stream-stopped"

    # exactly what the converter makes of the caller's audio: 40 ms PCM16 24 kHz chunks
    expected = AudioConverter("openai")
    want = [c for i in range(0, len(speech), 160)
            for c in expected.feed_twilio(_payload(speech, i))]
    assert bridge.chunks == want and len(want) == len(speech) // 320
    assert {len(c) for c in bridge.chunks} == {1920}
    assert session.status.value == "completed" and session.dtmf == "5"
    doc = orjson.loads(await (await harness.http.get(
        f"{harness.base_url}/calls/{session.call_id}")).read())
    assert doc["status"] == "completed" and doc["call_sid"] == call_sid
    client.assert_no_violations()


def _payload(audio: bytes, i: int) -> str:
    import base64

    return base64.b64encode(audio[i:i + 160]).decode()


async def test_bridge_can_talk_back_and_marks_are_echoed(harness: Harness) -> None:
    _, _, client, bridge = await _connected_call(harness)
    frames = AudioConverter("openai").feed_provider(bytes(960 * 5))
    assert bridge.sender.media(frames[0])  # one frame alone
    assert bridge.sender.send([("media", f) for f in frames[1:]] + [("mark", "end-of-reply")])
    echo = await client.wait_for_echo("end-of-reply")
    assert not echo.flushed
    await bridge.wait_until(lambda: bridge.marks == ["end-of-reply"])
    assert client.received_audio_bytes == 800
    client.assert_no_violations()


@pytest.mark.parametrize("signature", [None, "forged"])
async def test_unsigned_or_forged_webhook_is_403_and_registers_nothing(
        harness: Harness, signature: str | None) -> None:
    sender = harness.webhooks(auth_token="not-the-token" if signature else None)
    headers = None
    if signature is None:  # strip the header entirely
        async with harness.http.post(f"{harness.base_url}/twilio/voice",
                                     data=incoming_call_form()) as resp:
            assert resp.status == 403
    else:
        resp = await sender.post("/twilio/voice", incoming_call_form(), headers=headers)
        assert resp.status == 403
    assert harness.services.manager.active_count == 0


async def test_without_auth_token_twilio_routes_refuse_and_not_ready() -> None:
    h = await start_harness(None)
    try:
        resp = await h.webhooks(auth_token="anything").post("/twilio/voice", {"CallSid": "x"})
        assert resp.status == 403
        ready = await h.http.get(f"{h.base_url}/readyz")
        assert ready.status == 503
        assert (await h.http.get(f"{h.base_url}/healthz")).status == 200
    finally:
        await h.__aexit__(None, None, None)


async def test_replayed_webhook_creates_nothing_new(harness: Harness) -> None:
    call_sid, params, _ = await harness.incoming_call()
    _, params2, _ = await harness.incoming_call(call_sid=call_sid)
    assert params2["callId"] == params["callId"]
    assert params2["streamToken"] != params["streamToken"]  # a fresh one-time token
    assert harness.services.manager.active_count == 1


async def _expect_policy_close(client) -> None:
    await client.wait_closed()
    assert client.close_code == 1008


async def test_reused_stream_token_is_rejected(harness: Harness) -> None:
    call_sid, params, client, _ = await _connected_call(harness)
    again = harness.media_client(call_sid, params)
    await again.connect(start_media=False)
    await _expect_policy_close(again)
    assert not client.closed.is_set()


async def test_expired_token_is_rejected(harness: Harness, rest: FakeTwilioRest) -> None:
    call_sid, params, _ = await harness.incoming_call()
    past = StreamTokenSigner(stream_token_secret(rest.auth_token), ttl_s=60,
                             clock=lambda: time.time() - 3600)
    params["streamToken"] = past.issue(params["callId"], call_sid)
    client = harness.media_client(call_sid, params)
    await client.connect(start_media=False)
    await _expect_policy_close(client)
    assert metrics.get("twilio.media.token.expired") >= 1


async def test_token_for_another_call_sid_is_rejected(harness: Harness) -> None:
    _, params, _ = await harness.incoming_call()
    client = harness.media_client(new_sid("CA"), params)
    await client.connect(start_media=False)
    await _expect_policy_close(client)
    assert harness.bridges == {}


async def test_socket_without_start_is_closed(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, start_timeout_s=0.2)
    try:
        client = h.media_client(new_sid("CA"), {})
        await client.connect(send_start=False)
        await client.send_connected()
        await _expect_policy_close(client)
    finally:
        await h.__aexit__(None, None, None)


async def test_bad_frames_are_counted_and_other_calls_carry_on(harness: Harness) -> None:
    _, _, noisy, noisy_bridge = await _connected_call(harness)
    _, _, calm, calm_bridge = await _connected_call(harness)
    before = metrics.snapshot()
    await noisy.send_raw("{not json")
    await noisy.send_raw(orjson.dumps({"event": "teleport",
                                       "streamSid": noisy.stream_sid}).decode())
    await noisy.send_raw(orjson.dumps({
        "event": "media", "sequenceNumber": "9999", "streamSid": noisy.stream_sid,
        "media": {"track": "inbound", "chunk": "1", "timestamp": "1",
                  "payload": "!!!not-base64!!!"}}).decode())
    await noisy.send_raw(b"\x00\x01binary")
    seen = noisy_bridge.media_count
    await noisy_bridge.wait_until(lambda: noisy_bridge.media_count > seen + 3)  # still flowing
    n_calm = calm_bridge.media_count
    await calm_bridge.wait_until(lambda: calm_bridge.media_count > n_calm + 3)
    after = metrics.snapshot()
    for reason in ("malformed_json", "unknown_event", "binary_frame"):
        key = f"twilio.media.rejected.{reason}"
        assert after.get(key, 0) - before.get(key, 0) == 1, key
    bad_audio = "twilio.media.rejected.bad_audio"
    bad_payload = "twilio.media.rejected.bad_value"
    assert (after.get(bad_audio, 0) - before.get(bad_audio, 0)
            + after.get(bad_payload, 0) - before.get(bad_payload, 0)) == 1
    assert not noisy.closed.is_set() and not calm.closed.is_set()


async def test_oversize_message_ends_only_that_call(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, ws_max_message_bytes=4096)
    try:
        _, _, big, big_bridge = await _connected_call(h)
        _, _, calm, calm_bridge = await _connected_call(h)
        await big.send_raw("x" * 10000)
        await big.wait_closed()
        assert await asyncio.wait_for(big_bridge.closed, 5) == "socket-error"
        n = calm_bridge.media_count
        await calm_bridge.wait_until(lambda: calm_bridge.media_count > n + 3)
        assert not calm.closed.is_set()
    finally:
        await h.__aexit__(None, None, None)


async def test_connection_cap_per_address(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, max_connections_per_ip=1)
    try:
        await _connected_call(h)
        with pytest.raises(InvalidStatus) as info:
            async with connect(h.ws_url):
                pass
        assert info.value.response.status_code == 503
    finally:
        await h.__aexit__(None, None, None)


async def test_outbound_call_and_status_lifecycle(harness: Harness, rest: FakeTwilioRest) -> None:
    resp = await harness.http.post(f"{harness.base_url}/calls",
                                   json={"to": "+15557654321", "prompt": "Remind Sam"})
    assert resp.status == 201, await resp.text()
    doc = await resp.json()
    session = harness.services.manager.get(doc["call_id"])
    assert session.status.value == "initiating" and session.prompt == "Remind Sam"
    create = rest.requests[-1]
    assert create.get("To") == "+15557654321" and create.get("From") == "+15550001111"
    assert create.get("StatusCallback") == f"{PUBLIC_URL}/twilio/status"
    assert create.getall("StatusCallbackEvent") == ["initiated", "ringing", "answered",
                                                    "completed"]
    params = _params_of(create.get("Twiml"))
    assert params["callId"] == doc["call_id"]

    hooks = harness.webhooks()
    sid = doc["call_sid"]
    for seq, status in enumerate(["initiated", "ringing", "in-progress"]):
        r = await hooks.post("/twilio/status", status_callback_form(
            call_sid=sid, call_status=status, sequence_number=seq))
        assert r.status == 204
    assert session.status.value == "in-progress"
    client = harness.media_client(sid, params, time_scale=FAST)
    await client.connect()
    bridge = await asyncio.wait_for(harness.bridge_ready.get(), 5)
    await asyncio.wait_for(bridge.started.wait(), 5)

    hang = await harness.http.post(f"{harness.base_url}/calls/{doc['call_id']}/hangup")
    assert hang.status == 202
    assert rest.requests[-1].get("Status") == "completed"
    r = await hooks.post("/twilio/status", status_callback_form(
        call_sid=sid, call_status="completed", sequence_number=3, call_duration=12))
    assert r.status == 204
    assert session.status.value == "completed"
    # a late, out-of-order callback changes nothing
    await hooks.post("/twilio/status", status_callback_form(
        call_sid=sid, call_status="ringing", sequence_number=1))
    assert session.status.value == "completed"


def _params_of(twiml: str) -> dict[str, str]:
    from tests.integration.harness import stream_parameters

    return stream_parameters(twiml)


@pytest.mark.parametrize("final", ["busy", "no-answer"])
async def test_unanswered_outbound_call_fails_with_reason(harness: Harness, final: str) -> None:
    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15557654321"})
    doc = await resp.json()
    hooks = harness.webhooks()
    await hooks.post("/twilio/status", status_callback_form(
        call_sid=doc["call_sid"], call_status="ringing", sequence_number=1))
    await hooks.post("/twilio/status", status_callback_form(
        call_sid=doc["call_sid"], call_status=final, sequence_number=2))
    session = harness.services.manager.get(doc["call_id"])
    assert session.status.value == "failed" and session.reason == final


async def test_outbound_rejected_by_twilio_is_a_clear_error(
        harness: Harness, rest: FakeTwilioRest) -> None:
    rest.reject_number("+15550009999", 21211)
    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15550009999"})
    assert resp.status == 502
    assert (await resp.json())["code"] == 21211
    assert harness.services.manager.active_count == 0


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"to": "555"}', b'{"to": "+15551234567",'
                                  b' "prompt": 5}'])
async def test_calls_api_validates_input(harness: Harness, body: bytes) -> None:
    resp = await harness.http.post(f"{harness.base_url}/calls", data=body)
    assert resp.status == 400


async def test_calls_api_needs_the_bearer_token_when_configured(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, api_token="s3cret-token-123")
    try:
        assert (await h.http.get(f"{h.base_url}/calls")).status == 401
        ok = await h.http.get(f"{h.base_url}/calls",
                              headers={"Authorization": "Bearer s3cret-token-123"})
        assert ok.status == 200
    finally:
        await h.__aexit__(None, None, None)


async def test_cli_call_places_a_call_through_the_server(
        harness: Harness, rest: FakeTwilioRest, tmp_path) -> None:
    from agentic_fast.cli.commands import main

    cfg = tmp_path / "config.yaml"
    cfg.write_text("server:\n  host: 127.0.0.1\n")
    code = await asyncio.to_thread(main, ["call", "--config", str(cfg), "--to", "+15557654321",
                                          "--prompt", "hi", "--server", harness.base_url], {})
    assert code == 0
    assert rest.requests[-1].get("To") == "+15557654321"
    assert harness.services.manager.active_count == 1


async def test_call_that_never_connects_is_cleaned_up(rest: FakeTwilioRest) -> None:
    class Clock:
        mono = 1000.0

        def monotonic(self) -> float:
            return self.mono

        def time(self) -> float:
            return 1.7e9 + self.mono

    clock = Clock()
    manager = CallManager(stream_timeout_s=10, clock=clock)
    h = await start_harness(rest, manager=manager)
    try:
        _, params, _ = await h.incoming_call()
        assert manager.active_count == 1
        clock.mono += 11
        assert manager.sweep() == 1
        session = manager.get(params["callId"])
        assert session.status.value == "failed" and session.reason == "stream-timeout"
        assert manager.active_count == 0
        # its token is useless now
        client = h.media_client("CA" + "0" * 32, params)
        await client.connect(start_media=False)
        await _expect_policy_close(client)
    finally:
        await h.__aexit__(None, None, None)


async def test_drain_refuses_new_calls_but_keeps_active_ones(harness: Harness) -> None:
    _, _, client, bridge = await _connected_call(harness)
    begin_drain(harness.app)
    assert (await harness.http.get(f"{harness.base_url}/readyz")).status == 503
    resp = await harness.webhooks().post("/twilio/voice", incoming_call_form())
    assert resp.status == 200 and "<Hangup" in await resp.text()
    assert harness.services.manager.active_count == 1
    drained = asyncio.ensure_future(drain(harness.app, 10))
    n = bridge.media_count
    await bridge.wait_until(lambda: bridge.media_count > n + 3)  # the call goes on
    assert not drained.done()
    await client.hangup()
    assert await asyncio.wait_for(drained, 5) is True


async def test_json_body_webhook_is_checked_by_its_body_hash(
        harness: Harness, rest: FakeTwilioRest) -> None:
    from tests.fakes.twilio_webhooks import SIGNATURE_HEADER, sign_json_body

    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15557654321"})
    sid = (await resp.json())["call_sid"]
    body = orjson.dumps({"CallSid": sid, "CallStatus": "ringing", "SequenceNumber": "1"})
    signed_url, signature = sign_json_body(rest.auth_token, f"{PUBLIC_URL}/twilio/status", body)
    path_qs = signed_url[len(PUBLIC_URL):]
    headers = {SIGNATURE_HEADER: signature, "Content-Type": "application/json"}
    ok = await harness.http.post(harness.base_url + path_qs, data=body, headers=headers)
    assert ok.status == 204
    session = harness.services.manager.get_by_sid(sid)
    assert session.status.value == "ringing"
    tampered = body.replace(b"ringing", b"completed")
    bad = await harness.http.post(harness.base_url + path_qs, data=tampered, headers=headers)
    assert bad.status == 403
    assert session.status.value == "ringing"


# -- <Stream statusCallback> (stream errors) -----------------------------------------------

STREAM_STATUS_URL = f"{PUBLIC_URL}/twilio/stream-status"


@pytest.fixture
def counted() -> Callable[[str], int]:
    """How much a counter grew during the test (counters are process-wide)."""
    before = metrics.snapshot()
    return lambda name: metrics.get(name) - before.get(name, 0)


async def test_stream_twiml_asks_twilio_for_stream_status(harness: Harness) -> None:
    _, _, twiml = await harness.incoming_call()
    stream = read_connect_stream(twiml)
    assert stream.status_callback == STREAM_STATUS_URL
    assert stream.status_callback_method == "POST"
    # the outbound call's inline TwiML too
    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15557654321"})
    assert resp.status == 201
    (create,) = [r for r in harness.rest.requests if r.get("Twiml")]
    assert read_connect_stream(create.get("Twiml")).status_callback == STREAM_STATUS_URL


def _stream_events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    return [dict(r.msg.fields) for r in caplog.records
            if getattr(r.msg, "event", None) == event]


async def test_stream_error_before_start_is_logged_counted_recorded_and_ends_the_call(
        harness: Harness, caplog: pytest.LogCaptureFixture,
        counted: Callable[[str], int]) -> None:
    call_sid, params, _ = await harness.incoming_call()
    session = harness.services.manager.get(params["callId"])
    stream_sid = new_sid("MZ")
    error = "31920 Stream - WebSocket - Handshake Error"
    with caplog.at_level("INFO", logger="agentic_fast"):
        resp = await harness.webhooks().post("/twilio/stream-status", stream_status_form(
            call_sid=call_sid, stream_sid=stream_sid, stream_event="stream-error",
            stream_error=error))
    assert resp.status == 204
    (logged,) = _stream_events(caplog, "stream.error")
    assert logged["call_id"] == session.call_id and logged["code"] == "31920"
    assert counted("twilio.stream_status.stream-error") == 1
    assert counted("twilio.stream_error.31920") == 1
    # no stream will come: the call fails now, with the reason, instead of timing out
    assert session.status.value == "failed" and session.reason == "stream-error-31920"
    doc = orjson.loads(await (await harness.http.get(
        f"{harness.base_url}/calls/{session.call_id}")).read())
    (recorded,) = doc["stream_errors"]
    assert recorded["code"] == "31920" and recorded["error"] == error
    assert recorded["stream_sid"] == stream_sid and recorded["ts"]
    assert doc["reason"] == "stream-error-31920"


async def test_stream_error_during_the_stream_is_recorded_and_the_call_goes_on(
        harness: Harness, counted: Callable[[str], int]) -> None:
    call_sid, params, client, _ = await _connected_call(harness)
    hooks = harness.webhooks()
    started = await hooks.post("/twilio/stream-status", stream_status_form(
        call_sid=call_sid, stream_sid=client.stream_sid, stream_event="stream-started"))
    assert started.status == 204
    warning = await hooks.post("/twilio/stream-status", stream_status_form(
        call_sid=call_sid, stream_sid=client.stream_sid, stream_event="stream-error",
        stream_error="Invalid message received (31951)"))
    assert warning.status == 204
    session = harness.services.manager.get(params["callId"])
    assert session.status.value == "in-progress"
    assert [e["code"] for e in session.to_dict()["stream_errors"]] == ["31951"]
    assert counted("twilio.stream_status.stream-started") == 1


@pytest.mark.parametrize("signature", [None, "forged", "wrong-token"])
async def test_unsigned_or_forged_stream_status_is_403_and_records_nothing(
        harness: Harness, signature: str | None, counted: Callable[[str], int]) -> None:
    call_sid, params, _ = await harness.incoming_call()
    form = stream_status_form(call_sid=call_sid, stream_sid=new_sid("MZ"),
                              stream_event="stream-error", stream_error="31920 x")
    url = f"{harness.base_url}/twilio/stream-status"
    if signature is None:
        async with harness.http.post(url, data=form) as resp:
            assert resp.status == 403
    elif signature == "forged":
        assert (await harness.webhooks().post("/twilio/stream-status", form,
                                              signature="x" * 28)).status == 403
    else:
        resp = await harness.webhooks(auth_token="not-the-token").post(
            "/twilio/stream-status", form)
        assert resp.status == 403
    session = harness.services.manager.get(params["callId"])
    assert not session.stream_errors and session.status.value == "ringing"
    assert counted("twilio.stream_status.stream-error") == 0


async def test_stream_status_for_an_unknown_call_is_a_counted_404(
        harness: Harness, counted: Callable[[str], int]) -> None:
    resp = await harness.webhooks().post("/twilio/stream-status", stream_status_form(
        call_sid=new_sid("CA"), stream_sid=new_sid("MZ"), stream_event="stream-error",
        stream_error="31920 x"))
    assert resp.status == 404
    assert counted("twilio.stream_status.rejected.unknown_call") == 1
    missing = await harness.webhooks().post("/twilio/stream-status", {"StreamEvent": "x"})
    assert missing.status == 400
    assert counted("twilio.stream_status.rejected.bad_form") == 1


# -- SharedKey / HMAC-SHA256 signatures ------------------------------------------------------

@pytest.fixture
async def keyed(rest: FakeTwilioRest) -> AsyncIterator[tuple[Harness, SharedKey, SharedKey]]:
    old, new = new_shared_key(), new_shared_key()
    h = await start_harness(rest, start_timeout_s=2, shared_keys=[old, new])
    try:
        yield h, old, new
    finally:
        await h.__aexit__(None, None, None)


async def test_shared_key_signed_voice_and_status_webhooks_are_accepted(
        keyed: tuple[Harness, SharedKey, SharedKey]) -> None:
    harness, old, new = keyed
    call_sid = new_sid("CA")
    resp = await harness.webhooks(shared_key=new).post(
        "/twilio/voice", incoming_call_form(call_sid=call_sid))
    assert resp.status == 200
    params = stream_parameters(await resp.text())
    session = harness.services.manager.get(params["callId"])
    # a rotation: the old key still signs some webhooks
    status = await harness.webhooks(shared_key=old).post("/twilio/status", status_callback_form(
        call_sid=call_sid, call_status="completed", sequence_number=3, direction="inbound"))
    assert status.status == 204
    assert session.status.value == "completed"
    # and a webhook without the settings header is still the Auth Token's
    assert (await harness.incoming_call())[0]


async def test_shared_key_signed_json_webhook_is_accepted(
        keyed: tuple[Harness, SharedKey, SharedKey], rest: FakeTwilioRest) -> None:
    harness, _, key = keyed
    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15557654321"})
    sid = (await resp.json())["call_sid"]
    body = orjson.dumps({"CallSid": sid, "CallStatus": "ringing", "SequenceNumber": "1"})
    signed_url, signature = sign_json_body(key.secret, f"{PUBLIC_URL}/twilio/status", body,
                                           key.algorithm)
    headers = {SIGNATURE_HEADER: signature, SETTINGS_HEADER: key.settings_header,
               "Content-Type": "application/json"}
    ok = await harness.http.post(harness.base_url + signed_url[len(PUBLIC_URL):], data=body,
                                 headers=headers)
    assert ok.status == 204
    assert harness.services.manager.get_by_sid(sid).status.value == "ringing"


@pytest.mark.parametrize(("case", "reason"), [
    ("unknown_key", "unknown_key"),
    ("wrong_secret", "bad_signature"),
    ("auth_token_as_secret", "bad_signature"),
    ("unknown_algorithm", "unknown_algorithm"),
    ("no_key_named", "bad_settings"),
])
async def test_wrong_shared_key_is_a_counted_403(
        keyed: tuple[Harness, SharedKey, SharedKey], rest: FakeTwilioRest,
        case: str, reason: str, counted: Callable[[str], int]) -> None:
    harness, _, key = keyed
    sender: SharedKey = {
        "unknown_key": new_shared_key(),
        "wrong_secret": SharedKey(key.key_id, "not-the-secret"),
        "auth_token_as_secret": SharedKey(key.key_id, rest.auth_token),
        "unknown_algorithm": SharedKey(key.key_id, key.secret, "HMAC_SHA512"),
        "no_key_named": key,
    }[case]
    headers = {SETTINGS_HEADER: "algorithm=HMAC_SHA256"} if case == "no_key_named" else None
    form = incoming_call_form()
    url = f"{PUBLIC_URL}/twilio/voice"
    signature = (twilio_signature(key.secret, url, form, HMAC_SHA256)
                 if case == "unknown_algorithm" else None)
    resp = await harness.webhooks(shared_key=sender).post(
        "/twilio/voice", form, signature=signature, headers=headers)
    assert resp.status == 403
    assert counted(f"twilio.webhook.rejected.{reason}") == 1
    assert harness.services.manager.active_count == 0


# -- the voice webhook never answers Twilio with a 500 ---------------------------------------

class _RegistryBug(CallManager):
    def create_inbound(self, *args: object, **kwargs: object) -> CallSession:
        raise RuntimeError("a bug while registering the call")


class _UnsendableCallId(CallManager):
    def _register(self, session: CallSession) -> None:
        session.call_id = "c" * 1000  # more than a TwiML <Parameter> may carry
        super()._register(session)


def _say_hangup(twiml: str) -> str:
    root = ET.fromstring(twiml)
    assert root.tag == "Response" and [c.tag for c in root] == ["Say", "Hangup"], twiml
    return root[0].text or ""


@pytest.mark.parametrize("manager", [_RegistryBug, _UnsendableCallId])
async def test_voice_webhook_failure_answers_say_hangup_not_500(
        rest: FakeTwilioRest, manager: type[CallManager]) -> None:
    h = await start_harness(rest, manager=manager())
    try:
        before = metrics.get("twilio.webhook.voice.failed")
        resp = await h.webhooks().post("/twilio/voice", incoming_call_form(call_sid=new_sid("CA")))
        assert resp.status == 200 and resp.content_type == "text/xml"
        assert "not available" in _say_hangup(await resp.text())
        assert metrics.get("twilio.webhook.voice.failed") == before + 1
        assert h.services.manager.active_count == 0  # a registered call is failed at once
    finally:
        await h.__aexit__(None, None, None)


class _PrewarmBug:
    """A bridge factory whose pre-warm (a head start on the model socket) fails."""

    bridge: Any = None  # the harness's recording bridge factory

    def __call__(self, session: CallSession, sender: object) -> object:
        return self.bridge(session, sender)

    def prewarm(self, session: CallSession) -> None:
        raise RuntimeError("a bug while pre-warming")


async def test_failed_prewarm_still_connects_the_call(rest: FakeTwilioRest) -> None:
    factory = _PrewarmBug()
    h = Harness(make_config(rest), rest, bridge_factory=factory)
    factory.bridge = h._bridge
    await h.__aenter__()
    try:
        before = metrics.get("bridge.prewarm.failed")
        call_sid, params, _ = await h.incoming_call()  # asserts 200 + <Connect><Stream>
        assert metrics.get("bridge.prewarm.failed") == before + 1
        client = h.media_client(call_sid, params, time_scale=FAST)
        await client.connect()
        bridge = await asyncio.wait_for(h.bridge_ready.get(), 5)
        await asyncio.wait_for(bridge.started.wait(), 5)
    finally:
        await h.__aexit__(None, None, None)
