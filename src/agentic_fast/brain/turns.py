"""Turn assembly and conversation memory (pure: no I/O, no clock of its own).

A transcription model may hand a caller's turn over in pieces (Gemini sends fragments,
OpenAI one final transcript per VAD segment). :class:`TurnAssembler` joins the pieces and
says when the turn is over: at once when a piece ends a sentence, otherwise after
``gap_s`` without a new piece (the brain arms a timer at :attr:`TurnAssembler.due`), or
when the assistant starts answering. :class:`ConversationMemory` keeps the last turns of
both sides as context for intent analysis. :class:`CallState` is everything the brain keeps
per call (data only: the brain's workers drive it).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from agentic_fast.brain.policy import CallGate, related
from agentic_fast.core.log import BoundLogger

if TYPE_CHECKING:
    from agentic_fast.call.manager import CallSession

__all__ = [
    "ASSISTANT",
    "CALLER",
    "AssistantTurn",
    "CallState",
    "Command",
    "ConversationMemory",
    "Digit",
    "MemoryTurn",
    "QueueItem",
    "ToolCall",
    "TurnAssembler",
    "UserTurn",
    "normalise_role",
]

CALLER: Final = "caller"
ASSISTANT: Final = "assistant"
_ROLES: Final = {"user": CALLER, "caller": CALLER, "assistant": ASSISTANT, "agent": ASSISTANT,
                 "model": ASSISTANT}
_SPACES = re.compile(r"\s+")
# a piece that ends like this ends the turn (closing quotes/brackets allowed after the mark)
_SENTENCE_END = re.compile(r"[.?!…][\"'”’)\]]*\s*$")
MAX_TURN_CHARS: Final = 4000


def normalise_role(role: str) -> str:
    """``user``/``caller`` -> ``caller``; ``assistant``/``agent``/``model`` -> ``assistant``."""
    try:
        return _ROLES[role.lower()]
    except KeyError:
        raise ValueError(f"unknown transcript role {role!r:.40}") from None


def _join(text: str, piece: str) -> str:
    if not text:
        return piece
    if text[-1].isspace() or piece[0].isspace():
        return text + piece
    return f"{text} {piece}"


class TurnAssembler:
    """Joins one speaker's transcript pieces into a turn.

    ``add`` returns the finished turn when the piece ends a sentence (or ``gap_s`` is 0);
    otherwise the turn stays open until ``flush`` (the brain calls it at ``due``, or when
    the other side speaks). Turns longer than ``MAX_TURN_CHARS`` are flushed as they are.
    """

    __slots__ = ("_due", "_parts", "gap_s")

    def __init__(self, gap_s: float) -> None:
        if gap_s < 0:
            raise ValueError(f"gap_s must be >= 0, got {gap_s}")
        self.gap_s = gap_s
        self._parts = ""
        self._due: float | None = None

    @property
    def pending(self) -> bool:
        """True while an unfinished turn is held."""
        return bool(self._parts)

    @property
    def due(self) -> float | None:
        """Monotonic time at which the open turn should be flushed (None: nothing open)."""
        return self._due

    def add(self, piece: str, now: float) -> str | None:
        """Add a transcript piece received at ``now``; the finished turn, if this ends it."""
        if not piece.strip():
            return None
        self._parts = _join(self._parts, piece)
        if (self.gap_s == 0 or _SENTENCE_END.search(self._parts)
                or len(self._parts) >= MAX_TURN_CHARS):
            return self.flush()
        self._due = now + self.gap_s
        return None

    def flush(self) -> str | None:
        """The open turn (whitespace collapsed), or None; the assembler is empty after."""
        text = _SPACES.sub(" ", self._parts).strip()
        self._parts = ""
        self._due = None
        return text[:MAX_TURN_CHARS] or None


@dataclass(frozen=True, slots=True)
class MemoryTurn:
    """One remembered turn: ``role`` is ``caller`` or ``assistant``."""

    role: str
    text: str


class ConversationMemory:
    """The last ``max_turns`` turns of both sides, oldest first."""

    __slots__ = ("_turns",)

    def __init__(self, max_turns: int) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self._turns: deque[MemoryTurn] = deque(maxlen=max_turns)

    def __len__(self) -> int:
        return len(self._turns)

    def add(self, role: str, text: str) -> None:
        """Remember a turn (``role``: any name :func:`normalise_role` knows)."""
        text = _SPACES.sub(" ", text).strip()
        if text:
            self._turns.append(MemoryTurn(normalise_role(role), text[:MAX_TURN_CHARS]))

    def recent(self) -> tuple[MemoryTurn, ...]:
        """Every remembered turn, oldest first."""
        return tuple(self._turns)

    @property
    def last_assistant(self) -> str | None:
        """The assistant's latest turn, if it was the last thing said before the caller's."""
        if self._turns and self._turns[-1].role == ASSISTANT:
            return self._turns[-1].text
        return None


# -- a call's state in the brain: its ordered queue of events, commands, memory --------------

class UserTurn(NamedTuple):
    text: str
    at: float  # monotonic time of the turn's last piece


class AssistantTurn(NamedTuple):
    text: str


class Digit(NamedTuple):
    digit: str


class ToolCall(NamedTuple):
    call_id: str
    command: str
    at: float  # monotonic time the tool call arrived


QueueItem = UserTurn | AssistantTurn | Digit | ToolCall
RECENT_COMMANDS: Final = 32


@dataclass(slots=True, eq=False)
class Command:
    """One command on its way to the agent; ``record`` is its dict on the ``CallSession``."""

    text: str
    key: str  # normalised text (dedupe)
    source: str  # transcript | tool
    at: float  # when the turn / tool call that asked for it arrived
    started: float
    record: dict[str, Any]
    tool_call_ids: list[str] = field(default_factory=list)  # tool calls awaiting the answer
    task: asyncio.Task[None] | None = None
    status: str | None = None  # set once: done|error|timeout|unavailable|cancelled|aborted
    spoken: str = ""
    linked: bool = False  # mode both: a tool call and a transcript turn were matched


class CallState:
    """The brain's state of one call; one worker at a time handles its ``pending`` events."""

    __slots__ = ("abort_reason", "assembler", "closed", "flush_timer", "gate", "inflight",
                 "last_piece_at", "log", "memory", "pending", "recent", "scheduled", "session",
                 "tool_calls")

    def __init__(self, session: CallSession, gate: CallGate, gap_s: float,
                 memory_turns: int) -> None:
        self.session = session
        self.log: BoundLogger = session.log
        self.gate = gate
        self.assembler = TurnAssembler(gap_s)
        self.memory = ConversationMemory(memory_turns)
        self.pending: deque[QueueItem] = deque()
        self.scheduled = False  # in the ready queue or held by a worker
        self.closed = False
        self.flush_timer: asyncio.TimerHandle | None = None
        self.last_piece_at = 0.0
        self.inflight: Command | None = None
        self.abort_reason: str | None = None
        self.recent: deque[Command] = deque(maxlen=RECENT_COMMANDS)
        # mode both: (arrival time, command) of tool calls not matched with a turn yet
        self.tool_calls: deque[tuple[float, str]] = deque(maxlen=8)

    def duplicate_of(self, key: str, now: float, window: float) -> Command | None:
        """The command with normalised text ``key`` started within ``window`` s that is in
        flight or done, if any (a failed or aborted one may be asked for again)."""
        for cmd in reversed(self.recent):
            if now - cmd.started > window:
                return None
            if cmd.key == key and cmd.status in (None, "done"):
                return cmd
        return None

    def take_tool_call_near(self, at: float, window: float, turn: str) -> bool:
        """Mode both: consume an unmatched tool call that came within ``window`` s of
        ``at`` about the same thing as ``turn`` (the model delegated that turn)."""
        for entry in self.tool_calls:
            if abs(entry[0] - at) <= window and related(entry[1], turn):
                self.tool_calls.remove(entry)
                return True
        return False
