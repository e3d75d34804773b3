"""Reconnect helpers shared by the provider connections (OpenAI, Gemini).

:class:`Backoff` paces reconnect attempts; :class:`ChunkBacklog` keeps the caller's latest
audio while no session is usable; :func:`carry_over_summary` seeds a new session with the
recent conversation. Nothing here does I/O or sleeps.

A :class:`Backoff` is an immutable policy; :meth:`Backoff.start` gives a :class:`BackoffRun`,
the state of one reconnect episode. Each :meth:`BackoffRun.next_delay` is the wait before the
next attempt, or ``None`` when the episode is over (attempts or total time exhausted)::

    run = backoff.start()
    while (delay := run.next_delay()) is not None:
        await asyncio.sleep(delay)
        try:
            return await open_socket()
        except PeerUnavailableError:
            continue
    give_up()

Delay before retry ``n`` (``n`` = 1, 2, ...) is ``uniform(0, min(max_delay_s, base_s *
factor ** (n - 1)))`` ("full jitter", AWS architecture blog): many calls dropped by the same
outage do not reconnect in lockstep. The first attempt is immediate when ``first_immediate``
(a dropped socket is usually back at once). ``max_total_s`` bounds the episode: an attempt
that would *start* after it is not made. ``rand`` and ``clock`` are injectable for tests.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["Backoff", "BackoffRun", "ChunkBacklog", "carry_over_summary"]

_MAX_EXPONENT = 64  # factor ** n beyond this is far above any sane max_delay_s


@dataclass(frozen=True, slots=True)
class Backoff:
    """Policy: exponential backoff with full jitter, bounded in attempts and total seconds."""

    base_s: float = 0.25
    factor: float = 2.0
    max_delay_s: float = 4.0
    max_attempts: int = 8
    max_total_s: float = 20.0
    first_immediate: bool = True
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"base_s and max_delay_s must be >= 0, got {self.base_s}, "
                             f"{self.max_delay_s}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_total_s <= 0:
            raise ValueError(f"max_total_s must be > 0, got {self.max_total_s}")

    def ceiling(self, retry: int) -> float:
        """Upper bound of the jittered delay before retry ``retry`` (1-based)."""
        exponent = min(max(retry - 1, 0), _MAX_EXPONENT)
        return min(self.max_delay_s, self.base_s * self.factor ** exponent)

    def start(self) -> BackoffRun:
        """A new episode, its clock started now."""
        return BackoffRun(self)


class BackoffRun:
    """One reconnect episode under a :class:`Backoff` policy."""

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
        if self.attempts >= p.max_attempts:
            return None
        if self.attempts == 0 and p.first_immediate:
            delay = 0.0
        else:
            retry = self.attempts if p.first_immediate else self.attempts + 1
            delay = p.rand() * p.ceiling(retry)
        if self.elapsed + delay > p.max_total_s:
            return None
        self.attempts += 1
        return delay

    def __iter__(self) -> Iterator[float]:
        while (delay := self.next_delay()) is not None:
            yield delay


class ChunkBacklog:
    """Bounded FIFO of text chunks (base64 audio) kept while a peer is away.

    Holds the newest ``max_chars`` worth; older chunks are dropped (``dropped`` counts them;
    the newest chunk is always kept). O(1) per push, no copy of the payload.
    """

    __slots__ = ("_chars", "_chunks", "dropped", "max_chars")

    def __init__(self, max_chars: int) -> None:
        self._chunks: deque[str] = deque()
        self._chars = 0
        self.max_chars = max_chars
        self.dropped = 0

    def push(self, chunk: str) -> int:
        """Append ``chunk``; returns how many old chunks this push dropped."""
        chunks = self._chunks
        chunks.append(chunk)
        self._chars += len(chunk)
        dropped = 0
        while self._chars > self.max_chars and len(chunks) > 1:
            self._chars -= len(chunks.popleft())
            dropped += 1
        self.dropped += dropped
        return dropped

    def drain(self) -> list[str]:
        """Every kept chunk, oldest first; the backlog is empty afterwards."""
        out = list(self._chunks)
        self._chunks.clear()
        self._chars = 0
        return out

    def __len__(self) -> int:
        return len(self._chunks)


def carry_over_summary(lines: Sequence[tuple[str, str]], opening: str | None = None,
                       max_chars: int = 2000) -> str | None:
    """System text that seeds a renewed session (its context cannot be copied over).

    ``lines``: ``(role, text)`` transcript lines, oldest first, ``role`` ``user`` or
    ``assistant``; the most recent that fit in ``max_chars`` are kept. ``opening``: the
    call's first instruction (why we called). None when there is nothing to carry.
    """
    if not lines and not opening:
        return None
    kept: list[str] = []
    total = 0
    for role, text in reversed(lines):
        line = f"{'Caller' if role == 'user' else 'Assistant'}: {text}"
        if total + len(line) > max_chars:
            break
        kept.append(line)
        total += len(line) + 1
    kept.reverse()
    parts = ["This phone call continues from an earlier session that had to be renewed."]
    if opening:
        parts.append(f"The call opened with this instruction: {opening[:500]}")
    if kept:
        parts.append("The most recent turns, oldest first:\n" + "\n".join(kept))
    parts.append("Continue naturally from here: do not greet the caller again and do not "
                 "mention the renewal.")
    return "\n".join(parts)
