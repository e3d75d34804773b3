"""``serve`` startup: config warnings (e.g. a deprecated model) are logged with their key."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator

import pytest

from agentic_fast import metrics
from agentic_fast.config import Config
from agentic_fast.errors import ConfigError
from agentic_fast.serve import serve


@pytest.fixture
def keep_gc() -> Iterator[None]:
    """``serve`` tunes the collector for the process; give the test process its own back."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def _no_bridge(session: object, sender: object) -> object:
    raise AssertionError("no call is made in this test")


async def test_serve_logs_a_deprecated_model_naming_the_key(
        caplog: pytest.LogCaptureFixture, keep_gc: None) -> None:
    config = Config.from_text(
        "server: {public_url: 'https://agent.example.test', host: 127.0.0.1, port: 0}\n"
        "openai_realtime: {model: gpt-realtime}\n", env={})
    caplog.set_level(logging.WARNING, logger="agentic_fast")
    before = metrics.get("config.warnings")
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, bridge_factory=_no_bridge, ready=ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lines = [r.getMessage() for r in caplog.records if r.name == "agentic_fast.serve"]
    found = [x for x in lines if x.startswith("config.warning key=openai_realtime.model ")]
    assert len(found) == 1, lines
    assert "gpt-realtime is deprecated and shuts down on 2027-01-20" in found[0]
    assert metrics.get("config.warnings") >= before + 1


@pytest.mark.parametrize(("server", "host"), [
    ("host: 0.0.0.0", None),
    ("host: 127.0.0.1, trusted_proxies: [127.0.0.1]", None),
    ("host: 127.0.0.1", "0.0.0.0"),  # serve --host overrides a loopback config
])
async def test_serve_refuses_an_exposed_api_without_token(server: str, host: str | None) -> None:
    config = Config.from_text(
        f"server: {{public_url: 'https://agent.example.test', port: 0, {server}}}\n", env={})
    with pytest.raises(ConfigError) as info:  # before it listens (else it would serve on)
        await asyncio.wait_for(serve(config, host=host, bridge_factory=_no_bridge), 10)
    assert info.value.key == "server.api_token"
