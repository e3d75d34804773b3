"""Twilio REST (Calls resource) through the official ``twilio`` package, never blocking the loop.

Requests go through ``AsyncTwilioHttpClient`` (aiohttp) and ``*_async`` methods. The base URL
is set on the ``api`` domain object (``client.api.base_url``), the one attribute the library
reads to build every ``api.twilio.com`` URL, so tests point the real client code at a fake on
loopback without patching anything.

Every failure (network, timeout, Twilio error JSON) becomes ``TwilioApiError``, a
``PeerUnavailableError(peer="twilio")`` carrying Twilio's ``code`` and HTTP ``status`` when it
answered; no raw traceback escapes.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Sequence
from typing import Any, Final, TypeVar

import aiohttp
from twilio.base.exceptions import (
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from agentic_fast.carriers.base import OutboundCall
from agentic_fast.carriers.twilio.twiml import connect_stream_twiml, say_hangup_twiml
from agentic_fast.core import metrics
from agentic_fast.core.errors import TwilioApiError
from agentic_fast.core.log import get_logger

__all__ = ["DEFAULT_API_BASE", "DEFAULT_STATUS_EVENTS", "TwilioRestClient"]

DEFAULT_API_BASE: Final = "https://api.twilio.com"
DEFAULT_STATUS_EVENTS: Final = ("initiated", "ringing", "answered", "completed")
_PEER: Final = "twilio"
# The outer asyncio guard fires a little after the HTTP timeout, so the HTTP layer normally
# wins and closes its connection itself; the guard covers everything else.
_GUARD_MARGIN_S: Final = 1.0

_log = get_logger("twilio.rest")
_T = TypeVar("_T")


class _TimedAsyncHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio ships no types
    """``AsyncTwilioHttpClient`` with two fixes, and nothing else changed.

    - Its own ``timeout`` applies to every request: the stock class stores it but passes only
      the per-request value (``None`` from the generated resource methods) to aiohttp, which
      then means no timeout at all.
    - Basic auth goes out as an ``Authorization`` header: aiohttp >= 3.14 deprecates the
      ``auth=BasicAuth(...)`` argument the stock class uses.
    """

    async def request(self, method: str, url: str, params: Any = None, data: Any = None,
                      headers: Any = None, auth: Any = None, timeout: float | None = None,
                      allow_redirects: bool = False) -> Any:
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers = {**(headers or {}), "Authorization": f"Basic {token}"}
        return await super().request(method, url, params=params, data=data, headers=headers,
                                     auth=None, timeout=timeout or self.timeout,
                                     allow_redirects=allow_redirects)


class TwilioRestClient:
    """The Calls resource: create, hang up, cancel, redirect to new TwiML.

    Create it anywhere; the underlying aiohttp session is opened on first use inside the
    running loop. ``close()`` releases it.
    """

    def __init__(self, account_sid: str, auth_token: str, api_base: str = DEFAULT_API_BASE,
                 timeout_s: float = 10.0) -> None:
        if not account_sid or not auth_token:
            raise ValueError("account_sid and auth_token are required")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.account_sid = account_sid
        self.api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        self._auth_token = auth_token
        self._client: Client | None = None
        self._http: _TimedAsyncHttpClient | None = None

    def _twilio(self) -> Client:
        if self._client is None:
            self._http = _TimedAsyncHttpClient(timeout=self.timeout_s)
            client = Client(self.account_sid, self._auth_token, http_client=self._http,
                            user_agent_extensions=["agentic-fast"])
            # Settings come from our config only: ignore TWILIO_EDGE / TWILIO_REGION that the
            # library would read from the environment (they would rewrite the host).
            client.edge = None
            client.region = None
            client.api.base_url = self.api_base
            self._client = client
        return self._client

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    async def __aenter__(self) -> TwilioRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- Calls resource --------------------------------------------------------------------

    async def create_call(self, to: str, from_: str, twiml: str, status_callback: str,
                          status_callback_events: Sequence[str] = DEFAULT_STATUS_EVENTS,
                          **extra: Any) -> str:
        """Place an outbound call running inline ``twiml``; returns the Call SID.

        ``StatusCallbackEvent`` goes out as one form field per event (protocols.md 1.6).
        ``extra`` passes further ``CallList.create_async`` keywords (``timeout``,
        ``machine_detection``, ``time_limit``...).
        """
        call = await self._run(
            "create",
            self._twilio().calls.create_async(
                to=to, from_=from_, twiml=twiml, status_callback=status_callback,
                status_callback_event=list(status_callback_events), **extra),
            to=to,
        )
        sid: str = call.sid
        metrics.incr("twilio.rest.created")
        _log.info("twilio.call.created", call_sid=sid, to=to)
        return sid

    async def hangup(self, call_sid: str) -> None:
        """End a call (``Status=completed``)."""
        await self._update(call_sid, "hangup", status="completed")

    async def cancel(self, call_sid: str) -> None:
        """Cancel a queued or ringing call (``Status=canceled``)."""
        await self._update(call_sid, "cancel", status="canceled")

    async def update_twiml(self, call_sid: str, twiml: str) -> None:
        """Replace the running TwiML (ends a ``<Connect><Stream>`` in progress)."""
        await self._update(call_sid, "update_twiml", twiml=twiml)

    # -- CallControl (carriers/base.py) ------------------------------------------------------

    async def place_call(self, call: OutboundCall) -> str:
        """Dial with inline ``<Connect><Stream>`` TwiML to ``call.stream``."""
        stream = call.stream
        twiml = connect_stream_twiml(stream.url, stream.params,
                                     status_callback=stream.status_url,
                                     fallback_say=stream.fallback_say or None)
        return await self.create_call(call.to, call.from_number, twiml, call.status_url,
                                      timeout=call.ring_timeout_s)

    async def hang_up(self, carrier_call_id: str) -> None:
        await self.hangup(carrier_call_id)

    async def say_and_hang_up(self, carrier_call_id: str, text: str) -> None:
        """``<Say>`` then ``<Hangup/>`` as the call's new TwiML (ends its stream)."""
        await self.update_twiml(carrier_call_id, say_hangup_twiml(text))

    async def redirect(self, carrier_call_id: str, target: str) -> None:
        """Fetch new TwiML from the URL ``target``."""
        await self._update(carrier_call_id, "redirect", url=target, method="POST")

    async def record(self, carrier_call_id: str) -> None:
        """Start a recording of the call (Recordings subresource)."""
        await self._run("record",
                        self._twilio().calls(carrier_call_id).recordings.create_async(),
                        call_sid=carrier_call_id)

    async def _update(self, call_sid: str, op: str, **fields: Any) -> None:
        await self._run(op, self._twilio().calls(call_sid).update_async(**fields),
                        call_sid=call_sid)
        _log.info("twilio.call.updated", call_sid=call_sid, op=op)

    # -- error mapping -----------------------------------------------------------------------

    async def _run(self, op: str, coro: Awaitable[_T], **ctx: Any) -> _T:
        try:
            return await asyncio.wait_for(coro, self.timeout_s + _GUARD_MARGIN_S)
        except TwilioRestException as exc:
            err = TwilioApiError(f"{op} failed: HTTP {exc.status} code {exc.code}: {exc.msg}",
                                 code=_int_or_none(exc.code), status=exc.status)
            cause: BaseException = exc
        except TwilioServiceException as exc:
            err = TwilioApiError(
                f"{op} failed: HTTP {exc.status} code {exc.code}: {exc.detail or exc.title}",
                code=_int_or_none(exc.code), status=exc.status)
            cause = exc
        except TimeoutError as exc:
            err = TwilioApiError(f"{op} timed out after {self.timeout_s}s")
            cause = exc
        except (aiohttp.ClientError, OSError) as exc:
            err = TwilioApiError(f"{op} failed: {type(exc).__name__}: {exc}")
            cause = exc
        except (TwilioException, ValueError, KeyError) as exc:
            # ValueError/KeyError: a 2xx answer whose body is not the JSON resource we expect.
            err = TwilioApiError(f"{op} failed: unexpected answer: {type(exc).__name__}: {exc}")
            cause = exc
        metrics.incr(f"twilio.rest.error.{op}")
        _log.warning("twilio.rest.error", op=op, code=err.code, http_status=err.status,
                     error=str(err), **ctx)
        raise err from cause


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
