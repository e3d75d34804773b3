"""Who gets a model session: the inbound policy and the call rates (``calls.*`` settings).

    admission = Admission(config.calls, clock=time.monotonic, tag_key=key)
    refusal = admission.admit(from_number)     # None: take the call; else refuse it
    refusal.reason                             # "not_allowed", "rate_per_caller", ...

Runs once per incoming-call webhook, before anything is registered or opened: a refused
caller costs no call slot, no stream token and no provider socket. The checks, in order:

1. ``calls.inbound``: ``open`` takes every caller, ``disabled`` none, ``allowlist`` only the
   E.164 numbers in ``calls.inbound_numbers`` (which defaults to ``brain.allowed_callers``).
2. ``calls.rate_limits.global_per_second``: at most M calls admitted in any 1 s window.
3. ``calls.rate_limits.per_caller_per_minute``: at most N calls admitted per caller number
   in any 60 s window.

Only admitted calls use up rate: a refused attempt (policy or rate) does not, so a caller
who redials after the window is answered. Both windows are exact sliding logs of admitted
times on an injected monotonic clock. Per-caller state is bounded: callers whose window has
passed are dropped as time moves on (oldest first, O(1) amortised), and at most
``max_tracked_callers`` are kept (beyond that the least recently admitted is forgotten,
counted); with a global rate of M/s at most 60*M callers can be in a window anyway.

Outbound calls placed through the ``/calls`` API are not checked here: the API is
authenticated, and the operator choosing whom to call is not the abuse this guards against.

Caller numbers are not written to logs in full: ``mask_number`` keeps the first two and
last two digits and ``caller_tag`` is a keyed hash (the same number always gives the same
tag under one key, so repeated refusals of one caller can be correlated).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agentic_fast.core import metrics
from agentic_fast.core.config import CallsConfig

__all__ = ["Admission", "Refusal", "caller_tag", "mask_number"]

#: Characters of a caller id kept as a rate-limit key (Twilio's ``From`` is an E.164
#: number, a ``client:``/``sip:`` address or ``anonymous``; longer input is cut).
_KEY_CHARS: Final = 64
_PER_CALLER_WINDOW_S: Final = 60.0
_GLOBAL_WINDOW_S: Final = 1.0
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused; ``busy`` refusals (rates) are answered as busy."""

    reason: str  # not_allowed | inbound_disabled | rate_global | rate_per_caller
    busy: bool = False


NOT_ALLOWED: Final = Refusal("not_allowed")
INBOUND_DISABLED: Final = Refusal("inbound_disabled")
RATE_GLOBAL: Final = Refusal("rate_global", busy=True)
RATE_PER_CALLER: Final = Refusal("rate_per_caller", busy=True)


def mask_number(number: str) -> str:
    """``+15551230000`` -> ``+15*******00``; other caller ids only by kind."""
    number = number.strip()
    if _E164.fullmatch(number):
        return number[:3] + "*" * (len(number) - 5) + number[-2:]
    if not number:
        return "(none)"
    scheme = number.partition(":")[0].lower() if ":" in number else ""
    return f"({scheme}:...)" if scheme in ("client", "sip") else "(not e164)"


def caller_tag(key: bytes, number: str) -> str:
    """A keyed hash of ``number`` (12 hex digits) to correlate log lines about one caller."""
    return hmac.new(key, number.strip().encode(), hashlib.sha256).hexdigest()[:12]


class Admission:
    """The inbound policy and the rate limits of one server (see the module docstring)."""

    __slots__ = ("_callers", "_clock", "_global", "_global_max", "_max_callers", "_numbers",
                 "_per_caller_max", "mode", "tag_key")

    def __init__(self, calls: CallsConfig, *, clock: Callable[[], float],
                 tag_key: bytes) -> None:
        self.mode = calls.inbound
        self._numbers = frozenset(calls.inbound_numbers)
        limits = calls.rate_limits
        self._global_max = limits.global_per_second
        self._per_caller_max = limits.per_caller_per_minute
        self._max_callers = limits.max_tracked_callers
        self._clock = clock
        self.tag_key = tag_key
        self._global: deque[float] = deque()
        # caller -> times it was admitted within the window; ordered by last admission
        self._callers: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def tracked_callers(self) -> int:
        """Callers with per-caller rate state held now (bounded)."""
        return len(self._callers)

    def admit(self, caller: str) -> Refusal | None:
        """``None`` (and the call is counted against the rates) or why it is refused."""
        caller = caller.strip()
        if self.mode == "disabled":
            return INBOUND_DISABLED
        if self.mode == "allowlist" and caller not in self._numbers:
            return NOT_ALLOWED
        now = self._clock()
        if self._global_max:
            window = self._global
            while window and now - window[0] >= _GLOBAL_WINDOW_S:
                window.popleft()
            if len(window) >= self._global_max:
                return RATE_GLOBAL
        if self._per_caller_max:
            key = caller[:_KEY_CHARS]
            times = self._caller_times(key, now)
            if len(times) >= self._per_caller_max:
                return RATE_PER_CALLER
            times.append(now)
            self._callers.move_to_end(key)  # the order stays that of the last admission
        if self._global_max:
            self._global.append(now)
        return None

    def _caller_times(self, key: str, now: float) -> deque[float]:
        """The caller's admitted times still in the window (state made and bounded here)."""
        callers = self._callers
        while callers:  # forget callers whose last admission left the window
            oldest = next(iter(callers.values()))
            if now - oldest[-1] < _PER_CALLER_WINDOW_S:
                break
            callers.popitem(last=False)
        times = callers.get(key)
        if times is None:
            if len(callers) >= self._max_callers:
                callers.popitem(last=False)
                metrics.incr("calls.rate_limit.callers_evicted")
            times = callers[key] = deque()
        else:
            while times and now - times[0] >= _PER_CALLER_WINDOW_S:
                times.popleft()
        return times
