"""aiohttp application: routes, auth, and lifecycle (startup, graceful drain).

Routes only wire requests to the objects that own the logic (``CallManager``, the media
stream handler, the Twilio REST client); see design.md. Twilio routes refuse to work
without an auth token (never fail open); the ``/calls`` API needs ``server.api_token``
unless the listener is loopback and no proxy is trusted, and then answers only loopback
clients whose request did not come through a proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from agentic_fast.call.admission import Admission, Refusal, caller_tag, mask_number
from agentic_fast.call.manager import (
    TRANSCRIPT_PAGE_DEFAULT,
    TRANSCRIPT_PAGE_MAX,
    CallManager,
    CallSession,
)
from agentic_fast.call.stream_handler import (
    PARAM_CALL_ID,
    PARAM_TOKEN,
    BridgeFactory,
    ConnectionLimiter,
    MediaStreamHandler,
)
from agentic_fast.call.stream_token import StreamTokenSigner
from agentic_fast.carriers.base import (
    CallControl,
    Carrier,
    OutboundCall,
    StreamTarget,
    WebhookRequest,
    WebhookVerifier,
)
from agentic_fast.carriers.registry import build_carrier
from agentic_fast.carriers.twilio.carrier import TwilioCarrier
from agentic_fast.carriers.twilio.form import JSON_TYPE, check_content_type, parse_webhook_body
from agentic_fast.carriers.twilio.rest import TwilioRestClient
from agentic_fast.carriers.twilio.signature import SETTINGS_HEADER
from agentic_fast.carriers.twilio.status import (
    map_call_status,
    parse_status_callback,
    parse_stream_status_callback,
)
from agentic_fast.carriers.twilio.twiml import (
    busy_twiml,
    connect_stream_twiml,
    reject_twiml,
    say_hangup_twiml,
)
from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.core.errors import (
    CallLimitError,
    CallRefusedError,
    CarrierApiError,
    ConfigError,
    ProtocolError,
    WebhookBodyError,
)
from agentic_fast.core.log import get_logger
from agentic_fast.server import readiness
from agentic_fast.server.client_address import (
    TRUSTED_PROXIES,
    TrustedProxies,
    came_through_proxy,
    client_address,
)
from agentic_fast.server.observability import METRICS_PATH, setup_observability
from agentic_fast.server.replay_guard import ReplayGuard
from agentic_fast.ws.listener import CallServerSite, ListenerLimits

log = get_logger("server")

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"
STREAM_STATUS_PATH = "/twilio/stream-status"
_STREAM_EVENTS = frozenset({"stream-started", "stream-stopped", "stream-error"})
#: A Twilio error code (Media Streams: 319xx) at the start of, or inside, ``StreamError``.
_ERROR_CODE = re.compile(r"\b(3[0-9]{4})\b", re.ASCII)
#: E.164 in ASCII digits only (``\d`` would take any Unicode digit, e.g. Arabic-Indic).
_E164 = re.compile(r"\+[1-9][0-9]{6,14}", re.ASCII)
_TOKEN_DOMAIN = b"agentic-fast/stream-token/v1"
#: Seconds an outbound call may ring: its stream token must outlive the ringing.
_RING_MARGIN_S = 15

BUSY_TEXT = "Sorry, all our assistants are busy right now. Please call again later."
DRAINING_TEXT = "Sorry, this line is restarting. Please call again in a minute."
REPLAYED_TEXT = "This call is already connected."
SERVICES: web.AppKey[Services] = web.AppKey("services")


def stream_token_secret(auth_token: str) -> bytes:
    """The stream-token key, derived from the Twilio auth token.

    Every process with the same config derives the same key, so any worker can check a
    token minted by another (scale-out), and no second secret needs configuring.
    """
    return hmac.new(auth_token.encode(), _TOKEN_DOMAIN, hashlib.sha256).digest()


@dataclass(slots=True)
class Services:
    """Everything the routes use, built once per app."""

    config: Config
    manager: CallManager
    media: MediaStreamHandler
    rest: CallControl | None
    validator: WebhookVerifier | None
    validator_problem: str | None
    tokens: StreamTokenSigner
    bridge_factory: BridgeFactory
    admission: Admission
    replays: ReplayGuard
    carrier: Carrier
    draining: bool = False
    background: set[asyncio.Task[Any]] = field(default_factory=set)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, /, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


def _twiml(xml: str) -> web.Response:
    return web.Response(text=xml, content_type="text/xml")


# -- Twilio webhooks ------------------------------------------------------------------------

async def _signed_form(request: web.Request, svc: Services) -> dict[str, list[str]] | None:
    """The webhook's form fields if its X-Twilio-Signature is valid, else None (logged).

    The body is read once and parsed here (never again by aiohttp); a body type Twilio
    does not send is a 415, a body or field over its bounds a 400 (raised as aiohttp's
    ``HTTPException``, logged and counted), before anything else looks at it.
    """
    if svc.validator is None:
        metrics.incr("twilio.webhook.refused.not_configured")
        log.error("webhook.refused", reason="not_configured", detail=svc.validator_problem,
                  path=request.path)
        return None
    content_type = request.content_type
    try:
        check_content_type(content_type, request.charset)
        body = await request.read()
        fields = parse_webhook_body(body, content_type)
    except WebhookBodyError as exc:
        raise _body_refused(request, exc) from None
    remote = client_address(request)
    ok = svc.validator.verify(WebhookRequest(
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


def _body_refused(request: web.Request, exc: WebhookBodyError) -> web.HTTPException:
    """The 4xx for a webhook body we do not take (counted and logged, never a 500)."""
    metrics.incr(f"twilio.webhook.rejected.{exc.reason}")
    log.warning("webhook.rejected", reason=exc.reason, path=request.path,
                remote=client_address(request), field=exc.field, detail=str(exc)[:200])
    cls = web.HTTPUnsupportedMediaType if exc.status == 415 else web.HTTPBadRequest
    return cls(text=orjson.dumps({"error": exc.detail}).decode(), content_type="application/json")


def _first(fields: dict[str, list[str]], key: str) -> str:
    values = fields.get(key)
    return values[0] if values else ""


#: Answered to Twilio when the voice webhook fails unexpectedly: valid TwiML, never a 500
#: (Twilio would play its own "application error" message and retry the webhook).
VOICE_FAILED_TWIML = ('<?xml version="1.0" encoding="UTF-8"?><Response><Say>Sorry, the '
                      'assistant is not available right now. Goodbye.</Say><Hangup/></Response>')


async def voice_webhook(request: web.Request) -> web.StreamResponse:
    """Incoming call: register it, answer ``<Connect><Stream>`` with a one-time token.

    Whatever fails while answering (building the TwiML included) is logged, counted and
    answered with a spoken apology and ``<Hangup/>``: Twilio never gets a 500.
    """
    try:
        return await _answer_voice(request)
    except (asyncio.CancelledError, web.HTTPException):
        raise  # an HTTPException is aiohttp's own 4xx answer (e.g. a body over the limit)
    except Exception:
        metrics.incr("twilio.webhook.voice.failed")
        log.exception("webhook.voice_failed", path=request.path)
        return _twiml(VOICE_FAILED_TWIML)


async def _answer_voice(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    fields = await _signed_form(request, svc)
    if fields is None:
        return _error(403, "forbidden")
    call_sid = _first(fields, "CallSid")
    if not call_sid:
        metrics.incr("twilio.webhook.rejected.no_call_sid")
        return _error(400, "CallSid missing")
    known = svc.manager.get_by_sid(call_sid) is not None
    if not known and svc.replays.seen(call_sid, "voice"):
        # answered before, and the call has left memory (history, restart): no new call
        metrics.incr("twilio.webhook.replayed")
        log.warning("webhook.replayed", call_sid=call_sid, remote=client_address(request),
                    source="replay_guard")
        return _twiml(say_hangup_twiml(REPLAYED_TEXT))
    if svc.draining:
        metrics.incr("calls.refused.draining")
        log.info("call.refused", reason="draining", call_sid=call_sid)
        return _twiml(say_hangup_twiml(DRAINING_TEXT))
    refused = _inbound_refusal(svc, call_sid, _first(fields, "From"))
    if refused is not None:
        return refused
    try:
        session = svc.manager.create_inbound(call_sid, _first(fields, "From"),
                                             _first(fields, "To"))
    except CallLimitError:
        log.warning("call.refused", reason="limit", call_sid=call_sid)
        return _twiml(busy_twiml(BUSY_TEXT))
    except CallRefusedError as exc:
        log.info("call.refused", reason=exc.reason, call_sid=call_sid)
        return _twiml(say_hangup_twiml(DRAINING_TEXT))
    if not known:
        svc.replays.remember(call_sid, "voice")
    if session.ended or session.stream_started:
        # a replay of a webhook we already answered: create nothing, connect nothing
        metrics.incr("twilio.webhook.replayed")
        log.warning("webhook.replayed", call_id=session.call_id, call_sid=call_sid)
        return _twiml(say_hangup_twiml(REPLAYED_TEXT))
    try:
        twiml = _stream_twiml(svc, session, call_sid)
    except Exception:
        svc.manager.fail(session, "webhook-error")  # frees the call's slot at once
        metrics.incr("twilio.webhook.voice.failed")
        session.log.exception("webhook.voice_failed", reason="twiml")
        return _twiml(VOICE_FAILED_TWIML)
    try:
        _prewarm(svc, session)
    except Exception:  # only a head start: the bridge connects when the stream opens
        metrics.incr("bridge.prewarm.failed")
        session.log.exception("bridge.prewarm_failed")
    return _twiml(twiml)


def _inbound_refusal(svc: Services, call_sid: str, caller: str) -> web.Response | None:
    """The answer refusing a new inbound call that ``calls.inbound`` / ``calls.rate_limits``
    do not admit (logged and counted, caller masked), else None. A webhook for a call
    already known (a replay) is left to the replay handling."""
    if svc.manager.get_by_sid(call_sid) is not None:
        return None
    refusal: Refusal | None = svc.admission.admit(caller)
    if refusal is None:
        return None
    metrics.incr(f"calls.refused.{refusal.reason}")
    emit = log.warning if refusal.busy else log.info
    emit("call.refused", reason=refusal.reason, call_sid=call_sid,
         caller=mask_number(caller), caller_tag=caller_tag(svc.admission.tag_key, caller))
    calls = svc.config.calls
    if calls.refuse_with == "say":
        return _twiml(say_hangup_twiml(calls.refuse_message))
    return _twiml(reject_twiml("busy" if refusal.busy else "rejected"))


def _prewarm(svc: Services, session: CallSession) -> None:
    """Open the model's socket now, while Twilio sets up the media stream."""
    prewarm = getattr(svc.bridge_factory, "prewarm", None)
    if prewarm is not None:
        prewarm(session)


def _stream_target(svc: Services, session: CallSession, call_sid: str | None
                   ) -> StreamTarget:
    """Where the call's media stream connects, with its call id and one-time token."""
    token = svc.tokens.issue(session.call_id, call_sid)
    server = svc.config.server
    return StreamTarget(server.stream_url, {PARAM_CALL_ID: session.call_id, PARAM_TOKEN: token},
                        status_url=server.webhook_url(STREAM_STATUS_PATH),
                        fallback_say="Sorry, the assistant could not be reached. Goodbye.")


def _stream_twiml(svc: Services, session: CallSession, call_sid: str | None) -> str:
    target = _stream_target(svc, session, call_sid)
    return connect_stream_twiml(target.url, target.params, status_callback=target.status_url,
                                fallback_say=target.fallback_say)


async def status_callback(request: web.Request) -> web.StreamResponse:
    """Call progress: drive the session's lifecycle (out-of-order and repeats tolerated)."""
    svc = request.app[SERVICES]
    fields = await _signed_form(request, svc)
    if fields is None:
        return _error(403, "forbidden")
    try:
        cb = parse_status_callback({k: v[0] for k, v in fields.items() if v})
        mapped = map_call_status(cb.call_status)
    except ProtocolError as exc:
        metrics.incr("twilio.status.rejected")
        log.warning("status.rejected", detail=str(exc)[:200])
        return _error(400, str(exc))
    applied = svc.manager.apply_status(cb.call_sid, mapped.status, reason=mapped.reason,
                                       sequence=cb.sequence_number)
    log.info("status.callback", call_sid=cb.call_sid, call_status=cb.call_status,
             applied=applied)
    return web.Response(status=204)


async def stream_status_callback(request: web.Request) -> web.StreamResponse:
    """``<Stream statusCallback>``: the only report of a failed stream (e.g. handshake).

    ``stream-error`` is logged with the call, counted (in total and per Twilio error code)
    and recorded on the session; before the stream started it also fails the call.
    """
    svc = request.app[SERVICES]
    fields = await _signed_form(request, svc)
    if fields is None:
        return _error(403, "forbidden")
    try:
        cb = parse_stream_status_callback({k: v[0] for k, v in fields.items() if v})
    except ProtocolError as exc:
        metrics.incr("twilio.stream_status.rejected.bad_form")
        log.warning("stream_status.rejected", reason="bad_form", detail=str(exc)[:200])
        return _error(400, str(exc))
    session = svc.manager.get_by_sid(cb.call_sid)
    if session is None:
        metrics.incr("twilio.stream_status.rejected.unknown_call")
        log.warning("stream_status.rejected", reason="unknown_call", call_sid=cb.call_sid,
                    stream_sid=cb.stream_sid, stream_event=cb.stream_event)
        return _error(404, "unknown call")
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
    svc.manager.stream_error(session, error, code=code, stream_sid=cb.stream_sid)
    return web.Response(status=204)


# -- the /calls API -------------------------------------------------------------------------

def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _api_allowed(request: web.Request, svc: Services) -> bool:
    server = svc.config.server
    token = server.api_token
    if not token:  # only a local client, straight to a loopback listener, no proxy between
        return (not server.api_exposed() and _is_loopback(request.remote)
                and not came_through_proxy(request.headers))
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@web.middleware
async def api_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in ("/calls", METRICS_PATH) or request.path.startswith("/calls/"):
        svc = request.app[SERVICES]
        if not _api_allowed(request, svc):
            metrics.incr("api.rejected.auth")
            log.warning("api.rejected", path=request.path, remote=client_address(request),
                        peer=request.remote)
            return _error(401, "unauthorized")
    return await handler(request)


def _rest_or_error(svc: Services) -> CallControl | web.Response:
    if svc.rest is None:
        return _error(503, "Twilio REST is not configured (twilio.account_sid / auth_token)")
    return svc.rest


async def create_call(request: web.Request) -> web.StreamResponse:
    """Place an outbound call: REST create with inline ``<Connect><Stream>`` TwiML."""
    svc = request.app[SERVICES]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    to, prompt, metadata = body.get("to"), body.get("prompt"), body.get("metadata") or {}
    problem = _call_request_problem(to, prompt, metadata)
    if problem is not None:
        metrics.incr("api.rejected.bad_request")
        log.warning("api.rejected", path=request.path, reason="bad_request", detail=problem)
        return _error(400, problem)
    rest = _rest_or_error(svc)
    if isinstance(rest, web.Response):
        return rest
    cfg = svc.config
    if not cfg.twilio.from_number or not cfg.server.public_url:
        return _error(503, "twilio.from_number and server.public_url must be configured")
    if svc.draining:
        return _error(503, "draining: not placing new calls")
    try:
        session = svc.manager.create_outbound(to, prompt, metadata,
                                              from_number=cfg.twilio.from_number)
    except CallRefusedError as exc:
        return _error(503, str(exc), reason=exc.reason)
    ring_s = max(5, int(svc.tokens.ttl_s) - _RING_MARGIN_S)
    try:
        call_sid = await rest.place_call(OutboundCall(
            to, cfg.twilio.from_number, _stream_target(svc, session, None),
            cfg.server.webhook_url(STATUS_PATH), ring_s))
    except CarrierApiError as exc:
        svc.manager.fail(session, f"twilio-error-{exc.code or 'network'}")
        return _error(502, "Twilio refused the call", code=exc.code, detail=str(exc))
    svc.manager.attach_call_sid(session, call_sid)
    _prewarm(svc, session)
    return _json({"call_id": session.call_id, "call_sid": call_sid,
                  "status": session.status.value}, status=201)


#: Bounds of a ``POST /calls`` body (the body itself is at most 64 KiB).
MAX_PROMPT_CHARS = 16_000
MAX_METADATA_DEPTH = 8
MAX_METADATA_BYTES = 8 * 1024


def _call_request_problem(to: Any, prompt: Any, metadata: Any) -> str | None:
    """What is wrong with a ``POST /calls`` request (a 400 message), or None."""
    if not isinstance(to, str) or not _E164.fullmatch(to):
        return "'to' must be an E.164 number in ASCII digits like +15551230000"
    if prompt is not None and not isinstance(prompt, str):
        return "'prompt' must be a string"
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        return f"'prompt' is {len(prompt)} characters long (at most {MAX_PROMPT_CHARS})"
    if not isinstance(metadata, dict):
        return "'metadata' must be an object"
    if _nesting_exceeds(metadata, MAX_METADATA_DEPTH):
        return f"'metadata' is nested deeper than {MAX_METADATA_DEPTH} levels"
    size = len(orjson.dumps(metadata))  # depth bounded: orjson writes it
    if size > MAX_METADATA_BYTES:
        return f"'metadata' is {size} bytes as JSON (at most {MAX_METADATA_BYTES})"
    return None


def _nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether objects/arrays in ``value`` nest more than ``limit`` deep (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (item.values() if isinstance(item, dict)
                    else item if isinstance(item, list) else None)
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _find(request: web.Request) -> CallSession | None:
    return request.app[SERVICES].manager.get(request.match_info["call_id"])


#: ``GET /calls`` page size: default and most (one page costs O(limit), never O(calls)).
CALLS_PAGE_DEFAULT = 50
CALLS_PAGE_MAX = 200


def _int_param(request: web.Request, name: str, default: int, hi: int, lo: int = 0
               ) -> int | str:
    """Query parameter ``name`` as an int in ``[lo, hi]``, or the 400 message."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        return f"'{name}' must be a non-negative integer"
    value = int(raw)
    if not lo <= value <= hi:
        return f"'{name}' must be between {lo} and {hi}"
    return value


async def list_calls(request: web.Request) -> web.StreamResponse:
    """Active calls, a page at a time (``limit``, ``cursor``), as summaries: the
    transcripts are in ``GET /calls/{id}``."""
    manager = request.app[SERVICES].manager
    limit = _int_param(request, "limit", CALLS_PAGE_DEFAULT, CALLS_PAGE_MAX, lo=1)
    cursor = _int_param(request, "cursor", 0, 10**18)
    for problem in (limit, cursor):
        if isinstance(problem, str):
            metrics.incr("api.rejected.bad_request")
            return _error(400, problem)
    assert isinstance(limit, int) and isinstance(cursor, int)
    page, next_cursor = manager.active_page(cursor, limit)
    return _json({"active": [s.summary() for s in page],
                  "active_count": manager.active_count,
                  "next_cursor": None if next_cursor is None else str(next_cursor)})


async def get_call(request: web.Request) -> web.StreamResponse:
    """One call with its latest ``transcript_limit`` transcript entries (default 100)."""
    session = _find(request)
    if session is None:
        return _error(404, "unknown call")
    limit = _int_param(request, "transcript_limit", TRANSCRIPT_PAGE_DEFAULT, TRANSCRIPT_PAGE_MAX)
    if isinstance(limit, str):
        metrics.incr("api.rejected.bad_request")
        return _error(400, limit)
    return _json(session.to_dict(transcript_limit=limit))


async def hangup_call(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    session = _find(request)
    if session is None:
        return _error(404, "unknown call")
    if session.ended:
        return _error(409, "call already ended", status=session.status.value)
    if not session.call_sid:
        return _error(409, "call has no CallSid yet")
    rest = _rest_or_error(svc)
    if isinstance(rest, web.Response):
        return rest
    try:
        await rest.hang_up(session.call_sid)
    except CarrierApiError as exc:
        return _error(502, "Twilio refused the hang-up", code=exc.code, detail=str(exc))
    session.log.info("call.hangup_requested")
    return _json({"call_id": session.call_id, "status": session.status.value}, status=202)


# -- health ---------------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.StreamResponse:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    active = request.app[SERVICES].manager.active_count
    return await readiness.readyz(request, {"active_calls": active})


# -- app ------------------------------------------------------------------------------------

def create_app(config: Config, *, bridge_factory: BridgeFactory,
               rest_client: TwilioRestClient | None = None,
               manager: CallManager | None = None,
               replays: ReplayGuard | None = None,
               carrier: Carrier | None = None) -> web.Application:
    """Build the aiohttp application; nothing touches the network until it starts.

    ``carrier`` defaults to the one ``carrier:`` names (Twilio with ``rest_client`` when
    that is given); ``replays`` to a guard on ``server.state_dir`` (memory-only when unset)."""
    server = config.server
    if carrier is None:
        carrier = (TwilioCarrier(config, rest_client) if rest_client is not None
                   else build_carrier(config.carrier, config))
    validator, problem = carrier.verifier, carrier.verifier_problem
    rest_client = carrier.control
    # without an auth token nothing is signed and the Twilio routes refuse; the token
    # signer still needs a key, so use a random one that no webhook can ever reach
    secret = (stream_token_secret(config.twilio.auth_token) if config.twilio.auth_token
              else hashlib.sha256(repr(id(config)).encode() + b"unconfigured").digest())
    tokens = StreamTokenSigner(secret, ttl_s=int(server.stream_token_ttl_s))
    if manager is None:
        manager = CallManager(max_concurrent_calls=config.calls.max_concurrent_calls)
    discard = getattr(bridge_factory, "discard", None)
    conversation = getattr(bridge_factory, "conversation", None)
    if manager.on_end is None and (discard is not None or conversation is not None):
        def on_end(session: CallSession) -> None:
            if discard is not None:  # a pre-warmed provider whose call ended is closed
                discard(session)
            if conversation is not None:  # runs of a call that never got a bridge
                conversation.on_call_end(session)

        manager.on_end = on_end
    media = MediaStreamHandler(
        carrier=carrier, manager=manager, tokens=tokens, bridge_factory=bridge_factory,
        limiter=ConnectionLimiter(server.max_connections_total, server.max_connections_per_ip),
        start_timeout_s=server.start_timeout_s, max_message_bytes=server.ws_max_message_bytes,
        heartbeat_s=server.ws_heartbeat_s,
        record_dtmf=not config.brain.pin,  # a PIN must not end up in /calls or the logs
        max_control_frames_per_s=server.ws_max_control_frames_per_s,
        max_write_buffer_bytes=server.ws_max_write_buffer_bytes,
    )
    bind = getattr(bridge_factory, "bind_server", None)
    if bind is not None:
        bind(manager, rest_client)
    admission = Admission(config.calls, clock=manager.clock.monotonic,
                          tag_key=hashlib.sha256(b"agentic-fast/caller-tag/v1" + secret).digest())
    if replays is None:
        replays = ReplayGuard(server.replay_db_file, window_s=server.replay_window_s,
                              max_entries=server.replay_max_entries)
    svc = Services(config, manager, media, rest_client, validator, problem, tokens,
                   bridge_factory, admission, replays, carrier)
    app = web.Application(middlewares=[api_auth], client_max_size=64 * 1024)
    app[SERVICES] = svc
    app[TRUSTED_PROXIES] = TrustedProxies(server.trusted_proxies, server.proxy_header)
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_post(STATUS_PATH, status_callback)
    app.router.add_post(STREAM_STATUS_PATH, stream_status_callback)
    app.router.add_get(carrier.media_path, media.handle)
    app.router.add_post("/calls", create_call)
    app.router.add_get("/calls", list_calls)
    app.router.add_get("/calls/{call_id}", get_call)
    app.router.add_post("/calls/{call_id}/hangup", hangup_call)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    setup_observability(app, svc)  # GET /metrics, the /readyz checks
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    if problem:
        log.error("server.twilio_disabled", detail=problem)
    return app


async def _on_startup(app: web.Application) -> None:
    svc = app[SERVICES]
    svc.manager.start()
    start_factory = getattr(svc.bridge_factory, "start", None)
    if start_factory is not None:
        await start_factory()


async def _on_shutdown(app: web.Application) -> None:
    svc = app[SERVICES]
    svc.draining = True
    await svc.media.close_all()


async def _on_cleanup(app: web.Application) -> None:
    svc = app[SERVICES]
    await svc.manager.close()
    close_factory = getattr(svc.bridge_factory, "close", None)
    if close_factory is not None:
        await close_factory()
    await svc.carrier.close()
    svc.replays.close()


async def start_site(runner: web.AppRunner, host: str, port: int) -> CallServerSite:
    """Listen on ``host:port`` (``runner`` set up): media-stream upgrades go to the lean
    WebSocket (``listener``), everything else to aiohttp. ``site.port`` is the bound port."""
    svc = runner.app[SERVICES]
    site = CallServerSite(runner, host, port, routes={svc.carrier.media_path: svc.media},
                          limits=listener_limits(svc.config),
                          trusted=runner.app[TRUSTED_PROXIES])
    await site.start()
    return site


def listener_limits(config: Config) -> ListenerLimits:
    """The listener's bounds on not-yet-complete requests (``server.head_timeout_s``,
    ``server.max_pending_total``, ``server.max_pending_per_ip``)."""
    server = config.server
    return ListenerLimits(head_timeout_s=server.head_timeout_s,
                          max_pending_total=server.max_pending_total,
                          max_pending_per_address=server.max_pending_per_ip)


def begin_drain(app: web.Application) -> None:
    """Stop taking calls: /readyz fails, webhooks answer a polite refusal."""
    svc = app[SERVICES]
    if not svc.draining:
        svc.draining = True
        svc.manager.drain()
        log.info("server.draining", active_calls=svc.manager.active_count)


async def drain(app: web.Application, timeout_s: float) -> bool:
    """Drain: refuse new calls, wait for active ones to end (True) or the timeout (False)."""
    begin_drain(app)
    idle = await app[SERVICES].manager.wait_idle(timeout_s)
    log.info("server.drained", idle=idle,
             still_active=app[SERVICES].manager.active_count)
    return idle


def require_public_config(config: Config, host: str | None = None) -> None:
    """Errors a production ``serve`` should stop on (the tests may build partial apps);
    ``host``: the address actually bound when it overrides ``server.host``."""
    config.server.require_api_token(host)
    if not config.server.public_url:
        raise ConfigError("server.public_url is not set: Twilio cannot reach the server",
                          key="server.public_url")
