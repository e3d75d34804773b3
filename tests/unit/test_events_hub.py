"""The live event hub: bounded per subscriber, a slow one is told what it lost."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from agentic_fast.call.manager import CallManager
from agentic_fast.core import metrics
from agentic_fast.core.errors import SubscriberLimitError
from agentic_fast.core.events import EventHub


def _read_ready(sub) -> list[dict]:
    async def drain() -> list[dict]:
        out = []
        while True:
            try:
                event = await asyncio.wait_for(sub.get(), 0.01)
            except TimeoutError:
                return out
            out.append(orjson.loads(event.json))
    return asyncio.run(drain())


def test_publish_without_subscribers_builds_nothing() -> None:
    hub = EventHub(clock=lambda: 0.0)
    hub.publish("call.status", "c1", {"unserialisable": object()})  # returns at once
    assert hub.subscriber_count == 0


def test_a_slow_subscriber_keeps_at_most_queue_size_and_is_told_how_many_it_lost() -> None:
    hub = EventHub(queue_size=3, clock=lambda: 0.0)
    sub = hub.subscribe()
    before = metrics.get("events.dropped")
    for i in range(10):
        hub.publish("call.transcript", "c1", {"n": i})
    assert len(sub._queue) == 3  # bounded: never more
    events = _read_ready(sub)
    assert events[0]["type"] == "events.dropped" and events[0]["data"] == {"dropped": 7}
    assert [e["data"]["n"] for e in events[1:]] == [0, 1, 2]
    assert metrics.get("events.dropped") - before == 7


def test_events_are_numbered_and_shared_by_every_subscriber() -> None:
    hub = EventHub(clock=lambda: 0.0)
    a, b = hub.subscribe(), hub.subscribe()
    hub.publish("call.created", "c1", {"status": "ringing"})
    hub.publish("call.status", "c1", {"status": "in-progress"})
    got_a, got_b = _read_ready(a), _read_ready(b)
    assert got_a == got_b
    assert [e["id"] for e in got_a] == [1, 2]
    assert got_a[0] == {"id": 1, "type": "call.created", "ts": "1970-01-01T00:00:00+00:00",
                        "call_id": "c1", "data": {"status": "ringing"}}


def test_closing_ends_a_waiting_reader_and_forgets_the_subscriber() -> None:
    async def main() -> None:
        hub = EventHub()
        sub = hub.subscribe()
        reader = asyncio.ensure_future(sub.get())
        await asyncio.sleep(0)
        hub.close_all()
        assert await reader is None
        assert hub.subscriber_count == 0
    asyncio.run(main())


def test_subscribers_are_bounded() -> None:
    hub = EventHub(max_subscribers=1)
    hub.subscribe()
    with pytest.raises(SubscriberLimitError):
        hub.subscribe()


def test_the_manager_publishes_creation_status_transcript_and_commands() -> None:
    manager = CallManager()
    hub = manager.events = EventHub()
    sub = hub.subscribe()
    session = manager.create_inbound("CA1", "+15551230000", "+15550001111")
    manager.mark_stream_started(session)
    session.add_transcript("user", "hello")
    session.add_command({"command": "lights on", "status": "running"})
    manager.complete(session, reason="hangup-api")
    events = _read_ready(sub)
    assert [e["type"] for e in events] == [
        "call.created", "call.updated", "call.status", "call.transcript", "call.command",
        "call.status"]
    assert {e["call_id"] for e in events} == {session.call_id}
    assert events[-1]["data"]["status"] == "completed"
    assert events[-1]["data"]["reason"] == "hangup-api"
    assert events[3]["data"]["text"] == "hello"
