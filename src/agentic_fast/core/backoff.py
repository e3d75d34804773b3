"""One reconnect/retry policy for every peer (model sockets, the OpenClaw gateway).

A :class:`Backoff` is an immutable policy; :meth:`Backoff.start` gives a :class:`BackoffRun`,
the state of one episode. Each :meth:`BackoffRun.next_delay` is the wait before the next
attempt, or ``None`` when the episode is over (attempts or total time exhausted)::

    run = backoff.start()
    while (delay := run.next_delay()) is not None:
        await asyncio.sleep(delay)
        try:
            return await open_socket()
        except PeerUnavailableError:
            continue
    give_up()

The ceiling before retry ``n`` (``n`` = 1, 2, ...) is ``min(max_delay_s, base_s * factor **
(n - 1))``. Two jitter behaviours, chosen by ``jitter``:

- ``None`` (the default, for many calls dropped by one outage): "full jitter" (AWS
  architecture blog), ``uniform(0, ceiling)``, so they do not reconnect in lockstep;
- a fraction ``j`` (one long-lived client, the gateway): the ceiling scaled by ``1 +- j``
  (never above ``max_delay_s``).

The first attempt is immediate when ``first_immediate`` (a dropped socket is usually back at
once). ``max_attempts`` and ``max_total_s`` bound the episode (``None``: unbounded, see
:meth:`Backoff.endless`); an attempt that would *start* after ``max_total_s`` is not made.
``rand`` and ``clock`` are injectable for tests. Nothing here does I/O or sleeps.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Backoff", "BackoffRun"]

_MAX_EXPONENT = 64  # factor ** n beyond this is far above any sane max_delay_s


@dataclass(frozen=True, slots=True)
class Backoff:
    """Policy: exponential backoff with jitter, optionally bounded in attempts and seconds."""

    base_s: float = 0.25
    factor: float = 2.0
    max_delay_s: float = 4.0
    max_attempts: int | None = 8
    max_total_s: float | None = 20.0
    first_immediate: bool = True
    jitter: float | None = None
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"base_s and max_delay_s must be >= 0, got {self.base_s}, "
                             f"{self.max_delay_s}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_total_s is not None and self.max_total_s <= 0:
            raise ValueError(f"max_total_s must be > 0, got {self.max_total_s}")
        if self.jitter is not None and not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    @classmethod
    def endless(cls, base_s: float = 1.0, max_delay_s: float = 30.0, *, factor: float = 2.0,
                jitter: float = 0.2, rand: Callable[[], float] = random.random) -> Backoff:
        """A policy that never gives up: ``base_s`` first, growing to ``max_delay_s``, each
        delay scaled by ``1 +- jitter`` (a long-lived client such as the gateway's)."""
        return cls(base_s=base_s, factor=factor, max_delay_s=max_delay_s, max_attempts=None,
                   max_total_s=None, first_immediate=False, jitter=jitter, rand=rand)

    def ceiling(self, retry: int) -> float:
        """Upper bound of the delay before retry ``retry`` (1-based), before jitter."""
        exponent = min(max(retry - 1, 0), _MAX_EXPONENT)
        return min(self.max_delay_s, self.base_s * self.factor ** exponent)

    def delay(self, retry: int) -> float:
        """The jittered delay before retry ``retry`` (1-based)."""
        ceiling = self.ceiling(retry)
        if self.jitter is None:
            return self.rand() * ceiling
        scaled = ceiling * (1.0 + self.jitter * (2.0 * self.rand() - 1.0))
        return min(self.max_delay_s, max(0.0, scaled))

    def start(self) -> BackoffRun:
        """A new episode, its clock started now."""
        return BackoffRun(self)

    def delays(self) -> Iterator[float]:
        """The delays of a new episode, as an iterator (endless for :meth:`endless`)."""
        return iter(self.start())


class BackoffRun:
    """One episode under a :class:`Backoff` policy."""

    __slots__ = ("attempts", "policy", "started")

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy
        self.attempts = 0
        self.started = policy.clock()

    @property
    def elapsed(self) -> float:
        """Seconds since the episode started (by the policy's clock)."""
        return self.policy.clock() - self.started

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None: give up (counts the attempt)."""
        p = self.policy
        if p.max_attempts is not None and self.attempts >= p.max_attempts:
            return None
        if self.attempts == 0 and p.first_immediate:
            delay = 0.0
        else:
            delay = p.delay(self.attempts if p.first_immediate else self.attempts + 1)
        if p.max_total_s is not None and self.elapsed + delay > p.max_total_s:
            return None
        self.attempts += 1
        return delay

    def __iter__(self) -> Iterator[float]:
        while (delay := self.next_delay()) is not None:
            yield delay
