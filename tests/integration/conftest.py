"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

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
