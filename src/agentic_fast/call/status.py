"""Our call lifecycle: one ``CallStatus`` and the table of allowed moves (h11 ``_state.py``).

Every carrier's status mapping maps *into* :class:`CallStatus` (Twilio's in
``carriers/twilio/status.py``); the manager applies the result with :func:`check_transition`.
The values are what ``GET /calls`` returns in ``status``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "TERMINAL_STATES",
    "TRANSITIONS",
    "UNANSWERED_REASONS",
    "CallStatus",
    "Transition",
    "check_transition",
]


class CallStatus(StrEnum):
    """Our lifecycle states; a carrier's own call statuses map onto these."""

    INITIATING = "initiating"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


# ---------------------------------------------------------------------------------------------
# Lifecycle theory (after h11's _state.py).
#
# A call moves forward only: INITIATING -> RINGING -> IN_PROGRESS -> {COMPLETED, FAILED}.
# Every forward move may skip states, because the evidence for a state can be missing or late:
# a call answered before its "ringing" callback arrived jumps INITIATING -> IN_PROGRESS; a
# "completed" callback that overtook "answered" jumps RINGING -> COMPLETED. The two terminal
# states are absorbing.
#
# Twilio delivers status callbacks at least once and not in order (protocols.md 1.7, 1.9), so a
# status that is not ahead of the current one is *stale*: a duplicate or a late arrival. It is
# logged and counted, never raised into the web handler. A move that goes forward but is not
# in the table is *invalid* (today: an answered call cannot end as busy/no-answer/canceled);
# it is logged at warning level and counted, and the state does not change.
#
# The table below is the whole policy; ``check_transition`` only reads it.
# ---------------------------------------------------------------------------------------------

TERMINAL_STATES: Final = frozenset({CallStatus.COMPLETED, CallStatus.FAILED})

TRANSITIONS: Final[dict[CallStatus, frozenset[CallStatus]]] = {
    CallStatus.INITIATING: frozenset({
        CallStatus.RINGING, CallStatus.IN_PROGRESS, CallStatus.COMPLETED, CallStatus.FAILED,
    }),
    CallStatus.RINGING: frozenset({
        CallStatus.IN_PROGRESS, CallStatus.COMPLETED, CallStatus.FAILED,
    }),
    CallStatus.IN_PROGRESS: frozenset({CallStatus.COMPLETED, CallStatus.FAILED}),
    CallStatus.COMPLETED: frozenset(),
    CallStatus.FAILED: frozenset(),
}

# Failure reasons that mean "never answered": valid only from states before IN_PROGRESS.
UNANSWERED_REASONS: Final = frozenset({"busy", "no-answer", "canceled"})
_BEFORE_ANSWER: Final = frozenset({CallStatus.INITIATING, CallStatus.RINGING})

# Progress rank, used only to tell a stale status (not ahead) from an invalid one.
_RANK: Final = {
    CallStatus.INITIATING: 0,
    CallStatus.RINGING: 1,
    CallStatus.IN_PROGRESS: 2,
    CallStatus.COMPLETED: 3,
    CallStatus.FAILED: 3,
}


class Transition(StrEnum):
    """What ``check_transition`` decided."""

    APPLY = "apply"
    STALE = "stale"  # duplicate or late: ignore quietly
    INVALID = "invalid"  # forward but not allowed: ignore loudly


def check_transition(current: CallStatus, target: CallStatus,
                     reason: str | None = None) -> Transition:
    """Classify ``current -> target`` (with a failure ``reason``) against ``TRANSITIONS``."""
    if target in TRANSITIONS[current]:
        if (target is CallStatus.FAILED and reason in UNANSWERED_REASONS
                and current not in _BEFORE_ANSWER):
            return Transition.INVALID
        return Transition.APPLY
    if current.terminal or _RANK[target] <= _RANK[current]:
        return Transition.STALE
    return Transition.INVALID  # pragma: no cover - every forward move is in the table today
