"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os

import pytest

from tests.fakes.openclaw_real import OpenClawInstall, OpenClawUnavailable, ensure_installed


@pytest.fixture(scope="module")
def openclaw() -> OpenClawInstall:
    """The real OpenClaw gateway install (npm); skips, with the reason, when unavailable."""
    if os.environ.get("AGENTIC_FAST_SKIP_OPENCLAW") == "1":
        pytest.skip("AGENTIC_FAST_SKIP_OPENCLAW=1")
    try:
        return ensure_installed()
    except OpenClawUnavailable as exc:
        pytest.skip(f"real OpenClaw gateway unavailable: {exc}")
