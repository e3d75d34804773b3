"""Reconnect helpers shared by the provider connections.

:class:`ChunkBacklog` keeps the caller's latest audio while no session is usable;
:func:`carry_over_summary` seeds a new session with the recent conversation. Nothing here
does I/O. The reconnect pacing itself is :class:`agentic_fast.core.backoff.Backoff`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = ["ChunkBacklog", "carry_over_summary"]


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
