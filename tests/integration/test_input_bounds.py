"""Issue 12: no input reaches a 500 or an internal error; what one ``/calls`` answer holds
is bounded. The server on loopback, driven by the fake Twilio (webhooks, media, REST)."""

from __future__ import annotations

import random
from collections.abc import Callable
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest

from agentic_fast.core import metrics
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_webhooks import (
    SIGNATURE_HEADER,
    incoming_call_form,
    new_sid,
    sign_json_body,
    status_callback_form,
    stream_status_form,
    twilio_signature,
)
from tests.integration.harness import PUBLIC_URL, Harness

pytestmark = pytest.mark.asyncio
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def counted() -> Callable[[str], int]:
    """How much a counter grew during the test (counters are process-wide)."""
    before = metrics.snapshot()
    return lambda name: metrics.get(name) - before.get(name, 0)


def _multipart(form: dict[str, str]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in form.items():
        data.add_field(name, value, content_type="text/plain")  # forces multipart
    return data


# -- webhook bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/twilio/voice", "/twilio/status", "/twilio/stream-status"])
@pytest.mark.parametrize("signed", [True, False])
async def test_multipart_webhook_is_415_and_registers_nothing(
        harness: Harness, rest: FakeTwilioRest, counted: Callable[[str], int], path: str,
        signed: bool) -> None:
    form = incoming_call_form()
    headers = {SIGNATURE_HEADER: twilio_signature(rest.auth_token, PUBLIC_URL + path, form)
               } if signed else {}
    resp = await harness.http.post(harness.base_url + path, data=_multipart(form),
                                   headers=headers)
    assert resp.status == 415
    assert "application/x-www-form-urlencoded" in (await resp.json())["error"]
    assert counted("twilio.webhook.rejected.content_type") == 1
    assert counted("twilio.webhook.voice.failed") == 0
    assert harness.services.manager.active_count == 0


async def test_text_body_webhook_is_415(harness: Harness) -> None:
    resp = await harness.http.post(harness.base_url + "/twilio/voice", data=b"CallSid=x",
                                   headers={"Content-Type": "text/plain"})
    assert resp.status == 415


async def test_signed_webhook_with_a_300_character_call_sid_is_a_counted_400(
        harness: Harness, counted: Callable[[str], int]) -> None:
    resp = await harness.webhooks().post(
        "/twilio/voice", incoming_call_form(call_sid="CA" + "a" * 298))
    assert resp.status == 400 and "CallSid" in (await resp.json())["error"]
    assert counted("twilio.webhook.rejected.bad_sid") == 1
    assert counted("twilio.webhook.voice.failed") == 0
    assert harness.services.manager.active_count == 0


async def _outbound(harness: Harness) -> str:
    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15557654321"})
    assert resp.status == 201
    return str((await resp.json())["call_sid"])


@pytest.mark.parametrize(("key", "value"), [
    ("SequenceNumber", "9" * 5000),
    ("CallDuration", "9" * 5000),
    ("Timestamp", "Mon, 01 Jan " + "9" * 5000 + " 00:00:00 +0000"),
    ("SequenceNumber", "9" * 25),
    ("SipResponseCode", "9999"),
])
async def test_status_callback_with_an_out_of_range_number_is_400(
        harness: Harness, key: str, value: str) -> None:
    sid = await _outbound(harness)
    form = status_callback_form(call_sid=sid, call_status="ringing", sequence_number=1)
    form[key] = value
    resp = await harness.webhooks().post("/twilio/status", form)
    assert resp.status == 400
    assert harness.services.manager.get_by_sid(sid).status.value == "initiating"


async def test_stream_status_with_a_bad_stream_sid_is_400(harness: Harness) -> None:
    call_sid, _, _ = await harness.incoming_call()
    form = stream_status_form(call_sid=call_sid, stream_sid=new_sid("MZ"),
                              stream_event="stream-error", stream_error="31920 x")
    form["StreamSid"] = "MZ" + "9" * 400
    resp = await harness.webhooks().post("/twilio/stream-status", form)
    assert resp.status == 400
    assert not harness.services.manager.get_by_sid(call_sid).stream_errors


async def test_json_webhook_nested_or_huge_is_400(harness: Harness, rest: FakeTwilioRest
                                                  ) -> None:
    for body in (b'{"CallSid": {"a": [1]}}', b'{"a":' * 600 + b"1" + b"}" * 600):
        signed_url, signature = sign_json_body(rest.auth_token,
                                               f"{PUBLIC_URL}/twilio/status", body)
        resp = await harness.http.post(
            harness.base_url + signed_url[len(PUBLIC_URL):], data=body,
            headers={SIGNATURE_HEADER: signature, "Content-Type": "application/json"})
        assert resp.status == 400


# -- the /calls API ---------------------------------------------------------------------------


@pytest.mark.parametrize("to", ["+1\u0665\u0665\u0665\u0661\u0662\u0663\u0664\u0665\u0666\u0667",
                                "+1555\uff11234567", "+1555123456\u0967"])
async def test_number_in_non_ascii_digits_is_refused(
        harness: Harness, rest: FakeTwilioRest, to: str) -> None:
    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": to})
    assert resp.status == 400 and "ASCII" in (await resp.json())["error"]
    assert rest.requests == [] and harness.services.manager.active_count == 0


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [9, 255, 1000])
async def test_deeply_nested_metadata_is_refused_and_listing_stays_up(
        harness: Harness, depth: int) -> None:
    body = b'{"to": "+15557654321", "metadata": ' + _nested(depth) + b"}"
    resp = await harness.http.post(f"{harness.base_url}/calls", data=body)
    assert resp.status == 400 and "nested" in (await resp.json())["error"]
    assert harness.services.manager.active_count == 0
    assert (await harness.http.get(f"{harness.base_url}/calls")).status == 200


async def test_metadata_nested_within_the_bound_is_kept(harness: Harness) -> None:
    body = b'{"to": "+15557654321", "metadata": ' + _nested(8) + b"}"
    resp = await harness.http.post(f"{harness.base_url}/calls", data=body)
    assert resp.status == 201
    call = await harness.http.get(f"{harness.base_url}/calls/{(await resp.json())['call_id']}")
    assert call.status == 200 and (await call.json())["metadata"] == orjson.loads(_nested(8))


async def test_large_metadata_or_prompt_is_refused(harness: Harness) -> None:
    big = {"to": "+15557654321", "metadata": {f"k{i}": "v" * 100 for i in range(100)}}
    resp = await harness.http.post(f"{harness.base_url}/calls", json=big)
    assert resp.status == 400 and "bytes" in (await resp.json())["error"]
    resp = await harness.http.post(f"{harness.base_url}/calls",
                                   json={"to": "+15557654321", "prompt": "p" * 20_000})
    assert resp.status == 400 and "prompt" in (await resp.json())["error"]


async def test_list_calls_is_paged_and_has_no_transcripts(harness: Harness) -> None:
    ids = []
    for _ in range(5):
        resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15557654321"})
        ids.append((await resp.json())["call_id"])
    for call_id in ids:
        harness.services.manager.get(call_id).add_transcript("caller", "x" * 3000)
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        resp = await harness.http.get(f"{harness.base_url}/calls?limit=2&cursor={cursor}")
        assert resp.status == 200
        doc = await resp.json()
        assert doc["active_count"] == 5 and len(doc["active"]) <= 2
        assert all("transcript" not in c and c["transcript_turns"] == 1 for c in doc["active"])
        seen += [c["call_id"] for c in doc["active"]]
        pages += 1
        if doc["next_cursor"] is None:
            break
        cursor = doc["next_cursor"]
    assert seen == ids and pages == 3
    default = await (await harness.http.get(f"{harness.base_url}/calls")).json()
    assert len(default["active"]) == 5 and default["next_cursor"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=-1", "limit=abc",
                                   "limit=\u0661", "cursor=x", "cursor=" + "9" * 5000])
async def test_list_calls_bad_paging_is_400(harness: Harness, query: str) -> None:
    resp = await harness.http.get(f"{harness.base_url}/calls?{query}")
    assert resp.status == 400


async def test_get_call_bounds_the_transcript_and_says_it_was_cut(harness: Harness) -> None:
    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15557654321"})
    call_id = (await resp.json())["call_id"]
    session = harness.services.manager.get(call_id)
    for i in range(150):
        session.add_transcript("caller", f"turn {i}")
    doc = await (await harness.http.get(f"{harness.base_url}/calls/{call_id}")).json()
    assert len(doc["transcript"]) == 100 and doc["transcript"][-1]["text"] == "turn 149"
    assert doc["transcript_total"] == 150 and doc["transcript_truncated"] is True
    doc = await (await harness.http.get(
        f"{harness.base_url}/calls/{call_id}?transcript_limit=5")).json()
    assert [t["text"] for t in doc["transcript"]] == [f"turn {i}" for i in range(145, 150)]
    bad = await harness.http.get(f"{harness.base_url}/calls/{call_id}?transcript_limit=501")
    assert bad.status == 400


# -- the media stream parser ------------------------------------------------------------------


async def test_huge_number_before_start_is_a_counted_rejection_not_an_internal_error(
        harness: Harness, counted: Callable[[str], int]) -> None:
    client = harness.media_client(new_sid("CA"), {})
    await client.connect(send_start=False)
    await client.send_connected()
    start = {"event": "start", "sequenceNumber": "9" * 5000, "streamSid": client.stream_sid,
             "start": {"accountSid": client.account_sid, "streamSid": client.stream_sid,
                       "callSid": client.call_sid, "tracks": ["inbound"],
                       "customParameters": {}, "mediaFormat": {
                           "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    await client.send_raw(orjson.dumps(start).decode())
    await client.wait_closed()
    assert client.close_code == 1008
    assert counted("twilio.media.rejected_before_start.bad_value") == 1
    assert counted("twilio.media.internal_error") == 0


async def test_huge_number_during_the_stream_is_counted_and_the_call_goes_on(
        harness: Harness, counted: Callable[[str], int]) -> None:
    call_sid, params, _ = await harness.incoming_call()
    client = harness.media_client(call_sid, params, time_scale=10.0)
    await client.connect()
    bridge = await harness.bridge_ready.get()
    await client.send_raw(orjson.dumps({
        "event": "media", "sequenceNumber": "9" * 5000, "streamSid": client.stream_sid,
        "media": {"track": "inbound", "chunk": "1", "timestamp": "1", "payload": "AAAA"}}
    ).decode())
    seen = bridge.media_count
    await bridge.wait_until(lambda: bridge.media_count > seen + 3)
    assert counted("twilio.media.rejected.bad_value") == 1
    assert counted("twilio.media.rejected.internal_error") == 0
    assert not client.closed.is_set()


# -- fuzz: no input reaches a 5xx -----------------------------------------------------------

_NASTY = ["", "9" * 5000, "9" * 25, "\u0661\u0662\u0663",
          "+1\u0665\u0665\u0665\u0661\u0662\u0663\u0664", "CA" + "a" * 298, "x" * 5000,
          "\x00", "\ud7ff\u202e", "-1", "1e309", "NaN",
          "Mon, 01 Jan 99999 00:00:00 +0000", "Mon, 01 Jan 2024 00:00:00 +99999999999",
          "%ff", "ringing", "completed", "stream-error", "31920 bad"]
_FIELDS = ["CallSid", "AccountSid", "CallStatus", "From", "To", "SequenceNumber", "Timestamp",
           "CallDuration", "SipResponseCode", "StreamSid", "StreamEvent", "StreamError",
           "AnsweredBy", "Direction", "N" * 80]
_TYPES = [FORM, FORM + "; charset=latin-1", "application/json", "multipart/form-data",
          "text/plain", "", "application/x-www-form-urlencoded; charset=utf-8"]


def _json_values(rng: random.Random) -> object:
    return rng.choice([None, 5, -1, 1e300, True, [], {}, "x" * 20_000, "+15557654321",
                       "+1\u0665\u0665\u0665\u0661\u0662\u0663\u0664", {"a": [1, 2]}])


def _fuzz_webhook(rng: random.Random, harness: Harness, rest: FakeTwilioRest
                  ) -> tuple[str, bytes, dict[str, str]]:
    path = rng.choice(["/twilio/voice", "/twilio/status", "/twilio/stream-status"])
    if path == "/twilio/voice":
        form = incoming_call_form()
    elif path == "/twilio/status":
        form = status_callback_form(call_sid=new_sid("CA"), call_status="ringing",
                                    sequence_number=rng.randrange(5))
    else:
        form = stream_status_form(call_sid=new_sid("CA"), stream_sid=new_sid("MZ"),
                                  stream_event="stream-error", stream_error="31920 x")
    for _ in range(rng.randrange(1, 4)):
        form[rng.choice(_FIELDS)] = rng.choice(_NASTY)
    content_type = rng.choice(_TYPES)
    headers = {"Content-Type": content_type} if content_type else {}
    if content_type.startswith("application/json"):
        body = orjson.dumps(form if rng.random() < 0.7 else
                            {k: _json_values(rng) for k in form})
        signed_url, sig = sign_json_body(rest.auth_token, PUBLIC_URL + path, body)
        path = signed_url[len(PUBLIC_URL):]
        headers[SIGNATURE_HEADER] = sig
        return path, body, headers
    body = urlencode(form).encode()
    if rng.random() < 0.15:  # bytes that are not UTF-8, or garbage
        body = rng.choice([body + b"&X=\xff\xfe", rng.randbytes(rng.randrange(1, 300)),
                           b"&" * 500, b"a=" + b"%" * 300])
    if rng.random() < 0.8:  # mostly signed: get past the signature to the field checks
        headers[SIGNATURE_HEADER] = twilio_signature(rest.auth_token, PUBLIC_URL + path, form)
    return path, body, headers


def _fuzz_api(rng: random.Random, call_ids: list[str]) -> tuple[str, str, bytes | None]:
    kind = rng.randrange(4)
    if kind == 0:
        doc = {"to": "+15557654321" if rng.random() < 0.5 else rng.choice(_NASTY),
               "prompt": "Hi" if rng.random() < 0.5 else _json_values(rng),
               "metadata": {"crm": 1} if rng.random() < 0.5 else _json_values(rng)}
        body = orjson.dumps({k: v for k, v in doc.items() if rng.random() < 0.8})
        if rng.random() < 0.2:
            depth = rng.choice([9, 254, 300, 1000, 1100])
            body = b'{"to": "+15557654321", "metadata": ' + _nested(depth) + b"}"
        if rng.random() < 0.1:
            body = rng.randbytes(rng.randrange(1, 200))
        return "POST", "/calls", body
    if kind == 1:
        query = "&".join(f"{rng.choice(['limit', 'cursor', 'x'])}={rng.choice(_NASTY[:6])}"
                         for _ in range(rng.randrange(3)))
        return "GET", f"/calls?{query}", None
    call_id = rng.choice([*call_ids, "nope", "9" * 300]) if call_ids else "nope"
    if kind == 2:
        query = rng.choice(["", "?transcript_limit=3", "?transcript_limit=" + "9" * 400,
                            "?transcript_limit=\u0661"])
        return "GET", f"/calls/{call_id}{query}", None
    return "POST", f"/calls/{call_id}/hangup", None


async def test_fuzz_webhooks_and_api_never_answer_5xx(
        harness: Harness, rest: FakeTwilioRest, counted: Callable[[str], int]) -> None:
    rng = random.Random(12)  # seeded and bounded: the same 400 requests every run
    statuses: dict[int, int] = {}
    call_ids: list[str] = []
    for i in range(400):
        if i % 2 == 0:
            path, body, headers = _fuzz_webhook(rng, harness, rest)
            method = "POST"
        else:
            method, path, body = _fuzz_api(rng, call_ids)
            headers = {}
        async with harness.http.request(method, harness.base_url + path, data=body,
                                        headers=headers) as resp:
            text = await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            assert resp.status < 500 or (resp.status in (502, 503) and path.startswith(
                "/calls")), (method, path, body[:200] if body else None, resp.status, text)
            if resp.status == 201:
                call_ids.append(orjson.loads(text)["call_id"])
    listing = await harness.http.get(f"{harness.base_url}/calls?limit=200")
    assert listing.status == 200
    for call_id in call_ids:
        assert (await harness.http.get(f"{harness.base_url}/calls/{call_id}")).status == 200
    assert counted("twilio.webhook.voice.failed") == 0
    assert len(call_ids) > 5 and statuses.get(204, 0) > 0, statuses  # got past the checks
    assert sum(statuses.get(s, 0) for s in (400, 415)) > 100, statuses
