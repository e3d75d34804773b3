"""Telnyx's webhook route, ``POST /telnyx/webhook``: every Call Control event.

The signature is checked first (Ed25519; without ``telnyx.public_key`` every webhook is
refused), then the event id against the desk's replay guard, so a replayed event changes
nothing:

* ``call.initiated`` of an incoming call: the desk decides (draining, admission, limits)
  and the call is answered with our media stream, or hung up;
* ``call.initiated`` (outgoing), ``call.answered``, ``call.hangup``: the call's lifecycle
  (a hang-up also closes the call's stream);
* ``streaming.failed``: recorded on the call (fails it before its stream started);
* ``call.speak.ended`` whose ``client_state`` is our hang-up marker (a refusal or goodbye
  we had spoken, carriers/telnyx/speak.py): the call is hung up. Stateless: any worker
  that gets it does this, whether or not it knows the call.

Telnyx always gets a 2xx for a verified event (it retries anything else), a 403 for a bad
signature and a 400 for an unusable body: never a 500.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from agentic_fast.carriers.base import PARAM_CALL_ID, CallDesk, Route, WebhookRequest
from agentic_fast.carriers.telnyx.media import decode_client_state, is_hangup_after_speak
from agentic_fast.carriers.telnyx.status import (
    TelnyxWebhook,
    map_event,
    parse_webhook,
)
from agentic_fast.core import metrics
from agentic_fast.core.errors import TelnyxApiError, TelnyxWebhookError
from agentic_fast.core.log import get_logger
from agentic_fast.server.client_address import client_address

if TYPE_CHECKING:
    from agentic_fast.carriers.telnyx.carrier import TelnyxCarrier

__all__ = ["TELNYX_WEBHOOK_PATH", "TelnyxWebhooks"]

log = get_logger("telnyx")

#: The event that ends a ``speak`` (the SDK has no ``call.speak.failed``; its ``status``
#: says how it ended: completed, call_hangup, cancelled_amd).
SPEAK_ENDED = "call.speak.ended"

TELNYX_WEBHOOK_PATH = "/telnyx/webhook"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class TelnyxWebhooks:
    """The webhook route of one :class:`TelnyxCarrier`, deciding through ``desk``."""

    __slots__ = ("carrier", "desk")

    def __init__(self, carrier: TelnyxCarrier, desk: CallDesk) -> None:
        self.carrier = carrier
        self.desk = desk

    def routes(self) -> list[Route]:
        return [("POST", TELNYX_WEBHOOK_PATH, self.webhook)]

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        """Every Call Control event; never a 500 (an unexpected failure is logged, counted
        and answered 200 so Telnyx does not retry into the same failure)."""
        try:
            return await self._webhook(request)
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception:
            metrics.incr("telnyx.webhook.failed")
            log.exception("telnyx.webhook_failed", path=request.path)
            return _json({"status": "error"})

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        verifier = self.carrier.verifier
        if verifier is None:
            metrics.incr("telnyx.webhook.refused.not_configured")
            log.error("telnyx.webhook.refused", reason="not_configured",
                      detail=self.carrier.verifier_problem)
            return _json({"error": "forbidden"}, 403)
        remote = client_address(request)
        check = verifier.verify(WebhookRequest(request.raw_path, request.headers, body,
                                               request.content_type, None, remote or ""))
        if not check:
            metrics.incr(f"telnyx.webhook.rejected.{check.reason}")
            log.warning("telnyx.webhook.rejected", reason=check.reason, path=request.path,
                        remote=remote, timestamp=check.timestamp)
            return _json({"error": "forbidden"}, 403)
        try:
            event = parse_webhook(body)
        except TelnyxWebhookError as exc:
            metrics.incr("telnyx.webhook.rejected.bad_body")
            log.warning("telnyx.webhook.rejected", reason="bad_body", field=exc.field,
                        detail=str(exc)[:200])
            return _json({"error": str(exc)}, 400)
        desk = self.desk
        if desk.seen("telnyx", event.event_id):
            metrics.incr("telnyx.webhook.replayed")
            log.warning("telnyx.webhook.replayed", event_id=event.event_id,
                        event_type=event.event_type, call_control_id=event.call_control_id,
                        remote=remote)
            return _json({"status": "duplicate"})
        metrics.incr(f"telnyx.webhook.{event.event_type}")
        if event.event_type == SPEAK_ENDED and is_hangup_after_speak(event.client_state):
            await self._spoken(event)
            return _json({"status": "ok"})
        if event.event_type == "call.initiated" and event.direction == "incoming":
            await self._incoming(event)
            return _json({"status": "ok"})
        ccid = event.call_control_id
        call_id = decode_client_state(event.client_state).get(PARAM_CALL_ID)
        session = desk.find(ccid, call_id)
        if session is None:
            metrics.incr("telnyx.webhook.unknown_call")
            log.info("telnyx.webhook.unknown_call", event_type=event.event_type,
                     call_control_id=ccid)
            return _json({"status": "ignored"})
        if event.event_type == "streaming.failed":
            metrics.incr("telnyx.stream_error")
            session.log.warning("stream.error", error=event.failure_reason,
                                stream_started=session.stream_started)
            desk.stream_failed(ccid, event.failure_reason or "streaming.failed")
            return _json({"status": "ok"})
        change = map_event(event, answered=session.answered_at is not None)
        if change is None:
            session.log.info("telnyx.event", event_type=event.event_type)
            return _json({"status": "ok"})
        applied = desk.status(ccid, change, call_id=session.call_id)
        session.log.info("status.callback", event_type=event.event_type,
                         hangup_cause=event.hangup_cause or None, applied=applied)
        if change.terminal:  # the call is over: the stream ends with it
            desk.end_stream(ccid)
        return _json({"status": "ok"})

    async def _spoken(self, event: TelnyxWebhook) -> None:
        """A line we spoke before hanging up has ended: hang up."""
        speaker = self.carrier.speaker
        if speaker is None:  # no REST client (no api_key): nothing can be hung up
            log.warning("telnyx.speak.ended_unhandled", call_control_id=event.call_control_id,
                        reason="not_configured")
            return
        await speaker.spoken(event.call_control_id, event.speak_status)

    async def _incoming(self, event: TelnyxWebhook) -> None:
        """A new incoming call: answer it with our stream, or hang it up."""
        ccid = event.call_control_id
        if self.desk.find(ccid) is not None:  # a retried call.initiated: answered already
            metrics.incr("telnyx.webhook.replayed")
            return
        decision = await self.desk.incoming("telnyx", ccid, event.from_number, event.to_number)
        answer = self.carrier.answer
        if decision.refuse is not None:
            await answer.refuse(ccid, decision.refuse, decision.say)
            return
        if decision.target is None:
            await answer.say_and_hang_up(ccid, decision.say or "")
            return
        assert decision.call_id is not None
        try:
            await answer.connect_stream(ccid, decision.target)
        except TelnyxApiError as exc:
            log.error("telnyx.answer_failed", call_control_id=ccid, code=exc.code,
                      error=str(exc)[:200])
            self.desk.answer_failed(decision.call_id, f"telnyx-error-{exc.code or 'network'}")
            return
        self.desk.answered(decision.call_id)
