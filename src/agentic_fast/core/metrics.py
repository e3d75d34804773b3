"""Process-wide counters: every rejection, overflow and drop is counted, never silent.

Deliberately tiny (a dict of ints behind a name) so the hot path pays one dict update.
"""

from __future__ import annotations

from collections import Counter
from threading import Lock

_counts: Counter[str] = Counter()
_lock = Lock()


def incr(name: str, amount: int = 1) -> None:
    """Add ``amount`` to counter ``name`` (e.g. ``twilio.media.rejected.bad_base64``)."""
    _counts[name] += amount


def get(name: str) -> int:
    """Current value of counter ``name`` (0 if never incremented)."""
    return _counts.get(name, 0)


def snapshot() -> dict[str, int]:
    """A copy of every counter, for ``/metrics`` style endpoints and tests."""
    with _lock:
        return dict(_counts)


def reset() -> None:
    """Zero every counter (tests only)."""
    with _lock:
        _counts.clear()
