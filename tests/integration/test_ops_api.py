"""The operator API on a running server: the live event stream (SSE), the call history,
the dashboard's token cookie, and the ``agentic-fast calls`` / ``call --wait`` commands
against it (run in a thread, as a separate client process would)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentic_fast.cli.commands import main
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_webhooks import status_callback_form
from tests.integration.harness import FROM_NUMBER, Harness, start_harness

pytestmark = pytest.mark.asyncio
TOKEN = "ops-token-0123456789"
CALLER = "+15551230000"


@pytest.fixture
async def harness(rest: FakeTwilioRest) -> AsyncIterator[Harness]:
    h = await start_harness(rest, start_timeout_s=2, api_token=TOKEN)
    try:
        yield h
    finally:
        await h.__aexit__(None, None, None)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


class Events:
    """A reader of ``GET /calls/events`` (parses the SSE frames as a browser would)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.resp: Any = None

    async def __aenter__(self) -> Events:
        assert self.harness.http is not None
        self.resp = await self.harness.http.get(f"{self.harness.base_url}/calls/events",
                                                headers=_auth())
        assert self.resp.status == 200
        assert self.resp.headers["Content-Type"].startswith("text/event-stream")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.resp.close()

    async def next(self) -> dict[str, Any]:
        fields: dict[str, str] = {}
        async with asyncio.timeout(5):
            while True:
                line = (await self.resp.content.readline()).decode().rstrip("\n")
                if not line:
                    if "data" in fields:
                        event = orjson.loads(fields["data"])
                        assert fields["event"] == event["type"]
                        assert int(fields["id"]) == event["id"]
                        return event
                    continue
                if line.startswith(":"):
                    continue
                key, _, value = line.partition(": ")
                fields[key] = value

    async def until(self, type_: str, **data: Any) -> dict[str, Any]:
        while True:
            event = await self.next()
            if event["type"] == type_ and all(event["data"].get(k) == v
                                              for k, v in data.items()):
                return event


async def _live_call(harness: Harness, rest: FakeTwilioRest) -> tuple[str, str, Any]:
    call_sid, params, _ = await harness.incoming_call(From=CALLER)
    rest.add_incoming(call_sid, CALLER, FROM_NUMBER)
    client = harness.media_client(call_sid, params)
    await client.connect()
    bridge = await asyncio.wait_for(harness.bridge_ready.get(), 5)
    await asyncio.wait_for(bridge.started.wait(), 5)
    return params["callId"], call_sid, client


async def test_event_stream_follows_a_call_and_an_api_hangup(
        harness: Harness, rest: FakeTwilioRest) -> None:
    async with Events(harness) as events:
        snapshot = await events.next()
        assert snapshot["type"] == "calls.snapshot" and snapshot["data"]["active"] == []
        assert snapshot["data"]["carrier"] == "twilio"
        call_id, _, _client = await _live_call(harness, rest)
        created = await events.until("call.created")
        assert created["call_id"] == call_id and created["data"]["from"] == CALLER
        await events.until("call.status", status="in-progress")
        harness.services.manager.get(call_id).add_transcript("user", "hello there")
        said = await events.until("call.transcript")
        assert said["data"]["text"] == "hello there"

        assert harness.http is not None
        resp = await harness.http.post(f"{harness.base_url}/calls/{call_id}/hangup",
                                       headers=_auth())
        assert resp.status == 202, await resp.text()
        ended = await events.until("call.status", status="completed")
        assert ended["data"]["reason"] == "hangup-api"
    record = harness.services.manager.get(call_id)
    assert record.reason == "hangup-api"  # the record says the API ended it


async def test_history_lists_ended_and_active_calls_with_filters(
        harness: Harness, rest: FakeTwilioRest) -> None:
    first, _, _c1 = await _live_call(harness, rest)
    harness.services.manager.complete(harness.services.manager.get(first), reason="caller")
    second, _, _c2 = await _live_call(harness, rest)
    assert harness.http is not None
    url = f"{harness.base_url}/calls/history"
    doc = await (await harness.http.get(url, headers=_auth())).json()
    assert [c["call_id"] for c in doc["calls"]] == [second, first]
    done = await (await harness.http.get(url + "?status=completed", headers=_auth())).json()
    assert [c["call_id"] for c in done["calls"]] == [first]
    bad = await harness.http.get(url + "?status=nope", headers=_auth())
    assert bad.status == 400 and "'status' must be one of" in (await bad.json())["error"]
    assert (await harness.http.get(url)).status == 401  # behind the token like /calls


async def test_dashboard_token_becomes_an_httponly_strict_cookie(harness: Harness) -> None:
    assert harness.http is not None
    base = harness.base_url
    assert (await harness.http.get(f"{base}/dashboard")).status == 401
    assert (await harness.http.get(f"{base}/dashboard?token=wrong")).status == 401
    resp = await harness.http.get(f"{base}/dashboard?token={TOKEN}", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = resp.cookies["agentic_fast_dashboard"].value
    jar = {"Cookie": f"agentic_fast_dashboard={value}"}
    page = await harness.http.get(f"{base}/dashboard", headers=jar)
    assert page.status == 200 and page.content_type == "text/html"
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    for name in ("dashboard.js", "dashboard.css"):
        static = await harness.http.get(f"{base}/dashboard/static/{name}", headers=jar)
        assert static.status == 200
    assert (await harness.http.get(f"{base}/calls", headers=jar)).status == 200
    # the cookie does not let another site's page change anything
    cross = await harness.http.post(f"{base}/calls/x/hangup",
                                    headers={**jar, "Origin": "https://evil.example"})
    assert cross.status == 401
    assert (await harness.http.get(f"{base}/dashboard", headers=_auth())).status == 200


def _config(tmp_path: Path, harness: Harness, token: str = TOKEN) -> list[str]:
    path = tmp_path / "cli.yaml"
    path.write_text(f"server:\n  api_token: {token}\n")
    return ["--config", str(path), "--server", harness.base_url]


async def test_calls_commands_against_a_running_server(
        harness: Harness, rest: FakeTwilioRest, tmp_path: Path, capsys) -> None:
    call_id, _, _client = await _live_call(harness, rest)
    harness.services.manager.get(call_id).add_transcript("user", "what time is it")
    cfg = _config(tmp_path, harness)

    assert await asyncio.to_thread(main, ["calls", "list", *cfg], {}) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CALL ID") and call_id in out[1] and "in-progress" in out[1]

    assert await asyncio.to_thread(main, ["calls", "list", "--json", *cfg], {}) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [c["call_id"] for c in listed] == [call_id]

    assert await asyncio.to_thread(main, ["calls", "show", call_id, *cfg], {}) == 0
    shown = capsys.readouterr().out
    assert "caller: what time is it" in shown and "status     in-progress" in shown

    assert await asyncio.to_thread(main, ["calls", "hangup", call_id, *cfg], {}) == 0
    assert f"call {call_id} hung up (status completed)" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["calls", "list", "--status", "completed", *cfg],
                                   {}) == 0
    assert "hangup-api" in capsys.readouterr().out

    # errors: one line each, no repr
    assert await asyncio.to_thread(main, ["calls", "show", "nope", *cfg], {}) == 1
    assert capsys.readouterr().err.startswith("error: 404 unknown call")
    assert await asyncio.to_thread(main, ["calls", "hangup", call_id, *cfg], {}) == 1
    assert capsys.readouterr().err.startswith("error: 409 call already ended")
    bad = _config(tmp_path, harness, token="wrong-token")
    assert await asyncio.to_thread(main, ["calls", "list", *bad], {}) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 401 unauthorized: the server refused the API token")
    assert err.count("\n") == 1


async def test_call_wait_follows_the_statuses_and_prints_the_transcript(
        harness: Harness, rest: FakeTwilioRest, tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path, harness)
    waiting = asyncio.ensure_future(asyncio.to_thread(
        main, ["call", "--to", "+15557654321", "--wait", *cfg], {}))
    created = await rest.wait_request(lambda r: r.method == "POST" and r.path.endswith(
        "/Calls.json"))
    assert created.authorized
    sid = next(iter(rest.calls))
    manager = harness.services.manager
    hooks = harness.webhooks()
    for seq, status in enumerate(["ringing", "in-progress"]):
        r = await hooks.post("/twilio/status", status_callback_form(
            call_sid=sid, call_status=status, sequence_number=seq))
        assert r.status == 204
    session = manager.get_by_sid(sid)
    session.add_transcript("assistant", "Hello, this is your assistant.")
    r = await hooks.post("/twilio/status", status_callback_form(
        call_sid=sid, call_status="completed", sequence_number=3, call_duration=4))
    assert r.status == 204
    assert await asyncio.wait_for(waiting, 10) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"call {session.call_id} placed")
    statuses = [line.split()[-1] for line in lines[1:] if line.startswith("  ")
                and line.split()[-1] in ("ringing", "in-progress", "completed")]
    assert statuses == ["ringing", "in-progress", "completed"]
    assert "agent: Hello, this is your assistant." in out
    assert lines[-1].startswith(f"call {session.call_id} completed")
