"""The fake Telnyx itself, driven by the official ``telnyx`` SDK (the wire it must accept)
and by raw HTTP (what it must reject), with a bare loopback app standing in for ours:
an aiohttp webhook receiver that verifies every signature with the public key, and a
WebSocket server for the media stream."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import telnyx
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from websockets.asyncio.server import ServerConnection, serve

from tests.fakes.telnyx_rest import FakeTelnyx
from tests.fakes.telnyx_webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER

FROM = "+15551230000"
TO = "+15557654321"
STATE = base64.b64encode(b'{"token":"t0k"}').decode()


@dataclass
class App:
    """Our side: receives webhooks (checked with the account public key) and media."""

    public_key_b64: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    inbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    media: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    sockets: asyncio.Queue[ServerConnection] = field(default_factory=asyncio.Queue)
    webhook_url: str = ""
    stream_url: str = ""

    async def webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        ts, sig = request.headers[TIMESTAMP_HEADER], request.headers[SIGNATURE_HEADER]
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(self.public_key_b64))
        try:
            key.verify(base64.b64decode(sig), f"{ts}|{raw.decode()}".encode())
        except InvalidSignature:
            self.bad_signatures += 1
            return web.Response(status=403)
        event = json.loads(raw)
        self.events.append(event)
        await self.inbox.put(event)
        return web.Response(text="ok")

    async def ws_handler(self, ws: ServerConnection) -> None:
        await self.sockets.put(ws)
        async for message in ws:
            await self.media.put(json.loads(message))

    async def next_event(self, event_type: str) -> dict[str, Any]:
        while True:
            event = await self.inbox.get()
            if event["data"]["event_type"] == event_type:
                return event

    async def next_frame(self, event: str) -> dict[str, Any]:
        while True:
            msg = await self.media.get()
            if msg["event"] == event:
                return msg

    def types(self) -> list[str]:
        return [e["data"]["event_type"] for e in self.events]


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = App()
    web_app = web.Application()
    web_app.router.add_post("/telnyx/webhook", app.webhook)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    app.webhook_url = f"http://127.0.0.1:{port}/telnyx/webhook"
    async with serve(app.ws_handler, "127.0.0.1", 0) as ws_server:
        ws_port = ws_server.sockets[0].getsockname()[1]
        app.stream_url = f"ws://127.0.0.1:{ws_port}/telnyx/media-stream"
        yield app
    await runner.cleanup()


@pytest.fixture
async def fake(app: App) -> AsyncIterator[FakeTelnyx]:
    async with FakeTelnyx(webhook_url=app.webhook_url, media_time_scale=4.0) as fake:
        app.public_key_b64 = fake.public_key_b64
        yield fake


@pytest.fixture
async def sdk(fake: FakeTelnyx) -> AsyncIterator[telnyx.AsyncTelnyx]:
    async with telnyx.AsyncTelnyx(api_key=fake.api_key, base_url=fake.base_url,
                                  max_retries=0) as client:
        yield client


@pytest.fixture
async def http(fake: FakeTelnyx) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with aiohttp.ClientSession(base_url=fake.base_url + "/", headers=headers) as s:
        yield s


async def post(http: aiohttp.ClientSession, path: str, body: object,
               **kw: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(path, json=body, **kw) as resp:
        return resp.status, await resp.json()


def dial_body(fake: FakeTelnyx, **extra: Any) -> dict[str, Any]:
    return {"connection_id": fake.connection_id, "from": FROM, "to": TO, **extra}


# --------------------------------------------------------------------------- rejections


async def test_bad_api_key_is_401(fake: FakeTelnyx, http: aiohttp.ClientSession) -> None:
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {fake.api_key}"}):
        status, body = await post(http, "calls", dial_body(fake), headers=headers)
        assert status == 401
        assert body["errors"][0]["code"] == "10009"
        assert body["errors"][0]["title"] == "Authentication failed"
    assert fake.calls == {} and not any(r.authorized for r in fake.requests)


@pytest.mark.parametrize(("change", "status", "code", "pointer"), [
    ({"connection_id": None}, 422, "10004", "/connection_id"),
    ({"to": None}, 422, "10004", "/to"),
    ({"stream_track": "inbound"}, 422, "10015", "/stream_track"),
    ({"stream_bidirectional_mode": "RTP"}, 422, "10015", "/stream_bidirectional_mode"),
    ({"stream_bidirectional_codec": "pcmu"}, 422, "10015", "/stream_bidirectional_codec"),
    ({"stream_bidirectional_sampling_rate": "16000"}, 422, "10015",
     "/stream_bidirectional_sampling_rate"),
    ({"timeout_secs": "30"}, 422, "10015", "/timeout_secs"),
    ({"from": "5551230000"}, 422, "10016", "/from"),
    ({"connection_id": "999"}, 422, "10015", "/connection_id"),
    ({"client_state": "not base64!"}, 422, "90053", "/client_state"),
    ({"stream_url": "https://example.com/media"}, 422, "10003", "/stream_url"),
])
async def test_dial_rejects_what_telnyx_rejects(fake: FakeTelnyx, http: aiohttp.ClientSession,
                                                change: dict[str, Any], status: int,
                                                code: str, pointer: str) -> None:
    body = {k: v for k, v in {**dial_body(fake), **change}.items() if v is not None}
    got, answer = await post(http, "calls", body)
    assert got == status
    [err] = answer["errors"]
    assert err["code"] == code and err["source"] == {"pointer": pointer}
    assert err["title"] and err["detail"]
    assert fake.calls == {}


async def test_non_json_body_is_400(fake: FakeTelnyx, http: aiohttp.ClientSession) -> None:
    async with http.post("calls", data=b"{nope", headers={"Content-Type":
                                                          "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["code"] == "10015"


async def test_unknown_call_and_action_are_404(fake: FakeTelnyx,
                                               http: aiohttp.ClientSession) -> None:
    status, body = await post(http, "calls/v3:nope/actions/hangup", {})
    assert status == 404 and body["errors"][0]["code"] == "10005"
    status, _ = await post(http, "calls", dial_body(fake))
    call_id = next(iter(fake.calls))
    status, body = await post(http, f"calls/{call_id}/actions/teleport", {})
    assert status == 404 and body["errors"][0]["code"] == "10005"


# --------------------------------------------------------------------------- outbound


async def test_dial_with_l16_stream_end_to_end(fake: FakeTelnyx, app: App,
                                               sdk: telnyx.AsyncTelnyx) -> None:
    async with asyncio.timeout(10):
        dialed = await sdk.calls.dial(
            connection_id=fake.connection_id, from_=FROM, to=TO, client_state=STATE,
            stream_url=app.stream_url, stream_track="inbound_track", stream_codec="L16",
            stream_bidirectional_mode="rtp", stream_bidirectional_codec="L16",
            stream_bidirectional_sampling_rate=16000, stream_auth_token="s3cret")
        assert dialed.data is not None
        call_id = dialed.data.call_control_id
        assert call_id.startswith("v3:") and dialed.data.is_alive
        call = fake.calls[call_id]
        [req] = fake.requests
        assert req.action == "dial" and req.unknown_params == []

        ws = await app.sockets.get()
        assert ws.request is not None
        assert ws.request.headers["x-telnyx-streaming-auth-token"] == "s3cret"
        connected = await app.next_frame("connected")
        assert connected["version"] == "1.0.0"
        start = await app.next_frame("start")
        assert start["start"]["media_format"] == {"encoding": "L16", "sample_rate": 16000,
                                                  "channels": 1}
        assert start["start"]["call_control_id"] == call_id
        assert start["start"]["client_state"] == STATE
        inbound = await app.next_frame("media")
        assert len(base64.b64decode(inbound["media"]["payload"])) == 640

        await ws.send(json.dumps({"event": "media", "media": {
            "payload": base64.b64encode(bytes(640 * 2)).decode()}}))
        await ws.send(json.dumps({"event": "mark", "mark": {"name": "said"}}))
        assert (await app.next_frame("mark"))["mark"]["name"] == "said"
        await call.wait_event("streaming.started")

        await sdk.calls.actions.hangup(call_id)
        assert (await app.next_frame("stop"))["stop"]["call_control_id"] == call_id
        hangup = await app.next_event("call.hangup")
        assert hangup["data"]["payload"]["hangup_cause"] == "normal_clearing"
        assert hangup["data"]["payload"]["client_state"] == STATE
        assert app.types() == ["call.initiated", "call.answered", "streaming.started",
                               "streaming.stopped", "call.hangup"]
        initiated = app.events[0]["data"]
        assert initiated["record_type"] == "event"
        assert initiated["payload"]["direction"] == "outgoing"
        assert app.events[0]["meta"] == {"attempt": 1, "delivered_to": app.webhook_url}
        await call.wait_hangup()
        assert app.bad_signatures == 0 and all(d.ok for d in fake.webhooks.deliveries)
        assert call.media is not None
        call.media.assert_no_violations()

        with pytest.raises(telnyx.UnprocessableEntityError) as exc:
            await sdk.calls.actions.hangup(call_id)
        assert exc.value.body["errors"][0]["code"] == "90018"  # type: ignore[index]


async def test_busy_callee(fake: FakeTelnyx, app: App, sdk: telnyx.AsyncTelnyx) -> None:
    fake.script_outcome(TO, "busy")
    async with asyncio.timeout(10):
        await sdk.calls.dial(connection_id=fake.connection_id, from_=FROM, to=TO,
                             stream_url=app.stream_url)
        hangup = await app.next_event("call.hangup")
    assert hangup["data"]["payload"]["hangup_cause"] == "user_busy"
    assert app.types() == ["call.initiated", "call.hangup"] and app.sockets.empty()


async def test_duplicate_command_id_is_ignored(fake: FakeTelnyx,
                                               http: aiohttp.ClientSession) -> None:
    fake.script_outcome(TO, "hold")
    body = dial_body(fake, command_id="c-1")
    _, first = await post(http, "calls", body)
    _, second = await post(http, "calls", body)
    assert first["data"]["call_control_id"] == second["data"]["call_control_id"]
    assert len(fake.calls) == 1


# --------------------------------------------------------------------------- inbound


async def test_incoming_call_answered_with_pcmu_stream(fake: FakeTelnyx, app: App,
                                                       sdk: telnyx.AsyncTelnyx) -> None:
    async with asyncio.timeout(10):
        call = await fake.incoming_call(FROM, TO)
        initiated = await app.next_event("call.initiated")
        payload = initiated["data"]["payload"]
        assert payload["direction"] == "incoming" and payload["from"] == FROM
        assert payload["call_control_id"] == call.call_control_id

        await sdk.calls.actions.answer(call.call_control_id, client_state=STATE,
                                       stream_url=app.stream_url,
                                       stream_bidirectional_mode="rtp",
                                       stream_bidirectional_codec="PCMU")
        await call.wait_answered()
        media = await call.wait_media()
        assert media.inbound.encoding == "PCMU" and media.outbound.frame_bytes == 160
        ws = await app.sockets.get()
        start = await app.next_frame("start")
        assert start["start"]["client_state"] == STATE

        # record and transfer are validated against the SDK's params
        with pytest.raises(telnyx.UnprocessableEntityError):
            await fake_post_record_without_channels(sdk, call.call_control_id)
        await sdk.calls.actions.start_recording(call.call_control_id, channels="single",
                                                format="wav")
        assert call.recordings[0]["channels"] == "single"
        with pytest.raises(telnyx.UnprocessableEntityError):
            await sdk.calls.actions.answer(call.call_control_id)  # already answered

        await ws.close()  # our server drops the stream: the call goes on
        await call.wait_event("streaming.stopped")
        assert call.is_alive

        await fake.caller_hangup(call.call_control_id)
        hangup = await app.next_event("call.hangup")
        assert hangup["data"]["payload"]["hangup_source"] == "caller"
        assert app.types() == ["call.initiated", "call.answered", "streaming.started",
                               "streaming.stopped", "call.hangup", "call.recording.saved"]


async def fake_post_record_without_channels(sdk: telnyx.AsyncTelnyx, call_id: str) -> None:
    """``record_start`` without its required ``channels`` (bypassing the SDK's typing)."""
    await sdk.post(f"/calls/{call_id}/actions/record_start", body={"format": "wav"},
                   cast_to=object)


async def test_streaming_start_and_stop(fake: FakeTelnyx, app: App,
                                        sdk: telnyx.AsyncTelnyx) -> None:
    async with asyncio.timeout(10):
        call = await fake.incoming_call(FROM, TO)
        with pytest.raises(telnyx.UnprocessableEntityError):  # not answered yet
            await sdk.calls.actions.start_streaming(call.call_control_id,
                                                    stream_url=app.stream_url)
        await sdk.calls.actions.answer(call.call_control_id)
        await call.wait_answered()
        assert app.sockets.empty()
        await sdk.calls.actions.start_streaming(call.call_control_id,
                                                stream_url=app.stream_url,
                                                stream_bidirectional_mode="rtp",
                                                stream_bidirectional_codec="PCMU")
        media = await call.wait_media()
        await app.next_frame("start")
        await sdk.calls.actions.stop_streaming(call.call_control_id, stream_id=media.stream_id)
        await app.next_frame("stop")
        await call.wait_event("streaming.stopped")
        await media.wait_closed()
        await sdk.calls.actions.transfer(call.call_control_id, to="+15550001111")
        assert call.transfers == [{"to": "+15550001111"}]


async def test_refused_stream_sends_streaming_failed(fake: FakeTelnyx, app: App,
                                                     sdk: telnyx.AsyncTelnyx) -> None:
    async with asyncio.timeout(10):
        await sdk.calls.dial(connection_id=fake.connection_id, from_=FROM, to=TO,
                             stream_url="ws://127.0.0.1:9/nothing-listens")
        failed = await app.next_event("streaming.failed")
    assert failed["data"]["payload"]["failure_reason"]
    assert app.types() == ["call.initiated", "call.answered", "streaming.failed"]


async def test_speak_only_on_an_answered_call_then_its_webhooks(
        fake: FakeTelnyx, app: App, sdk: telnyx.AsyncTelnyx) -> None:
    async with asyncio.timeout(10):
        call = await fake.incoming_call(FROM, TO)
        with pytest.raises(telnyx.UnprocessableEntityError):  # not answered yet
            await sdk.calls.actions.speak(call.call_control_id, payload="Hi.",
                                          voice="AWS.Polly.Joanna-Neural")
        await sdk.calls.actions.answer(call.call_control_id)
        await call.wait_answered()
        with pytest.raises(telnyx.UnprocessableEntityError):  # voice is required
            await sdk.post(f"/calls/{call.call_control_id}/actions/speak",
                           body={"payload": "Hi."}, cast_to=object)
        with pytest.raises(telnyx.UnprocessableEntityError):  # no such provider
            await sdk.calls.actions.speak(call.call_control_id, payload="Hi.",
                                          voice="Robot.Bender")
        with pytest.raises(telnyx.UnprocessableEntityError):  # not in the SDK's enum
            await sdk.calls.actions.speak(call.call_control_id, payload="Hi.",
                                          voice="female", language="xx-XX")  # type: ignore[arg-type]
        assert call.client_state is None  # refused commands changed nothing
        await sdk.calls.actions.speak(call.call_control_id, payload="Bye now.",
                                      voice="female", client_state=STATE)
        assert [s["payload"] for s in call.spoken] == ["Bye now."]
        started = await app.next_event("call.speak.started")
        ended = await app.next_event("call.speak.ended")
        assert started["data"]["payload"]["client_state"] == STATE
        assert ended["data"]["payload"]["status"] == "completed"
        assert ended["data"]["payload"]["call_control_id"] == call.call_control_id
        await sdk.calls.actions.hangup(call.call_control_id)
        await call.wait_hangup()
        with pytest.raises(telnyx.UnprocessableEntityError):  # the call has ended
            await sdk.calls.actions.speak(call.call_control_id, payload="Hi.",
                                          voice="female")
