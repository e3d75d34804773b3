"""A call server on loopback with the fake Twilio peers around it (for integration tests).

Twilio knows the server as ``PUBLIC_URL`` (https, as in production behind a TLS proxy);
the fakes reach it on loopback and sign for the public URL, as a proxy in front would let
them. The bridge is a recording ``MediaSink`` that runs the real ``AudioConverter``, so the
tests see exactly what would reach a provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agentic_fast.audio import AudioConverter
from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.call.stream_handler import StreamSender
from agentic_fast.core.config import Config
from agentic_fast.server.app import SERVICES, create_app, start_site
from agentic_fast.server.runner import make_runner
from tests.fakes.twilio_media import FakeTwilioMediaClient
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_twiml import read_connect_stream
from tests.fakes.twilio_webhooks import (
    SharedKey,
    TwilioWebhookSender,
    incoming_call_form,
    new_sid,
)

PUBLIC_URL = "https://agent.example.test"
FROM_NUMBER = "+15550001111"


def make_config(rest: FakeTwilioRest | None, extra: str = "", *,
                shared_keys: Sequence[SharedKey] = (), **server: Any) -> Config:
    """Config for a server behind ``PUBLIC_URL``; ``shared_keys`` become
    ``twilio.webhook_shared_keys``. Inbound calls are open to any caller without rate
    limits unless ``extra`` has its own ``calls:`` section."""
    if not any(line.startswith("calls:") for line in extra.splitlines()):
        extra += ("\ncalls:\n  inbound: open\n  rate_limits:\n"
                  "    per_caller_per_minute: 0\n    global_per_second: 0\n")
    lines = ["server:", f"  public_url: {PUBLIC_URL}"]
    lines += [f"  {k}: {v}" for k, v in server.items()]
    if rest is not None:
        lines += ["twilio:", f"  account_sid: {rest.account_sid}",
                  f"  auth_token: {rest.auth_token}", f"  from_number: '{FROM_NUMBER}'",
                  f"  api_base: {rest.base_url}", "  request_timeout_s: 5"]
        if shared_keys:
            lines.append("  webhook_shared_keys:")
            lines += [f"    - '{key.key_id}={key.secret}'" for key in shared_keys]
    return Config.from_text("\n".join(lines) + "\n" + extra, source="test-config", env={})


@dataclass
class RecordingBridge:
    """A MediaSink that converts like the real bridge and records everything."""

    session: CallSession
    sender: StreamSender
    converter: AudioConverter = field(default_factory=lambda: AudioConverter("openai"))
    chunks: list[bytes] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    media_count: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        """Wait (event-driven) until ``predicate()`` holds after some bridge activity."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def start(self) -> None:
        self.started.set()

    def on_media(self, payload_b64: str, timestamp_ms: int) -> None:
        self.media_count += 1
        self._changed.set()
        self.chunks.extend(self.converter.feed_twilio(payload_b64))

    def on_mark(self, name: str) -> None:
        self.marks.append(name)
        self._changed.set()

    def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)
        self._changed.set()

    async def close(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)


class Harness:
    """Server + fake REST + webhook sender; ``bridges`` holds one RecordingBridge per call."""

    def __init__(self, config: Config, rest: FakeTwilioRest | None,
                 manager: CallManager | None = None, bridge_factory: Any = None) -> None:
        self.config = config
        self.rest = rest
        self.bridges: dict[str, RecordingBridge] = {}
        self.app = create_app(config, bridge_factory=bridge_factory or self._bridge,
                              manager=manager)
        self.runner = make_runner(self.app, config)
        self.site: Any = None
        self.http: aiohttp.ClientSession | None = None
        self.clients: list[FakeTwilioMediaClient] = []
        self.bridge_ready: asyncio.Queue[RecordingBridge] = asyncio.Queue()

    def _bridge(self, session: CallSession, sender: StreamSender) -> RecordingBridge:
        bridge = RecordingBridge(session, sender)
        self.bridges[session.call_id] = bridge
        self.bridge_ready.put_nowait(bridge)
        return bridge

    @property
    def services(self) -> Any:
        return self.app[SERVICES]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/media-stream"

    @property
    def port(self) -> int:
        return int(self.site.port)

    async def __aenter__(self) -> Harness:
        await self.runner.setup()
        self.site = await start_site(self.runner, "127.0.0.1", 0)
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.close()
        assert self.http is not None
        await self.http.close()
        await self.runner.cleanup()

    def webhooks(self, auth_token: str | None = None,
                 shared_key: SharedKey | None = None) -> TwilioWebhookSender:
        """A sender signing as Twilio does: Auth Token, or ``shared_key`` when given."""
        assert self.http is not None
        token = auth_token or (self.rest.auth_token if self.rest else "no-token")
        return TwilioWebhookSender(self.http, auth_token=token, base_url=self.base_url,
                                   public_url=PUBLIC_URL, shared_key=shared_key)

    async def incoming_call(self, call_sid: str | None = None, **form: str
                            ) -> tuple[str, dict[str, str], str]:
        """Post a signed incoming-call webhook; returns (call_sid, stream params, TwiML)."""
        call_sid = call_sid or new_sid("CA")
        resp = await self.webhooks().post(
            "/twilio/voice", incoming_call_form(call_sid=call_sid, **form))
        assert resp.status == 200, resp.status
        twiml = await resp.text()
        return call_sid, stream_parameters(twiml), twiml

    def media_client(self, call_sid: str, params: dict[str, str],
                     **kwargs: Any) -> FakeTwilioMediaClient:
        client = FakeTwilioMediaClient(self.ws_url, custom_parameters=params,
                                       call_sid=call_sid, **kwargs)
        self.clients.append(client)
        return client


def stream_parameters(twiml: str) -> dict[str, str]:
    """The ``<Parameter>``s of the TwiML's ``<Connect><Stream>`` (checked as Twilio would,
    and its url)."""
    stream = read_connect_stream(twiml)
    assert stream.url == PUBLIC_URL.replace("https", "wss") + "/twilio/media-stream"
    return stream.parameters


async def start_harness(rest: FakeTwilioRest | None, *, manager: CallManager | None = None,
                        shared_keys: Sequence[SharedKey] = (), **server: Any) -> Harness:
    config = make_config(rest, shared_keys=shared_keys, **server)
    return await Harness(config, rest, manager).__aenter__()


async def connect_live(harness: Harness, client: Any, timeout: float = 10.0) -> None:
    """Connect ``client`` (a fake carrier media client) and return once the server has
    started its stream: after the call store's token and ownership claims, so the bridge
    is there (event-driven: the call's ``call.updated`` event)."""
    with harness.services.manager.events.subscribe() as events:
        await client.connect()
        async with asyncio.timeout(timeout):
            async for event in events:
                if event.type == "call.updated" and b'"stream_started":true' in event.json:
                    return
