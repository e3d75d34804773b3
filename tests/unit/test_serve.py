"""``serve`` startup: config warnings (e.g. a deprecated model) are logged with their key."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator

import pytest

from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.core.errors import ConfigError
from agentic_fast.server.runner import serve


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


async def _serve_until_listening(config: Config) -> None:
    """Run ``serve`` until it listens (its startup logged), then stop it."""
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, bridge_factory=_no_bridge, ready=ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_serve_logs_a_deprecated_model_naming_the_key(
        caplog: pytest.LogCaptureFixture, keep_gc: None) -> None:
    config = Config.from_text(
        "server: {public_url: 'https://agent.example.test', host: 127.0.0.1, port: 0}\n"
        "openai_realtime: {model: gpt-realtime}\n", env={})
    caplog.set_level(logging.WARNING, logger="agentic_fast")
    before = metrics.get("config.warnings")
    await _serve_until_listening(config)
    lines = [r.getMessage() for r in caplog.records if r.name == "agentic_fast.serve"]
    found = [x for x in lines if x.startswith("config.warning key=openai_realtime.model ")]
    assert len(found) == 1, lines
    assert "gpt-realtime is deprecated and shuts down on 2027-01-20" in found[0]
    assert metrics.get("config.warnings") >= before + 1


async def test_serve_warns_when_no_inbound_caller_would_be_answered(
        caplog: pytest.LogCaptureFixture, keep_gc: None) -> None:
    config = Config.from_text(
        "server: {public_url: 'https://agent.example.test', host: 127.0.0.1, port: 0}\n",
        env={})
    caplog.set_level(logging.WARNING, logger="agentic_fast")
    await _serve_until_listening(config)
    lines = [r.getMessage() for r in caplog.records if r.name == "agentic_fast.serve"]
    found = [x for x in lines if x.startswith("config.warning key=calls.inbound_numbers ")]
    assert len(found) == 1, lines
    assert "no inbound caller will be answered" in found[0]


def test_raise_nofile_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    import resource

    from agentic_fast.server.runner import raise_nofile_limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        assert raise_nofile_limit() == (hard if hard != resource.RLIM_INFINITY
                                        else max(low, 1 << 20), hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > low
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_capacity_warns_naming_the_key_when_descriptors_cannot_hold_the_cap() -> None:
    from agentic_fast.server.runner import capacity_warnings
    config = Config.from_text("server: {max_connections_total: 1000, max_pending_total: 256}\n",
                              env={})
    calls, warnings = capacity_warnings(config, 1024)
    assert calls == (1024 - 64 - 256) // 2
    assert len(warnings) == 1 and warnings[0].startswith("server.max_connections_total (1000)")
    assert capacity_warnings(config, 20_000) == ((20_000 - 64 - 256) // 2, [])


async def test_serve_logs_its_capacity(caplog: pytest.LogCaptureFixture, keep_gc: None) -> None:
    config = Config.from_text(
        "server: {public_url: 'https://agent.example.test', host: 127.0.0.1, port: 0}\n",
        env={})
    caplog.set_level(logging.INFO, logger="agentic_fast")
    await _serve_until_listening(config)
    [line] = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("server.capacity ")]
    assert "nofile_soft=" in line and "calls=" in line and "max_pending_total=256" in line


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


def test_tune_gc_zero_keeps_pythons_collector(keep_gc: None) -> None:
    from agentic_fast.server.runner import tune_gc

    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    assert gc.get_threshold()[0] == 700 and gc.get_freeze_count() == 0
    tune_gc(5000)
    assert gc.get_threshold()[0] == 5000 and gc.get_freeze_count() > 0
