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
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from agentic_fast.call.admission import Admission
from agentic_fast.call.manager import (
    TRANSCRIPT_PAGE_DEFAULT,
    TRANSCRIPT_PAGE_MAX,
    CallManager,
    CallSession,
)
from agentic_fast.call.stream_handler import (
    BridgeFactory,
    ConnectionLimiter,
    MediaStreamHandler,
)
from agentic_fast.call.stream_token import StreamTokenSigner
from agentic_fast.carriers.base import (
    CallControl,
    Carrier,
    OutboundCall,
    WebhookVerifier,
)
from agentic_fast.carriers.registry import build_carrier
from agentic_fast.core import metrics
from agentic_fast.core.config import CARRIERS, Config
from agentic_fast.core.errors import (
    CallRefusedError,
    CarrierApiError,
    ConfigError,
    InvalidCursor,
    StoreError,
)
from agentic_fast.core.instance import instance_id
from agentic_fast.core.log import get_logger
from agentic_fast.server import readiness
from agentic_fast.server.client_address import (
    TRUSTED_PROXIES,
    TrustedProxies,
    came_through_proxy,
    client_address,
)
from agentic_fast.server.desk import (
    BUSY_TEXT,
    DRAINING_TEXT,
    REPLAYED_TEXT,
    STORE_REFUSAL_TEXT,
    ServerDesk,
)
from agentic_fast.server.observability import METRICS_PATH, setup_observability
from agentic_fast.server.ops import HISTORY_STORE, cookie_allows, setup_ops
from agentic_fast.server.replay_guard import ReplayGuard
from agentic_fast.server.store_views import record_view, records_page, store_call_filter
from agentic_fast.store.base import StatusChanged
from agentic_fast.store.recorder import StoreRecorder
from agentic_fast.store.service import StoreService
from agentic_fast.ws.listener import CallServerSite, ListenerLimits

log = get_logger("server")

#: E.164 in ASCII digits only (``\d`` would take any Unicode digit, e.g. Arabic-Indic).
_E164 = re.compile(r"\+[1-9][0-9]{6,14}", re.ASCII)
_TOKEN_DOMAIN = b"agentic-fast/stream-token/v1"
#: Seconds an outbound call may ring: its stream token must outlive the ringing.
_RING_MARGIN_S = 15

__all__ = ["BUSY_TEXT", "DRAINING_TEXT", "REPLAYED_TEXT", "SERVICES", "Services",
           "begin_drain", "create_app", "drain", "listener_limits", "require_public_config",
           "start_site", "stream_token_secret"]
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
    #: the default carrier (``carrier:``): outbound calls without ``from``/``carrier``
    carrier: Carrier
    desk: ServerDesk
    #: every carrier in use, by name, and the media stream handler of each
    carriers: dict[str, Carrier] = field(default_factory=dict)
    handlers: dict[str, MediaStreamHandler] = field(default_factory=dict)
    #: the shared call store's recorder (records, stream checks, this process's lease)
    recorder: StoreRecorder | None = None
    draining: bool = False
    background: set[asyncio.Task[Any]] = field(default_factory=set)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, /, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


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
    return (hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
            or cookie_allows(request, token))  # the dashboard's own requests


@web.middleware
async def api_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in ("/calls", METRICS_PATH) or request.path.startswith("/calls/"):
        svc = request.app[SERVICES]
        if not _api_allowed(request, svc):
            metrics.incr("api.rejected.auth")
            log.warning("api.rejected", path=request.path, remote=client_address(request),
                        peer=request.remote)
            return _error(401, "unauthorized")
    return await handler(request)


#: What each carrier's REST client needs (the 503 when it is not configured).
_REST_KEYS = {"twilio": "twilio.account_sid / auth_token", "telnyx": "telnyx.api_key"}


def _rest_or_error(carrier: Carrier) -> CallControl | web.Response:
    if carrier.control is None:
        keys = _REST_KEYS.get(carrier.name, f"{carrier.name}.*")
        return _error(503, f"{carrier.name.capitalize()} REST is not configured ({keys})")
    return carrier.control


def _outbound_carrier(svc: Services, body: dict[str, Any]) -> tuple[Carrier, str] | str:
    """The carrier and caller id of a ``POST /calls``: ``carrier`` and/or ``from`` (one of
    our numbers: ``numbers``, or a carrier's ``from_number``), else the ``carrier:`` default;
    or what is wrong with them (the 400 message)."""
    cfg = svc.config
    name, number = body.get("carrier"), body.get("from")
    if name is not None and (not isinstance(name, str) or name not in svc.carriers):
        in_use = ", ".join(svc.carriers)
        known = name in CARRIERS if isinstance(name, str) else False
        why = "is not configured on this server" if known else "is not a carrier"
        return (f"'carrier' {name!r:.40} {why} (in use: {in_use})")
    if number is not None:
        if not isinstance(number, str) or not _E164.fullmatch(number):
            return ("'from' must be an E.164 number in ASCII digits like "
                "+15551230000")
        owner = cfg.carrier_of(number)
        if owner is None:
            return (f"'from' {number} is not one of our numbers (config "
                "numbers:, or a carrier's from_number)")
        if name is not None and name != owner:
            return (f"'from' {number} is on carrier {owner} (numbers:), not "
                f"{name}")
        if owner not in svc.carriers:
            return (f"'from' {number} is on carrier {owner}, which is not "
                "configured on this server")
        return svc.carriers[owner], number
    carrier = svc.carriers[name] if name is not None else svc.carrier
    return carrier, carrier.from_number


async def create_call(request: web.Request) -> web.StreamResponse:
    """Place an outbound call through its carrier, with our media stream."""
    svc = request.app[SERVICES]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    to, prompt, metadata = body.get("to"), body.get("prompt"), body.get("metadata") or {}
    problem = _call_request_problem(to, prompt, metadata)
    picked = _outbound_carrier(svc, body) if problem is None else problem
    if isinstance(picked, str):
        metrics.incr("api.rejected.bad_request")
        log.warning("api.rejected", path=request.path, reason="bad_request", detail=picked)
        return _error(400, picked)
    carrier, from_number = picked
    to = cast(str, to)  # _call_request_problem checked it
    rest = _rest_or_error(carrier)
    if isinstance(rest, web.Response):
        return rest
    cfg = svc.config
    if not from_number or not cfg.server.public_url:
        return _error(503, f"{carrier.name}.from_number and server.public_url must be "
                           "configured")
    if svc.draining:
        return _error(503, "draining: not placing new calls")
    try:
        session = svc.manager.create_outbound(to, prompt, metadata, from_number=from_number,
                                              carrier=carrier.name)
    except CallRefusedError as exc:
        return _error(503, str(exc), reason=exc.reason)
    ring_s = max(5, int(svc.tokens.ttl_s) - _RING_MARGIN_S)
    try:
        call_sid = await rest.place_call(OutboundCall(
            to, from_number, svc.desk.stream_target(carrier.name, session, None),
            carrier.status_url, ring_s))
    except CarrierApiError as exc:
        svc.manager.fail(session, f"{carrier.name}-error-{exc.code or 'network'}")
        return _error(502, f"{carrier.name.capitalize()} refused the call", code=exc.code,
                      detail=str(exc))
    if session.call_sid is None:  # an early webhook may have attached it already
        svc.manager.attach_call_sid(session, call_sid)
    svc.desk.answered(session.call_id)
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
    wanted = store_call_filter(request.query)
    if isinstance(wanted, str):
        metrics.incr("api.rejected.bad_request")
        return _error(400, wanted)
    page, next_cursor = manager.active_page(cursor, limit)
    body: dict[str, Any] = {"active": [s.summary() for s in page],
                            "active_count": manager.active_count,
                            "next_cursor": None if next_cursor is None else str(next_cursor)}
    recorder = request.app[SERVICES].recorder
    if recorder is not None:
        try:
            body.update(await records_page(recorder, manager, wanted, limit,
                                           request.query.get("calls_cursor") or None))
        except InvalidCursor as exc:
            metrics.incr("api.rejected.bad_request")
            return _error(400, f"'calls_cursor': {exc}")
        except StoreError as exc:  # the live calls of this process still answer
            metrics.incr("api.store_unavailable")
            log.warning("api.store_unavailable", path=request.path, error=str(exc)[:200])
            body["store_error"] = "unavailable"
    return _json(body)


async def get_call(request: web.Request) -> web.StreamResponse:
    """One call with its latest ``transcript_limit`` transcript entries (default 100): this
    process's own view of a call it serves or remembers, else the shared store's record
    (live on another process or instance, or ended before a restart)."""
    session = _find(request)
    limit = _int_param(request, "transcript_limit", TRANSCRIPT_PAGE_DEFAULT, TRANSCRIPT_PAGE_MAX)
    if isinstance(limit, str):
        metrics.incr("api.rejected.bad_request")
        return _error(400, limit)
    recorder = request.app[SERVICES].recorder
    if session is not None and recorder is not None and not session.stream_started:
        # answered here, but its stream may have started on another process or instance
        try:
            record = await recorder.store.get(session.call_id)
        except StoreError:
            record = None
        if record is not None and record.owner and record.owner != recorder.owner:
            return _json(record_view(record, transcript_limit=limit))
    if session is not None:  # the store view's own keys too, so either answer reads alike
        ended = session.ended
        return _json({**session.to_dict(transcript_limit=limit), "source": "live",
                      "owner": recorder.owner if recorder is not None and not ended else None,
                      "carrier": session.carrier or request.app[SERVICES].carrier.name,
                      "provider": recorder.provider if recorder is not None else None,
                      "answered_by": session.answered_by,
                      "end_reason": session.reason if ended else None})
    if recorder is None:
        return _error(404, "unknown call")
    try:
        record = await recorder.store.get(request.match_info["call_id"])
    except StoreError as exc:
        metrics.incr("api.store_unavailable")
        log.warning("api.store_unavailable", path=request.path, error=str(exc)[:200])
        return _error(503, "call store unavailable; only this process's calls can be shown")
    if record is None:
        return _error(404, "unknown call")
    return _json(record_view(record, transcript_limit=limit))


async def hangup_call(request: web.Request) -> web.StreamResponse:
    return await hangup(request.app[SERVICES], request.match_info["call_id"])


async def hangup(svc: Services, call_id: str) -> web.Response:
    """``POST /calls/{id}/hangup`` on this process (also run for another worker's request)."""
    session = svc.manager.get(call_id)
    if session is None:
        return await _hangup_from_record(svc, call_id)
    if session.ended:
        return _error(409, "call already ended", status=session.status.value)
    if not session.call_sid:
        return _error(409, "call has no CallSid yet")
    refused = await _carrier_hang_up(svc, session.carrier, session.call_sid)
    if refused is not None:
        return refused
    session.log.info("call.hangup_requested")
    svc.manager.complete(session, reason="hangup-api")  # the record says who ended it
    return _json({"call_id": session.call_id, "status": session.status.value}, status=202)


async def _carrier_hang_up(svc: Services, carrier_name: str, call_sid: str
                           ) -> web.Response | None:
    """Ask the call's carrier (``carrier_name``, else the default) to hang up ``call_sid``;
    None when it did, else the error answer (REST not configured: 503; refused: 502)."""
    carrier = svc.carriers.get(carrier_name) or svc.carrier
    rest = _rest_or_error(carrier)
    if isinstance(rest, web.Response):
        return rest
    try:
        await rest.hang_up(call_sid)
    except CarrierApiError as exc:
        return _error(502, f"{carrier.name.capitalize()} refused the hang-up", code=exc.code,
                      detail=str(exc))
    return None


async def _hangup_from_record(svc: Services, call_id: str) -> web.Response:
    """A hang-up of a call live on another instance (or on a worker that did not answer):
    its record names the carrier and the carrier's call id, and the carrier ends the call;
    the owner sees the stream stop and ends its side. The record says who ended it."""
    recorder = svc.recorder
    if recorder is None:
        return _error(404, "unknown call")
    try:
        record = await recorder.store.get(call_id)
    except StoreError as exc:
        metrics.incr("api.store_unavailable")
        log.warning("api.store_unavailable", path="hangup", call_id=call_id,
                    error=str(exc)[:200])
        return _error(503, "call store unavailable; only this process's calls can be hung up")
    if record is None:
        return _error(404, "unknown call")
    if record.ended:
        return _error(409, "call already ended", status=record.status)
    if not record.call_sid:
        return _error(409, "call has no CallSid yet")
    refused = await _carrier_hang_up(svc, record.carrier, record.call_sid)
    if refused is not None:
        return refused
    metrics.incr("control.hangup_via_carrier")
    log.info("call.hangup_requested", call_id=call_id, owner=record.owner or "",
             via="record")
    recorder.service.append(StatusChanged(call_id, time.time(), "completed", "hangup-api"))
    return _json({"call_id": call_id, "status": "completed", "owner": record.owner},
                 status=202)


# -- health ---------------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.StreamResponse:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    active = request.app[SERVICES].manager.active_count
    return await readiness.readyz(request, {"active_calls": active})


# -- app ------------------------------------------------------------------------------------

def create_app(config: Config, *, bridge_factory: BridgeFactory,
               rest_client: CallControl | None = None,
               telnyx_rest: Any = None,
               manager: CallManager | None = None,
               replays: ReplayGuard | None = None,
               carrier: Carrier | None = None,
               store: StoreService | None = None) -> web.Application:
    """Build the aiohttp application; nothing touches the network until it starts.

    Every carrier in use (``Config.carriers_in_use``) is built through the registry and
    gets its webhook routes and media stream; ``rest_client`` / ``telnyx_rest`` are
    Twilio's / Telnyx's REST clients (tests), ``carrier`` replaces the ``carrier:`` default.
    ``replays`` defaults to a guard on ``server.state_dir`` (memory-only when unset).
    ``store`` replaces the call store built from ``store:`` (opened on startup, closed on
    cleanup, in every worker: single-process and multi-worker runs alike)."""
    server = config.server
    rests: dict[str, Any] = {"twilio": rest_client, "telnyx": telnyx_rest}
    carriers: dict[str, Carrier] = {}
    for name in config.carriers_in_use():
        carriers[name] = (carrier if carrier is not None and carrier.name == name
                          else build_carrier(name, config, rest=rests.get(name)))
    default = carriers[config.carrier]
    # without a carrier secret nothing is signed and the webhook routes refuse; the token
    # signer still needs a key, so use a random one that no webhook can ever reach
    token_key = config.twilio.auth_token or config.telnyx.api_key
    secret = (stream_token_secret(token_key) if token_key
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
    recorder = StoreRecorder(store or StoreService.from_config(config.store),
                             instance_id(getattr(server, "instance_id", None)),
                             provider=config.audio.provider)
    if manager.recorder is None:
        manager.recorder = recorder
    limiter = ConnectionLimiter(server.max_connections_total, server.max_connections_per_ip)
    handlers = {name: MediaStreamHandler(
        carrier=c, manager=manager, tokens=tokens, bridge_factory=bridge_factory,
        limiter=limiter, start_timeout_s=server.start_timeout_s,
        max_message_bytes=server.ws_max_message_bytes, heartbeat_s=server.ws_heartbeat_s,
        record_dtmf=not config.brain.pin,  # a PIN must not end up in /calls or the logs
        max_control_frames_per_s=server.ws_max_control_frames_per_s,
        max_write_buffer_bytes=server.ws_max_write_buffer_bytes,
        guard=recorder, store_refusal_text=STORE_REFUSAL_TEXT,
    ) for name, c in carriers.items()}
    bind = getattr(bridge_factory, "bind_server", None)
    if bind is not None:
        bind(manager, default.control)
    bind_carriers = getattr(bridge_factory, "bind_carriers", None)
    if bind_carriers is not None:
        bind_carriers({name: c.control for name, c in carriers.items()})
    admission = Admission(config.calls, clock=manager.clock.monotonic,
                          tag_key=hashlib.sha256(b"agentic-fast/caller-tag/v1" + secret).digest())
    if replays is None:
        replays = ReplayGuard(server.replay_db_file, window_s=server.replay_window_s,
                              max_entries=server.replay_max_entries)
    desk = ServerDesk(config, manager, admission, replays, tokens, carriers,
                      prewarm=getattr(bridge_factory, "prewarm", None),
                      store_ready=recorder.ready_for_call)
    svc = Services(config, manager, handlers[config.carrier], default.control,
                   default.verifier, default.verifier_problem, tokens, bridge_factory,
                   admission, replays, default, desk, carriers, handlers, recorder)
    app = web.Application(middlewares=[api_auth], client_max_size=64 * 1024)
    app[SERVICES] = svc
    app[TRUSTED_PROXIES] = TrustedProxies(server.trusted_proxies, server.proxy_header)
    for name, c in carriers.items():
        for method, path, handler in c.routes(desk):
            app.router.add_route(method, path, handler)
        app.router.add_get(c.media_path, handlers[name].handle)
    app.router.add_post("/calls", create_call)
    app.router.add_get("/calls", list_calls)
    app.router.add_get("/calls/{call_id}", get_call)
    app.router.add_post("/calls/{call_id}/hangup", hangup_call)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    setup_ops(app, manager, lambda r: _api_allowed(r, svc), api_token=server.api_token,
              provider=config.audio.provider, carrier=config.carrier)
    setup_observability(app, svc)  # GET /metrics, the /readyz checks
    readiness.add_readiness_check(app, readiness.store_check(recorder.store))
    app[HISTORY_STORE] = recorder.store
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    for c in carriers.values():
        if c.verifier_problem:
            log.error(f"server.{c.name}_disabled", detail=c.verifier_problem)
    return app


async def _on_startup(app: web.Application) -> None:
    svc = app[SERVICES]
    if svc.recorder is not None:
        # named now, in the process that serves (a forked worker has its own pid/name)
        svc.recorder.owner = instance_id(getattr(svc.config.server, "instance_id", None))
        await svc.recorder.start()
    svc.manager.start()
    start_factory = getattr(svc.bridge_factory, "start", None)
    if start_factory is not None:
        await start_factory()


async def _on_shutdown(app: web.Application) -> None:
    svc = app[SERVICES]
    svc.draining = svc.desk.draining = True
    for handler in svc.handlers.values():
        await handler.close_all()


async def _on_cleanup(app: web.Application) -> None:
    svc = app[SERVICES]
    await svc.manager.close()
    close_factory = getattr(svc.bridge_factory, "close", None)
    if close_factory is not None:
        await close_factory()
    await svc.desk.close()
    for carrier in svc.carriers.values():
        await carrier.close()
    svc.replays.close()
    if svc.recorder is not None:  # last: the calls' ends above are recorded
        await svc.recorder.close()


async def start_site(runner: web.AppRunner, host: str, port: int,
                     **options: Any) -> CallServerSite:
    """Listen on ``host:port`` (``runner`` set up): media-stream upgrades go to the lean
    WebSocket (``listener``), everything else to aiohttp. ``site.port`` is the bound port;
    ``options`` go to ``CallServerSite`` (``reuse_port``, ``handover``: several workers)."""
    svc = runner.app[SERVICES]
    routes = {svc.carriers[name].media_path: handler for name, handler in svc.handlers.items()}
    site = CallServerSite(runner, host, port, routes=routes,
                          limits=listener_limits(svc.config),
                          trusted=runner.app[TRUSTED_PROXIES], **options)
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
        svc.draining = svc.desk.draining = True
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
