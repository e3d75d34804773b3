"""One 20 ms clock for every call's outbound audio (not a timer per call).

Each tick the pacer lets every registered bridge send what it may (``pump``): bridges keep
a small bounded lead over the caller's playout, so a barge-in has little to clear and a
slow socket never holds more than that lead. The loop corrects drift against the event
loop's monotonic clock and counts ticks it ran late.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from agentic_fast.core import metrics
from agentic_fast.core.log import get_logger

log = get_logger("pacer")

TICK_S = 0.020


class Pumped(Protocol):
    """A bridge as the pacer sees it."""

    @property
    def wants_pump(self) -> bool:
        """True while outbound frames are queued."""

    def pump(self, now: float) -> None:
        """Send the frames due at loop time ``now`` (synchronous writes; never waits)."""


class SharedPacer:
    """Ticks every ``tick_s`` while any bridge is registered; stops when none are."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._members: dict[int, Pumped] = {}
        self._busy: dict[int, Pumped] = {}  # members with frames queued: the tick's work
        self._task: asyncio.Task[None] | None = None
        self.late_ticks = 0
        #: Loop time of the next tick while ticking (None when stopped): bridges put their
        #: frame boundaries between ticks with it (``AudioBridge.pump``).
        self.next_tick: float | None = None

    def __len__(self) -> int:
        return len(self._members)

    def register(self, member: Pumped) -> None:
        self._members[id(member)] = member
        if member.wants_pump:
            self._busy[id(member)] = member
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pacer")

    def unregister(self, member: Pumped) -> None:
        self._members.pop(id(member), None)
        self._busy.pop(id(member), None)

    def kick(self, member: Pumped) -> None:
        """``member`` has frames again (its queue was empty): ticks pump it until it is
        empty, and it is pumped now rather than at the next tick (its first frame should
        not wait up to 20 ms)."""
        if id(member) not in self._members:
            return
        self._busy[id(member)] = member
        asyncio.get_running_loop().call_soon(self._pump_now, member)

    def _pump_now(self, member: Pumped) -> None:
        if id(member) not in self._members:
            return
        try:
            member.pump(asyncio.get_running_loop().time())
        except Exception:
            metrics.incr("pacer.pump.error")
            log.exception("pacer.pump_error")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.tick_s
        deadline = loop.time()
        try:
            await self._ticks(loop, tick, deadline)
        finally:
            self.next_tick = None  # stopped or cancelled: no grid to align to

    async def _ticks(self, loop: asyncio.AbstractEventLoop, tick: float,
                     deadline: float) -> None:
        while self._members:
            now = loop.time()
            busy = self._busy
            for key, member in list(busy.items()):
                try:
                    member.pump(now)
                except Exception:
                    metrics.incr("pacer.pump.error")
                    log.exception("pacer.pump_error")
                if not member.wants_pump:
                    busy.pop(key, None)
            deadline += tick
            delay = deadline - loop.time()
            if delay < 0:
                self.late_ticks += 1
                metrics.incr("pacer.late_ticks")
                if delay < -tick:  # fell behind by more than a tick: resynchronise
                    deadline = loop.time()
                    delay = 0.0
            self.next_tick = deadline
            await asyncio.sleep(max(delay, 0.0))
