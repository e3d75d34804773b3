"""The server's side of the carriers' webhook routes: one :class:`ServerDesk` per app.

A carrier's routes (``Carrier.routes(desk)``) check signatures and speak the carrier's wire
format; every carrier-neutral decision is taken here: draining, replays (the replay guard),
admission (``calls.inbound``, rate limits), the call limit, stream tokens, pre-warming the
model's socket, and applying status changes to the call's record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from agentic_fast.call.admission import Admission, caller_tag, mask_number
from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.call.stream_token import StreamTokenSigner
from agentic_fast.carriers.base import (
    PARAM_CALL_ID,
    PARAM_TOKEN,
    Carrier,
    InboundDecision,
    StatusChange,
    StreamTarget,
)
from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.core.errors import CallLimitError, CallRefusedError
from agentic_fast.core.log import get_logger
from agentic_fast.core.tasks import TaskSet
from agentic_fast.server.replay_guard import ReplayGuard
from agentic_fast.server.workers import prefixed_url

__all__ = ["BUSY_TEXT", "DRAINING_TEXT", "REPLAYED_TEXT", "STORE_REFUSAL_TEXT", "ServerDesk"]

log = get_logger("server")

BUSY_TEXT = "Sorry, all our assistants are busy right now. Please call again later."
DRAINING_TEXT = "Sorry, this line is restarting. Please call again in a minute."
REPLAYED_TEXT = "This call is already connected."
#: Spoken when the call store cannot vouch for a new call (down, locked, full).
STORE_REFUSAL_TEXT = "Sorry, we cannot take your call right now. Please call again shortly."
#: The replay guard's kind for answered voice webhooks (keyed by the carrier's call id).
_VOICE = "voice"


class ServerDesk:
    """Implements :class:`~agentic_fast.carriers.base.CallDesk` over the app's services."""

    def __init__(self, config: Config, manager: CallManager, admission: Admission,
                 replays: ReplayGuard, tokens: StreamTokenSigner,
                 carriers: Mapping[str, Carrier],
                 prewarm: Callable[[CallSession], Any] | None = None,
                 store_ready: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.config = config
        self.manager = manager
        self.admission = admission
        self.replays = replays
        self.tokens = tokens
        self.carriers = carriers
        self._prewarm = prewarm
        #: whether the shared store can vouch for a new call (its checks), when there is one
        self.store_ready = store_ready
        self._draining = False
        #: put before the stream URL's path: names the worker that answered (``/w/<owner>``
        #: with several workers, see ``server/workers.py``); "" with one process
        self.stream_prefix = ""
        self._tasks = TaskSet("server.desk", log)

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value

    # -- streams -----------------------------------------------------------------------------

    def stream_target(self, carrier: str, session: CallSession,
                      carrier_call_id: str | None) -> StreamTarget:
        """Where ``session``'s media stream connects on ``carrier``, with our call id and a
        one-time stream token (bound to ``carrier_call_id`` when known)."""
        token = self.tokens.issue(session.call_id, carrier_call_id)
        target = self.carriers[carrier].stream_target(
            {PARAM_CALL_ID: session.call_id, PARAM_TOKEN: token})
        if self.stream_prefix:
            target = replace(target, url=prefixed_url(target.url, self.stream_prefix))
        return target

    # -- inbound -----------------------------------------------------------------------------

    async def incoming(self, carrier: str, carrier_call_id: str, caller: str, called: str
                       ) -> InboundDecision:
        manager = self.manager
        known = manager.get_by_sid(carrier_call_id) is not None
        if not known and self.replays.seen(carrier_call_id, _VOICE):
            # answered before, and the call has left memory (history, restart): no new call
            metrics.incr(f"{carrier}.webhook.replayed")
            log.warning("webhook.replayed", call_sid=carrier_call_id, source="replay_guard")
            return InboundDecision(say=REPLAYED_TEXT)
        if self._draining:
            metrics.incr("calls.refused.draining")
            log.info("call.refused", reason="draining", call_sid=carrier_call_id)
            return InboundDecision(say=DRAINING_TEXT)
        if not known:
            refusal = self.admission.admit(caller)
            if refusal is not None:
                metrics.incr(f"calls.refused.{refusal.reason}")
                emit = log.warning if refusal.busy else log.info
                emit("call.refused", reason=refusal.reason, call_sid=carrier_call_id,
                     caller=mask_number(caller),
                     caller_tag=caller_tag(self.admission.tag_key, caller))
                calls = self.config.calls
                if calls.refuse_with == "say":
                    return InboundDecision(say=calls.refuse_message)
                return InboundDecision(refuse="busy" if refusal.busy else "rejected")
            if self.store_ready is not None and not await self.store_ready():
                # the stream token's single use and the call's owner cannot be recorded
                metrics.incr("calls.refused.store_unavailable")
                log.warning("call.refused", reason="store_unavailable",
                            call_sid=carrier_call_id)
                return InboundDecision(say=STORE_REFUSAL_TEXT)
            known = manager.get_by_sid(carrier_call_id) is not None  # changed while we waited
        try:
            session = manager.create_inbound(carrier_call_id, caller, called, carrier=carrier)
        except CallLimitError:
            log.warning("call.refused", reason="limit", call_sid=carrier_call_id)
            return InboundDecision(refuse="busy", say=BUSY_TEXT)
        except CallRefusedError as exc:
            log.info("call.refused", reason=exc.reason, call_sid=carrier_call_id)
            return InboundDecision(say=DRAINING_TEXT)
        if not known:
            session.carrier = carrier
            self.replays.remember(carrier_call_id, _VOICE)
        if session.ended or session.stream_started:
            # a replay of a webhook we already answered: create nothing, connect nothing
            metrics.incr(f"{carrier}.webhook.replayed")
            log.warning("webhook.replayed", call_id=session.call_id, call_sid=carrier_call_id)
            return InboundDecision(say=REPLAYED_TEXT)
        try:
            target = self.stream_target(carrier, session, carrier_call_id)
        except Exception:
            manager.fail(session, "webhook-error")  # frees the call's slot at once
            raise
        return InboundDecision(target=target, call_id=session.call_id)

    def answered(self, call_id: str) -> None:
        session = self.manager.get(call_id)
        if session is None or self._prewarm is None:
            return
        try:
            self._prewarm(session)
        except Exception:  # only a head start: the bridge connects when the stream opens
            metrics.incr("bridge.prewarm.failed")
            session.log.exception("bridge.prewarm_failed")

    def answer_failed(self, call_id: str, reason: str) -> None:
        session = self.manager.get(call_id)
        if session is not None and not session.ended:
            self.manager.fail(session, reason)

    # -- progress ----------------------------------------------------------------------------

    def find(self, carrier_call_id: str, call_id: str | None = None) -> CallSession | None:
        session = self.manager.get_by_sid(carrier_call_id)
        if session is not None or not call_id:
            return session
        session = self.manager.get(call_id)
        if session is not None and session.call_sid is None:
            self.manager.attach_call_sid(session, carrier_call_id)
        return session if session is not None and session.call_sid == carrier_call_id else None

    def status(self, carrier_call_id: str, change: StatusChange,
               sequence: int | None = None, call_id: str | None = None, *,
               answered_by: str | None = None) -> bool:
        if answered_by:
            session = self.find(carrier_call_id, call_id)
            if session is not None:
                session.answered_by = answered_by[:64]
        if call_id is None:
            return self.manager.apply_status(carrier_call_id, change.status.value,
                                             reason=change.reason, sequence=sequence)
        session = self.find(carrier_call_id, call_id)
        if session is None:
            return False
        return self.manager.transition(session, change.status, reason=change.reason)

    def stream_failed(self, carrier_call_id: str, error: str, *, code: str | None = None,
                      stream_id: str | None = None) -> bool:
        session = self.manager.get_by_sid(carrier_call_id)
        if session is None:
            return False
        self.manager.stream_error(session, error, code=code, stream_sid=stream_id)
        return True

    def end_stream(self, carrier_call_id: str) -> None:
        session = self.manager.get_by_sid(carrier_call_id)
        sender = getattr(session.bridge, "sender", None) if session is not None else None
        if sender is not None:
            self._tasks.spawn(sender.close())

    def seen(self, carrier: str, key: str) -> bool:
        if self.replays.seen(key, carrier):
            return True
        self.replays.remember(key, carrier)
        return False

    async def close(self) -> None:
        await self._tasks.wait(timeout=5.0)
