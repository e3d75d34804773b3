"""Twilio's webhook routes, served for :class:`~agentic_fast.carriers.twilio.carrier.
TwilioCarrier` through ``routes(desk)``: ``/twilio/voice``, ``/twilio/status``,
``/twilio/stream-status``.

Each one checks ``X-Twilio-Signature`` first (never fails open: without ``twilio.auth_token``
every webhook is refused), answers in TwiML or 204, and never a 500. The carrier-neutral
decisions (draining, replays, admission, limits, stream tokens) are the desk's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from agentic_fast.carriers.base import CallDesk, Route, WebhookRequest
from agentic_fast.carriers.twilio.form import (
    JSON_TYPE,
    check_content_type,
    parse_webhook_body,
)
from agentic_fast.carriers.twilio.signature import SETTINGS_HEADER
from agentic_fast.carriers.twilio.status import (
    parse_status_callback,
    parse_stream_status_callback,
)
from agentic_fast.core import metrics
from agentic_fast.core.errors import ProtocolError, WebhookBodyError
from agentic_fast.core.log import get_logger
from agentic_fast.server.client_address import client_address

if TYPE_CHECKING:
    from agentic_fast.carriers.twilio.carrier import TwilioCarrier

__all__ = ["STATUS_PATH", "STREAM_STATUS_PATH", "VOICE_FAILED_TWIML", "VOICE_PATH",
           "twilio_routes"]

log = get_logger("server")

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"
STREAM_STATUS_PATH = "/twilio/stream-status"
_STREAM_EVENTS = frozenset({"stream-started", "stream-stopped", "stream-error"})
#: A Twilio error code (Media Streams: 319xx) at the start of, or inside, ``StreamError``.
_ERROR_CODE = re.compile(r"\b(3[0-9]{4})\b", re.ASCII)

#: Answered to Twilio when the voice webhook fails unexpectedly: valid TwiML, never a 500
#: (Twilio would play its own "application error" message and retry the webhook).
VOICE_FAILED_TWIML = ('<?xml version="1.0" encoding="UTF-8"?><Response><Say>Sorry, the '
                      'assistant is not available right now. Goodbye.</Say><Hangup/></Response>')

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _twiml(xml: str) -> web.Response:
    return web.Response(text=xml, content_type="text/xml")


def _first(fields: dict[str, list[str]], key: str) -> str:
    values = fields.get(key)
    return values[0] if values else ""


def twilio_routes(carrier: TwilioCarrier, desk: CallDesk) -> list[Route]:
    """The three webhook routes of ``carrier``, deciding through ``desk``."""
    return _TwilioWebhooks(carrier, desk).routes()


class _TwilioWebhooks:
    __slots__ = ("carrier", "desk")

    def __init__(self, carrier: TwilioCarrier, desk: CallDesk) -> None:
        self.carrier = carrier
        self.desk = desk

    def routes(self) -> list[Route]:
        return [("POST", VOICE_PATH, self.voice), ("POST", STATUS_PATH, self.status),
                ("POST", STREAM_STATUS_PATH, self.stream_status)]

    async def _signed_form(self, request: web.Request) -> dict[str, list[str]] | None:
        """The webhook's form fields if its X-Twilio-Signature is valid, else None (logged).

        The body is read once and parsed here (never again by aiohttp); a body type Twilio
        does not send is a 415, a body or field over its bounds a 400 (raised as aiohttp's
        ``HTTPException``, logged and counted), before anything else looks at it.
        """
        verifier = self.carrier.verifier
        if verifier is None:
            metrics.incr("twilio.webhook.refused.not_configured")
            log.error("webhook.refused", reason="not_configured",
                      detail=self.carrier.verifier_problem, path=request.path)
            return None
        content_type = request.content_type
        try:
            check_content_type(content_type, request.charset)
            body = await request.read()
            fields = parse_webhook_body(body, content_type)
        except WebhookBodyError as exc:
            raise _body_refused(request, exc) from None
        remote = client_address(request)
        ok = verifier.verify(WebhookRequest(
            request.raw_path, request.headers, body, content_type,
            None if content_type == JSON_TYPE else fields, remote or ""))
        if not ok:
            metrics.incr(f"twilio.webhook.rejected.{ok.reason}")
            log.warning("webhook.rejected", reason=ok.reason, path=request.path, remote=remote,
                        key_id=getattr(ok, "key_id", None),
                        algorithm=(getattr(ok, "algorithm", None)
                                   if request.headers.get(SETTINGS_HEADER) else None))
            return None
        return fields

    async def voice(self, request: web.Request) -> web.StreamResponse:
        """Incoming call: register it, answer ``<Connect><Stream>`` with a one-time token.

        Whatever fails while answering (building the TwiML included) is logged, counted and
        answered with a spoken apology and ``<Hangup/>``: Twilio never gets a 500.
        """
        try:
            return await self._answer_voice(request)
        except (asyncio.CancelledError, web.HTTPException):
            raise  # an HTTPException is aiohttp's own 4xx answer (e.g. a body over the limit)
        except Exception:
            metrics.incr("twilio.webhook.voice.failed")
            log.exception("webhook.voice_failed", path=request.path)
            return _twiml(VOICE_FAILED_TWIML)

    async def _answer_voice(self, request: web.Request) -> web.StreamResponse:
        fields = await self._signed_form(request)
        if fields is None:
            return _json({"error": "forbidden"}, 403)
        call_sid = _first(fields, "CallSid")
        if not call_sid:
            metrics.incr("twilio.webhook.rejected.no_call_sid")
            return _json({"error": "CallSid missing"}, 400)
        decision = await self.desk.incoming("twilio", call_sid, _first(fields, "From"),
                                      _first(fields, "To"))
        answer = self.carrier.answer
        if decision.refuse is not None:
            reply = await answer.refuse(call_sid, decision.refuse, decision.say)
        elif decision.target is None:
            reply = await answer.say_and_hang_up(call_sid, decision.say or "")
        else:
            assert decision.call_id is not None
            try:
                reply = await answer.connect_stream(call_sid, decision.target)
            except Exception:
                self.desk.answer_failed(decision.call_id, "webhook-error")
                raise
            self.desk.answered(decision.call_id)
        return web.Response(text=reply.body, content_type=reply.content_type,
                            status=reply.status)

    async def status(self, request: web.Request) -> web.StreamResponse:
        """Call progress: drive the session's lifecycle (out-of-order and repeats tolerated)."""
        fields = await self._signed_form(request)
        if fields is None:
            return _json({"error": "forbidden"}, 403)
        try:
            cb = parse_status_callback({k: v[0] for k, v in fields.items() if v})
            change = self.carrier.map_status(cb.call_status)
        except ProtocolError as exc:
            metrics.incr("twilio.status.rejected")
            log.warning("status.rejected", detail=str(exc)[:200])
            return _json({"error": str(exc)}, 400)
        applied = self.desk.status(cb.call_sid, change, cb.sequence_number,
                                   answered_by=cb.answered_by)
        log.info("status.callback", call_sid=cb.call_sid, call_status=cb.call_status,
                 applied=applied)
        return web.Response(status=204)

    async def stream_status(self, request: web.Request) -> web.StreamResponse:
        """``<Stream statusCallback>``: the only report of a failed stream (e.g. handshake).

        ``stream-error`` is logged with the call, counted (in total and per Twilio error
        code) and recorded on the session; before the stream started it also fails the call.
        """
        fields = await self._signed_form(request)
        if fields is None:
            return _json({"error": "forbidden"}, 403)
        try:
            cb = parse_stream_status_callback({k: v[0] for k, v in fields.items() if v})
        except ProtocolError as exc:
            metrics.incr("twilio.stream_status.rejected.bad_form")
            log.warning("stream_status.rejected", reason="bad_form", detail=str(exc)[:200])
            return _json({"error": str(exc)}, 400)
        session = self.desk.find(cb.call_sid)
        if session is None:
            metrics.incr("twilio.stream_status.rejected.unknown_call")
            log.warning("stream_status.rejected", reason="unknown_call", call_sid=cb.call_sid,
                        stream_sid=cb.stream_sid, stream_event=cb.stream_event)
            return _json({"error": "unknown call"}, 404)
        if cb.stream_event not in _STREAM_EVENTS:
            metrics.incr("twilio.stream_status.unknown_event")
            session.log.warning("stream.unknown_event", stream_event=cb.stream_event[:40],
                                stream_sid=cb.stream_sid)
            return web.Response(status=204)
        metrics.incr(f"twilio.stream_status.{cb.stream_event}")
        if cb.stream_event != "stream-error":
            session.log.info("stream.status", stream_event=cb.stream_event,
                             stream_sid=cb.stream_sid)
            return web.Response(status=204)
        error = cb.stream_error or "(no StreamError given)"
        found = _ERROR_CODE.search(error)
        code = found.group(1) if found else None
        if code is not None:
            metrics.incr(f"twilio.stream_error.{code}")
        session.log.warning("stream.error", stream_sid=cb.stream_sid, code=code,
                            error=error[:200], stream_started=session.stream_started)
        self.desk.stream_failed(cb.call_sid, error, code=code, stream_id=cb.stream_sid)
        return web.Response(status=204)


def _body_refused(request: web.Request, exc: WebhookBodyError) -> web.HTTPException:
    """The 4xx for a webhook body we do not take (counted and logged, never a 500)."""
    metrics.incr(f"twilio.webhook.rejected.{exc.reason}")
    log.warning("webhook.rejected", reason=exc.reason, path=request.path,
                remote=client_address(request), field=exc.field, detail=str(exc)[:200])
    cls = web.HTTPUnsupportedMediaType if exc.status == 415 else web.HTTPBadRequest
    return cls(text=orjson.dumps({"error": str(exc)}).decode(), content_type="application/json")
