"""Fake Twilio Media Streams client: plays the caller side of a ``<Connect><Stream>``.

Built from protocols.md 1.3 only (it imports nothing from ``agentic_fast``). Two layers:

* :class:`TwilioPlayback` is Twilio's outbound player, sans-I/O, every method taking ``now``
  explicitly: a FIFO of audio and zero-length marks played at 8000 bytes/s; a mark is echoed
  when reached; ``clear`` drops queued audio and echoes every pending mark in queue order; a
  mark is never echoed twice. Unit tests drive it with made-up times.
* :class:`FakeTwilioMediaClient` is the WebSocket driver: connects, sends ``connected`` and
  ``start``, then ``media`` every 20 ms on a monotonic schedule (deadline = t0 + n * 20 ms,
  so no drift), silence when the caller says nothing; sends mark echoes when the player
  reaches them; records everything the server sends and every protocol violation.

    async with FakeTwilioMediaClient(url, custom_parameters={"token": tok}) as twilio:
        await twilio.say(load_speech_ulaw())          # returns once the audio is sent
        await twilio.wait_for(lambda: twilio.playback.echoes)
        await twilio.hangup()
    assert not twilio.violations
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fakes.twilio_webhooks import SIGNATURE_HEADER, new_sid, twilio_signature

RATE = 8000  # mu-law bytes per second
FRAME_BYTES = 160  # 20 ms
FRAME_S = FRAME_BYTES / RATE
SILENCE = b"\xff" * FRAME_BYTES


@dataclass(frozen=True, slots=True)
class ReceivedMedia:
    """An outbound ``media`` message: decoded mu-law bytes and its arrival time."""

    at: float
    audio: bytes


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """A mark echoed to the server; ``flushed`` if by ``clear`` rather than by playback."""

    name: str
    at: float
    flushed: bool


@dataclass(frozen=True, slots=True)
class Violation:
    """Something the server sent that breaks protocols.md 1.3.2."""

    at: float
    reason: str
    detail: str


# --------------------------------------------------------------------------- player


class TwilioPlayback:
    """Twilio's outbound queue for one stream (protocols.md 1.3.2 rules 1-4), sans-I/O.

    ``_t`` is the playback position: the time up to which the queue has been played. While
    the queue holds audio, playback runs continuously at ``rate`` bytes/s from ``_t``; when
    it is empty the player idles and new audio starts playing at its arrival time.
    """

    def __init__(self, rate: float = RATE) -> None:
        self.rate = rate
        self._queue: deque[bytearray | str] = deque()  # audio chunks and mark names
        self._t: float | None = None
        self._new_echoes: list[MarkEcho] = []
        self.echoes: list[MarkEcho] = []
        self.played = bytearray()
        self.discarded_bytes = 0
        self.clears: list[float] = []
        self.marks_queued: list[tuple[float, str]] = []

    @property
    def queued_bytes(self) -> int:
        return sum(len(item) for item in self._queue if not isinstance(item, str))

    @property
    def pending_marks(self) -> list[str]:
        return [item for item in self._queue if isinstance(item, str)]

    def advance(self, now: float) -> None:
        """Play everything due by ``now``; marks reached on the way are echoed."""
        t = now if self._t is None else self._t
        queue = self._queue
        while queue:
            item = queue[0]
            if isinstance(item, str):
                queue.popleft()
                self._echo(item, t, flushed=False)
                continue
            duration = len(item) / self.rate
            if t + duration <= now:
                queue.popleft()
                self.played += item
                t += duration
                continue
            n = int((now - t) * self.rate)
            if n > 0:
                self.played += item[:n]
                del item[:n]
                t += n / self.rate
            break
        self._t = t if queue else now

    def enqueue_audio(self, audio: bytes, now: float) -> None:
        self.advance(now)
        if audio:
            self._queue.append(bytearray(audio))

    def enqueue_mark(self, name: str, now: float) -> None:
        """A mark after the audio queued so far; on an empty queue it is reached at once."""
        self.advance(now)
        self.marks_queued.append((now, name))
        self._queue.append(name)
        self.advance(now)

    def clear(self, now: float) -> None:
        """Drop queued audio; echo every pending mark in queue order."""
        self.advance(now)
        self.clears.append(now)
        for item in self._queue:
            if isinstance(item, str):
                self._echo(item, now, flushed=True)
            else:
                self.discarded_bytes += len(item)
        self._queue.clear()
        self._t = now

    def next_due(self) -> float | None:
        """When the next queued mark will be reached, or ``None`` if no mark is queued."""
        t = self._t or 0.0
        for item in self._queue:
            if isinstance(item, str):
                return t
            t += len(item) / self.rate
        return None

    def take_echoes(self) -> list[MarkEcho]:
        """Echoes produced since the last call, in order (to be sent to the server)."""
        echoes, self._new_echoes = self._new_echoes, []
        return echoes

    def _echo(self, name: str, at: float, *, flushed: bool) -> None:
        echo = MarkEcho(name, at, flushed)
        self.echoes.append(echo)
        self._new_echoes.append(echo)


# --------------------------------------------------------------------------- client


class FakeTwilioMediaClient:
    """The Twilio end of one Media Stream, over a real WebSocket.

    ``clock`` (monotonic seconds) stamps records and drives playback; ``time_scale`` > 1 runs
    inbound pacing and playback that many times faster than real time.
    """

    def __init__(self, url: str, *, custom_parameters: Mapping[str, str] | None = None,
                 call_sid: str | None = None, account_sid: str | None = None,
                 stream_sid: str | None = None, tracks: tuple[str, ...] = ("inbound",),
                 auth_token: str | None = None, signed_url: str | None = None,
                 headers: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, time_scale: float = 1.0,
                 continuous: bool = True) -> None:
        self.url = url
        self.custom_parameters = dict(custom_parameters or {})
        self.call_sid = call_sid or new_sid("CA")
        self.account_sid = account_sid or new_sid("AC")
        self.stream_sid = stream_sid or new_sid("MZ")
        self.tracks = tracks
        self.headers = dict(headers or {})
        if auth_token is not None:  # the upgrade is signed over the wss URL, no params
            self.headers[SIGNATURE_HEADER] = twilio_signature(auth_token, signed_url or url)
        self.clock = clock
        self.time_scale = time_scale
        self.continuous = continuous
        self.playback = TwilioPlayback(RATE * time_scale)

        self.ws: ClientConnection | None = None
        self.received: list[tuple[float, str | bytes]] = []
        self.media: list[ReceivedMedia] = []
        self.marks_received: list[tuple[float, str]] = []
        self.violations: list[Violation] = []
        self.warnings: list[Violation] = []
        self.sent: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()

        self._seq = 0
        self._chunk = 0
        self._t0: float | None = None
        self._send_lock = asyncio.Lock()
        self._start_sent = False
        self._stop_sent = False
        self._inbound: deque[tuple[bytes, asyncio.Future[None] | None]] = deque()
        self._inbound_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._change = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sender: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeTwilioMediaClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self, *, send_start: bool = True, start_media: bool = True) -> None:
        """Open the socket; by default send ``connected`` + ``start`` and start media."""
        self.ws = await connect(self.url, additional_headers=self.headers, compression=None,
                                proxy=None, max_size=None, user_agent_header="Twilio.TmeWs/1.0")
        self._tasks.append(asyncio.create_task(self._receive_loop(), name="twilio-recv"))
        self._tasks.append(asyncio.create_task(self._playback_loop(), name="twilio-play"))
        if send_start:
            await self.send_connected()
            await self.send_start()
            if start_media:
                self.start_media()

    async def close(self) -> None:
        """Stop the tasks and close the socket (no ``stop`` message: see :meth:`hangup`)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        self._tasks.clear()
        if self.ws is not None:
            await self.ws.close()
        for _, fut in self._inbound:
            if fut is not None and not fut.done():
                fut.cancel()

    async def hangup(self) -> None:
        """The caller hangs up: ``stop``, then the socket closes."""
        if not self._stop_sent and not self.closed.is_set():
            with contextlib.suppress(ConnectionClosed):
                await self.send_stop()
        await self.close()

    # ------------------------------------------------------------------ sending

    async def _send(self, msg: dict[str, Any], *, sequenced: bool = True) -> None:
        assert self.ws is not None, "connect() first"
        async with self._send_lock:
            if sequenced:
                self._seq += 1
                msg["sequenceNumber"] = str(self._seq)
            self.sent.append(msg)
            await self.ws.send(json.dumps(msg, separators=(",", ":")))
        self._changed()

    async def send_raw(self, data: str | bytes) -> None:
        """Send anything (to test how the server handles a broken Twilio)."""
        assert self.ws is not None, "connect() first"
        async with self._send_lock:
            await self.ws.send(data)

    async def send_connected(self) -> None:
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"},
                         sequenced=False)

    async def send_start(self) -> None:
        self._t0 = self.clock()
        self._start_sent = True  # before the await: the reply may be read during the send
        await self._send({
            "event": "start",
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": list(self.tracks),
                "customParameters": self.custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        })

    async def send_media_frame(self, frame: bytes, timestamp_ms: int | None = None) -> None:
        """One inbound ``media`` message (normally sent by the paced sender)."""
        self._chunk += 1
        if timestamp_ms is None:
            timestamp_ms = int((self.clock() - (self._t0 or self.clock())) * 1000
                               * self.time_scale)
        await self._send({
            "event": "media",
            "media": {"track": "inbound", "chunk": str(self._chunk),
                      "timestamp": str(timestamp_ms),
                      "payload": base64.b64encode(frame).decode("ascii")},
            "streamSid": self.stream_sid,
        })

    async def send_dtmf(self, digit: str) -> None:
        await self._send({"event": "dtmf", "streamSid": self.stream_sid,
                          "dtmf": {"track": "inbound_track", "digit": digit}})

    async def send_stop(self) -> None:
        self._stop_sent = True
        await self._send({"event": "stop", "streamSid": self.stream_sid,
                          "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})

    # ------------------------------------------------------------------ inbound audio

    def start_media(self) -> None:
        """Start the paced sender: caller audio when queued, else silence (if continuous)."""
        if self._sender is None:
            self._sender = asyncio.create_task(self._media_loop(), name="twilio-media")
            self._tasks.append(self._sender)

    def queue_speech(self, audio: bytes) -> asyncio.Future[None]:
        """Queue caller audio (mu-law); the future resolves once its last frame is sent."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        frames = [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
        if not frames:
            fut.set_result(None)
            return fut
        for frame in frames[:-1]:
            self._inbound.append((frame, None))
        last = frames[-1]
        self._inbound.append((last + SILENCE[len(last):], fut))
        self._inbound_ready.set()
        self.start_media()
        return fut

    async def say(self, audio: bytes) -> None:
        """Send caller audio at real time; returns when its last frame has been sent."""
        await self.queue_speech(audio)

    async def _media_loop(self) -> None:
        frame_s = FRAME_S / self.time_scale
        t0 = self.clock()
        n = 0
        with contextlib.suppress(ConnectionClosed):
            while not self._stop_sent:
                if not self._inbound and not self.continuous:
                    self._inbound_ready.clear()
                    await self._inbound_ready.wait()
                    t0, n = self.clock(), 0
                deadline = t0 + n * frame_s
                delay = deadline - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._stop_sent:
                    break
                frame, fut = self._inbound.popleft() if self._inbound else (SILENCE, None)
                await self.send_media_frame(frame, timestamp_ms=self._chunk * 20)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                n += 1

    # ------------------------------------------------------------------ receiving

    def _violation(self, now: float, reason: str, detail: str) -> None:
        self.violations.append(Violation(now, reason, detail))

    async def _receive_loop(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = self.clock()
                self.received.append((now, raw))
                self._handle(raw, now)
                self._wake.set()
                self._changed()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.closed.set()
            self._changed()

    def _handle(self, raw: str | bytes, now: float) -> None:
        if isinstance(raw, bytes):
            self._violation(now, "binary_frame", f"{len(raw)} bytes (Twilio warning 31950)")
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            self._violation(now, "invalid_json", raw[:80])
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
            self._violation(now, "missing_event", raw[:80])
            return
        event = msg["event"]
        if not self._start_sent:
            self._violation(now, "before_start", f"{event!r} before start was sent")
            return
        sid = msg.get("streamSid")
        if sid is None:
            self._violation(now, "missing_stream_sid", raw[:80])
            return
        if sid != self.stream_sid:
            self._violation(now, "wrong_stream_sid", f"{sid!r} != {self.stream_sid!r}")
            return
        if self._stop_sent:
            self.warnings.append(Violation(now, "after_stop", f"{event!r} after stop"))
        handler = self._HANDLERS.get(event)
        if handler is None:
            self._violation(now, "unknown_event", repr(event))
            return
        handler(self, msg, now)

    def _on_media(self, msg: dict[str, Any], now: float) -> None:
        body = msg.get("media")
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, str):
            self._violation(now, "bad_media", "media.payload missing or not a string")
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._violation(now, "bad_base64", payload[:40])
            return
        if len(audio) % FRAME_BYTES:
            self.warnings.append(Violation(now, "odd_payload_size", f"{len(audio)} bytes"))
        self.media.append(ReceivedMedia(now, audio))
        self.playback.enqueue_audio(audio, now)

    def _on_mark(self, msg: dict[str, Any], now: float) -> None:
        body = msg.get("mark")
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            self._violation(now, "bad_mark", "mark.name missing or not a string")
            return
        self.marks_received.append((now, name))
        self.playback.enqueue_mark(name, now)

    def _on_clear(self, msg: dict[str, Any], now: float) -> None:
        self.playback.clear(now)

    _HANDLERS: ClassVar[dict[str, Callable[[FakeTwilioMediaClient, dict[str, Any], float],
                                           None]]] = {
        "media": _on_media,
        "mark": _on_mark,
        "clear": _on_clear,
    }

    async def _playback_loop(self) -> None:
        """Sends mark echoes when the player reaches (or ``clear`` flushes) them."""
        while True:
            self._wake.clear()
            self.playback.advance(self.clock())
            echoes = self.playback.take_echoes()
            for echo in echoes:
                if self.closed.is_set() or self._stop_sent:
                    break  # nothing is echoed once the stream has ended
                with contextlib.suppress(ConnectionClosed):
                    await self._send({"event": "mark", "streamSid": self.stream_sid,
                                      "mark": {"name": echo.name}})
            if echoes:
                self._changed()
            due = self.playback.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # ------------------------------------------------------------------ assertions

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` is true, re-checked after every received message."""
        async with asyncio.timeout(timeout):
            while True:
                change = self._change
                if predicate():
                    return
                await change.wait()

    async def wait_for_echo(self, name: str, timeout: float = 10.0) -> MarkEcho:
        """Wait until mark ``name`` has been echoed; returns the echo."""
        await self.wait_for(lambda: any(e.name == name for e in self.playback.echoes), timeout)
        return next(e for e in self.playback.echoes if e.name == name)

    async def wait_for_audio(self, n_bytes: int, timeout: float = 10.0) -> None:
        """Wait until the server has sent at least ``n_bytes`` of audio."""
        await self.wait_for(lambda: self.received_audio_bytes >= n_bytes, timeout)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()

    @property
    def clears(self) -> list[float]:
        """Arrival times of the server's ``clear`` messages."""
        return self.playback.clears

    @property
    def echoes(self) -> list[MarkEcho]:
        """Marks echoed so far (reached or flushed), in order."""
        return self.playback.echoes

    @property
    def received_audio_bytes(self) -> int:
        return sum(len(m.audio) for m in self.media)

    @property
    def received_audio(self) -> bytes:
        """Every outbound audio byte the server sent, in order."""
        return b"".join(m.audio for m in self.media)

    def played_audio(self) -> bytes:
        """What the caller has heard so far (playback advanced to now)."""
        self.playback.advance(self.clock())
        return bytes(self.playback.played)

    def assert_no_violations(self) -> None:
        assert not self.violations, f"server broke the Media Streams protocol: {self.violations}"
