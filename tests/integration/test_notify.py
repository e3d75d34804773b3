"""Post-call delivery against loopback peers: a signed-webhook receiver, the fake Telegram
Bot API and the fake chat model. Time is a manual clock driving ``Notifier.run_once``:
nothing here sleeps to synchronise."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import sqlite3
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.notify import Notifier, build_notifier
from tests.fakes.fake_chat_model import FakeChatModel
from tests.fakes.telegram_bot_api import FakeTelegramBotApi

SECRET = "whsec-0123456789abcdef"
TOKEN = "123456:AAFakeTokenForTests_0123456789abcdef"
T0 = 1_800_000_000.0


class ManualClock:
    """Wall and monotonic time that move only when a test says so."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t - T0

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Receiver:
    """A webhook receiver that verifies signatures on its own (not with our code) and
    answers from a script: an int status, or "hang" (never answers)."""

    def __init__(self, secret: str = SECRET, port: int = 0) -> None:
        self.secret = secret
        self.port = port
        self.script: deque[int | str] = deque()
        self.received: list[dict[str, Any]] = []
        self.verified: list[bool] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()  # set by each request
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/call-ended"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/call-ended", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        stamp = request.headers["X-AgenticFast-Timestamp"]
        mac = hmac.new(self.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        ok = hmac.compare_digest(request.headers["X-AgenticFast-Signature"],
                                 "v1=" + mac.hexdigest())
        self.verified.append(ok)
        self.received.append({"headers": dict(request.headers), "body": json.loads(body),
                              "raw": body})
        self.arrived.set()
        action = self.script.popleft() if self.script else 200
        if action == "hang":
            await self.release.wait()
            action = 200
        if not ok:
            return web.json_response({"error": "bad signature"}, status=401)
        return web.json_response({"received": True}, status=int(action))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(tmp_path: Path, text: str) -> Config:
    return Config.from_text(f"server:\n  state_dir: {tmp_path / 'state'}\n" + text)


def webhook_config(tmp_path: Path, url: str, extra: str = "") -> Config:
    return make_config(tmp_path, f"""
notify:
  webhook_url: {url}
  webhook_secret: {SECRET}
  webhook_timeout_s: 0.5
  backoff_base_s: 10
  backoff_max_s: 100
{extra}""")


def telegram_config(tmp_path: Path, base_url: str, *, token: str = TOKEN,
                    chat_id: str = "42", extra: str = "") -> Config:
    return make_config(tmp_path, f"""
notify:
  backoff_base_s: 10
  telegram:
    bot_token: "{token}"
    chat_id: "{chat_id}"
    api_base_url: {base_url}
{extra}""")


def ended_call(manager: CallManager, clock: ManualClock) -> CallSession:
    """An answered inbound call with a transcript and one agent command, ended."""
    session = manager.create_inbound("CA" + "1" * 32, "+15551230000", "+15559870000")
    manager.mark_stream_started(session)
    session.add_transcript("caller", "Hi, can you text Sam that I'm running late?")
    session.add_transcript("agent", "Sure, sending that now.")
    session.add_command({"command": "Text Sam that I'm running late.", "source": "tool",
                         "status": "ok", "answer": "Sent."})
    session.add_transcript("agent", "Done, Sam knows.")
    session.add_transcript("caller", "Thanks, bye.")
    clock.advance(42)
    manager.complete(session, "hangup")
    return session


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.close()


async def end_one_call(notifier: Notifier, clock: ManualClock) -> CallSession:
    """End a call through a manager whose on_call_ended feeds ``notifier``."""
    manager = CallManager(clock=clock)
    manager.on_call_ended.append(notifier.submit)
    session = ended_call(manager, clock)
    await asyncio.gather(*notifier._enqueues)  # the outbox write submit() started
    return session


# -- webhook --------------------------------------------------------------------------------

async def test_signed_webhook_is_delivered_and_verifies(tmp_path: Path, clock: ManualClock,
                                                        receiver: Receiver) -> None:
    metrics.reset()
    notifier = build_notifier(webhook_config(tmp_path, receiver.url), clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        session = await end_one_call(notifier, clock)
        assert await notifier.pending() == 1
        assert await notifier.run_once() is None
        assert receiver.verified == [True]
        got = receiver.received[0]
        headers, body = got["headers"], got["body"]
        assert headers["X-AgenticFast-Event"] == "call.ended"
        assert int(headers["X-AgenticFast-Timestamp"]) == int(clock.t)
        assert headers["Content-Type"] == "application/json"
        call = body["call"]
        assert call["call_id"] == session.call_id and call["call_sid"] == session.call_sid
        assert (call["from"], call["to"], call["direction"]) == (
            "+15551230000", "+15559870000", "inbound")
        assert (call["status"], call["reason"], call["duration_s"]) == ("completed",
                                                                          "hangup", 42.0)
        assert call["provider"] == "openai"
        assert [s["status"] for s in call["statuses"]] == ["ringing", "in-progress",
                                                            "completed"]
        assert all(s["at"] for s in call["statuses"])
        assert body["transcript"][0]["text"].startswith("Hi, can you text Sam")
        assert body["commands"][0]["command"] == "Text Sam that I'm running late."
        # no summary model configured: the plain extract
        assert "Hi, can you text Sam" in body["summary"]
        assert "Text Sam that I'm running late." in body["summary"]
        assert await notifier.pending() == 0
        assert metrics.get("notify.delivered.webhook") == 1
    finally:
        await notifier.close()


async def test_receiver_down_500_and_timeout_are_retried_with_backoff(
        tmp_path: Path, clock: ManualClock) -> None:
    port = free_port()
    receiver = Receiver(port=port)
    notifier = build_notifier(webhook_config(tmp_path, receiver.url), clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        await end_one_call(notifier, clock)
        # 1: nothing listens -> retry after backoff_base_s
        assert await notifier.run_once() == clock.t + 10
        await receiver.start()
        receiver.script.extend([500, "hang"])
        assert await notifier.run_once() == clock.t + 10  # not due yet: nothing sent
        assert receiver.received == []
        clock.advance(10)
        # 2: 500 -> retry after 20 s; 3: no answer within webhook_timeout_s -> 40 s
        assert await notifier.run_once() == clock.t + 20
        clock.advance(20)
        assert await notifier.run_once() == clock.t + 40
        clock.advance(40)
        assert await notifier.run_once() is None  # 4: delivered
        assert len(receiver.received) == 3 and receiver.verified == [True] * 3
        ids = {r["headers"]["X-AgenticFast-Delivery"] for r in receiver.received}
        assert len(ids) == 1  # the receiver's idempotency key is stable
        bodies = {r["raw"] for r in receiver.received}
        assert len(bodies) == 1  # the same bytes every time (the summary is kept)
        assert await notifier.pending() == 0
    finally:
        await notifier.close()
        await receiver.close()


async def test_outbox_survives_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    receiver = Receiver(port=free_port())
    config = webhook_config(tmp_path, receiver.url)
    first = build_notifier(config, clock=clock)
    assert first is not None
    await first.open()
    session = await end_one_call(first, clock)
    await first.run_once()  # receiver down: one failed attempt
    # a second call ends just before shutdown: close() finishes writing it
    manager = CallManager(clock=clock)
    manager.on_call_ended.append(first.submit)
    other = manager.create_inbound("CA" + "2" * 32, "+15551230000", "+15559870000")
    manager.fail(other, "stream-timeout")
    await first.close()
    outbox = tmp_path / "state" / "outbox.sqlite3"
    assert outbox.exists()
    with sqlite3.connect(outbox) as db:
        assert db.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 2

    await receiver.start()
    second = build_notifier(config, clock=clock)
    assert second is not None
    await second.open()
    try:
        assert await second.pending() == 2
        clock.advance(10)
        assert await second.run_once() is None
        delivered = {r["body"]["call"]["call_id"] for r in receiver.received}
        assert delivered == {session.call_id, other.call_id}
        assert receiver.verified == [True, True]
        assert await second.pending() == 0
    finally:
        await second.close()
        await receiver.close()


async def test_attempts_are_bounded_then_dead_lettered(tmp_path: Path, clock: ManualClock,
                                                       receiver: Receiver,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    metrics.reset()
    config = webhook_config(tmp_path, receiver.url, "  max_attempts: 2\n")
    notifier = build_notifier(config, clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        session = await end_one_call(notifier, clock)
        receiver.script.extend([503, 503])
        await notifier.run_once()
        clock.advance(10)
        with caplog.at_level(logging.ERROR, logger="agentic_fast.notify"):
            assert await notifier.run_once() is None
        assert await notifier.pending() == 0
        dead = await notifier.dead_letters()
        assert dead == [(session.call_id, "webhook", 2,
                         "HTTP 503 [2 attempts (notify.max_attempts)]")]
        assert metrics.get("notify.dead.webhook") == 1
        line = next(r.getMessage() for r in caplog.records
                    if "notify.dead_letter" in r.getMessage())
        assert f"call_id={session.call_id}" in line
    finally:
        await notifier.close()


async def test_max_age_dead_letters_without_an_attempt(tmp_path: Path, clock: ManualClock,
                                                       receiver: Receiver) -> None:
    config = webhook_config(tmp_path, receiver.url, "  max_age_s: 60\n")
    notifier = build_notifier(config, clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        await end_one_call(notifier, clock)
        clock.advance(61)
        await notifier.run_once()
        assert receiver.received == []
        assert (await notifier.dead_letters())[0][3].startswith("older than notify.max_age_s")
    finally:
        await notifier.close()


async def test_the_outbox_is_bounded(tmp_path: Path, clock: ManualClock,
                                     receiver: Receiver) -> None:
    metrics.reset()
    config = webhook_config(tmp_path, receiver.url, "  max_pending: 1\n")
    notifier = build_notifier(config, clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        await end_one_call(notifier, clock)
        await end_one_call(notifier, clock)  # same CallSid, new manager: a second call
        assert await notifier.pending() == 1
        assert metrics.get("notify.outbox.full") == 1
    finally:
        await notifier.close()


# -- Telegram -------------------------------------------------------------------------------

@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramBotApi]:
    async with FakeTelegramBotApi(token=TOKEN, chats={42: "private"}) as api:
        yield api


async def test_telegram_message_is_sent(tmp_path: Path, clock: ManualClock,
                                        telegram: FakeTelegramBotApi) -> None:
    notifier = build_notifier(telegram_config(tmp_path, telegram.base_url), clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        session = await end_one_call(notifier, clock)
        assert await notifier.run_once() is None
        assert telegram.rejections == [] and telegram.unknown_params == []
        [(chat, text)] = telegram.messages
        assert chat == 42
        assert "parse_mode" not in telegram.requests[0]
        assert "Call ended: inbound +15551230000 -> +15559870000" in text
        assert session.call_id in text
        assert "Caller: Hi, can you text Sam that I'm running late?" in text
        assert "Assistant: Done, Sam knows." in text
        assert "- Text Sam that I'm running late. [ok]: Sent." in text
        assert await notifier.pending() == 0
    finally:
        await notifier.close()


async def test_telegram_429_retry_after_is_honoured_and_no_part_is_sent_twice(
        tmp_path: Path, clock: ManualClock, telegram: FakeTelegramBotApi) -> None:
    notifier = build_notifier(telegram_config(tmp_path, telegram.base_url), clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        manager = CallManager(clock=clock)
        manager.on_call_ended.append(notifier.submit)
        session = manager.create_inbound("CA" + "3" * 32, "+15551230000", "+15559870000")
        manager.mark_stream_started(session)
        for i in range(3):  # three long lines: three messages
            session.add_transcript("caller", f"line {i} " + "x" * 3000)
        manager.complete(session)
        await asyncio.gather(*notifier._enqueues)
        telegram.flood(retry_after=30, after=1)  # the second message hits flood control
        assert await notifier.run_once() == clock.t + 30
        assert len(telegram.messages) == 1
        clock.advance(29)
        requests = len(telegram.requests)
        assert await notifier.run_once() == clock.t + 1
        assert len(telegram.requests) == requests  # not asked again before retry_after
        clock.advance(1)
        assert await notifier.run_once() is None
        texts = [text for _, text in telegram.messages]
        assert len(texts) == 3  # the first part was not sent again
        assert [t[:5] for t in texts] == ["[1/3]", "[2/3]", "[3/3]"]
        assert all(len(t) <= 4096 for t in texts)
        assert telegram.rejections == [(429, "Too Many Requests: retry after 30")]
    finally:
        await notifier.close()


async def test_telegram_401_is_dead_lettered_with_a_clear_log(
        tmp_path: Path, clock: ManualClock, telegram: FakeTelegramBotApi,
        caplog: pytest.LogCaptureFixture) -> None:
    metrics.reset()
    wrong = "123456:AAWrongToken_0123456789abcdefghij"
    notifier = build_notifier(telegram_config(tmp_path, telegram.base_url, token=wrong),
                              clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        session = await end_one_call(notifier, clock)
        with caplog.at_level(logging.ERROR, logger="agentic_fast.notify"):
            assert await notifier.run_once() is None
        assert telegram.messages == [] and telegram.rejections == [(401, "Unauthorized")]
        assert await notifier.pending() == 0
        assert metrics.get("notify.dead.telegram") == 1
        line = next(r.getMessage() for r in caplog.records
                    if "notify.dead_letter" in r.getMessage())
        assert f"call_id={session.call_id}" in line
        assert "401 Unauthorized" in line and "notify.telegram.bot_token" in line
        assert wrong not in caplog.text
    finally:
        await notifier.close()


async def test_telegram_chat_not_found_is_dead_lettered(tmp_path: Path, clock: ManualClock,
                                                        telegram: FakeTelegramBotApi) -> None:
    notifier = build_notifier(telegram_config(tmp_path, telegram.base_url, chat_id="7"),
                              clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        await end_one_call(notifier, clock)
        await notifier.run_once()
        [(_, _, attempts, error)] = await notifier.dead_letters()
        assert attempts == 1
        assert "Bad Request: chat not found" in error and "notify.telegram.chat_id" in error
    finally:
        await notifier.close()


# -- summary --------------------------------------------------------------------------------

async def test_summary_comes_from_the_chat_model_once_for_every_destination(
        tmp_path: Path, clock: ManualClock, receiver: Receiver,
        telegram: FakeTelegramBotApi) -> None:
    metrics.reset()
    async with FakeChatModel(api_key="sk-test", default_reply="Caller asked to text Sam.",
                             model="small-model") as model:
        config = make_config(tmp_path, f"""
notify:
  webhook_url: {receiver.url}
  webhook_secret: {SECRET}
  telegram:
    bot_token: "{TOKEN}"
    chat_id: "42"
    api_base_url: {telegram.base_url}
  summary:
    api_key: sk-test
    base_url: {model.base_url}
    model: small-model
""")
        notifier = build_notifier(config, clock=clock)
        assert notifier is not None
        await notifier.open()
        try:
            await end_one_call(notifier, clock)
            assert await notifier.run_once() is None
        finally:
            await notifier.close()
        assert len(model.requests) == 1  # one summary, shared by both destinations
        request = model.requests[0]
        assert request["model"] == "small-model"
        assert "Hi, can you text Sam" in request["messages"][-1]["content"]
    assert receiver.received[0]["body"]["summary"] == "Caller asked to text Sam."
    assert "Summary:\nCaller asked to text Sam." in telegram.messages[0][1]
    assert metrics.get("notify.summary.model") == 1


async def test_summary_falls_back_to_the_extract_when_the_model_fails(
        tmp_path: Path, clock: ManualClock, receiver: Receiver) -> None:
    metrics.reset()
    config = webhook_config(tmp_path, receiver.url, f"""  summary:
    api_key: sk-test
    base_url: http://127.0.0.1:{free_port()}/v1
    timeout_s: 2
""")
    notifier = build_notifier(config, clock=clock)
    assert notifier is not None
    await notifier.open()
    try:
        await end_one_call(notifier, clock)
        assert await notifier.run_once() is None
    finally:
        await notifier.close()
    summary = receiver.received[0]["body"]["summary"]
    assert summary.startswith("Inbound call from +15551230000 to +15559870000, completed")
    assert metrics.get("notify.summary.error") == 1


# -- background sender -----------------------------------------------------------------------

async def test_started_notifier_sends_on_its_own(tmp_path: Path,
                                                 receiver: Receiver) -> None:
    notifier = build_notifier(webhook_config(tmp_path, receiver.url))
    assert notifier is not None
    await notifier.start()
    try:
        manager = CallManager()
        manager.on_call_ended.append(notifier.submit)
        session = manager.create_inbound("CA" + "4" * 32, "+15551230000", "+15559870000")
        manager.complete(session)
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        assert receiver.verified == [True]
        assert receiver.received[0]["body"]["call"]["call_id"] == session.call_id
    finally:
        await notifier.close()


# -- serve wiring ----------------------------------------------------------------------------

def _no_bridge(session: object, sender: object) -> object:
    raise AssertionError("no call is made in this test")


async def test_serve_starts_the_notifier_and_refuses_an_unsigned_webhook(
        tmp_path: Path) -> None:
    import contextlib
    import gc

    from agentic_fast.core.errors import ConfigError
    from agentic_fast.server.runner import serve

    base = ("server: {public_url: 'https://agent.example.test', host: 127.0.0.1, port: 0, "
            f"state_dir: '{tmp_path / 'state'}'}}\n")
    with pytest.raises(ConfigError) as info:
        await serve(Config.from_text(base + "notify: {webhook_url: 'https://h.example.com/x'}\n",
                                     env={}), bridge_factory=_no_bridge)
    assert info.value.key == "notify.webhook_secret"

    config = Config.from_text(base + "notify: {webhook_url: 'https://h.example.com/x', "
                              f"webhook_secret: '{SECRET}'}}\n", env={})
    thresholds = gc.get_threshold()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, bridge_factory=_no_bridge, ready=ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 10)
        assert (tmp_path / "state" / "outbox.sqlite3").exists()  # opened on startup
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
        gc.set_threshold(*thresholds)
