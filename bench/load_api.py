"""Polls the server's ``/calls`` API during a load run (``loadgen --poll-calls-hz``).

Each poll walks every page of ``GET /calls`` (``limit``, ``next_cursor``), then reads one
listed call in full (``GET /calls/{id}``, a different call each time). Halfway between two
polls it times a ``GET /healthz``: that handler does nothing, so its latency on loopback is
how long the request waited for the server's event loop, a client-side probe of the loop
lag the polling causes (the server has no loop-lag metric of its own). The run's underruns
and jitter, measured by the callers as always, say what the polling cost the audio.

Figures (milliseconds, nearest-rank percentiles): ``list_ms`` per page request,
``detail_ms`` per call read, ``healthz_ms`` per probe, ``poll_late_ms`` how late this
poller woke (if that is large, the poller, not the server, was slow), the largest response
in bytes, and every status code seen.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from bench import load_report as rep

#: Pages followed per poll, at most (a bound on a broken cursor).
MAX_PAGES = 100


class ApiPoller:
    """Polls ``base_url``'s ``/calls`` at ``hz`` from ``t_start`` to ``t_end`` (monotonic)."""

    def __init__(self, base_url: str, hz: float, *, t_start: float, t_end: float,
                 token: str | None = None, limit: int = 50, max_polls: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < hz <= 100:
            raise ValueError(f"poll rate must be in (0, 100] Hz, got {hz}")
        self.base_url = base_url.rstrip("/")
        self.period = 1.0 / hz
        self.t_start, self.t_end = t_start, t_end
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.limit = limit
        self.max_polls = max_polls
        self.clock = clock
        self.list_ms: list[float] = []
        self.detail_ms: list[float] = []
        self.healthz_ms: list[float] = []
        self.poll_late_ms: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.max_bytes = 0
        self.max_listed = 0
        self.polls = 0
        self._next_detail = 0

    async def _get(self, http: aiohttp.ClientSession, path: str, into: list[float]
                   ) -> Any:
        t0 = time.perf_counter()
        try:
            async with http.get(self.base_url + path, headers=self.headers) as resp:
                body = await resp.read()
                into.append((time.perf_counter() - t0) * 1000.0)
                self.statuses[resp.status] += 1
                self.max_bytes = max(self.max_bytes, len(body))
                if resp.status != 200:
                    return None
                return await resp.json(content_type=None) if body else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self.errors[type(exc).__name__] += 1
            return None

    async def _poll(self, http: aiohttp.ClientSession) -> None:
        cursor = ""
        listed: list[str] = []
        for _ in range(MAX_PAGES):
            query = f"?limit={self.limit}" + (f"&cursor={cursor}" if cursor else "")
            doc = await self._get(http, "/calls" + query, self.list_ms)
            if not isinstance(doc, dict):
                break
            listed += [c.get("call_id") for c in doc.get("active", []) if isinstance(c, dict)]
            cursor = doc.get("next_cursor") or ""
            if not cursor:
                break
        self.max_listed = max(self.max_listed, len(listed))
        if listed:
            call_id = listed[self._next_detail % len(listed)]
            self._next_detail += 1
            await self._get(http, f"/calls/{call_id}", self.detail_ms)

    async def _sleep_until(self, t: float) -> float:
        """Sleep until monotonic ``t``; returns how late we woke (ms)."""
        delay = t - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        return max(0.0, (self.clock() - t) * 1000.0)

    async def run(self) -> dict[str, Any]:
        """Poll until ``t_end`` (or ``max_polls``); returns :meth:`result`."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            tick = self.t_start
            while tick < self.t_end and (self.max_polls is None
                                         or self.polls < self.max_polls):
                self.poll_late_ms.append(await self._sleep_until(tick))
                await self._poll(http)
                self.polls += 1
                half = tick + self.period / 2
                if half < self.t_end:
                    await self._sleep_until(half)
                    await self._get(http, "/healthz", self.healthz_ms)
                tick += self.period
                now = self.clock()
                if tick < now:  # a poll overran its period: skip, do not burst
                    tick = now
        return self.result()

    def result(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, Any]:
            return {"n": len(values),
                    **{f"p{q}": _r(rep.percentile(values, q)) for q in (50, 90, 99)},
                    "max": _r(max(values, default=None))}

        return {"hz": round(1.0 / self.period, 3), "polls": self.polls, "page_limit": self.limit,
                "list_ms": stats(self.list_ms), "detail_ms": stats(self.detail_ms),
                "healthz_ms": stats(self.healthz_ms), "poll_late_ms": stats(self.poll_late_ms),
                "max_response_bytes": self.max_bytes, "max_calls_listed": self.max_listed,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "errors": dict(self.errors)}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summary_line(poll: dict[str, Any]) -> str:
    """One line for the run's details: what the API cost and answered while polled."""
    def pq(name: str) -> str:
        s = poll[name]
        return f"p50 {s['p50']} p99 {s['p99']} max {s['max']} ms (n {s['n']})"

    return (f"  /calls polled at {poll['hz']} Hz ({poll['polls']} polls, pages of "
            f"{poll['page_limit']}, up to {poll['max_calls_listed']} calls listed, largest "
            f"answer {poll['max_response_bytes']} B, statuses {poll['statuses']}"
            f"{', errors ' + str(poll['errors']) if poll['errors'] else ''})\n"
            f"    list page {pq('list_ms')}\n    one call  {pq('detail_ms')}\n"
            f"    /healthz (loop-lag probe) {pq('healthz_ms')}\n"
            f"    poller wake-up lateness {pq('poll_late_ms')}")
