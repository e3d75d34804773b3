"""Who may send commands to the agent, and what is sent once: trusted caller numbers,
an optional PIN, and the normalised command text that dedupe compares.

Caller ID is spoofable, so a deployment can also require a DTMF PIN, checked once per
call: digits are collected until ``#`` or until as many digits as the PIN has were
pressed; ``*`` starts over. After ``max_attempts`` wrong entries the call is locked (no
commands for the rest of it). Digits are never logged. Pure: no I/O.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

__all__ = ["CallGate", "CallerPolicy", "HeldCommand", "PinCheck", "PinResult", "command_key",
           "party_number", "related"]

MAX_PIN_ATTEMPTS: Final = 3


class PinResult(StrEnum):
    """What one key press did to the PIN check."""

    IGNORED = "ignored"  # no PIN needed, already verified, or locked: the key is not for us
    COLLECTING = "collecting"
    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"  # this wrong entry used up the last attempt


class PinCheck:
    """One call's PIN entry. ``verified`` is true at once when no PIN is configured."""

    __slots__ = ("_digits", "_pin", "attempts", "locked", "max_attempts", "verified")

    def __init__(self, pin: str, *, max_attempts: int = MAX_PIN_ATTEMPTS) -> None:
        if pin and not (pin.isascii() and pin.isdigit()):
            raise ValueError("pin must be digits")
        self._pin = pin
        self._digits = ""
        self.max_attempts = max_attempts
        self.attempts = 0
        self.verified = not pin
        self.locked = False

    @property
    def required(self) -> bool:
        """A PIN is configured and not yet entered (and the call is not locked)."""
        return not self.verified and not self.locked

    def feed(self, key: str) -> PinResult:
        """One DTMF key (``0``-``9``, ``*``, ``#``; others ignored)."""
        if not self.required:
            return PinResult.IGNORED
        if key == "*":
            self._digits = ""
            return PinResult.COLLECTING
        if key == "#":
            return self._check() if self._digits else PinResult.COLLECTING
        if len(key) != 1 or not key.isdigit():
            return PinResult.IGNORED
        self._digits += key
        if len(self._digits) >= len(self._pin):
            return self._check()
        return PinResult.COLLECTING

    def _check(self) -> PinResult:
        entered, self._digits = self._digits, ""
        if hmac.compare_digest(entered.encode(), self._pin.encode()):
            self.verified = True
            return PinResult.OK
        self.attempts += 1
        if self.attempts >= self.max_attempts:
            self.locked = True
            return PinResult.LOCKED
        return PinResult.WRONG


def party_number(session: Any) -> str:
    """The other party of a call (``CallSession``): who called us (inbound), or whom we
    called (outbound); that number is what the allow list is checked against."""
    if str(getattr(session, "direction", "inbound")) == "outbound":
        return str(session.to_number or "")
    return str(session.from_number or "")


class CallerPolicy:
    """The trusted numbers (E.164) and the PIN; :meth:`pin_check` makes a call's check.

    An empty ``allowed_callers`` trusts nobody: commands need an explicit allow list.
    """

    __slots__ = ("_allowed", "pin")

    def __init__(self, allowed_callers: Iterable[str], pin: str = "") -> None:
        self._allowed = frozenset(n.strip() for n in allowed_callers if n.strip())
        self.pin = pin

    @property
    def allows_anyone(self) -> bool:
        """False when the allow list is empty (no caller may send commands)."""
        return bool(self._allowed)

    def caller_allowed(self, number: str | None) -> bool:
        """True if ``number`` is on the allow list (exact E.164 match)."""
        return number is not None and number.strip() in self._allowed

    def pin_check(self) -> PinCheck:
        return PinCheck(self.pin)


@dataclass(frozen=True, slots=True)
class HeldCommand:
    """A command asked for before the PIN was entered (runs once it is)."""

    command: str
    source: str
    at: float


class CallGate:
    """One call's permissions: is the other party trusted, the PIN check, a held command."""

    __slots__ = ("allowed", "held", "party", "pin", "refusal_logged")

    def __init__(self, policy: CallerPolicy, party: str) -> None:
        self.party = party
        self.allowed = policy.caller_allowed(party)
        self.pin = policy.pin_check()
        self.held: HeldCommand | None = None
        self.refusal_logged = False

    def first_refusal(self) -> bool:
        """True only the first time an untrusted party is refused (log and count it once)."""
        first = not self.refusal_logged
        self.refusal_logged = True
        return first

    def hold(self, command: str, source: str, at: float) -> bool:
        """Keep the latest command until the PIN is right; False if the call is locked."""
        if self.pin.locked:
            self.held = None
            return False
        self.held = HeldCommand(command, source, at)
        return True

    def take_held(self, now: float, ttl: float) -> HeldCommand | None:
        """The held command if it is younger than ``ttl`` seconds (it is let go either way)."""
        held, self.held = self.held, None
        return held if held is not None and now - held.at <= ttl else None


# -- what counts as the same command -------------------------------------------------------

_KEY_DROP = re.compile(r"[^\w\s]")


def command_key(text: str) -> str:
    """Normalised command text for dedupe: lower case, no punctuation, single spaces."""
    return " ".join(_KEY_DROP.sub("", text.lower()).split())


_STOPWORDS = frozenset({
    "the", "a", "an", "and", "or", "to", "of", "for", "on", "in", "at", "by", "my", "me", "i",
    "im", "you", "your", "that", "this", "it", "is", "are", "be", "please", "can", "could",
    "would", "will", "do", "just", "now", "with", "from", "about", "what", "whats", "some"})


def related(a: str, b: str) -> bool:
    """Do two commands share a content word (3+ letters, not a stopword)? Mode ``both``
    uses it so a tool call is matched only with a transcript turn about the same thing."""
    words_a = {w for w in command_key(a).split() if len(w) >= 3 and w not in _STOPWORDS}
    return any(w in words_a for w in command_key(b).split())
