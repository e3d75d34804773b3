"""SharedPacer: one clock for every call; only calls with queued frames are pumped."""

from __future__ import annotations

import asyncio

from agentic_fast.call.pacer import SharedPacer
from agentic_fast.core import metrics


class Member:
    """Pops one queued frame per pump; resolves ``drained`` when the queue is empty."""

    def __init__(self, frames: int = 0, fail: bool = False) -> None:
        self.frames = frames
        self.fail = fail
        self.pumps: list[float] = []
        self.drained = asyncio.get_running_loop().create_future()

    @property
    def wants_pump(self) -> bool:
        return self.frames > 0

    def pump(self, now: float) -> None:
        self.pumps.append(now)
        if self.fail:
            raise RuntimeError("boom")
        if self.frames:
            self.frames -= 1
        if not self.frames and not self.drained.done():
            self.drained.set_result(len(self.pumps))


async def test_a_kicked_member_is_pumped_every_tick_until_empty_then_left_alone() -> None:
    pacer = SharedPacer(tick_s=0.002)
    idle, busy = Member(), Member()
    pacer.register(idle)
    pacer.register(busy)
    busy.frames = 5
    pacer.kick(busy)
    assert await asyncio.wait_for(busy.drained, 5) == 5
    ticks_after = len(busy.pumps)
    # more ticks pass: the drained member is no longer pumped, the idle one never was
    other = Member(frames=3)
    pacer.register(other)
    await asyncio.wait_for(other.drained, 5)
    assert len(busy.pumps) == ticks_after
    assert idle.pumps == []
    await pacer.close()


async def test_kick_pumps_before_the_next_tick() -> None:
    pacer = SharedPacer(tick_s=3600.0)  # the tick never comes within the test
    member = Member()
    pacer.register(member)
    await asyncio.sleep(0)  # the first tick (at registration) has run
    member.frames = 1
    pacer.kick(member)
    assert await asyncio.wait_for(member.drained, 5) == 1
    await pacer.close()


async def test_a_member_registered_with_frames_is_pumped_without_a_kick() -> None:
    pacer = SharedPacer(tick_s=0.002)
    member = Member(frames=2)
    pacer.register(member)
    assert await asyncio.wait_for(member.drained, 5) == 2
    await pacer.close()


async def test_unregistered_members_are_not_pumped_even_when_kicked() -> None:
    pacer = SharedPacer(tick_s=0.002)
    gone, witness = Member(frames=1), Member(frames=3)
    pacer.register(witness)
    pacer.kick(gone)  # never registered
    pacer.register(gone)
    pacer.unregister(gone)
    pacer.kick(gone)
    await asyncio.wait_for(witness.drained, 5)
    assert gone.pumps == []
    await pacer.close()


async def test_a_failing_pump_is_counted_and_does_not_stop_the_others() -> None:
    before = metrics.get("pacer.pump.error")
    pacer = SharedPacer(tick_s=0.002)
    bad, good = Member(frames=1, fail=True), Member(frames=4)
    pacer.register(bad)
    pacer.register(good)
    await asyncio.wait_for(good.drained, 5)
    assert len(bad.pumps) >= 1
    assert metrics.get("pacer.pump.error") > before
    await pacer.close()


async def test_next_tick_is_the_coming_deadline_while_ticking_and_none_after() -> None:
    pacer = SharedPacer(tick_s=3600.0)
    assert pacer.next_tick is None
    member = Member()
    pacer.register(member)
    await asyncio.sleep(0)  # the first tick (at registration) has run
    loop = asyncio.get_running_loop()
    assert pacer.next_tick is not None
    assert 3599.0 < pacer.next_tick - loop.time() <= 3600.0
    await pacer.close()
    assert pacer.next_tick is None
