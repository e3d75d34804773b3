"""Background tasks kept alive by a reference, in one place.

``asyncio`` keeps only a weak reference to a task: one nobody holds can be collected
mid-flight. :class:`TaskSet` holds each task it spawns until it is done, then logs and
counts an unexpected exception (``<name>.task.failed``, with the owner's log context, e.g.
its call id) instead of leaving it to "Task exception was never retrieved".
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from agentic_fast.core import metrics

__all__ = ["TaskSet"]


class TaskSet:
    """The background tasks of one owner (a call's bridge, a provider, a server)."""

    __slots__ = ("_expected", "_log", "_name", "_tasks")

    def __init__(self, name: str, log: Any = None, *,
                 expected: tuple[type[BaseException], ...] = ()) -> None:
        """``name`` prefixes the metric and the log event; ``log`` (a bound logger, with
        the owner's call id) reports failures; exceptions of the ``expected`` types are
        left to whoever awaits the task (not logged)."""
        self._name = name
        self._log = log
        self._expected = expected
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
              ) -> asyncio.Task[Any]:
        """Run ``coro`` as a task held until it is done."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or isinstance(exc, self._expected):
            return
        metrics.incr(self._name + ".task.failed")
        if self._log is not None:
            self._log.error(self._name + ".task.failed", task=task.get_name(),
                            error=repr(exc)[:300])

    def cancel_all(self) -> list[asyncio.Task[Any]]:
        """Cancel every running task but the current one; returns those cancelled."""
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me and not t.done()]
        for task in tasks:
            task.cancel()
        return tasks

    async def wait(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) for every task held now; their exceptions are
        reported, not raised."""
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def clear(self) -> None:
        """Forget every task (after they were cancelled and awaited)."""
        self._tasks.clear()

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Any:
        return iter(list(self._tasks))
