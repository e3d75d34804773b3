"""TaskSet: held tasks, failures logged and counted with the owner's context, cancel/wait."""

from __future__ import annotations

import asyncio
from typing import Any

from agentic_fast.core import metrics
from agentic_fast.core.tasks import TaskSet


class Log:
    """Records ``error`` calls as a bound logger would receive them."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.errors.append((event, fields))


async def test_a_failed_task_is_logged_and_counted_and_released() -> None:
    log = Log()
    tasks = TaskSet("owner", log)
    before = metrics.get("owner.task.failed")

    async def boom() -> None:
        raise RuntimeError("broken")

    task = tasks.spawn(boom(), name="boom")
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run one loop step after completion
    assert metrics.get("owner.task.failed") == before + 1
    assert log.errors == [("owner.task.failed", {"task": "boom",
                                                 "error": "RuntimeError('broken')"})]
    assert len(tasks) == 0


async def test_expected_exceptions_and_cancellation_are_not_reported() -> None:
    log = Log()
    tasks = TaskSet("owner2", log, expected=(ValueError,))

    async def refused() -> None:
        raise ValueError("the caller's business")

    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    tasks.spawn(refused())
    long = tasks.spawn(forever())
    await started.wait()
    assert tasks.cancel_all() == [long]
    await tasks.wait()
    await asyncio.sleep(0)
    assert long.cancelled() and len(tasks) == 0 and not log.errors
    assert metrics.get("owner2.task.failed") == 0


async def test_wait_is_bounded_and_skips_the_current_task() -> None:
    tasks = TaskSet("owner3")
    gate = asyncio.Event()

    async def waiter() -> None:
        await tasks.wait()  # would wait for itself without the current-task check
        gate.set()

    tasks.spawn(waiter())
    await asyncio.wait_for(gate.wait(), 5)
    blocked = tasks.spawn(asyncio.Event().wait())
    await tasks.wait(timeout=0.01)
    assert not blocked.done()
    tasks.cancel_all()
    await tasks.wait()
