"""``/readyz``'s check list: a store that is down or a check that fails or hangs makes the
server not ready; a warning (the gateway) does not."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from agentic_fast.providers import health
from agentic_fast.server import readiness
from agentic_fast.server.readiness import (
    READINESS_CHECKS,
    Check,
    add_readiness_check,
    evaluate,
    provider_credentials,
    store_check,
)


class Store:
    def __init__(self, up: bool) -> None:
        self.up = up

    async def health(self) -> bool:
        return self.up


def _app(*checks: readiness.ReadinessCheck) -> web.Application:
    app = web.Application()
    app[READINESS_CHECKS] = []
    for check in checks:
        add_readiness_check(app, check)
    return app


async def test_a_store_that_answers_is_ready_one_that_does_not_is_not() -> None:
    assert await evaluate(_app(store_check(Store(True)))) == (True, [Check("store", True)])
    ready, results = await evaluate(_app(store_check(Store(False))))
    assert not ready and results == [Check("store", False, "unreachable")]


async def test_a_check_that_raises_or_hangs_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        async def health(self) -> bool:
            raise ConnectionRefusedError("redis down")

    class Hung:
        async def health(self) -> bool:
            await asyncio.get_running_loop().create_future()  # never answers
            return True

    monkeypatch.setattr(readiness, "CHECK_TIMEOUT_S", 0.01)
    ready, results = await evaluate(_app(store_check(Broken()), store_check(Hung())))
    assert not ready
    assert results[0].name == "store" and "redis down" in results[0].detail
    assert results[1] == Check("store", False, "no answer within 0.01 s")


async def test_a_warning_leaves_the_server_ready() -> None:
    ready, _ = await evaluate(_app(lambda: Check("gateway", False, "down", warning=True)))
    assert ready


def test_provider_credentials_follow_the_last_session() -> None:
    health.reset()
    assert provider_credentials().ok
    health.auth_rejected("gemini", "connection #1 closed during setup: 1007 API key not valid")
    check = provider_credentials()
    assert not check.ok and check.detail.startswith("gemini rejected the API key")
    health.session_ok("gemini")
    assert provider_credentials().ok


@pytest.mark.parametrize(("code", "reason", "auth"), [
    (1007, "API key not valid. Please pass a valid API key.", True),
    (1008, "Method doesn't allow unregistered callers (callers without established identity). "
           "Please use API Key or other form of API consumer identity to call this API.", True),
    (1006, "HTTP 401", True),
    (1006, "HTTP 403", True),
    (1007, "Request contains an invalid argument.", False),
    (1008, "models/gemini-x is not found for API version v1beta", False),
    (1006, "HTTP 404", False),
])
def test_gemini_auth_refusals_are_told_from_other_setup_refusals(code: int, reason: str,
                                                                auth: bool) -> None:
    assert health.gemini_auth_refusal(code, reason) is auth
