"""Operator routes: the live event stream, recent call history and the browser dashboard.

- ``GET /calls/events``: Server-Sent Events (``text/event-stream``), one JSON object per
  event (``id``, ``type``, ``ts``, ``call_id``, ``data``), first a ``calls.snapshot`` of
  the active calls; a ``: keep-alive`` comment every ``KEEPALIVE_S``. Behind the API token
  like ``/calls`` (the ``api_auth`` middleware).
- ``GET /calls/history``: every call this process still remembers (active, then the
  bounded history of ended ones) merged with the shared call store's records (every
  process and instance, and calls from before a restart), newest first, filtered by
  ``status``, ``direction``, ``since`` (epoch seconds or ISO 8601), at most ``limit``.
- ``GET /dashboard``: one HTML page with its JS and CSS (package data, no CDN), behind the
  API token: as ``Authorization: Bearer`` or, for a browser, ``/dashboard?token=...``,
  which sets an HttpOnly, SameSite=Strict cookie (a keyed hash of the token, never the
  token) and redirects to ``/dashboard``. The cookie then authorises the page's own
  ``/calls`` requests; a state-changing one from another origin is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

import orjson
from aiohttp import web

from agentic_fast.call.manager import CallDirection, CallManager
from agentic_fast.call.status import CallStatus
from agentic_fast.core import metrics
from agentic_fast.core.errors import StoreError, SubscriberLimitError
from agentic_fast.core.events import EventHub
from agentic_fast.core.log import get_logger
from agentic_fast.server.store_views import parse_since, record_summary
from agentic_fast.store.base import CallStore, RecordFilter

log = get_logger("server.ops")

EVENTS_PATH: Final = "/calls/events"
HISTORY_PATH: Final = "/calls/history"
#: The shared call store ``GET /calls/history`` also reads (set by the app), if any.
HISTORY_STORE: web.AppKey[CallStore] = web.AppKey("ops_history_store", CallStore)
DASHBOARD_PATH: Final = "/dashboard"
STATIC_PREFIX: Final = "/dashboard/static/"
COOKIE_NAME: Final = "agentic_fast_dashboard"
#: Seconds between SSE keep-alive comments (also how soon a gone client is noticed).
KEEPALIVE_S: Final = 15.0
HISTORY_PAGE_MAX: Final = 500
#: The dashboard's files: name -> content type (nothing else is served).
STATIC_FILES: Final = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
CSP: Final = ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
              "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
EVENT_HUB: web.AppKey[EventHub] = web.AppKey("event_hub", EventHub)
Allowed = Callable[[web.Request], bool]
_ALLOWED: web.AppKey[Allowed] = web.AppKey("ops_allowed")
_MANAGER: web.AppKey[CallManager] = web.AppKey("ops_manager", CallManager)
_INFO: web.AppKey[dict[str, Any]] = web.AppKey("ops_info")
_TOKEN: web.AppKey[str] = web.AppKey("ops_api_token", str)
_COOKIE_DOMAIN: Final = b"agentic-fast/dashboard-cookie/v1"


def setup_ops(app: web.Application, manager: CallManager, allowed: Allowed, *,
              api_token: str = "", provider: str = "", carrier: str = "",
              hub: EventHub | None = None) -> EventHub:
    """Add the event stream, history and dashboard routes; feed ``manager``'s events to
    the hub. ``allowed(request)`` is the ``/calls`` API's authorisation, ``api_token``
    ``server.api_token`` (what ``/dashboard?token=`` must give)."""
    hub = hub or manager.events or EventHub()
    manager.events = hub
    app[EVENT_HUB] = hub
    app[_ALLOWED] = allowed
    app[_MANAGER] = manager
    app[_INFO] = {"provider": provider, "carrier": carrier}
    app[_TOKEN] = api_token
    app.router.add_get(EVENTS_PATH, events_stream)
    app.router.add_get(HISTORY_PATH, call_history)
    app.router.add_get(DASHBOARD_PATH, dashboard)
    app.router.add_get(STATIC_PREFIX + "{name}", dashboard_static)
    app.on_shutdown.append(_close_streams)
    return hub


async def _close_streams(app: web.Application) -> None:
    app[EVENT_HUB].close_all()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


# -- the dashboard cookie -----------------------------------------------------------------

def cookie_value(api_token: str) -> str:
    """What the dashboard cookie holds: a keyed hash of the API token (not the token)."""
    return hmac.new(api_token.encode(), _COOKIE_DOMAIN, hashlib.sha256).hexdigest()


def cookie_allows(request: web.Request, api_token: str) -> bool:
    """Whether the request carries the dashboard cookie for ``api_token``; a request that
    changes something must also come from the page's own origin (no cross-site POST)."""
    if not api_token:
        return False
    given = request.cookies.get(COOKIE_NAME)
    if not given or not hmac.compare_digest(given.encode(), cookie_value(api_token).encode()):
        return False
    if request.method in ("GET", "HEAD"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:  # browsers send Origin on every fetch POST; a non-browser has no cookie
        return True
    same = origin.partition("://")[2] == request.host
    if not same:
        metrics.incr("api.rejected.cross_origin")
        log.warning("api.rejected", path=request.path, reason="cross_origin", origin=origin[:200])
    return same


# -- GET /calls/events --------------------------------------------------------------------

async def events_stream(request: web.Request) -> web.StreamResponse:
    """Live call events as Server-Sent Events until the client leaves or we shut down."""
    hub = request.app[EVENT_HUB]
    try:
        sub = hub.subscribe()
    except SubscriberLimitError as exc:
        log.warning("events.refused", reason="too_many_subscribers", remote=request.remote)
        return _json({"error": str(exc)}, status=503)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})  # nginx: pass each event on at once
    metrics.incr("events.subscribers.opened")
    log.info("events.subscribed", remote=request.remote, subscribers=hub.subscriber_count)
    with sub:
        try:
            await resp.prepare(request)
            active = [s.summary() for s in request.app[_MANAGER].active_sessions()]
            info: dict[str, Any] = request.app[_INFO]
            snapshot = hub.make("calls.snapshot", None, {"active": active, **info})
            await resp.write(b"retry: 2000\n\n" + _frame(snapshot.id, snapshot.type,
                                                          snapshot.json))
            while True:
                try:
                    event = await asyncio.wait_for(sub.get(), KEEPALIVE_S)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if event is None:  # the server is shutting down
                    break
                await resp.write(_frame(event.id, event.type, event.json))
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            log.info("events.unsubscribed", remote=request.remote)
    with contextlib.suppress(Exception):
        await resp.write_eof()
    return resp


def _frame(event_id: int, type_: str, body: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, type_.encode(), body)


# -- GET /calls/history -------------------------------------------------------------------

def _history_filter(query: Any) -> dict[str, Any] | str:
    status, direction = query.get("status") or None, query.get("direction") or None
    if status is not None and status not in CallStatus.__members__.values():
        return f"'status' must be one of {', '.join(s.value for s in CallStatus)}"
    if direction is not None and direction not in CallDirection.__members__.values():
        return f"'direction' must be one of {', '.join(d.value for d in CallDirection)}"
    raw_limit = query.get("limit") or "50"
    if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit[:6]) <= 500):
        return f"'limit' must be between 1 and {HISTORY_PAGE_MAX}"
    since = parse_since(query["since"]) if query.get("since") else None
    if isinstance(since, str):
        return since
    return {"status": status, "direction": direction, "since": since, "limit": int(raw_limit)}


async def call_history(request: web.Request) -> web.StreamResponse:
    """Recent calls (active and ended), newest first, filtered."""
    wanted = _history_filter(request.query)
    if isinstance(wanted, str):
        metrics.incr("api.rejected.bad_request")
        log.warning("api.rejected", path=request.path, reason="bad_request", detail=wanted)
        return _json({"error": wanted}, status=400)
    found: list[tuple[float, dict[str, Any]]] = []
    for session in request.app[_MANAGER].recent_sessions():
        if ((wanted["status"] and session.status.value != wanted["status"])
                or (wanted["direction"] and session.direction.value != wanted["direction"])
                or (wanted["since"] is not None and session.created_at < wanted["since"])):
            continue
        found.append((session.created_at, session.summary()))
        if len(found) == wanted["limit"]:
            break
    base: dict[str, Any] = request.app[_INFO]
    info = dict(base)
    store = request.app.get(HISTORY_STORE)
    if store is not None:  # every process's calls, and those from before a restart
        known = {summary["call_id"] for _, summary in found}
        try:
            page = await store.list_records(RecordFilter(
                status=wanted["status"], direction=wanted["direction"],
                since=wanted["since"]), limit=wanted["limit"])
        except StoreError as exc:
            metrics.incr("api.store_unavailable")
            log.warning("api.store_unavailable", path=request.path, error=str(exc)[:200])
            info["store_error"] = "unavailable"
        else:
            found += [(r.created_at, record_summary(r)) for r in page.records
                      if r.call_id not in known]
            found.sort(key=lambda item: item[0], reverse=True)
    return _json({"calls": [summary for _, summary in found[:wanted["limit"]]], **info})


# -- GET /dashboard -----------------------------------------------------------------------

def _read_static(name: str) -> bytes:
    return resources.files("agentic_fast.server").joinpath("static", name).read_bytes()


def _page_headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def _refused(request: web.Request) -> web.Response:
    metrics.incr("api.rejected.auth")
    log.warning("api.rejected", path=request.path, remote=request.remote)
    return web.Response(status=401, text="unauthorized: open /dashboard?token=<server.api_token>\n",
                        headers=_page_headers())


async def dashboard(request: web.Request) -> web.StreamResponse:
    """The page; ``?token=`` (a browser) is checked, set as a cookie and dropped from the URL."""
    token = request.query.get("token")
    if token is not None:
        api_token = request.app[_TOKEN]
        if not api_token or not hmac.compare_digest(token.encode(), api_token.encode()):
            return _refused(request)
        resp = web.Response(status=303, headers={**_page_headers(), "Location": DASHBOARD_PATH})
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
        resp.set_cookie(COOKIE_NAME, cookie_value(api_token), httponly=True, samesite="Strict",
                        secure=secure, path="/")
        log.info("dashboard.login", remote=request.remote)
        return resp
    if not request.app[_ALLOWED](request):
        return _refused(request)
    return web.Response(body=_read_static("dashboard.html"), content_type="text/html",
                        charset="utf-8", headers=_page_headers())


async def dashboard_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    if not request.app[_ALLOWED](request):
        return _refused(request)
    return web.Response(body=_read_static(name), content_type=content_type, charset="utf-8",
                        headers=_page_headers())
