"""dispatch_event: the providers' one way to hand a parsed event to its handler."""

from __future__ import annotations

from typing import Any

from agentic_fast.core import metrics
from agentic_fast.providers.base import dispatch_event


class _Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def exception(self, name: str, **fields: Any) -> None:
        self.records.append((name, fields))


class _Ping:
    pass


class _Boom:
    pass


def test_dispatch_calls_the_handler_of_the_event_type_and_ignores_unknown_types() -> None:
    seen: list[tuple[str, object]] = []
    handlers = {_Ping: lambda owner, event: seen.append((owner, event))}
    ping = _Ping()
    dispatch_event(handlers, "conn1", ping, _Log(), "test")
    dispatch_event(handlers, "conn1", _Boom(), _Log(), "test")  # no handler: nothing
    assert seen == [("conn1", ping)]


def test_a_failing_handler_is_counted_and_logged_not_raised() -> None:
    def boom(owner: object, event: object) -> None:
        raise RuntimeError("handler bug")

    log = _Log()
    before = metrics.get("test.handler_errors")
    dispatch_event({_Boom: boom}, "conn1", _Boom(), log, "test")
    assert metrics.get("test.handler_errors") == before + 1
    assert log.records == [("test.handler_error", {"event": "_Boom"})]
