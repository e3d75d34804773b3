"""The gateway run/client seam: ChatRun drives its client only through ``RunHost``."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from agentic_fast.core.errors import GatewayBusyError
from agentic_fast.gateway import run as run_module
from agentic_fast.gateway.client import GatewayClient
from agentic_fast.gateway.protocol import DELTA, FINAL, ChatEvent
from agentic_fast.gateway.run import ChatRun, RunHost, RunRoute

_MEMBERS = ("loop", "abort_timeout", "max_runs", "active_runs", "request", "abort", "spawn",
            "open_route", "close_route", "abort_orphan")


def test_gateway_client_implements_the_run_host_with_public_names() -> None:
    for name in _MEMBERS:
        assert hasattr(RunHost, name)
        assert hasattr(GatewayClient, name), name


def test_run_module_uses_no_private_attribute_of_its_client() -> None:
    tree = ast.parse(Path(run_module.__file__).read_text())
    private = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            owner = node.value
            is_client = ((isinstance(owner, ast.Name) and owner.id == "client")
                         or (isinstance(owner, ast.Attribute) and owner.attr == "_client"))
            if is_client:
                private.append(f"line {node.lineno}: .{node.attr}")
    assert private == []


class _Host:
    """A RunHost with no socket: answers chat.send with a runId, records aborts."""

    def __init__(self, max_runs: int = 4) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.abort_timeout = 1.0
        self.max_runs = max_runs
        self.routes: dict[str, RunRoute] = {}
        self.requests: list[str] = []
        self.aborts: list[str | None] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def active_runs(self) -> int:
        return len(self.routes)

    async def request(self, method: str, params: dict[str, Any], *,
                      timeout: float | None = None,
                      on_ok: Callable[[Any], None] | None = None,
                      send_session: str | None = None) -> Any:
        self.requests.append(method)
        payload = {"runId": "run-1"}
        if on_ok is not None:
            on_ok(payload)
        return payload

    async def abort(self, session_key: str, run_id: str | None = None, *,
                    timeout: float | None = None) -> Any:
        self.aborts.append(run_id)
        return {}

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        return task

    def open_route(self, run_id: str, session_key: str) -> RunRoute:
        route = self.routes[run_id] = RunRoute(run_id, 8)
        return route

    def close_route(self, run_id: str | None) -> None:
        if run_id is not None:
            self.routes.pop(run_id, None)

    def abort_orphan(self, session_key: str, run_id: str) -> None:
        self.aborts.append(run_id)


async def test_a_run_works_against_any_run_host() -> None:
    host = _Host()
    assert isinstance(host, RunHost)
    run = ChatRun(host, "agent:main:voice-1", "hello", deadline_s=5.0)
    assert await run.start() == "run-1"
    route = host.routes["run-1"]
    route.push(ChatEvent("run-1", "agent:main:voice-1", 1, DELTA, delta_text="hi "))
    route.push(ChatEvent("run-1", "agent:main:voice-1", 2, FINAL, text="hi there"))
    states = [event.state async for event in run]
    assert states == [DELTA, FINAL]
    assert run.text == "hi there" and host.requests == ["chat.send"]
    assert host.routes == {} and host.aborts == []


async def test_run_host_bound_on_active_runs() -> None:
    host = _Host(max_runs=1)
    host.routes["other"] = RunRoute("other", 8)
    run = ChatRun(host, "agent:main:voice-1", "hello", deadline_s=5.0)
    with pytest.raises(GatewayBusyError):
        await run.start()


async def test_leaving_early_aborts_through_the_host() -> None:
    host = _Host()
    async with ChatRun(host, "agent:main:voice-1", "hello", deadline_s=5.0) as run:
        assert run.run_id == "run-1"
    assert host.aborts == ["run-1"] and host.routes == {}
