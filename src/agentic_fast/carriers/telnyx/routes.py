"""Telnyx's HTTP side of the server: the signed webhook, outbound placement, hang-up.

``POST /telnyx/webhook`` takes every Call Control event (signature checked first, then the
event id against the replay guard, so a replayed event changes nothing):

* ``call.initiated`` of an incoming call: admission as for Twilio, then ``answer`` with
  our media stream (``stream_url`` = ``/telnyx/media-stream``, ``client_state`` = our call
  id and a single-use stream token bound to the ``call_control_id``); a refused call is
  hung up;
* ``call.initiated`` (outgoing), ``call.answered``, ``call.hangup``: the call's lifecycle;
* ``streaming.failed``: recorded on the call (fails it before its stream started).

Telnyx always gets a 2xx for a verified event (it retries anything else), a 403 for a bad
signature and a 400 for an unusable body: never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from agentic_fast.call.admission import caller_tag, mask_number
from agentic_fast.call.manager import (
    CallLimitError,
    CallManager,
    CallRefusedError,
    CallSession,
    CallStatus,
)
from agentic_fast.call.stream_token import StreamTokenSigner
from agentic_fast.carriers.telnyx.media import CODECS
from agentic_fast.carriers.telnyx.rest import StreamOptions, TelnyxApiError, TelnyxRestClient
from agentic_fast.carriers.telnyx.signature import TelnyxSignatureVerifier
from agentic_fast.carriers.telnyx.status import (
    TelnyxWebhook,
    TelnyxWebhookError,
    map_event,
    parse_webhook,
)
from agentic_fast.carriers.telnyx.stream_handler import (
    TelnyxMediaStreamHandler,
    client_state_for,
    parse_client_state,
)
from agentic_fast.core import metrics
from agentic_fast.core.config import TELNYX_MEDIA_STREAM_PATH, Config
from agentic_fast.core.errors import ConfigError
from agentic_fast.core.log import get_logger
from agentic_fast.server.client_address import client_address

__all__ = ["TELNYX_WEBHOOK_PATH", "TelnyxServices", "telnyx_stream_url"]

log = get_logger("telnyx")

TELNYX_WEBHOOK_PATH = "/telnyx/webhook"
#: Seconds an outbound call may ring: its stream token must outlive the ringing.
_RING_MARGIN_S = 15


def telnyx_stream_url(config: Config) -> str:
    """``telnyx.stream_url``, or the ``wss://`` URL of ``/telnyx/media-stream`` on
    ``server.public_url``."""
    if config.telnyx.stream_url:
        return config.telnyx.stream_url
    if not config.server.public_url:
        raise ConfigError("server.public_url is not set (Telnyx must reach this server)",
                          key="server.public_url")
    rest = config.server.public_url.split("://", 1)[1]
    return f"wss://{rest}{TELNYX_MEDIA_STREAM_PATH}"


def telnyx_webhook_url(config: Config) -> str:
    """``telnyx.webhook_url``, or ``/telnyx/webhook`` on ``server.public_url``."""
    return config.telnyx.webhook_url or config.server.webhook_url(TELNYX_WEBHOOK_PATH)


@dataclass(slots=True)
class TelnyxServices:
    """What the Telnyx routes use (built by ``create_app`` when ``carrier`` is telnyx)."""

    config: Config
    manager: CallManager
    tokens: StreamTokenSigner
    media: TelnyxMediaStreamHandler
    rest: TelnyxRestClient | None
    verifier: TelnyxSignatureVerifier | None
    verifier_problem: str | None
    owns_rest: bool = False

    @classmethod
    def build(cls, config: Config, manager: CallManager, tokens: StreamTokenSigner,
              media: TelnyxMediaStreamHandler,
              rest: TelnyxRestClient | None = None) -> TelnyxServices:
        t = config.telnyx
        verifier: TelnyxSignatureVerifier | None = None
        problem: str | None = None
        if t.public_key:
            verifier = TelnyxSignatureVerifier(t.public_key, tolerance_s=t.webhook_tolerance_s)
        else:
            problem = "telnyx.public_key is not set: webhooks cannot be verified"
        owns = False
        if rest is None and t.api_key:
            rest = TelnyxRestClient(t.api_key, api_base=t.api_base_url,
                                    timeout_s=t.request_timeout_s)
            owns = True
        return cls(config, manager, tokens, media, rest, verifier, problem, owns)

    def stream(self) -> StreamOptions:
        return StreamOptions(telnyx_stream_url(self.config), CODECS[self.config.telnyx.codec].name)

    def find(self, event: TelnyxWebhook) -> CallSession | None:
        """The call an event is about: by ``call_control_id``, else by our ``client_state``
        (an outbound call's first events can overtake the dial's answer)."""
        session = self.manager.get_by_sid(event.call_control_id)
        if session is not None:
            return session
        parsed = parse_client_state(event.client_state)
        session = self.manager.get(parsed[0]) if parsed is not None else None
        if session is not None and session.call_sid is None:
            self.manager.attach_call_sid(session, event.call_control_id)
        return session if session is not None and session.call_sid == event.call_control_id \
            else None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


# -- the webhook ----------------------------------------------------------------------------

async def telnyx_webhook(request: web.Request) -> web.StreamResponse:
    """Every Call Control event; never a 500 (an unexpected failure is logged, counted and
    answered 200 so Telnyx does not retry into the same failure)."""
    try:
        return await _webhook(request)
    except (asyncio.CancelledError, web.HTTPException):
        raise
    except Exception:
        metrics.incr("telnyx.webhook.failed")
        log.exception("telnyx.webhook_failed", path=request.path)
        return _json({"status": "error"})


def _services(request: web.Request) -> Any:
    from agentic_fast.server.app import SERVICES

    return request.app[SERVICES]


async def _webhook(request: web.Request) -> web.StreamResponse:
    svc = _services(request)
    tx: TelnyxServices = svc.telnyx
    body = await request.read()
    if tx.verifier is None:
        metrics.incr("telnyx.webhook.refused.not_configured")
        log.error("telnyx.webhook.refused", reason="not_configured", detail=tx.verifier_problem)
        return _json({"error": "forbidden"}, 403)
    check = tx.verifier.check(body, request.headers)
    if not check:
        metrics.incr(f"telnyx.webhook.rejected.{check.reason}")
        log.warning("telnyx.webhook.rejected", reason=check.reason, path=request.path,
                    remote=client_address(request), timestamp=check.timestamp)
        return _json({"error": "forbidden"}, 403)
    try:
        event = parse_webhook(body)
    except TelnyxWebhookError as exc:
        metrics.incr("telnyx.webhook.rejected.bad_body")
        log.warning("telnyx.webhook.rejected", reason="bad_body", field=exc.field,
                    detail=str(exc)[:200])
        return _json({"error": str(exc)}, 400)
    if svc.replays.seen(event.event_id, "telnyx"):
        metrics.incr("telnyx.webhook.replayed")
        log.warning("telnyx.webhook.replayed", event_id=event.event_id,
                    event_type=event.event_type, call_control_id=event.call_control_id,
                    remote=client_address(request))
        return _json({"status": "duplicate"})
    svc.replays.remember(event.event_id, "telnyx")
    metrics.incr(f"telnyx.webhook.{event.event_type}")
    if event.event_type == "call.initiated" and event.direction == "incoming":
        await _incoming(svc, tx, event)
        return _json({"status": "ok"})
    session = tx.find(event)
    if session is None:
        metrics.incr("telnyx.webhook.unknown_call")
        log.info("telnyx.webhook.unknown_call", event_type=event.event_type,
                 call_control_id=event.call_control_id)
        return _json({"status": "ignored"})
    if event.event_type == "streaming.failed":
        metrics.incr("telnyx.stream_error")
        session.log.warning("stream.error", error=event.failure_reason,
                            stream_started=session.stream_started)
        tx.manager.stream_error(session, event.failure_reason or "streaming.failed")
        return _json({"status": "ok"})
    change = map_event(event, answered=session.answered_at is not None)
    if change is None:
        session.log.info("telnyx.event", event_type=event.event_type)
        return _json({"status": "ok"})
    applied = tx.manager.transition(session, change.status, reason=change.reason)
    session.log.info("status.callback", event_type=event.event_type,
                     hangup_cause=event.hangup_cause or None, applied=applied)
    if change.status.terminal and session.bridge is not None:
        sender = getattr(session.bridge, "sender", None)
        if sender is not None:  # the call is over: the stream ends with it
            svc.background.add(asyncio.get_running_loop().create_task(sender.close()))
    return _json({"status": "ok"})


async def _incoming(svc: Any, tx: TelnyxServices, event: TelnyxWebhook) -> None:
    """A new incoming call: admit it and answer with our stream, or hang it up."""
    ccid = event.call_control_id
    if tx.manager.get_by_sid(ccid) is not None:  # a retried call.initiated: answered already
        metrics.incr("telnyx.webhook.replayed")
        return
    if svc.draining:
        metrics.incr("calls.refused.draining")
        log.info("call.refused", reason="draining", call_control_id=ccid)
        await _hangup_quietly(tx, ccid)
        return
    refusal = svc.admission.admit(event.from_number)
    if refusal is not None:
        metrics.incr(f"calls.refused.{refusal.reason}")
        (log.warning if refusal.busy else log.info)(
            "call.refused", reason=refusal.reason, call_control_id=ccid,
            caller=mask_number(event.from_number),
            caller_tag=caller_tag(svc.admission.tag_key, event.from_number))
        await _hangup_quietly(tx, ccid)
        return
    try:
        session = tx.manager.create_inbound(ccid, event.from_number, event.to_number)
    except (CallLimitError, CallRefusedError) as exc:
        log.warning("call.refused", reason=exc.reason, call_control_id=ccid)
        await _hangup_quietly(tx, ccid)
        return
    if tx.rest is None:
        tx.manager.fail(session, "telnyx-not-configured")
        log.error("telnyx.not_configured", detail="telnyx.api_key is not set: cannot answer")
        return
    token = tx.tokens.issue(session.call_id, ccid)
    try:
        await tx.rest.answer(ccid, stream=tx.stream(),
                             client_state=client_state_for(session.call_id, token))
    except TelnyxApiError as exc:
        tx.manager.fail(session, f"telnyx-error-{exc.code or 'network'}")
        return
    _prewarm(svc, session)


async def _hangup_quietly(tx: TelnyxServices, call_control_id: str) -> None:
    if tx.rest is None:
        return
    with contextlib.suppress(TelnyxApiError):  # logged and counted by the client
        await tx.rest.hangup(call_control_id)


def _prewarm(svc: Any, session: CallSession) -> None:
    prewarm = getattr(svc.bridge_factory, "prewarm", None)
    if prewarm is not None:
        try:
            prewarm(session)
        except Exception:  # only a head start: the bridge connects when the stream opens
            metrics.incr("bridge.prewarm.failed")
            session.log.exception("bridge.prewarm_failed")


# -- the /calls API, Telnyx side ------------------------------------------------------------

async def place_call(svc: Any, to: str, prompt: str | None,
                     metadata: dict[str, Any]) -> web.Response:
    """``POST /calls`` with ``carrier: telnyx``: dial with our media stream."""
    tx: TelnyxServices = svc.telnyx
    cfg = svc.config
    if tx.rest is None or not cfg.telnyx.connection_id:
        return _json({"error": "Telnyx is not configured (telnyx.api_key, "
                               "telnyx.connection_id)"}, 503)
    if not cfg.telnyx.from_number or not (cfg.server.public_url or (
            cfg.telnyx.stream_url and cfg.telnyx.webhook_url)):
        return _json({"error": "telnyx.from_number and server.public_url must be "
                               "configured"}, 503)
    if svc.draining:
        return _json({"error": "draining: not placing new calls"}, 503)
    try:
        session = tx.manager.create_outbound(to, prompt, metadata,
                                             from_number=cfg.telnyx.from_number)
    except CallRefusedError as exc:
        return _json({"error": str(exc), "reason": exc.reason}, 503)
    token = tx.tokens.issue(session.call_id, None)  # the call_control_id comes with the dial
    ring_s = max(5, int(tx.tokens.ttl_s) - _RING_MARGIN_S)
    try:
        dialed = await tx.rest.dial(
            connection_id=cfg.telnyx.connection_id, to=to, from_=cfg.telnyx.from_number,
            webhook_url=telnyx_webhook_url(cfg), stream=tx.stream(),
            client_state=client_state_for(session.call_id, token), timeout_secs=ring_s)
    except TelnyxApiError as exc:
        tx.manager.fail(session, f"telnyx-error-{exc.code or 'network'}")
        return _json({"error": "Telnyx refused the call", "code": exc.code,
                      "detail": str(exc)}, 502)
    if session.call_sid is None:  # an early webhook may have attached it already
        tx.manager.attach_call_sid(session, dialed.call_control_id)
    if session.status is CallStatus.INITIATING:
        tx.manager.transition(session, CallStatus.RINGING)
    _prewarm(svc, session)
    return _json({"call_id": session.call_id, "call_sid": dialed.call_control_id,
                  "call_control_id": dialed.call_control_id,
                  "status": session.status.value}, 201)


async def hang_up(svc: Any, session: CallSession) -> web.Response:
    """``POST /calls/{id}/hangup`` with ``carrier: telnyx``."""
    tx: TelnyxServices = svc.telnyx
    if tx.rest is None:
        return _json({"error": "Telnyx REST is not configured (telnyx.api_key)"}, 503)
    assert session.call_sid is not None
    try:
        await tx.rest.hangup(session.call_sid)
    except TelnyxApiError as exc:
        return _json({"error": "Telnyx refused the hang-up", "code": exc.code,
                      "detail": str(exc)}, 502)
    session.log.info("call.hangup_requested")
    return _json({"call_id": session.call_id, "status": session.status.value}, 202)
