"""Process-wide counters and event timings: every rejection, overflow and drop is counted.

Deliberately tiny so the hot path pays one dict update per :func:`incr`. The Prometheus
exposition (``/metrics``) reads these at scrape time (``core/metrics_export``); nothing here
imports ``prometheus_client``.

Timings (:func:`observe`) go to histograms that ``metrics_export.configure`` registers by
name; until then, or with ``metrics.enabled: false``, an observation is one dict miss.
Per-frame code never observes: it samples one frame in :func:`sample_every` (0: never).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from threading import Lock

_counts: Counter[str] = Counter()
_lock = Lock()

#: histogram name -> observe(seconds, label); filled by ``metrics_export.configure``
_observers: dict[str, Callable[[float, str], None]] = {}
#: one frame in N of the audio path is timed (0: none); see ``metrics.latency_sample_every``
_sample_every = 0


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


def observe(name: str, seconds: float, label: str = "") -> None:
    """Record a duration in histogram ``name`` (``first_audio``, ``barge_in``...), with its
    one label value when the histogram has a label (``status``, ``direction``). A no-op
    while no histogram of that name is registered (metrics disabled)."""
    fn = _observers.get(name)
    if fn is not None:
        fn(seconds, label)


def sample_every() -> int:
    """Time one audio frame in this many (0: never); read once per call by the bridge."""
    return _sample_every


def set_observers(observers: dict[str, Callable[[float, str], None]],
                  sample_every: int) -> None:
    """Install the histograms and the sampling rate (``metrics_export.configure``)."""
    global _sample_every
    _observers.clear()
    _observers.update(observers)
    _sample_every = sample_every
