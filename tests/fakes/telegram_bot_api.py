"""A fake Telegram Bot API server (aiohttp), written from the Bot API documentation
(core.telegram.org/bots/api: "Making requests", ``sendMessage``, ``Message``,
``ResponseParameters``). It must not import agentic_fast.

Serves ``/bot<token>/<method>`` on 127.0.0.1 for ``getMe`` and ``sendMessage`` (method
names are case-insensitive; GET or POST; parameters from the query string,
``application/x-www-form-urlencoded``, ``application/json`` or ``multipart/form-data``)
and answers like the real server:

- ``{"ok": true, "result": <Message>}`` (``message_id``, ``from``, ``chat``, ``date``,
  ``text``);
- ``{"ok": false, "error_code": 401, "description": "Unauthorized"}`` for a wrong token;
- 404 ``Not Found`` for an unknown method;
- 400 ``Bad Request: chat_id is empty`` / ``chat not found`` / ``message text is empty`` /
  ``message is too long`` / ``unsupported parse_mode`` / ``can't parse ...`` for bad
  parameters (text: 1-4096 characters after leading/trailing whitespace is stripped);
- 429 ``Too Many Requests: retry after N`` with ``parameters.retry_after`` when flood
  control is scripted (``flood(retry_after, times)``).

    async with FakeTelegramBotApi(token="123:abc", chats={42: "private"}) as api:
        api.base_url         # http://127.0.0.1:<port>
        api.messages         # [(chat_id, text), ...] delivered
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from typing import Any

from aiohttp import web

__all__ = ["FakeTelegramBotApi"]

MAX_TEXT = 4096
PARSE_MODES = frozenset({"HTML", "Markdown", "MarkdownV2"})
# sendMessage parameters of the current Bot API; anything else is ignored by the real
# server, but here it is recorded so a test can see an unexpected one
SEND_MESSAGE_PARAMS = frozenset({
    "business_connection_id", "chat_id", "message_thread_id", "direct_messages_topic_id",
    "text", "parse_mode", "entities", "link_preview_options", "disable_notification",
    "protect_content", "allow_paid_broadcast", "message_effect_id",
    "suggested_post_parameters", "reply_parameters", "reply_markup",
    # deprecated, still accepted
    "disable_web_page_preview", "reply_to_message_id", "allow_sending_without_reply"})
LINK_PREVIEW_FIELDS = frozenset({"is_disabled", "url", "prefer_small_media",
                                 "prefer_large_media", "show_above_text"})
_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")


class _ApiError(Exception):
    def __init__(self, code: int, description: str,
                 parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


class FakeTelegramBotApi:
    """One bot (``token``) and the chats it may write to (id -> type, or @username)."""

    def __init__(self, *, token: str, chats: dict[int | str, str] | None = None,
                 port: int = 0) -> None:
        if not _TOKEN.fullmatch(token):
            raise ValueError("a bot token looks like 123456:ABC-DEF...")
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.chats: dict[int | str, str] = dict(chats or {})
        self.messages: list[tuple[int | str, str]] = []
        self.requests: list[dict[str, Any]] = []  # every sendMessage's parameters
        self.rejections: list[tuple[int, str]] = []
        self.unknown_params: list[str] = []
        self._floods: deque[int | None] = deque()
        self._next_id = 1
        self._port = port
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def flood(self, retry_after: int, times: int = 1, after: int = 0) -> None:
        """After ``after`` more messages, answer ``times`` sendMessage calls with 429."""
        self._floods.extend([None] * after + [retry_after] * times)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegramBotApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- HTTP --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            if request.method not in ("GET", "POST"):
                raise _ApiError(404, "Not Found")
            if request.match_info["token"] != self.token:
                raise _ApiError(401, "Unauthorized")
            method = request.match_info["method"].lower()
            params = await self._params(request)
            if method == "getme":
                return _ok(self._bot_user())
            if method == "sendmessage":
                return _ok(self._send_message(params))
            raise _ApiError(404, "Not Found")
        except _ApiError as exc:
            self.rejections.append((exc.code, exc.description))
            body: dict[str, Any] = {"ok": False, "error_code": exc.code,
                                    "description": exc.description}
            if exc.parameters:
                body["parameters"] = exc.parameters
            return web.json_response(body, status=exc.code)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method != "POST" or not request.can_read_body:
            return params
        ctype = request.content_type
        if ctype == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise _ApiError(400, "Bad Request: can't parse JSON request body") from None
            if not isinstance(body, dict):
                raise _ApiError(400, "Bad Request: JSON request body must be an object")
            params.update(body)
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params

    # -- methods -----------------------------------------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Fake Bot",
                "username": "fake_bot"}

    def _chat(self, value: Any) -> dict[str, Any]:
        if value is None or value == "":
            raise _ApiError(400, "Bad Request: chat_id is empty")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _ApiError(400, "Bad Request: chat not found")
        numeric = isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value)
        key: int | str = int(value) if numeric else value
        if key not in self.chats:
            raise _ApiError(400, "Bad Request: chat not found")
        kind = self.chats[key]
        chat: dict[str, Any] = {"id": key if isinstance(key, int) else -1000000000001,
                                "type": kind, "key": key}
        if kind == "private":
            chat["first_name"] = "Owner"
        else:
            chat["title"] = "Calls"
        return chat

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(params)
        self.unknown_params += [k for k in params if k not in SEND_MESSAGE_PARAMS]
        chat = self._chat(params.get("chat_id"))  # "key": the chats entry, removed below
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        text = text.strip()
        if len(text) > MAX_TEXT:
            raise _ApiError(400, "Bad Request: message is too long")
        parse_mode = params.get("parse_mode")
        if parse_mode not in (None, "") and parse_mode not in PARSE_MODES:
            raise _ApiError(400, "Bad Request: unsupported parse_mode")
        preview = params.get("link_preview_options")
        if isinstance(preview, str):
            try:
                preview = json.loads(preview)
            except ValueError:
                raise _ApiError(400, "Bad Request: can't parse link preview options "
                                "JSON object") from None
        if preview is not None and (not isinstance(preview, dict)
                                    or set(preview) - LINK_PREVIEW_FIELDS):
            raise _ApiError(400, "Bad Request: can't parse link preview options JSON object")
        retry_after = self._floods.popleft() if self._floods else None
        if retry_after is not None:
            raise _ApiError(429, f"Too Many Requests: retry after {retry_after}",
                            {"retry_after": retry_after})
        message = {"message_id": self._next_id, "from": self._bot_user(), "chat": chat,
                   "date": int(time.time()), "text": text}
        self._next_id += 1
        self.messages.append((chat.pop("key"), text))
        return message


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})
