"""The demo's timeline: what happened, when (seconds since the start), printed as it happens.

Every part of the demo (caller, stand-in model, stand-in agent) records its steps here;
the script waits for the steps it needs with :meth:`Timeline.wait` (event driven, no
polling), so a step that never comes is reported by name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

#: Step names, in the order a successful demo call records them.
STEPS = (
    "listening", "webhook", "twiml", "stream", "first_audio", "caller_speaks", "transcript",
    "tool_call", "command", "agent_answer", "answer_audio", "barge_in", "clear", "truncate",
    "hangup", "record",
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One recorded step: seconds since the start, its name, a line of text."""

    at: float
    step: str
    text: str


class Timeline:
    """Recorded steps; each is printed to ``out`` (``None``: silent) when recorded."""

    def __init__(self, out: TextIO | None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.out = out
        self.clock = clock
        self.t0 = clock()
        self.entries: list[Entry] = []
        self._events: dict[str, asyncio.Event] = {}

    def now(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.t0

    def mark(self, step: str, text: str) -> Entry:
        """Record ``step`` (the first time only) and print it."""
        found = self.get(step)
        if found is not None:
            return found
        entry = Entry(self.now(), step, text)
        self.entries.append(entry)
        self.say(f"{entry.at:7.3f} s  {step:<14} {text}")
        self._event(step).set()
        return entry

    def say(self, line: str) -> None:
        """Print a line (not a step)."""
        if self.out is not None:
            print(line, file=self.out, flush=True)

    def get(self, step: str) -> Entry | None:
        return next((e for e in self.entries if e.step == step), None)

    async def wait(self, step: str) -> Entry:
        """The entry of ``step`` once it is recorded."""
        await self._event(step).wait()
        entry = self.get(step)
        assert entry is not None
        return entry

    def _event(self, step: str) -> asyncio.Event:
        return self._events.setdefault(step, asyncio.Event())
