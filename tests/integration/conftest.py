"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway
from tests.fakes.openclaw_real import OpenClawInstall, OpenClawUnavailable, ensure_installed
from tests.fakes.twilio_rest import FakeTwilioRest


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
