"""Demo stand-in for Twilio and the person calling: one inbound call, end to end.

As Twilio does it (protocols.md 1): the signed Voice webhook (``X-Twilio-Signature`` over
the public URL, computed with the ``twilio`` SDK's ``RequestValidator``), the TwiML's
``<Connect><Stream>`` followed to the media stream WebSocket (on loopback), ``connected``
and ``start`` with the stream's custom parameters, caller audio as ``media`` every 20 ms
(silence between utterances), a playout model of what the server sends (20 ms per frame,
``mark`` echoed when played, every pending mark echoed at once on ``clear``), then
``stop``, and the ``completed`` status callback. A demo stand-in, not a test fake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentic_fast.core.errors import RemoteProtocolError
from agentic_fast.demo import voice
from agentic_fast.demo.timeline import Timeline

_QUIET_S = 0.1  # a drained playout this long is the end of the assistant's turn


def unexpected(message: str) -> RemoteProtocolError:
    """The server answered the simulated caller in a way the demo did not expect."""
    return RemoteProtocolError(message, peer="call server")


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class CallerSettings:
    """Who calls whom, and the account the server expects."""

    base_url: str  # http://127.0.0.1:<port>
    public_url: str  # https://... as Twilio knows the server (webhooks are signed for it)
    account_sid: str
    auth_token: str
    from_number: str = "+15551230000"
    to_number: str = "+15557654321"
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))


class DemoCaller:
    """The carrier side of one call, and the caller's ears and mouth."""

    def __init__(self, settings: CallerSettings, timeline: Timeline,
                 http: aiohttp.ClientSession) -> None:
        self.s = settings
        self.timeline = timeline
        self.http = http
        self.validator = RequestValidator(settings.auth_token)
        self.call_id = ""
        self.ws: ClientConnection | None = None
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._speech: deque[tuple[bytes, asyncio.Future[float] | None]] = deque()
        self._seq = 0
        self._stopped = False
        self._start_at = 0.0
        # playout of what the server sends
        self._play_end = 0.0
        self.stretch_start = 0.0  # when the audio now playing began
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._waiters: list[tuple[float, asyncio.Future[float]]] = []
        self.quiet = asyncio.Event()  # all audio sent so far has played
        self.frames_in = 0
        self.clears = 0
        self.closed = asyncio.Event()
        self.error: RemoteProtocolError | None = None

    # -- webhooks ------------------------------------------------------------------------------

    async def _post(self, path: str, form: Mapping[str, str]) -> aiohttp.ClientResponse:
        signature = self.validator.compute_signature(self.s.public_url + path, dict(form))
        return await self.http.post(self.s.base_url + path, data=dict(form),
                                    headers={"X-Twilio-Signature": signature})

    async def dial(self) -> dict[str, str]:
        """The incoming-call webhook; returns the ``<Stream>``'s parameters."""
        self.timeline.mark("webhook", f"Twilio posts the incoming call {self.s.from_number} -> "
                           f"{self.s.to_number} to /twilio/voice (signed)")
        resp = await self._post("/twilio/voice", {
            "AccountSid": self.s.account_sid, "ApiVersion": "2010-04-01",
            "CallSid": self.s.call_sid, "CallStatus": "ringing", "Direction": "inbound",
            "From": self.s.from_number, "To": self.s.to_number,
            "Caller": self.s.from_number, "Called": self.s.to_number})
        body = await resp.text()
        if resp.status != 200:
            raise unexpected(f"voice webhook answered HTTP {resp.status}: {body[:200]}")
        stream = ET.fromstring(body).find("./Connect/Stream")
        if stream is None:
            raise unexpected(f"voice webhook TwiML has no <Connect><Stream>: {body[:200]}")
        params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        self.stream_url = stream.get("url", "")
        self.call_id = params.get("callId", "")
        self.timeline.mark("twiml", f"TwiML answered: <Connect><Stream url={self.stream_url}> "
                           f"(call id {self.call_id}, one-time stream token)")
        return params

    # -- the media stream ----------------------------------------------------------------------

    async def connect(self, params: Mapping[str, str]) -> None:
        """Open the media stream (on loopback), ``connected`` + ``start``, then media."""
        path = urlsplit(self.stream_url).path
        url = self.s.base_url.replace("http", "ws", 1) + path
        headers = {"X-Twilio-Signature": self.validator.compute_signature(self.stream_url, {})}
        self.ws = await connect(url, additional_headers=headers, compression=None,
                                proxy=None, user_agent_header="Twilio.TmeWs/1.0")
        self._spawn(self._receive())
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"},
                         sequenced=False)
        self._start_at = self._loop.time()
        await self._send({"event": "start", "streamSid": self.s.stream_sid, "start": {
            "accountSid": self.s.account_sid, "streamSid": self.s.stream_sid,
            "callSid": self.s.call_sid, "tracks": ["inbound"],
            "customParameters": dict(params),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        self.timeline.mark("stream", f"media stream open: start sent (streamSid "
                           f"{self.s.stream_sid[:10]}...), caller audio every 20 ms")
        self._spawn(self._media())

    async def _send(self, msg: dict[str, Any], *, sequenced: bool = True) -> None:
        assert self.ws is not None
        async with self._lock:
            if sequenced:
                self._seq += 1
                msg["sequenceNumber"] = str(self._seq)
            await self.ws.send(json.dumps(msg, separators=(",", ":")))

    async def _media(self) -> None:
        """Caller audio at real time on a fixed 20 ms schedule (no drift)."""
        t0, n = self._loop.time(), 0
        with contextlib.suppress(ConnectionClosed):
            while not self._stopped:
                delay = t0 + n * 0.02 - self._loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._stopped:
                    return
                frame, done = self._speech.popleft() if self._speech else (voice.SILENCE, None)
                n += 1
                await self._send({"event": "media", "streamSid": self.s.stream_sid, "media": {
                    "track": "inbound", "chunk": str(n), "timestamp": str(n * 20),
                    "payload": base64.b64encode(frame).decode()}})
                if done is not None and not done.done():
                    done.set_result(self._loop.time())

    def say(self, ulaw: bytes) -> asyncio.Future[float]:
        """Queue speech; the future gets the loop time its last frame was sent."""
        done: asyncio.Future[float] = self._loop.create_future()
        frames = [ulaw[i:i + voice.FRAME_BYTES] for i in range(0, len(ulaw), voice.FRAME_BYTES)]
        frames[-1] = frames[-1].ljust(voice.FRAME_BYTES, b"\xff")
        for frame in frames[:-1]:
            self._speech.append((frame, None))
        self._speech.append((frames[-1], done))
        return done

    # -- what the caller hears -----------------------------------------------------------------

    async def _receive(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("streamSid") != self.s.stream_sid:
                    raise unexpected(f"message for another stream: {str(raw)[:120]}")
                handler = getattr(self, "_on_" + str(msg.get("event")), None)
                if handler is None:
                    raise unexpected(f"unexpected message: {str(raw)[:120]}")
                handler(msg)
        except ConnectionClosed:
            pass
        except RemoteProtocolError as exc:
            self.error = exc
        finally:
            self.closed.set()

    def _on_media(self, msg: dict[str, Any]) -> None:
        now = self._loop.time()
        audio = base64.b64decode(msg["media"]["payload"])
        if now >= self._play_end:
            self.stretch_start = now
        self._play_end = max(now, self._play_end) + len(audio) / 8000
        self.frames_in += 1
        self.quiet.clear()
        self._loop.call_at(self._play_end + _QUIET_S, self._check_quiet)
        if self.frames_in == 1:
            self.timeline.mark("first_audio", f"first assistant audio reaches the caller, "
                               f"{(now - self._start_at) * 1000:.0f} ms after the stream start")
        for waiter in list(self._waiters):
            if now > waiter[0] and not waiter[1].done():
                waiter[1].set_result(now)
                self._waiters.remove(waiter)

    def _on_mark(self, msg: dict[str, Any]) -> None:
        name = msg["mark"]["name"]
        when = max(self._play_end, self._loop.time())
        self._pending[name] = self._loop.call_at(when, self._echo, name)

    def _on_clear(self, msg: dict[str, Any]) -> None:
        self.clears += 1
        flushed = list(self._pending)
        for name in flushed:
            self._pending[name].cancel()
            self._echo(name)
        unplayed = max(0.0, self._play_end - self._loop.time())
        self._play_end = self._loop.time()
        self.timeline.mark("clear", f"the server sends clear: {unplayed * 1000:.0f} ms of "
                           f"queued assistant audio dropped, {len(flushed)} pending mark(s) echoed")

    def _check_quiet(self) -> None:
        if self._loop.time() >= self._play_end + _QUIET_S - 1e-3 and not self._pending:
            self.quiet.set()

    def _echo(self, name: str) -> None:
        self._pending.pop(name, None)
        if not self._stopped:
            self._spawn(self._send({"event": "mark", "streamSid": self.s.stream_sid,
                                    "mark": {"name": name}}))

    def audio_after(self, t: float) -> asyncio.Future[float]:
        """The loop time of the first assistant frame received after loop time ``t``."""
        fut: asyncio.Future[float] = self._loop.create_future()
        if self.frames_in and self.stretch_start > t:  # it has already begun
            fut.set_result(self.stretch_start)
        else:
            self._waiters.append((t, fut))
        return fut

    async def listen(self, ms: float) -> None:
        """Let the audio now playing play for ``ms`` (the caller listening)."""
        target = self.stretch_start + ms / 1000
        await asyncio.sleep(max(0.0, target - self._loop.time()))

    async def wait_quiet(self) -> None:
        """Until the assistant has stopped talking: what it sent has played, its marks
        were echoed, and no more audio came for a moment (the server keeps its playout
        ahead of the caller's while it has audio, so a drained playout is the end)."""
        await self.quiet.wait()

    # -- hanging up ----------------------------------------------------------------------------

    async def hang_up(self) -> None:
        """``stop``, the socket closed, then the ``completed`` status callback."""
        self.timeline.mark("hangup", "the caller hangs up: stop sent, stream closed, "
                           "status callback 'completed'")
        self._stopped = True
        with contextlib.suppress(ConnectionClosed):
            await self._send({"event": "stop", "streamSid": self.s.stream_sid, "stop": {
                "accountSid": self.s.account_sid, "callSid": self.s.call_sid}})
        if self.ws is not None:
            await self.ws.close()
        duration = round(self._loop.time() - self._start_at)
        resp = await self._post("/twilio/status", {
            "AccountSid": self.s.account_sid, "CallSid": self.s.call_sid,
            "CallStatus": "completed", "CallDuration": str(duration),
            "Direction": "inbound", "From": self.s.from_number, "To": self.s.to_number,
            "SequenceNumber": "3"})
        if resp.status >= 300:
            raise unexpected(f"status callback answered HTTP {resp.status}")

    async def close(self) -> None:
        self._stopped = True
        for handle in self._pending.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.ws is not None:
            await self.ws.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
