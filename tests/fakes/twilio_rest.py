"""A fake Twilio REST API (the Calls resource) on loopback, built from protocols.md 1.6.

    async with FakeTwilioRest() as fake:
        fake.base_url          # "http://127.0.0.1:<port>", use as the client's api_base
        fake.account_sid, fake.auth_token
        fake.requests          # every request, in order (RecordedRequest)
        fake.calls             # Call resources by SID (dicts shaped like Twilio's JSON)

Scripted behaviours: ``delay_s`` (hold every answer; released at ``close()``),
``fail_next(status, times)`` (500/503 with a Twilio error body), ``reject_number(number,
code)`` (400 with e.g. 21211 for a ``To`` number). Nothing here imports agentic_fast.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

API_VERSION = "2010-04-01"
STATUS_CALLBACK_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
TWIML_MAX_CHARS = 4000
TERMINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_ERROR_MESSAGES = {429: "Too Many Requests", 500: "Internal Server Error",
                   503: "Service Unavailable"}


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it; ``form`` keeps repeated fields in order."""

    method: str
    path: str
    form: list[tuple[str, str]]
    headers: dict[str, str]
    authorized: bool

    def get(self, key: str) -> str | None:
        values = self.getall(key)
        return values[0] if values else None

    def getall(self, key: str) -> list[str]:
        return [v for k, v in self.form if k == key]


@dataclass(slots=True)
class _Failure:
    status: int
    remaining: int


@dataclass
class FakeTwilioRest:
    """Fake ``api.twilio.com`` for the Calls resource (create, update, fetch)."""

    account_sid: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    phone_number_sid: str = field(default_factory=lambda: "PN" + secrets.token_hex(16))
    delay_s: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)
    _rejected: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    base_url: str = ""

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` authenticated requests with HTTP ``status`` (5xx, 429)."""
        self._failures.append(_Failure(status, times))

    def reject_number(self, number: str, code: int = 21211) -> None:
        """Reject creates to ``number`` with Twilio error ``code`` (HTTP 400)."""
        self._rejected[number] = code

    def set_status(self, call_sid: str, status: str) -> None:
        """Move a fake call along (``ringing``, ``in-progress``, ``completed``...)."""
        call = self.calls[call_sid]
        call["status"] = status
        call["date_updated"] = _rfc2822()
        if status == "in-progress" and call["start_time"] is None:
            call["start_time"] = _rfc2822()
        if status in TERMINAL_STATUSES:
            call["end_time"] = _rfc2822()

    async def wait_request(self, predicate: Callable[[RecordedRequest], bool],
                           timeout: float = 10.0) -> RecordedRequest:
        """The first request (recorded so far or to come) that satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                found = next((r for r in self.requests if predicate(r)), None)
                if found is not None:
                    return found
                self._arrived.clear()
                await self._arrived.wait()

    def add_incoming(self, call_sid: str, from_: str, to: str) -> None:
        """An inbound call Twilio has answered (``in-progress``): its Calls resource exists,
        so it can be updated (hang-up, new TwiML) like any other."""
        call = self._resource(call_sid, to, from_, _Form([]))
        call["direction"] = "inbound"
        self.calls[call_sid] = call
        self.set_status(call_sid, "in-progress")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        calls = f"/{API_VERSION}/Accounts/{{account_sid}}/Calls"
        app.router.add_post(calls + ".json", self._create)
        app.router.add_post(calls + "/{call_sid}.json", self._update)
        app.router.add_get(calls + "/{call_sid}.json", self._fetch)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTwilioRest:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- request plumbing --------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return secrets.compare_digest(f"{user}:{password}",
                                      f"{self.account_sid}:{self.auth_token}")

    async def _prologue(self, request: web.Request) -> tuple[list[tuple[str, str]],
                                                             web.Response | None]:
        """Record the request; return its form and an early error answer, if any."""
        form: list[tuple[str, str]] = []
        if request.method == "POST":
            post = await request.post()
            form = [(k, str(v)) for k, v in post.items()]
        authorized = self._check_auth(request)
        self.requests.append(RecordedRequest(request.method, request.path, form,
                                             dict(request.headers), authorized))
        self._arrived.set()
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.delay_s)
        if not authorized:
            return form, _error(401, 20003, "Authenticate")
        if request.match_info["account_sid"] != self.account_sid:
            return form, _not_found(request.path)
        if self._failures:
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.pop(0)
            message = _ERROR_MESSAGES.get(failure.status, "Error")
            return form, _error(failure.status, 20000 + failure.status, message)
        return form, None

    # -- handlers ----------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        form, early = await self._prologue(request)
        if early is not None:
            return early
        fields = _Form(form)
        to, from_ = fields.get("To"), fields.get("From")
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not _valid_address(to):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not _valid_address(from_):
            return _error(400, 21212, f"The 'From' number {from_} is not a valid phone number, "
                                      "shortcode, or alphanumeric sender ID.")
        if to in self._rejected:
            code = self._rejected[to]
            return _error(400, code, f"The 'To' number {to} is not a valid phone number."
                          if code == 21211 else f"Calls to {to} are not allowed.")
        sources = [k for k in ("Url", "Twiml", "ApplicationSid") if fields.get(k)]
        if len(sources) != 1:
            # Code unverified; Twilio's message for a missing Url reads like this one.
            return _error(400, 21205, "Exactly one of Url, Twiml or ApplicationSid is required.")
        twiml = fields.get("Twiml")
        if twiml is not None and len(twiml) > TWIML_MAX_CHARS:
            return _error(400, 21232, f"Twiml is {len(twiml)} characters, "
                                      f"more than the maximum of {TWIML_MAX_CHARS}.")
        for event in fields.getall("StatusCallbackEvent"):
            if event not in STATUS_CALLBACK_EVENTS:
                return _error(400, 21626, f"Invalid StatusCallbackEvent value: {event!r}")
        sid = "CA" + secrets.token_hex(16)
        self.calls[sid] = self._resource(sid, to, from_, fields)
        return _json(201, self.calls[sid])

    async def _update(self, request: web.Request) -> web.Response:
        form, early = await self._prologue(request)
        if early is not None:
            return early
        call = self.calls.get(request.match_info["call_sid"])
        if call is None:
            return _not_found(request.path)
        fields = _Form(form)
        status = fields.get("Status")
        if status is not None:
            if status not in ("completed", "canceled"):
                return _error(400, 20001, f"Invalid Status: {status}")
            if call["status"] in TERMINAL_STATUSES:
                return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
            if status == "canceled" and call["status"] not in ("queued", "ringing"):
                # A canceled request on an answered call is ignored by Twilio (unverified).
                return _json(200, call)
            self.set_status(call["sid"], status)
        elif fields.get("Twiml") is not None or fields.get("Url") is not None:
            if call["status"] in TERMINAL_STATUSES:
                return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
            twiml = fields.get("Twiml")
            if twiml is not None and len(twiml) > TWIML_MAX_CHARS:
                return _error(400, 21232, "Twiml too long")
            call["date_updated"] = _rfc2822()
        return _json(200, call)

    async def _fetch(self, request: web.Request) -> web.Response:
        _, early = await self._prologue(request)
        if early is not None:
            return early
        call = self.calls.get(request.match_info["call_sid"])
        return _json(200, call) if call is not None else _not_found(request.path)

    def _resource(self, sid: str, to: str, from_: str, fields: _Form) -> dict[str, Any]:
        now = _rfc2822()
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{sid}"
        return {
            "sid": sid,
            "account_sid": self.account_sid,
            "parent_call_sid": None,
            "date_created": now,
            "date_updated": now,
            "to": to,
            "to_formatted": _formatted(to),
            "from": from_,
            "from_formatted": _formatted(from_),
            "phone_number_sid": self.phone_number_sid,
            "status": "queued",
            "start_time": None,
            "end_time": None,
            "duration": None,
            "price": None,
            "price_unit": "USD",
            "direction": "outbound-api",
            "answered_by": None,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "annotation": None,
            "uri": base + ".json",
            "subresource_uris": {
                "notifications": base + "/Notifications.json",
                "recordings": base + "/Recordings.json",
                "payments": base + "/Payments.json",
                "events": base + "/Events.json",
                "siprec": base + "/Siprec.json",
                "streams": base + "/Streams.json",
                "transcriptions": base + "/Transcriptions.json",
                "user_defined_message_subscriptions":
                    base + "/UserDefinedMessageSubscriptions.json",
                "user_defined_messages": base + "/UserDefinedMessages.json",
            },
        }


class _Form:
    """Read access to a form with repeated keys."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def get(self, key: str) -> str | None:
        return next((v for k, v in self._pairs if k == key), None)

    def getall(self, key: str) -> list[str]:
        return [v for k, v in self._pairs if k == key]


def _valid_address(value: str) -> bool:
    return bool(_E164.match(value)) or value.startswith(("client:", "sip:"))


def _formatted(number: str) -> str:
    if re.fullmatch(r"\+1\d{10}", number):
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def _rfc2822() -> str:
    return format_datetime(datetime.now(UTC).replace(microsecond=0))


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _error(status: int, code: int, message: str) -> web.Response:
    return _json(status, {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    })


def _not_found(path: str) -> web.Response:
    return _error(404, 20404, f"The requested resource {path} was not found")
