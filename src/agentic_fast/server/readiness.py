"""``/readyz``: a list of readiness checks, each saying what it found.

A check is a callable (plain or async) returning a :class:`Check`. The app holds the list at
``app[READINESS_CHECKS]``; a component with a dependency of its own (the call store) adds
one with :func:`add_readiness_check`. The server is ready when every check is ``ok`` or only
a ``warning`` (a dependency whose loss degrades calls without stopping them, such as the
OpenClaw gateway); otherwise ``/readyz`` answers 503 with the reasons. A check that raises or
takes longer than :data:`CHECK_TIMEOUT_S` counts as not ready.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agentic_fast.core import metrics
from agentic_fast.core.log import get_logger
from agentic_fast.providers import health

log = get_logger("server")

#: a check that does not answer within this many seconds is "not ready"
CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    """What one readiness check found. ``ok`` False and ``warning`` True: reported, but
    the server stays ready."""

    name: str
    ok: bool
    detail: str = ""
    warning: bool = False


ReadinessCheck = Callable[[], "Check | Awaitable[Check]"]
READINESS_CHECKS: web.AppKey[list[ReadinessCheck]] = web.AppKey("readiness_checks", list)


def add_readiness_check(app: web.Application, check: ReadinessCheck) -> None:
    """Make ``check`` part of ``/readyz`` (before the app starts)."""
    app[READINESS_CHECKS].append(check)


async def _run(check: ReadinessCheck) -> Check:
    name = getattr(check, "__name__", type(check).__name__)
    try:
        result = check()
        if inspect.isawaitable(result):
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                result = await result
        return result
    except TimeoutError:
        return Check(name, False, f"no answer within {CHECK_TIMEOUT_S:g} s")
    except Exception as exc:  # a broken check must say so, not answer 500
        return Check(name, False, f"check failed: {exc!r:.200}")


async def evaluate(app: web.Application) -> tuple[bool, list[Check]]:
    """Run every check (concurrently); (ready, results)."""
    results = list(await asyncio.gather(*(_run(c) for c in app[READINESS_CHECKS])))
    ready = all(r.ok or r.warning for r in results)
    return ready, results


async def readyz(request: web.Request, extra: dict[str, Any]) -> web.Response:
    """The ``/readyz`` answer: 200 ``ready`` (with any ``warnings``), or 503 ``not-ready``
    with ``problems``; ``checks`` has every check's finding."""
    ready, results = await evaluate(request.app)
    body: dict[str, Any] = {
        "status": "ready" if ready else "not-ready",
        "checks": {r.name: {"ok": r.ok, **({"detail": r.detail} if r.detail else {}),
                            **({"warning": True} if r.warning and not r.ok else {})}
                   for r in results},
        **extra,
    }
    problems = [f"{r.name}: {r.detail}" if r.detail else r.name
                for r in results if not r.ok and not r.warning]
    warnings = [f"{r.name}: {r.detail}" for r in results if not r.ok and r.warning]
    if warnings:
        body["warnings"] = warnings
    if problems:
        body["problems"] = problems
        metrics.incr("readyz.not_ready")
        return web.json_response(body, status=503)
    return web.json_response(body)


# -- the built-in checks ------------------------------------------------------------------------

def provider_credentials() -> Check:
    """Not ready while a model provider refused the last session for its credentials."""
    rejected = health.rejected()
    if rejected:
        detail = "; ".join(f"{name} rejected the API key ({why})" for name, why in
                           sorted(rejected.items()))
        return Check("provider_credentials", False, detail)
    return Check("provider_credentials", True)


def gateway_check(gateway: Any) -> ReadinessCheck:
    """The OpenClaw gateway link: down is a warning (calls work; commands do not)."""
    def gateway_link() -> Check:
        if gateway.is_open:
            return Check("gateway", True)
        fatal = getattr(gateway, "fatal_error", None)
        pairing = getattr(gateway, "pairing_required", None)
        if fatal is not None:
            why = f"gateway refused us: {fatal}"
        elif pairing is not None:
            why = "waiting for the owner to approve this device's pairing"
        else:
            why = "not connected (reconnecting); agent commands fail until it is back"
        return Check("gateway", False, why[:300], warning=True)
    gateway_link.__name__ = "gateway"
    return gateway_link


def store_check(store: Any) -> ReadinessCheck:
    """The call store (anything with ``async health() -> bool``, as ``store.CallStore``):
    unreachable is not ready, since calls could not be recorded."""
    async def call_store() -> Check:
        if await store.health():
            return Check("store", True)
        return Check("store", False, "unreachable")
    call_store.__name__ = "store"  # named so in a failure's report
    return call_store
