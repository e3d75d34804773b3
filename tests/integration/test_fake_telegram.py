"""The fake Telegram Bot API answers like the real one (the Bot API documentation)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.telegram_bot_api import FakeTelegramBotApi

TOKEN = "123456:AAFakeTokenForTests_0123456789abcdef"


@pytest.fixture
async def api() -> AsyncIterator[FakeTelegramBotApi]:
    async with FakeTelegramBotApi(token=TOKEN, chats={42: "private", "@calls": "channel"}) \
            as fake:
        yield fake


async def _call(api: FakeTelegramBotApi, method: str, token: str = TOKEN,
                **kwargs: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, \
            http.post(f"{api.base_url}/bot{token}/{method}", **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.json()


async def test_send_message_returns_the_message(api: FakeTelegramBotApi) -> None:
    status, body = await _call(api, "sendMessage", json={"chat_id": 42, "text": " hi "})
    assert status == 200 and body["ok"] is True
    message = body["result"]
    assert isinstance(message, dict)
    assert message["text"] == "hi" and message["chat"]["id"] == 42  # type: ignore[index]
    assert message["from"]["is_bot"] is True  # type: ignore[index]
    assert api.messages == [(42, "hi")]


async def test_form_parameters_and_case_insensitive_method(api: FakeTelegramBotApi) -> None:
    status, body = await _call(api, "SENDMESSAGE", data={"chat_id": "@calls", "text": "x"})
    assert (status, body["ok"]) == (200, True)
    assert api.messages == [("@calls", "x")]


@pytest.mark.parametrize(("params", "code", "description"), [
    ({"text": "x"}, 400, "Bad Request: chat_id is empty"),
    ({"chat_id": 7, "text": "x"}, 400, "Bad Request: chat not found"),
    ({"chat_id": 42, "text": "   "}, 400, "Bad Request: message text is empty"),
    ({"chat_id": 42, "text": "x" * 4097}, 400, "Bad Request: message is too long"),
    ({"chat_id": 42, "text": "x", "parse_mode": "markdown2"}, 400,
     "Bad Request: unsupported parse_mode"),
])
async def test_bad_parameters_are_refused(api: FakeTelegramBotApi, params: dict[str, object],
                                          code: int, description: str) -> None:
    status, body = await _call(api, "sendMessage", json=params)
    assert status == code
    assert body == {"ok": False, "error_code": code, "description": description}
    assert api.messages == []


async def test_4096_characters_are_accepted(api: FakeTelegramBotApi) -> None:
    status, _ = await _call(api, "sendMessage", json={"chat_id": 42, "text": "x" * 4096})
    assert status == 200


async def test_wrong_token_and_unknown_method(api: FakeTelegramBotApi) -> None:
    status, body = await _call(api, "sendMessage", token="1:wrong",
                               json={"chat_id": 42, "text": "x"})
    assert (status, body) == (401, {"ok": False, "error_code": 401,
                                    "description": "Unauthorized"})
    status, body = await _call(api, "sendTelepathy", json={})
    assert (status, body["description"]) == (404, "Not Found")


async def test_flood_control_answers_429_with_retry_after(api: FakeTelegramBotApi) -> None:
    api.flood(retry_after=17)
    status, body = await _call(api, "sendMessage", json={"chat_id": 42, "text": "x"})
    assert status == 429
    assert body == {"ok": False, "error_code": 429,
                    "description": "Too Many Requests: retry after 17",
                    "parameters": {"retry_after": 17}}
    status, _ = await _call(api, "sendMessage", json={"chat_id": 42, "text": "x"})
    assert status == 200
