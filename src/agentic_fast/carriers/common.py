"""What every carrier object holds the same way: :class:`CarrierParts`.

A carrier (``carriers/<name>/carrier.py``) builds its webhook verifier, its call-control
client and its inbound answer from the config, then hands them to this base, which serves
the read-only members of :class:`~agentic_fast.carriers.base.Carrier` (``verifier``,
``verifier_problem``, ``control``, ``answer``) and closes the REST client it was told it
owns. What differs (streams, routes, status mapping, URLs) stays in the carrier.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from agentic_fast.carriers.base import CallControl, InboundAnswer, WebhookVerifier

__all__ = ["CarrierParts", "Closable"]


class Closable(Protocol):
    """A client with an async ``close`` (a carrier's REST client)."""

    async def close(self) -> None: ...


V = TypeVar("V", bound=WebhookVerifier)
C = TypeVar("C", bound=CallControl)
A = TypeVar("A", bound=InboundAnswer)


class CarrierParts(Generic[V, C, A]):
    """The verifier (or why there is none), the call control (None without credentials),
    the inbound answer, and the client :meth:`close` releases (one we built, not one we
    were given)."""

    def __init__(self, *, verifier: V | None, verifier_problem: str | None,
                 control: C | None, answer: A, owned: Closable | None) -> None:
        self._verifier = verifier
        self._problem = verifier_problem
        self._control = control
        self._answer = answer
        self._owned = owned

    @property
    def verifier(self) -> V | None:
        return self._verifier

    @property
    def verifier_problem(self) -> str | None:
        return self._problem

    @property
    def control(self) -> C | None:
        return self._control

    @property
    def answer(self) -> A:
        return self._answer

    async def close(self) -> None:
        if self._owned is not None:
            await self._owned.close()
