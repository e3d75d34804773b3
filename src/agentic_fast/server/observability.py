"""``GET /metrics`` (Prometheus text format) and the built-in ``/readyz`` checks.

``create_app`` calls :func:`setup_observability` once. ``/metrics`` sits behind the same
rule as the ``/calls`` API (``server.api_token``, or loopback-only without one): scrape
it with ``authorization: {credentials: <token>}`` in Prometheus' scrape config.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from agentic_fast.core import metrics_export
from agentic_fast.core.log import get_logger
from agentic_fast.core.metrics_export import GaugeSpec, MultiProcessSync
from agentic_fast.providers.connection import open_sockets
from agentic_fast.server.readiness import (
    READINESS_CHECKS,
    Check,
    ReadinessCheck,
    gateway_check,
    provider_credentials,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from agentic_fast.server.app import Services

log = get_logger("server")

METRICS_PATH = "/metrics"
_REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("metrics_registry")
_SYNC: web.AppKey[MultiProcessSync | None] = web.AppKey("metrics_sync")
_SYNC_TASK: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("metrics_sync_task")


def gauges(svc: Services) -> list[GaugeSpec]:
    """The app's gauges, read at scrape time."""
    specs = [
        GaugeSpec("live_calls", "Calls not yet ended.", lambda: svc.manager.active_count),
        GaugeSpec("provider_sockets", "Model provider sockets open in this process.",
                  open_sockets),
    ]
    brain = getattr(svc.bridge_factory, "conversation", None)
    if brain is not None and hasattr(brain, "pending"):
        specs.append(GaugeSpec("brain_queued_events", "Events queued for the brain, all calls.",
                               lambda: brain.pending))
    return specs


def readiness_checks(svc: Services) -> list[ReadinessCheck]:
    """The built-in checks: draining, carrier webhooks, provider credentials, gateway."""
    def draining() -> Check:
        return Check("draining", not svc.draining, "not taking calls" if svc.draining else "")

    def webhooks() -> Check:
        problems = [f"{c.name} webhooks disabled: {c.verifier_problem}"
                    for c in svc.carriers.values() if c.verifier is None]
        return Check("webhooks", not problems, "; ".join(problems))

    checks: list[ReadinessCheck] = [draining, webhooks, provider_credentials]
    for part in getattr(svc.bridge_factory, "owned", ()):
        if hasattr(part, "is_open") and hasattr(part, "fatal_error"):  # the gateway client
            checks.append(gateway_check(part))
    return checks


def setup_observability(app: web.Application, svc: Services) -> None:
    """Route ``/metrics``, configure histograms (``metrics.*``), register the checks."""
    metrics_export.configure(svc.config.metrics)
    registry, sync = metrics_export.build_registry(gauges(svc))
    app[_REGISTRY] = registry
    app[_SYNC] = sync
    app[_SYNC_TASK] = []
    app[READINESS_CHECKS] = readiness_checks(svc)
    app.router.add_get(METRICS_PATH, metrics_handler)
    if sync is not None:  # PROMETHEUS_MULTIPROC_DIR: push this worker's figures
        app.on_startup.append(_sync_starter(sync, svc.config.metrics.multiprocess_sync_s))
        app.on_cleanup.append(_stop_sync)


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    sync = request.app[_SYNC]
    if sync is not None:
        sync.sync()
    # the text format, or OpenMetrics when the scraper asks for it (Accept)
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": content_type})


def _sync_starter(sync: MultiProcessSync, period_s: float
                  ) -> Callable[[web.Application], Awaitable[None]]:
    async def start(app: web.Application) -> None:
        async def push() -> None:
            while True:
                await asyncio.sleep(period_s)
                try:
                    sync.sync()
                except Exception:  # a full disk must not end the loop silently
                    log.exception("metrics.sync_failed")

        app[_SYNC_TASK].append(asyncio.get_running_loop().create_task(push()))
    return start


async def _stop_sync(app: web.Application) -> None:
    for task in app[_SYNC_TASK]:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    sync = app[_SYNC]
    if sync is not None:
        sync.sync()  # the last counts of this worker
