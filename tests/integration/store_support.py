"""Helpers of the call-store tests: both backends built the same way, a settable clock,
a realistic call's events."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agentic_fast.store import (
    CallCreated,
    CallEvent,
    CallFieldsSet,
    CallStore,
    CommandAnswered,
    CommandSent,
    StatusChanged,
    StoreEvent,
    TranscriptAdded,
)
from agentic_fast.store.redis import RedisCallStore
from agentic_fast.store.sqlite import SQLiteCallStore

BACKENDS = ["sqlite", "redis"]


class Clock:
    """Wall clock the test sets (epoch seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[..., CallStore]


def store_factory(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                  clock: Clock) -> StoreFactory:
    """A function making new (not opened) store instances on the same data: the same file,
    or the same Redis server and key prefix."""
    if backend == "sqlite":
        path = tmp_path / "calls.db"

        def make_sqlite(**kw: object) -> CallStore:
            kw.setdefault("clock", clock)
            return SQLiteCallStore(path, **kw)  # type: ignore[arg-type]
        return make_sqlite
    server = request.getfixturevalue("redis_server")
    prefix = f"t{uuid.uuid4().hex[:10]}:"

    def make_redis(**kw: object) -> CallStore:
        kw.setdefault("clock", clock)
        kw.setdefault("prefix", prefix)
        return RedisCallStore(server.url, **kw)  # type: ignore[arg-type]
    return make_redis


def realistic_call(call_id: str, t0: float, *, statuses: int = 10, lines: int = 40,
                   commands: int = 2) -> list[StoreEvent]:
    """One call's events: 1 record, ``statuses`` status events, ``lines`` transcript lines,
    ``commands`` agent commands (sent and answered), a recording and the end."""
    events: list[StoreEvent] = [CallCreated(call_id, t0, "inbound", "+15551230000",
                                            "+15559870000", provider="openai",
                                            carrier="twilio", status="ringing")]
    for i in range(statuses - 2):  # answered, then repeated callbacks (at least once)
        events.append(StatusChanged(call_id, t0 + 1 + i, "in-progress"))
    events.append(StatusChanged(call_id, t0 + 179, "completed", "caller-hangup"))
    for i in range(lines):
        role = "caller" if i % 2 == 0 else "agent"
        events.append(TranscriptAdded(call_id, t0 + 2 + i * 4, role,
                                      f"line {i}: " + "a few words of speech here " * 3))
    for i in range(commands):
        events.append(CommandSent(call_id, t0 + 20 + i * 30, f"cmd{i}",
                                  "check my calendar for tomorrow"))
        events.append(CommandAnswered(call_id, t0 + 25 + i * 30, f"cmd{i}",
                                      "You have two meetings tomorrow.", 5.0))
    events.append(CallEvent(call_id, t0 + 170, "recording",
                            {"url": "https://example.invalid/rec/RE1", "duration_s": 170}))
    events.append(CallFieldsSet(call_id, t0 + 180, {"duration_s": 178.0,
                                                    "end_reason": "caller-hangup",
                                                    "answered_by": "human"}))
    return events
