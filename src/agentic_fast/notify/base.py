"""What a destination (webhook, Telegram) is given and what it answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt: the call's record, its summary, the outbox id
    (stable across attempts: the receiver's idempotency key) and how far an earlier
    attempt got (``progress``: Telegram messages already sent)."""

    id: int
    call_id: str
    record: dict[str, Any]
    summary: str
    progress: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """``ok``; else retry (after ``retry_after`` s if the peer said so) unless
    ``permanent``. ``progress`` is kept for the next attempt."""

    ok: bool
    error: str = ""
    permanent: bool = False
    retry_after: float | None = None
    progress: int = 0


class Destination(Protocol):
    """A place deliveries go (``name`` is its key in the outbox)."""

    @property
    def name(self) -> str: ...

    async def deliver(self, delivery: Delivery, http: aiohttp.ClientSession) -> Outcome: ...
