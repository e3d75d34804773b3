"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentic_fast.providers import health
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway
from tests.fakes.openclaw_real import OpenClawInstall, OpenClawUnavailable, ensure_installed
from tests.fakes.redis_server import RedisServer, RedisUnavailable
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.integration.harness import Harness, start_harness


@pytest.fixture(autouse=True)
def _provider_health() -> None:
    """Providers record a refused key process-wide (for /readyz): each test starts clean."""
    health.reset()


@pytest.fixture(scope="module")
def openclaw() -> OpenClawInstall:
    """The real OpenClaw gateway install (npm); skips, with the reason, when unavailable."""
    if os.environ.get("AGENTIC_FAST_SKIP_OPENCLAW") == "1":
        pytest.skip("AGENTIC_FAST_SKIP_OPENCLAW=1")
    try:
        return ensure_installed()
    except OpenClawUnavailable as exc:
        pytest.skip(f"real OpenClaw gateway unavailable: {exc}")


@pytest.fixture
async def rest() -> AsyncIterator[FakeTwilioRest]:
    """A fake Twilio REST API on loopback."""
    async with FakeTwilioRest() as fake:
        yield fake


@pytest.fixture
async def harness(rest: FakeTwilioRest) -> AsyncIterator[Harness]:
    """The call server with the recording bridge factory (2 s to a stream's start); a
    module may override it with settings of its own."""
    h = await start_harness(rest, start_timeout_s=2)
    try:
        yield h
    finally:
        await h.__aexit__(None, None, None)


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAIRealtime]:
    """A fake OpenAI Realtime server on loopback (validates every client event)."""
    async with FakeOpenAIRealtime() as fake:
        yield fake


@pytest.fixture
async def gateway() -> AsyncIterator[FakeOpenClawGateway]:
    """A fake OpenClaw gateway (token ``gw-token``) whose runs answer without noise."""
    async with FakeOpenClawGateway(token="gw-token",
                                   default_script=ChatScript(noise=False)) as fake:
        yield fake


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port for the whole session (tests isolate
    themselves by key prefix); skips, with the reason, when redis-server is missing."""
    directory: Path = tmp_path_factory.mktemp("redis")
    try:
        server = RedisServer(directory)
        server.start()
    except RedisUnavailable as exc:
        pytest.skip(f"real Redis unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()
