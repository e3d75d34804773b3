"""Telnyx Call Control v2 over aiohttp: dial, answer, speak, hang up, transfer, record.

``Authorization: Bearer <telnyx.api_key>`` on JSON requests to ``telnyx.api_base_url``
(default ``https://api.telnyx.com/v2``, the SDK's ``base_url``); field names are the SDK's
``CallDialParams`` / ``Action*Params``. Every request is bounded by
``telnyx.request_timeout_s``. Every failure (network, timeout, Telnyx's error body
``{"errors": [{"code", "title", "detail"}]}``) becomes :class:`TelnyxApiError`, a
``CarrierApiError(peer="telnyx")`` carrying Telnyx's ``code`` and the HTTP ``status``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson

from agentic_fast.carriers.telnyx.media import CODECS
from agentic_fast.core import metrics
from agentic_fast.core.errors import TelnyxApiError
from agentic_fast.core.log import get_logger

__all__ = ["DEFAULT_API_BASE", "DialedCall", "StreamOptions",
           "TelnyxRestClient"]

DEFAULT_API_BASE: Final = "https://api.telnyx.com/v2"
_PEER: Final = "telnyx"
_log = get_logger("telnyx.rest")





@dataclass(frozen=True, slots=True)
class StreamOptions:
    """The media stream a call should open: bidirectional RTP in ``codec`` both ways."""

    url: str
    codec: str = "PCMU"

    def params(self) -> dict[str, Any]:
        """The ``stream_*`` fields of dial / answer / streaming_start."""
        codec = CODECS[self.codec]
        out: dict[str, Any] = {
            "stream_url": self.url, "stream_track": "inbound_track",
            "stream_codec": codec.name, "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": codec.name,
        }
        if codec.name == "L16":
            out["stream_bidirectional_sampling_rate"] = codec.leg.sample_rate
        return out


@dataclass(frozen=True, slots=True)
class DialedCall:
    """What ``POST /calls`` answered."""

    call_control_id: str
    call_leg_id: str
    call_session_id: str


class TelnyxRestClient:
    """Call Control v2 commands; the aiohttp session opens on first use, ``close()`` ends it."""

    def __init__(self, api_key: str, *, api_base: str = DEFAULT_API_BASE,
                 timeout_s: float = 10.0) -> None:
        if not api_key:
            raise ValueError("telnyx.api_key is required")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"Authorization": f"Bearer {self._api_key}",
                         "Accept": "application/json", "User-Agent": "agentic-fast"})
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> TelnyxRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- commands ----------------------------------------------------------------------------

    async def dial(self, *, connection_id: str, to: str, from_: str, webhook_url: str,
                   stream: StreamOptions, client_state: str | None = None,
                   timeout_secs: int | None = None, **extra: Any) -> DialedCall:
        """``POST /calls``: place a call that opens ``stream`` once answered."""
        body: dict[str, Any] = {"connection_id": connection_id, "to": to, "from": from_,
                                "webhook_url": webhook_url, "command_id": str(uuid.uuid4()),
                                **stream.params(), **extra}
        if client_state is not None:
            body["client_state"] = client_state
        if timeout_secs is not None:
            body["timeout_secs"] = timeout_secs
        data = await self._post("dial", "/calls", body, to=to)
        try:
            call = DialedCall(str(data["call_control_id"]), str(data.get("call_leg_id", "")),
                              str(data.get("call_session_id", "")))
        except (KeyError, TypeError) as exc:
            raise self._fail("dial", TelnyxApiError(
                f"dial failed: unexpected answer (no call_control_id): {exc!r}"), to=to) from exc
        metrics.incr("telnyx.rest.dialed")
        _log.info("telnyx.call.dialed", call_control_id=call.call_control_id)
        return call

    async def answer(self, call_control_id: str, *, stream: StreamOptions | None,
                     client_state: str | None = None, webhook_url: str | None = None) -> None:
        """Answer an incoming call and open ``stream`` (None: no media stream)."""
        body: dict[str, Any] = {**(stream.params() if stream is not None else {}),
                                "command_id": str(uuid.uuid4())}
        if client_state is not None:
            body["client_state"] = client_state
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        await self.action(call_control_id, "answer", body)

    async def speak(self, call_control_id: str, text: str, *, voice: str,
                    language: str = "", service_level: str = "",
                    client_state: str | None = None) -> None:
        """Speak ``text`` (plain text, at most 3,000 characters) on an answered call;
        ``call.speak.started`` / ``call.speak.ended`` follow as webhooks. ``language`` and
        ``service_level``: "" is not sent."""
        body: dict[str, Any] = {"payload": text[:3000], "payload_type": "text",
                                "voice": voice, "command_id": str(uuid.uuid4())}
        if language:
            body["language"] = language
        if service_level:
            body["service_level"] = service_level
        if client_state is not None:
            body["client_state"] = client_state
        await self.action(call_control_id, "speak", body)

    async def hangup(self, call_control_id: str) -> None:
        await self.action(call_control_id, "hangup", {"command_id": str(uuid.uuid4())})

    async def transfer(self, call_control_id: str, to: str, **extra: Any) -> None:
        """Send the call elsewhere (a number or ``sip:`` URI): Telnyx's redirect."""
        await self.action(call_control_id, "transfer",
                          {"to": to, "command_id": str(uuid.uuid4()), **extra})

    async def record_start(self, call_control_id: str, *, channels: str = "single",
                           format: str = "mp3") -> None:
        await self.action(call_control_id, "record_start",
                          {"channels": channels, "format": format,
                           "command_id": str(uuid.uuid4())})

    async def streaming_stop(self, call_control_id: str) -> None:
        await self.action(call_control_id, "streaming_stop", {"command_id": str(uuid.uuid4())})

    async def action(self, call_control_id: str, action: str, body: dict[str, Any]) -> None:
        """``POST /calls/{call_control_id}/actions/{action}``."""
        if not call_control_id or "/" in call_control_id:
            raise ValueError(f"bad call_control_id {call_control_id!r:.80}")
        await self._post(action, f"/calls/{call_control_id}/actions/{action}", body,
                         call_control_id=call_control_id)
        _log.info("telnyx.call.action", action=action, call_control_id=call_control_id)

    # -- transport and error mapping ---------------------------------------------------------

    async def _post(self, op: str, path: str, body: dict[str, Any],
                    **ctx: Any) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout_s + 1.0):
                async with self._http().post(
                        self.api_base + path, data=orjson.dumps(body),
                        headers={"Content-Type": "application/json"}) as resp:
                    raw = await resp.read()
                    status = resp.status
        except TimeoutError as exc:
            raise self._fail(op, TelnyxApiError(f"{op} timed out after {self.timeout_s}s"),
                             **ctx) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._fail(op, TelnyxApiError(f"{op} failed: {type(exc).__name__}: {exc}"),
                             **ctx) from exc
        try:
            parsed = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not 200 <= status < 300:
            code, detail = _first_error(parsed)
            raise self._fail(op, TelnyxApiError(
                f"{op} failed: HTTP {status} code {code}: {detail or raw[:200]!r}",
                code=code, status=status), **ctx)
        data = parsed.get("data") if isinstance(parsed, dict) else None
        if not isinstance(data, dict):
            raise self._fail(op, TelnyxApiError(
                f"{op} failed: unexpected answer (HTTP {status}, no 'data' object)",
                status=status), **ctx)
        return data

    @staticmethod
    def _fail(op: str, err: TelnyxApiError, **ctx: Any) -> TelnyxApiError:
        metrics.incr(f"telnyx.rest.error.{op}")
        _log.warning("telnyx.rest.error", op=op, code=err.code, http_status=err.status,
                     error=str(err)[:300], **ctx)
        return err


def _first_error(parsed: Any) -> tuple[str | None, str]:
    """(code, "title: detail") of Telnyx's first error, if the body has one."""
    if not isinstance(parsed, dict):
        return None, ""
    errors = parsed.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, ""
    err = errors[0]
    code = err.get("code")
    title, detail = str(err.get("title") or ""), str(err.get("detail") or "")
    text = f"{title}: {detail}" if title and detail else title or detail
    return (str(code) if code is not None else None), text[:300]
