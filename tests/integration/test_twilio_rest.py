"""TwilioRestClient (official twilio package, async) against the fake Twilio REST on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentic_fast.carriers.twilio.rest import TwilioRestClient
from agentic_fast.core.errors import PeerUnavailableError, TwilioApiError
from tests.fakes.twilio_rest import FakeTwilioRest

TO = "+15557654321"
FROM = "+15551230000"
TWIML = '<Response><Connect><Stream url="wss://agent.example.com/twilio/media-stream"/>' \
        "</Connect></Response>"
STATUS_URL = "https://agent.example.com/twilio/status"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest() as fake:
        yield fake


@pytest.fixture
async def client(fake: FakeTwilioRest) -> AsyncIterator[TwilioRestClient]:
    async with TwilioRestClient(fake.account_sid, fake.auth_token, api_base=fake.base_url,
                                timeout_s=2.0) as client:
        yield client


async def test_create_call_sends_twilio_form_fields(fake: FakeTwilioRest,
                                                     client: TwilioRestClient) -> None:
    sid = await client.create_call(TO, FROM, TWIML, STATUS_URL)
    assert sid.startswith("CA") and len(sid) == 34 and sid in fake.calls
    [req] = fake.requests
    assert req.method == "POST" and req.authorized
    assert req.path == f"/2010-04-01/Accounts/{fake.account_sid}/Calls.json"
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert req.get("To") == TO and req.get("From") == FROM
    assert req.get("Twiml") == TWIML and req.get("Url") is None
    assert req.get("StatusCallback") == STATUS_URL
    # One form field per event, in order (protocols.md 1.9: not a comma list).
    assert req.getall("StatusCallbackEvent") == ["initiated", "ringing", "answered", "completed"]
    call = fake.calls[sid]
    assert call["status"] == "queued" and call["direction"] == "outbound-api"


async def test_create_call_passes_extra_options(fake: FakeTwilioRest,
                                                client: TwilioRestClient) -> None:
    await client.create_call(TO, FROM, TWIML, STATUS_URL, status_callback_events=["completed"],
                             timeout=30, machine_detection="Enable")
    [req] = fake.requests
    assert req.getall("StatusCallbackEvent") == ["completed"]
    assert req.get("Timeout") == "30" and req.get("MachineDetection") == "Enable"


async def test_hangup_and_update_twiml(fake: FakeTwilioRest, client: TwilioRestClient) -> None:
    sid = await client.create_call(TO, FROM, TWIML, STATUS_URL)
    fake.set_status(sid, "in-progress")
    await client.update_twiml(sid, "<Response><Say>bye</Say></Response>")
    await client.hangup(sid)
    update, hangup = fake.requests[1:]
    assert update.path.endswith(f"/Calls/{sid}.json")
    assert update.form == [("Twiml", "<Response><Say>bye</Say></Response>")]
    assert hangup.form == [("Status", "completed")]
    assert fake.calls[sid]["status"] == "completed"


async def test_cancel_ringing_call(fake: FakeTwilioRest, client: TwilioRestClient) -> None:
    sid = await client.create_call(TO, FROM, TWIML, STATUS_URL)
    await client.cancel(sid)
    assert fake.requests[-1].form == [("Status", "canceled")]
    assert fake.calls[sid]["status"] == "canceled"


async def test_bad_credentials(fake: FakeTwilioRest) -> None:
    async with TwilioRestClient(fake.account_sid, "wrong", api_base=fake.base_url) as client:
        with pytest.raises(PeerUnavailableError) as info:
            await client.create_call(TO, FROM, TWIML, STATUS_URL)
    err = info.value
    assert isinstance(err, TwilioApiError)
    assert err.peer == "twilio" and err.code == 20003 and err.status == 401
    assert "Authenticate" in str(err)
    assert not fake.calls


async def test_unknown_call_sid(client: TwilioRestClient) -> None:
    with pytest.raises(TwilioApiError) as info:
        await client.hangup("CA" + "0" * 32)
    assert info.value.code == 20404 and info.value.status == 404


async def test_invalid_to_number(fake: FakeTwilioRest, client: TwilioRestClient) -> None:
    fake.reject_number("+15550000000")
    with pytest.raises(TwilioApiError) as info:
        await client.create_call("+15550000000", FROM, TWIML, STATUS_URL)
    assert info.value.code == 21211 and info.value.status == 400
    assert "+15550000000" in str(info.value)
    with pytest.raises(TwilioApiError) as info:
        await client.create_call("not-a-number", FROM, TWIML, STATUS_URL)
    assert info.value.code == 21211


async def test_twiml_too_long_is_rejected(client: TwilioRestClient) -> None:
    with pytest.raises(TwilioApiError) as info:
        await client.create_call(TO, FROM, "<Response>" + "x" * 4000 + "</Response>", STATUS_URL)
    assert info.value.status == 400


async def test_server_error(fake: FakeTwilioRest, client: TwilioRestClient) -> None:
    fake.fail_next(503)
    with pytest.raises(TwilioApiError) as info:
        await client.create_call(TO, FROM, TWIML, STATUS_URL)
    assert info.value.status == 503
    assert len(fake.requests) == 1  # never retried: a create is not idempotent
    assert await client.create_call(TO, FROM, TWIML, STATUS_URL)  # the next one works


async def test_timeout(fake: FakeTwilioRest) -> None:
    fake.delay_s = 30.0  # released when the fake closes
    async with TwilioRestClient(fake.account_sid, fake.auth_token, api_base=fake.base_url,
                                timeout_s=0.2) as client:
        with pytest.raises(PeerUnavailableError) as info:
            await client.create_call(TO, FROM, TWIML, STATUS_URL)
    assert "timed out" in str(info.value)
    assert info.value.__cause__ is not None


async def test_unreachable_host() -> None:
    async with TwilioRestClient("AC" + "1" * 32, "tok", api_base="http://127.0.0.1:1",
                                timeout_s=2.0) as client:
        with pytest.raises(TwilioApiError) as info:
            await client.hangup("CA" + "0" * 32)
    assert info.value.code is None


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        TwilioRestClient("", "tok")
    with pytest.raises(ValueError):
        TwilioRestClient("AC1", "tok", timeout_s=0)
