"""The call store wired into the server: records through a restart, two instances sharing
one real Redis (webhook on one, stream on the other), a dead owner's calls reclaimed, a
store down at call start (polite refusal) and Redis killed mid-call (the call goes on; the
record is complete once Redis is back)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentic_fast.core import metrics
from agentic_fast.core.instance import set_instance_id
from agentic_fast.server.desk import STORE_REFUSAL_TEXT
from agentic_fast.store import StoreService
from agentic_fast.store.recorder import StoreRecorder
from agentic_fast.store.sqlite import SQLiteCallStore
from tests.fakes.redis_server import RedisServer, free_port
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_webhooks import incoming_call_form, new_sid
from tests.integration.harness import Harness, make_config

pytestmark = pytest.mark.asyncio
FAST = 10.0


@pytest.fixture
def named() -> Iterator[None]:
    yield
    set_instance_id(None)


async def _harness(rest: FakeTwilioRest, extra: str = "", name: str | None = None) -> Harness:
    if name is not None:
        set_instance_id(name)  # the owner is named when the app starts
    return await Harness(make_config(rest, extra), rest).__aenter__()


async def _get(h: Harness, path: str) -> tuple[int, Any]:
    assert h.http is not None
    async with h.http.get(f"{h.base_url}{path}") as resp:
        return resp.status, orjson.loads(await resp.read())


async def _connect(h: Harness, call_sid: str, params: dict[str, str], target: Harness,
                   **kw: Any) -> Any:
    client = target.media_client(call_sid, params, time_scale=FAST, **kw)
    await client.connect()
    bridge = await asyncio.wait_for(target.bridge_ready.get(), 5)
    await asyncio.wait_for(bridge.started.wait(), 5)
    return client, bridge


async def _refused(target: Harness, call_sid: str, params: dict[str, str]) -> int | None:
    client = target.media_client(call_sid, params, time_scale=FAST)
    await client.connect()
    await asyncio.wait_for(client.closed.wait(), 5)
    return client.close_code


def _redis(url: str) -> str:
    return (f"store:\n  backend: redis\n  url: {url}\n  key_prefix: 't{uuid.uuid4().hex[:8]}:'\n"
            "  retry_initial_s: 0.05\n  retry_max_s: 0.2\n")


async def test_restart_lists_ended_calls_and_transcripts(rest: FakeTwilioRest) -> None:
    first = await _harness(rest)
    try:
        call_sid, params, _ = await first.incoming_call()
        client, bridge = await _connect(first, call_sid, params, first)
        bridge.session.add_transcript("caller", "Book a table for two.")
        bridge.session.add_transcript("agent", "Done, seven o'clock.")
        await client.hangup()
        assert await asyncio.wait_for(bridge.closed, 5) == "stream-stopped"
        call_id = bridge.session.call_id
    finally:
        await first.__aexit__(None, None, None)
    second = await _harness(rest)  # the same store.path (this test's HOME)
    try:
        assert second.services.manager.get(call_id) is None  # not from memory
        status, listed = await _get(second, "/calls")
        assert status == 200 and listed["active"] == []
        [row] = [c for c in listed["calls"] if c["call_id"] == call_id]
        assert row["status"] == "completed" and row["call_sid"] == call_sid
        assert row["direction"] == "inbound" and row["carrier"] == "twilio"
        status, doc = await _get(second, f"/calls/{call_id}")
        assert status == 200 and doc["source"] == "store"
        assert [(t["role"], t["text"]) for t in doc["transcript"]] == [
            ("caller", "Book a table for two."), ("agent", "Done, seven o'clock.")]
        assert [s["status"] for s in doc["statuses"]] == ["ringing", "in-progress",
                                                           "completed"]
        assert doc["end_reason"] == "stream-stopped" and doc["duration_s"] >= 0
        status, history = await _get(second, "/calls/history")
        assert status == 200 and call_id in [c["call_id"] for c in history["calls"]]
    finally:
        await second.__aexit__(None, None, None)


async def test_two_instances_on_one_redis_webhook_here_stream_there(
        rest: FakeTwilioRest, redis_server: RedisServer, named: None) -> None:
    extra = _redis(redis_server.url)
    a = await _harness(rest, extra, name="instance-a")
    b = await _harness(rest, extra, name="instance-b")
    try:
        adopted = metrics.get("store.streams.adopted")
        call_sid, params, _ = await a.incoming_call()
        client, bridge = await _connect(a, call_sid, params, b)  # the stream lands on B
        session = bridge.session
        assert session.adopted and session.call_id == params["callId"]
        assert b.services.manager.get(session.call_id) is session
        assert metrics.get("store.streams.adopted") == adopted + 1  # a fresh model socket
        # the token is single use on either instance
        assert await _refused(a, call_sid, params) == 1008
        assert await _refused(b, call_sid, params) == 1008
        # either API lists the live call, owned by B
        for h in (a, b):
            status, listed = await _get(h, "/calls")
            assert status == 200
            [live] = [c for c in listed["live"] if c["call_id"] == session.call_id]
            assert live["owner"] == "instance-b"
        await b.services.recorder.service.writer.flush()
        session.add_transcript("agent", "Hi.")
        await b.services.recorder.service.writer.flush()
        status, doc = await _get(a, f"/calls/{session.call_id}")  # from the store, via A
        assert status == 200 and doc["owner"] == "instance-b"
        assert doc["status"] == "in-progress" and doc["transcript"][0]["text"] == "Hi."
        session.add_transcript("caller", "Hello from B.")
        await client.hangup()
        assert await asyncio.wait_for(bridge.closed, 5) == "stream-stopped"
        await b.services.recorder.service.writer.flush()
        status, doc = await _get(b, f"/calls/{session.call_id}")
        assert status == 200 and doc["status"] == "completed"
        record = await a.services.recorder.store.get(session.call_id)
        assert record is not None and record.status == "completed"
        assert [t.text for t in record.transcript] == ["Hi.", "Hello from B."]
        assert await a.services.recorder.store.live_calls() == {}
    finally:
        await b.__aexit__(None, None, None)
        await a.__aexit__(None, None, None)


async def test_a_dead_owners_live_calls_are_recorded_failed_after_its_lease(
        rest: FakeTwilioRest, tmp_path: Path, named: None) -> None:
    path = tmp_path / "calls.db"
    extra = f"store:\n  path: {path}\n  lease_s: 15\n"
    a = await _harness(rest, extra, name="worker-a")
    try:
        call_sid, params, _ = await a.incoming_call()
        client, bridge = await _connect(a, call_sid, params, a)
        call_id = bridge.session.call_id
        recorder_a: StoreRecorder = a.services.recorder
        await recorder_a.service.writer.flush()
        await recorder_a.stop_heartbeat()  # worker-a dies: no more lease renewals
        config = make_config(rest, extra).store

        def later() -> float:  # another process, after worker-a's lease ran out
            return time.time() + 60

        other = StoreRecorder(StoreService(SQLiteCallStore(path, clock=later), config,
                                           clock=later), "worker-b", clock=later)
        await other.service.start()
        try:
            assert await other.beat() == [call_id]
            record = await other.store.get(call_id)
            assert record is not None and record.status == "failed"
            assert record.reason == "owner_lost: worker-a" and record.owner is None
            assert await other.beat() == []  # reclaimed once
        finally:
            await other.service.close()
        await client.close()
    finally:
        await a.__aexit__(None, None, None)


async def test_store_down_at_call_start_refuses_politely_and_not_ready(
        rest: FakeTwilioRest) -> None:
    h = await _harness(rest, _redis(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        call_sid = new_sid("CA")
        resp = await h.webhooks().post("/twilio/voice", incoming_call_form(call_sid=call_sid))
        assert resp.status == 200
        twiml = await resp.text()
        assert STORE_REFUSAL_TEXT in twiml and "<Connect>" not in twiml
        assert h.services.manager.active_count == 0
        status, ready = await _get(h, "/readyz")
        assert status == 503 and ready["checks"]["store"]["ok"] is False
        status, listed = await _get(h, "/calls")  # never a 500: this process's view
        assert status == 200 and listed["store_error"] == "unavailable"
    finally:
        await h.__aexit__(None, None, None)


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_killed_mid_call_the_call_goes_on_and_the_record_completes(
        rest: FakeTwilioRest, own_redis: RedisServer, tmp_path: Path) -> None:
    h = await _harness(rest, _redis(own_redis.url))
    try:
        call_sid, params, _ = await h.incoming_call()
        client, bridge = await _connect(h, call_sid, params, h)
        writer = h.services.recorder.service.writer
        await writer.flush()
        own_redis.kill()
        bridge.session.add_transcript("caller", "Are you still there?")
        await asyncio.wait_for(writer.wait_failing(), 5)
        # audio both ways while the store is down
        speech = bytes([0xFF]) * 160 * 25
        before = len(bridge.chunks)
        await asyncio.wait_for(client.say(speech), 10)
        await bridge.wait_until(lambda: len(bridge.chunks) - before >= len(speech) // 320)
        frames = bridge.converter.feed_provider(bytes(960 * 5))
        assert bridge.sender.send([("media", f) for f in frames] + [("mark", "m1")])
        await client.wait_for_echo("m1")
        bridge.session.add_transcript("agent", "Yes, still here.")
        await client.hangup()
        assert await asyncio.wait_for(bridge.closed, 5) == "stream-stopped"
        assert writer.dropped == 0 and writer.pending > 0
        back = RedisServer(tmp_path, port=own_redis.port, appendonly=True)
        back.start()
        own_redis.proc = back.proc  # the fixture stops it
        await asyncio.wait_for(writer.flush(), 10)
        record = await h.services.recorder.store.get(bridge.session.call_id)
        assert record is not None and record.status == "completed"
        assert [t.text for t in record.transcript] == ["Are you still there?",
                                                       "Yes, still here."]
        client.assert_no_violations()
    finally:
        await h.__aexit__(None, None, None)


async def test_hangup_of_a_call_live_on_another_instance_goes_through_the_carrier(
        rest: FakeTwilioRest, redis_server: RedisServer, named: None) -> None:
    """``POST /calls/{id}/hangup`` on an instance that never saw the call: the shared record
    names the carrier's call; the carrier hangs it up; the record says who ended it."""
    extra = _redis(redis_server.url)
    a = await _harness(rest, extra, name="instance-a")
    b = await _harness(rest, extra, name="instance-b")
    try:
        call_sid, params, _ = await a.incoming_call()
        rest.add_incoming(call_sid, "+15551230000", "+15550001111")
        client, bridge = await _connect(a, call_sid, params, a)
        call_id = bridge.session.call_id
        await a.services.recorder.service.writer.flush()
        assert b.services.manager.get(call_id) is None
        assert b.http is not None
        async with b.http.post(f"{b.base_url}/calls/{call_id}/hangup") as resp:
            assert resp.status == 202, await resp.text()
            assert await resp.json() == {"call_id": call_id, "status": "completed",
                                         "owner": "instance-a"}
        update = await rest.wait_request(
            lambda r: r.method == "POST" and r.path.endswith(f"/Calls/{call_sid}.json"))
        assert update.get("Status") == "completed"
        assert rest.calls[call_sid]["status"] == "completed"
        await b.services.recorder.service.writer.flush()
        record = await b.services.recorder.store.get(call_id)
        assert record is not None and record.status == "completed"
        assert record.reason == "hangup-api"
        # the carrier ends the stream; the owner ends its side, the record stays as it is
        await client.hangup()
        assert await asyncio.wait_for(bridge.closed, 5) == "stream-stopped"
        await a.services.recorder.settle()
        record = await a.services.recorder.store.get(call_id)
        assert record is not None and record.status == "completed"
        assert record.reason == "hangup-api" and record.owner is None
        async with b.http.post(f"{b.base_url}/calls/{call_id}/hangup") as resp:
            assert resp.status == 409 and (await resp.json())["status"] == "completed"
        async with b.http.post(f"{b.base_url}/calls/no-such-call/hangup") as resp:
            assert resp.status == 404
    finally:
        await b.__aexit__(None, None, None)
        await a.__aexit__(None, None, None)


async def test_a_restarted_process_of_the_same_name_records_its_predecessors_calls_failed(
        rest: FakeTwilioRest, tmp_path: Path, named: None) -> None:
    """A process killed and started again under the same name (a supervisor's worker, a
    fixed ``server.instance_id``) must not renew the dead one's lease for its calls."""
    path = tmp_path / "calls.db"
    extra = f"store:\n  path: {path}\n"
    a = await _harness(rest, extra, name="worker-a")
    try:
        call_sid, params, _ = await a.incoming_call()
        client, bridge = await _connect(a, call_sid, params, a)
        call_id = bridge.session.call_id
        await a.services.recorder.service.writer.flush()
        assert await a.services.recorder.store.live_calls() == {call_id: "worker-a"}
        config = make_config(rest, extra).store
        successor = StoreRecorder(StoreService(SQLiteCallStore(path), config), "worker-a")
        reclaimed = metrics.get("store.calls.reclaimed")
        await successor.start()
        try:
            record = await successor.store.get(call_id)
            assert record is not None and record.status == "failed"
            assert record.reason == "owner_lost: worker-a" and record.owner is None
            assert metrics.get("store.calls.reclaimed") == reclaimed + 1
            assert await successor.store.live_calls() == {}
        finally:
            await successor.close()
        await client.close()
    finally:
        await a.__aexit__(None, None, None)


def _sqlite(path: Path) -> str:
    return (f"store:\n  path: {path}\n  timeout_s: 0.05\n  retry_initial_s: 0.05\n"
            "  retry_max_s: 0.2\n")


async def _talk_both_ways(client: Any, bridge: Any, mark: str) -> None:
    """A second of the caller's audio reaches the bridge, and the model's audio with a mark
    reaches the caller (the mark comes back): the call is alive."""
    speech = bytes([0xFF]) * 160 * 25
    before = len(bridge.chunks)
    await asyncio.wait_for(client.say(speech), 10)
    await bridge.wait_until(lambda: len(bridge.chunks) - before >= len(speech) // 320)
    frames = bridge.converter.feed_provider(bytes(960 * 5))
    assert bridge.sender.send([("media", f) for f in frames] + [("mark", mark)])
    await client.wait_for_echo(mark)


@pytest.mark.parametrize("failure", ["locked", "disk_full"])
async def test_sqlite_failing_mid_call_the_call_goes_on_and_the_record_completes(
        rest: FakeTwilioRest, tmp_path: Path, failure: str) -> None:
    """The SQLite file locked by another process, or the disk full (a page quota standing
    in for it), mid-call: audio goes on both ways, the call's events wait in the writer's
    queue (nothing dropped), and once the file is writable again the record is complete. A
    new call meanwhile is told why it cannot be taken (the nonce cannot be claimed)."""
    path = tmp_path / "calls.db"
    h = await _harness(rest, _sqlite(path))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        call_sid, params, _ = await h.incoming_call()
        client, bridge = await _connect(h, call_sid, params, h)
        recorder: StoreRecorder = h.services.recorder
        store: SQLiteCallStore = recorder.store  # type: ignore[assignment]
        writer = recorder.service.writer
        await writer.flush()
        if failure == "locked":
            other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        else:
            await store.set_max_bytes(1)  # no page more than the file has now
        bridge.session.add_transcript("caller", "Are you still there? " + "x" * 20_000)
        await asyncio.wait_for(writer.wait_failing(), 10)
        await _talk_both_ways(client, bridge, "m1")

        call_sid2, params2, _ = await h.incoming_call()
        rest.add_incoming(call_sid2, "+15551230001", "+15550001111")
        if failure == "locked":
            # a new call now: its stream's nonce cannot be claimed; the caller is told why
            refused = metrics.get("twilio.media.refused.store_unavailable")
            assert await _refused(h, call_sid2, params2) is not None
            assert metrics.get("twilio.media.refused.store_unavailable") == refused + 1
            update = await rest.wait_request(
                lambda r: r.method == "POST" and r.path.endswith(f"/Calls/{call_sid2}.json"))
            assert STORE_REFUSAL_TEXT in (update.get("Twiml") or "")
        else:
            # a nonce and an ownership row still fit in the file's free pages: the checks
            # can be made, so the new call is taken; its events queue behind the others
            client2, bridge2 = await _connect(h, call_sid2, params2, h)
            await _talk_both_ways(client2, bridge2, "m2")
            await client2.hangup()
            assert await asyncio.wait_for(bridge2.closed, 5) == "stream-stopped"

        bridge.session.add_transcript("agent", "Yes, still here.")
        await client.hangup()
        assert await asyncio.wait_for(bridge.closed, 5) == "stream-stopped"
        assert writer.dropped == 0 and writer.pending > 0
        if failure == "locked":
            other.execute("COMMIT")
        else:
            await store.set_max_bytes(None)  # space freed
        await asyncio.wait_for(writer.flush(), 10)
        record = await store.get(bridge.session.call_id)
        assert record is not None and record.status == "completed"
        assert [t.text[:20] for t in record.transcript] == ["Are you still there?",
                                                            "Yes, still here."]
        assert writer.dropped == writer.failed == 0
        client.assert_no_violations()
    finally:
        other.close()
        await h.__aexit__(None, None, None)
