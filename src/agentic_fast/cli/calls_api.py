"""A client of the running server's call API for ``agentic-fast calls`` and ``call --wait``.

Every failure is an ``ApiError`` (``core.errors.CallsApiError``) whose ``detail`` is one
line (HTTP status and the server's message, connection refused, a bad token): the commands
print it, never a traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson

from agentic_fast.core.errors import CallsApiError as ApiError

__all__ = ["ApiError", "CallsApi", "http_error"]


class CallsApi:
    """``GET /calls/history``, ``GET /calls/{id}``, ``POST /calls/{id}/hangup`` and the
    ``GET /calls/events`` stream of one server."""

    def __init__(self, base_url: str, api_token: str = "", *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        self.timeout_s = timeout_s
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CallsApi:
        self._http = aiohttp.ClientSession(headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "use CallsApi as an async context manager"
        return self._http

    async def _request(self, method: str, path: str) -> Any:
        url = self.base_url + path
        try:
            async with self.http.request(
                    method, url, timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise ApiError(http_error(resp.status, text, url))
                try:
                    return orjson.loads(text)
                except orjson.JSONDecodeError:
                    raise ApiError(f"{method} {url}: the answer is not JSON") from None
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(f"cannot connect to {self.base_url} ({_reason(exc)}): "
                           "is `agentic-fast serve` running there?") from None
        except aiohttp.ClientError as exc:
            raise ApiError(f"{method} {url} failed: {_reason(exc)}") from None
        except TimeoutError:
            raise ApiError(f"{method} {url}: no answer within {self.timeout_s:g} s") from None

    async def history(self, *, status: str | None = None, direction: str | None = None,
                      since: float | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query: dict[str, str] = {"limit": str(limit)}
        if status:
            query["status"] = status
        if direction:
            query["direction"] = direction
        if since is not None:
            query["since"] = f"{since:.3f}"
        doc = await self._request("GET", "/calls/history?" + urlencode(query))
        return list(doc.get("calls", []))

    async def get(self, call_id: str) -> dict[str, Any]:
        return dict(await self._request("GET", f"/calls/{quote(call_id, safe='')}"))

    async def hangup(self, call_id: str) -> dict[str, Any]:
        return dict(await self._request("POST", f"/calls/{quote(call_id, safe='')}/hangup"))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The live events (``GET /calls/events``), parsed, until the server ends the stream."""
        url = self.base_url + "/calls/events"
        try:
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeout_s)) as resp:
                if resp.status >= 400:
                    raise ApiError(http_error(resp.status, await resp.text(), url))
                data: list[bytes] = []
                async for raw in resp.content:
                    line = raw.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
                    elif not line and data:
                        try:
                            event = orjson.loads(b"\n".join(data))
                        except orjson.JSONDecodeError:
                            event = None  # not ours to crash on: skip a malformed event
                        data = []
                        if isinstance(event, dict):
                            yield event
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(f"cannot connect to {self.base_url} ({_reason(exc)}): "
                           "is `agentic-fast serve` running there?") from None
        except aiohttp.ClientError as exc:
            raise ApiError(f"event stream {url} failed: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


def http_error(status: int, text: str, url: str) -> str:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        doc = None
    message = (doc.get("error") if isinstance(doc, dict) else None) or " ".join(text.split())[:200]
    if status == 401:
        return (f"401 unauthorized: the server refused the API token (server.api_token "
                f"in the config, or --server pointing elsewhere) [{url}]")
    if status == 404:
        return f"404 {message or 'not found'} [{url}]"
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return f"{status} {message}" + (f": {detail}" if detail else "") + f" [{url}]"
