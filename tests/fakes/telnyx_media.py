"""Fake Telnyx Media Streaming client: plays Telnyx's side of a ``stream_url`` WebSocket.

Built from Telnyx's Media Streaming documentation (AsyncAPI "Stream call media over
WebSocket"), nothing here imports ``agentic_fast``; docs/telnyx-protocol.md has the rules.
Telnyx is the WebSocket *client*: it connects to the ``stream_url`` given to ``dial``,
``answer`` or ``streaming_start`` and sends (every frame JSON text; ``sequence_number`` a
decimal string from "1" on ``start``, +1 per frame)::

    {"event":"connected","version":"1.0.0"}
    {"event":"start","sequence_number":"1","stream_id":S,"start":{"user_id","call_control_id",
     "call_session_id","from","to","client_state","custom_parameters",
     "media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}
    {"event":"media","sequence_number":"2","stream_id":S,
     "media":{"track":"inbound","chunk":"1","timestamp":"0","payload":B64}}   # every 20 ms
    {"event":"dtmf","sequence_number":..,"stream_id":S,"occurred_at":ISO,"dtmf":{"digit":"5"}}
    {"event":"mark","sequence_number":..,"stream_id":S,"mark":{"name":N}}     # mark played
    {"event":"error","sequence_number":..,"stream_id":S,
     "payload":{"code":100003,"title":"malformed_frame","detail":..}}
    {"event":"stop","sequence_number":..,"stream_id":S,"stop":{"user_id","call_control_id"}}

With ``stream_bidirectional_mode: "rtp"`` our server may send back ``{"event":"media",
"media":{"payload":B64}}`` (raw RTP payload in ``stream_bidirectional_codec`` at
``stream_bidirectional_sampling_rate``, 20 ms to 30 s of audio per message),
``{"event":"mark","mark":{"name":N}}`` and ``{"event":"clear"}``; ``stream_id`` is optional.

* Framing: PCMU/PCMA 8 kHz is 160 bytes per 20 ms; L16 is 16-bit linear PCM in network byte
  order (big-endian: RTP L16, RFC 3551 4.5.11; Telnyx's page does not restate the byte order)
  at 8 or 16 kHz: 320 or 640 bytes per 20 ms.
* Playback (:class:`TelnyxPlayback`, sans-I/O, the same rules as Twilio's): a FIFO of audio
  and marks played at the codec's byte rate; a mark is echoed once the audio before it has
  played, at once on an empty queue; ``clear`` drops queued audio and echoes every queued
  mark; a mark is never echoed twice.
* :class:`FakeTelnyxMediaClient` validates everything the server sends, records violations
  (and, as Telnyx does, answers a broken frame with an ``error`` frame), and paces inbound
  ``media`` on a monotonic schedule (deadline = t0 + n * 20 ms).

    async with FakeTelnyxMediaClient(url, encoding="L16", sample_rate=16000,
                                     bidirectional_codec="L16", bidirectional_rate=16000,
                                     client_state=b64) as telnyx:
        await telnyx.say(pcm16be_16k)              # returns once the audio is sent
        await telnyx.wait_for_echo("m1")
        await telnyx.hangup()                      # stop frame, then close
    telnyx.assert_no_violations()
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fakes.telnyx_webhooks import iso_now, new_call_control_id
from tests.fakes.twilio_media import MarkEcho, ReceivedMedia, TwilioPlayback, Violation

__all__ = ["CODECS", "Codec", "FakeTelnyxMediaClient", "MarkEcho", "ReceivedMedia",
           "TelnyxPlayback", "Violation", "codec"]

FRAME_MS = 20
MAX_CHUNK_S = 30.0  # "RTP media chunks sent back to Telnyx can contain 20 ms to 30 s"
AUTH_TOKEN_HEADER = "x-telnyx-streaming-auth-token"

# Error frame codes (Telnyx docs, media streaming "error" event).
ERR_MALFORMED = (100003, "malformed_frame")
ERR_INVALID_MEDIA = (100004, "invalid_media")


@dataclass(frozen=True, slots=True)
class Codec:
    """An RTP payload format the fake can frame: name, clock rate, bytes per sample."""

    encoding: str
    sample_rate: int
    sample_bytes: int
    silence_byte: int

    @property
    def bytes_per_s(self) -> int:
        return self.sample_rate * self.sample_bytes

    @property
    def frame_bytes(self) -> int:
        return self.bytes_per_s * FRAME_MS // 1000

    @property
    def silence(self) -> bytes:
        return bytes([self.silence_byte]) * self.frame_bytes


CODECS: dict[tuple[str, int], Codec] = {
    ("PCMU", 8000): Codec("PCMU", 8000, 1, 0xFF),
    ("PCMA", 8000): Codec("PCMA", 8000, 1, 0xD5),
    ("L16", 8000): Codec("L16", 8000, 2, 0x00),
    ("L16", 16000): Codec("L16", 16000, 2, 0x00),
}


def codec(encoding: str, sample_rate: int = 8000) -> Codec:
    """The codec for ``(encoding, sample_rate)``; ValueError for one the fake cannot frame
    (G722, OPUS, AMR-WB are valid Telnyx codecs but need a real encoder)."""
    found = CODECS.get((encoding, sample_rate))
    if found is None:
        raise ValueError(f"fake Telnyx frames only {sorted(CODECS)}, not "
                         f"({encoding!r}, {sample_rate})")
    return found


class TelnyxPlayback(TwilioPlayback):
    """Telnyx's outbound queue for one stream, sans-I/O (``rate`` = codec bytes/s).

    The documented rules are Twilio's (mark echoed when the audio before it has played,
    immediately on an empty queue; ``clear`` drops audio and returns queued marks), so the
    model is shared; only the byte rate depends on the negotiated codec.
    """


class FakeTelnyxMediaClient:
    """Telnyx's end of one media stream, over a real WebSocket.

    ``encoding``/``sample_rate``: what Telnyx streams to us (``start.media_format``).
    ``bidirectional_mode``: ``"rtp"`` (server audio accepted), ``"mp3"`` or ``None`` (server
    ``media`` is a violation here: the fake models RTP playback only).
    ``bidirectional_codec``/``bidirectional_rate``: the format our server must send back.
    ``clock`` (monotonic seconds) stamps records and drives playback; ``time_scale`` > 1 runs
    pacing and playback that many times faster than real time.
    """

    def __init__(self, url: str, *, call_control_id: str | None = None,
                 call_session_id: str | None = None, stream_id: str | None = None,
                 user_id: str | None = None, client_state: str | None = None,
                 from_number: str = "+15551230000", to_number: str = "+15557654321",
                 custom_parameters: Mapping[str, str] | None = None,
                 tags: list[str] | None = None,
                 encoding: str = "PCMU", sample_rate: int = 8000,
                 bidirectional_mode: str | None = "rtp", bidirectional_codec: str = "PCMU",
                 bidirectional_rate: int = 8000, track: str = "inbound",
                 auth_token: str | None = None, headers: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, time_scale: float = 1.0,
                 continuous: bool = True, send_errors: bool = True) -> None:
        self.url = url
        self.call_control_id = call_control_id or new_call_control_id()
        self.call_session_id = call_session_id or str(uuid.uuid4())
        self.stream_id = stream_id or str(uuid.uuid4())
        self.user_id = user_id or str(uuid.uuid4())
        self.client_state = client_state
        self.from_number = from_number
        self.to_number = to_number
        self.custom_parameters = dict(custom_parameters or {})
        self.tags = list(tags or [])
        self.inbound = codec(encoding, sample_rate)
        self.bidirectional_mode = bidirectional_mode
        self.outbound = codec(bidirectional_codec, bidirectional_rate)
        self.track = track
        self.auth_token = auth_token
        self.headers = dict(headers or {})
        if auth_token is not None:
            self.headers[AUTH_TOKEN_HEADER] = auth_token
        self.clock = clock
        self.time_scale = time_scale
        self.continuous = continuous
        self.send_errors = send_errors
        self.playback = TelnyxPlayback(self.outbound.bytes_per_s * time_scale)

        self.ws: ClientConnection | None = None
        self.received: list[tuple[float, str | bytes]] = []
        self.media: list[ReceivedMedia] = []
        self.marks_received: list[tuple[float, str]] = []
        self.violations: list[Violation] = []
        self.warnings: list[Violation] = []
        self.errors_sent: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()

        self._seq = 0
        self._chunk = 0
        self._start_sent = False
        self._stop_sent = False
        self._send_lock = asyncio.Lock()
        self._inbound: deque[tuple[bytes, asyncio.Future[None] | None]] = deque()
        self._inbound_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._change = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sender: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeTelnyxMediaClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self, *, send_start: bool = True, start_media: bool = True) -> None:
        """Open the socket; by default send ``connected`` + ``start`` and start media.
        Raises what ``websockets.connect`` raises if the server refuses the upgrade."""
        self.ws = await connect(self.url, additional_headers=self.headers, compression=None,
                                proxy=None, max_size=None, user_agent_header="Telnyx")
        self._tasks.append(asyncio.create_task(self._receive_loop(), name="telnyx-recv"))
        self._tasks.append(asyncio.create_task(self._playback_loop(), name="telnyx-play"))
        if send_start:
            await self.send_connected()
            await self.send_start()
            if start_media:
                self.start_media()

    async def close(self) -> None:
        """Stop the tasks and close the socket (no ``stop`` frame: see :meth:`hangup`)."""
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
        """The stream ends (call hung up or ``streaming_stop``): ``stop``, then close."""
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
                msg = {"event": msg["event"], "sequence_number": str(self._seq),
                       **{k: v for k, v in msg.items() if k != "event"}}
            self.sent.append(msg)
            await self.ws.send(json.dumps(msg, separators=(",", ":")))
        self._changed()

    async def send_raw(self, data: str | bytes) -> None:
        """Send anything (to test how the server handles a broken Telnyx)."""
        assert self.ws is not None, "connect() first"
        async with self._send_lock:
            await self.ws.send(data)

    async def send_connected(self) -> None:
        msg: dict[str, Any] = {"event": "connected", "version": "1.0.0"}
        if self.auth_token is not None:
            msg[AUTH_TOKEN_HEADER] = self.auth_token
        await self._send(msg, sequenced=False)

    async def send_start(self) -> None:
        self._start_sent = True  # before the await: the reply may be read during the send
        body: dict[str, Any] = {
            "user_id": self.user_id,
            "call_control_id": self.call_control_id,
            "call_session_id": self.call_session_id,
            "from": self.from_number,
            "to": self.to_number,
            "tags": self.tags,
            "client_state": self.client_state,
            "custom_parameters": self.custom_parameters,
            "media_format": {"encoding": self.inbound.encoding,
                             "sample_rate": self.inbound.sample_rate, "channels": 1},
        }
        await self._send({"event": "start", "stream_id": self.stream_id, "start": body})

    async def send_media_frame(self, frame: bytes, timestamp_ms: int | None = None) -> None:
        """One inbound ``media`` frame (normally sent by the paced sender)."""
        self._chunk += 1
        if timestamp_ms is None:
            timestamp_ms = (self._chunk - 1) * FRAME_MS
        await self._send({
            "event": "media", "stream_id": self.stream_id,
            "media": {"track": self.track, "chunk": str(self._chunk),
                      "timestamp": str(timestamp_ms),
                      "payload": base64.b64encode(frame).decode("ascii")},
        })

    async def send_dtmf(self, digit: str) -> None:
        await self._send({"event": "dtmf", "stream_id": self.stream_id,
                          "occurred_at": iso_now(), "dtmf": {"digit": digit}})

    async def send_stop(self) -> None:
        self._stop_sent = True
        await self._send({"event": "stop", "stream_id": self.stream_id,
                          "stop": {"user_id": self.user_id,
                                   "call_control_id": self.call_control_id}})

    async def send_error(self, code: int, title: str, detail: str) -> None:
        """An ``error`` frame, as Telnyx sends when it rejects a frame from the server."""
        msg = {"event": "error", "stream_id": self.stream_id,
               "payload": {"code": code, "title": title, "detail": detail}}
        self.errors_sent.append(msg)
        with contextlib.suppress(ConnectionClosed):
            await self._send(msg)

    # ------------------------------------------------------------------ inbound audio

    def start_media(self) -> None:
        """Start the paced sender: caller audio when queued, else silence (if continuous)."""
        if self._sender is None:
            self._sender = asyncio.create_task(self._media_loop(), name="telnyx-media")
            self._tasks.append(self._sender)

    def queue_speech(self, audio: bytes) -> asyncio.Future[None]:
        """Queue caller audio in the inbound codec; the future resolves once its last frame
        is sent (the last frame is padded with the codec's silence)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        size = self.inbound.frame_bytes
        frames = [audio[i:i + size] for i in range(0, len(audio), size)]
        if not frames:
            fut.set_result(None)
            return fut
        for frame in frames[:-1]:
            self._inbound.append((frame, None))
        last = frames[-1]
        self._inbound.append((last + self.inbound.silence[len(last):], fut))
        self._inbound_ready.set()
        self.start_media()
        return fut

    async def say(self, audio: bytes) -> None:
        """Send caller audio at real time; returns when its last frame has been sent."""
        await self.queue_speech(audio)

    async def _media_loop(self) -> None:
        frame_s = FRAME_MS / 1000 / self.time_scale
        silence = self.inbound.silence
        t0 = self.clock()
        n = 0
        with contextlib.suppress(ConnectionClosed):
            while not self._stop_sent:
                if not self._inbound and not self.continuous:
                    self._inbound_ready.clear()
                    await self._inbound_ready.wait()
                    t0, n = self.clock(), 0
                delay = t0 + n * frame_s - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._stop_sent:
                    break
                frame, fut = self._inbound.popleft() if self._inbound else (silence, None)
                await self.send_media_frame(frame)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                n += 1

    # ------------------------------------------------------------------ receiving

    def _violation(self, now: float, reason: str, detail: str) -> None:
        self.violations.append(Violation(now, reason, detail))

    async def _reject(self, now: float, reason: str, detail: str,
                      error: tuple[int, str]) -> None:
        self._violation(now, reason, detail)
        if self.send_errors and self._start_sent and not self._stop_sent:
            await self.send_error(error[0], error[1], f"{reason}: {detail}")

    async def _receive_loop(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = self.clock()
                self.received.append((now, raw))
                await self._handle(raw, now)
                self._wake.set()
                self._changed()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.closed.set()
            self._changed()

    async def _handle(self, raw: str | bytes, now: float) -> None:
        if isinstance(raw, bytes):
            await self._reject(now, "binary_frame", f"{len(raw)} bytes: frames are JSON text",
                               ERR_MALFORMED)
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            await self._reject(now, "invalid_json", raw[:80], ERR_MALFORMED)
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
            await self._reject(now, "missing_event", raw[:80], ERR_MALFORMED)
            return
        event = msg["event"]
        if not self._start_sent:
            self._violation(now, "before_start", f"{event!r} before start was sent")
            return
        sid = msg.get("stream_id")
        if sid is not None and sid != self.stream_id:
            self._violation(now, "wrong_stream_id", f"{sid!r} != {self.stream_id!r}")
            return
        if self._stop_sent:
            self.warnings.append(Violation(now, "after_stop", f"{event!r} after stop"))
        handler = self._HANDLERS.get(event)
        if handler is None:
            await self._reject(now, "unknown_event", repr(event), ERR_MALFORMED)
            return
        await handler(self, msg, now)

    async def _on_media(self, msg: dict[str, Any], now: float) -> None:
        if self.bidirectional_mode != "rtp":
            await self._reject(now, "not_bidirectional_rtp",
                               f"media sent with stream_bidirectional_mode="
                               f"{self.bidirectional_mode!r}", ERR_INVALID_MEDIA)
            return
        body = msg.get("media")
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, str):
            await self._reject(now, "bad_media", "media.payload missing or not a string",
                               ERR_INVALID_MEDIA)
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            await self._reject(now, "bad_base64", payload[:40], ERR_INVALID_MEDIA)
            return
        out = self.outbound
        if len(audio) % out.sample_bytes:
            await self._reject(now, "odd_sample_bytes",
                               f"{len(audio)} bytes is not whole {out.encoding} samples",
                               ERR_INVALID_MEDIA)
            return
        if len(audio) < out.frame_bytes:
            await self._reject(now, "chunk_too_short",
                               f"{len(audio)} bytes < 20 ms of {out.encoding}/"
                               f"{out.sample_rate} ({out.frame_bytes} bytes)",
                               ERR_INVALID_MEDIA)
            return
        if len(audio) > out.bytes_per_s * MAX_CHUNK_S:
            await self._reject(now, "chunk_too_long", f"{len(audio)} bytes > 30 s",
                               ERR_INVALID_MEDIA)
            return
        if len(audio) % out.frame_bytes:
            self.warnings.append(Violation(now, "odd_payload_size",
                                           f"{len(audio)} bytes, not whole 20 ms frames"))
        self.media.append(ReceivedMedia(now, audio))
        self.playback.enqueue_audio(audio, now)

    async def _on_mark(self, msg: dict[str, Any], now: float) -> None:
        body = msg.get("mark")
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            await self._reject(now, "bad_mark", "mark.name missing or not a string",
                               ERR_MALFORMED)
            return
        self.marks_received.append((now, name))
        self.playback.enqueue_mark(name, now)

    async def _on_clear(self, msg: dict[str, Any], now: float) -> None:
        self.playback.clear(now)

    _HANDLERS: ClassVar[dict[str, Callable[[FakeTelnyxMediaClient, dict[str, Any], float],
                                           Any]]] = {
        "media": _on_media,
        "mark": _on_mark,
        "clear": _on_clear,
    }

    async def _playback_loop(self) -> None:
        """Sends mark frames when the player reaches (or ``clear`` flushes) them."""
        while True:
            self._wake.clear()
            self.playback.advance(self.clock())
            echoes = self.playback.take_echoes()
            for echo in echoes:
                if self.closed.is_set() or self._stop_sent:
                    break  # nothing is echoed once the stream has ended
                with contextlib.suppress(ConnectionClosed):
                    await self._send({"event": "mark", "stream_id": self.stream_id,
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
        """Wait until ``predicate()`` is true, re-checked after every frame in or out."""
        async with asyncio.timeout(timeout):
            while True:
                change = self._change
                if predicate():
                    return
                await change.wait()

    async def wait_for_echo(self, name: str, timeout: float = 10.0) -> MarkEcho:
        """Wait until mark ``name`` has been sent back; returns the echo."""
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
        return self.playback.clears

    @property
    def echoes(self) -> list[MarkEcho]:
        return self.playback.echoes

    @property
    def received_audio_bytes(self) -> int:
        return sum(len(m.audio) for m in self.media)

    @property
    def received_audio(self) -> bytes:
        """Every audio byte the server sent, in order, as sent (L16: big-endian)."""
        return b"".join(m.audio for m in self.media)

    def played_audio(self) -> bytes:
        """What the caller has heard so far (playback advanced to now)."""
        self.playback.advance(self.clock())
        return bytes(self.playback.played)

    def assert_no_violations(self) -> None:
        assert not self.violations, f"server broke the Telnyx media protocol: {self.violations}"
