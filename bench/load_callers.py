"""Simulated Twilio callers for the load generator: one process drives many calls.

Started by ``python -m bench.loadgen`` (``python -m bench.load_callers --help`` for the
flags). Per call, like Twilio: a signed incoming-call webhook (``X-Twilio-Signature`` over
the public URL + sorted form params, HMAC-SHA1 with the auth token), the TwiML's
``<Connect><Stream url>`` mapped from the public ``wss://`` host to the server's loopback
port, ``connected`` + ``start`` (with the ``<Parameter>``s), a ``media`` frame every 20 ms of
real speech (the fixture, with a per-call gain and offset and one flipped bit per pass, so
that every frame of every call is unique), and ``stop`` at the end.

All the calls of a process share ONE 20 ms clock (a single task; never a timer per call).
Each tick measures how late it woke (event-loop lag) and how late each frame went out (send
lateness); both are reported so that a slow generator is never blamed on the server.

What the callers measure (see :class:`Playout` and load_report):

* outbound playout: each call simulates Twilio's 20 ms playout buffer; an *underrun* is a
  moment the playout needs the next frame of a response that has not arrived yet (the
  silence after a response's last frame and after a ``clear`` is intended, not counted).
  A response is known to be ``response_ms`` long (the fake provider's script). Gaps over
  ``max_gap_ms`` inside a response count as *stalls*. Jitter: |inter-arrival - 20 ms| of a
  response's frames once the buffer has been filled up to the bridge's ``lead_ms`` (the
  fill comes in bursts by design).
* marks are echoed when the playout reaches them, and all at once on ``clear``, like Twilio.
* inbound latency samples: the caller runs the same ``AudioConverter`` as the server on its
  own frames, hashes the provider chunks it predicts and keeps (hash, send time of the frame
  that completed the chunk); outbound samples: (hash of each received 160-byte frame,
  arrival time). Both sampled by hash value (load_report.keep).
* first audio (``start`` sent -> first assistant frame), ``clear`` arrival times (barge-in),
  calls closed early, webhook/handshake/protocol errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import gc
import hashlib
import hmac
import os
import random
import secrets
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from agentic_fast.ws.frames import client_frame

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

from bench.load_report import (
    MAX_EVENTS,
    SAMPLE_IN,
    SAMPLE_OUT,
    SPIKE_MS,
    Hist,
    LagProbe,
    emit,
    proc_cpu_s,
    sample_key,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
SPEECH_PATH = ROOT / "tests" / "fakes" / "audio" / "speech_ulaw.raw"
FRAME_BYTES = 160
FRAME_S = 0.020
VOICE_PATH = "/twilio/voice"
_MEDIA = ('{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
          '"timestamp":"%d","payload":"%s"},"streamSid":"%s"}')
_MARK = '{"event":"mark","sequenceNumber":"%d","streamSid":"%s","mark":{"name":"%s"}}'


# --------------------------------------------------------------------------- Twilio pieces


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature (protocols.md 1.4): base64 HMAC-SHA1 of url + sorted name+value."""
    data = url + "".join(k + params[k] for k in sorted(params))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def incoming_form(call_sid: str, account_sid: str, caller: str, called: str) -> dict[str, str]:
    """The Voice URL request Twilio sends for an inbound call (protocols.md 1.5)."""
    return {"AccountSid": account_sid, "ApiVersion": "2010-04-01", "CallSid": call_sid,
            "CallStatus": "ringing", "Called": called, "Caller": caller,
            "Direction": "inbound", "From": caller, "To": called,
            "CallerCountry": "US", "CalledCountry": "US"}


def parse_stream_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    """``(stream url, parameters)`` of ``<Connect><Stream>``; ValueError if there is none."""
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise ValueError("TwiML has no <Connect><Stream url>")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


def loopback_url(stream_url: str, port: int, host: str = "127.0.0.1") -> str:
    """The public ``wss://host/path`` as the loopback ``ws://127.0.0.1:port/path``."""
    parts = urlsplit(stream_url)
    query = f"?{parts.query}" if parts.query else ""
    return f"ws://{host}:{port}{parts.path}{query}"


# --------------------------------------------------------------------------- audio


def load_speech_pcm() -> np.ndarray:
    """The fixture speech as int16 PCM 8 kHz (the G.711 decode of the mu-law file)."""
    from agentic_fast.audio import ulaw_decode

    raw = SPEECH_PATH.read_bytes()
    return np.frombuffer(ulaw_decode(raw), dtype="<i2").copy()


def call_frames(pcm: np.ndarray, gain: float) -> list[bytes]:
    """The speech at ``gain`` as mu-law 160-byte frames (one pass of the loop)."""
    from agentic_fast.audio import ulaw_encode

    scaled = np.clip(pcm.astype(np.float64) * gain, -32768, 32767).astype("<i2")
    ulaw = ulaw_encode(scaled.tobytes())
    ulaw += b"\xff" * (-len(ulaw) % FRAME_BYTES)
    return [ulaw[i:i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]


#: XOR masks setting the lowest bit of byte j for every bit j of a byte value (low/high).
_BIT_MASK_LO = [sum(1 << (8 * j) for j in range(8) if v >> j & 1) for v in range(256)]
_BIT_MASK_HI = [m << 64 for m in _BIT_MASK_LO]


def frame_at(frames: list[bytes], k: int, offset: int, salt: int) -> bytes:
    """Frame ``k`` of a call: the loop at ``offset``, with a 16-bit counter (position +
    ``salt``) in the lowest bits of the first 16 bytes: no two frames of a call repeat for
    21 minutes, even silence, and calls differ by salt. (A mu-law LSB is a tiny change.)"""
    pos = offset + k
    base = frames[pos % len(frames)]
    x = (pos + salt) & 0xFFFF
    head = int.from_bytes(base[:16], "little") ^ _BIT_MASK_LO[x & 0xFF] ^ _BIT_MASK_HI[x >> 8]
    return head.to_bytes(16, "little") + base[16:]


# --------------------------------------------------------------------------- playout


class Playout:
    """Twilio's playout buffer of one call, as far as the measurements need it.

    Frames play back to back at 20 ms each from the moment the first one arrives; a response
    is ``expected`` frames long. When the playout runs dry while the current response is
    still short of ``expected - 1`` frames, the wait for the next frame is an underrun
    (a *stall* when longer than ``max_gap_s``); when it runs dry after that, the response is
    over and the next frame starts a new one. ``clear`` empties the buffer (and the
    response). Jitter: |inter-arrival - 20 ms| of a response's frames once the bridge has
    filled the buffer up to its lead (``lead`` frames ahead of playout): the fill itself
    comes in bursts by design (the first delta at once, a top-up when the next arrives).
    """

    __slots__ = ("bunched", "expected_min", "filled", "frames", "gaps", "jitter", "last",
                 "lead_s", "marks", "max_gap_s", "paced", "play_end", "playing", "spread",
                 "stalls", "underrun_times", "underruns")

    def __init__(self, expected: int, lead: int, max_gap_s: float = 1.0,
                 gaps: Hist | None = None, jitter: Hist | None = None,
                 underrun_times: list[float] | None = None) -> None:
        self.expected_min = max(1, expected - 1)
        self.lead_s = lead * FRAME_S
        self.filled = False
        self.max_gap_s = max_gap_s
        self.gaps = gaps if gaps is not None else Hist()
        self.jitter = jitter if jitter is not None else Hist()
        self.underrun_times = underrun_times if underrun_times is not None else []
        self.playing = False
        self.play_end = 0.0
        self.frames = 0
        self.last: float | None = None
        self.marks: deque[tuple[float, str]] = deque()
        self.underruns = 0
        self.stalls = 0
        self.paced = 0    # frames with a jitter sample
        self.bunched = 0  # ... of which arrived < 5 ms after the previous one
        self.spread = 0   # ... of which arrived > 35 ms after the previous one

    def frame(self, t: float, count: bool) -> None:
        """One 20 ms frame arrived at ``t``; ``count``: inside the measurement window."""
        if not self.playing:
            self.playing = True
            self.frames = 0
            self.last = None
            self.filled = False
            start = t
        elif t > self.play_end:
            gap = t - self.play_end
            if self.frames < self.expected_min:
                if count:
                    if gap <= self.max_gap_s:
                        self.underruns += 1
                        if len(self.underrun_times) < MAX_EVENTS:
                            self.underrun_times.append(t)
                    else:
                        self.stalls += 1
                    self.gaps.add(gap * 1000.0)
            else:  # the previous response played out: this one starts after a silence
                self.frames = 0
                self.last = None
                self.filled = False
            start = t
        else:
            start = self.play_end
        self.play_end = start + FRAME_S
        self.frames += 1
        last = self.last
        if not self.filled:
            # the bridge first fills the caller's buffer up to its lead (bursts, top-ups when
            # the next delta arrives): by design, not jitter. Pacing starts once it is full.
            self.filled = self.play_end - t >= self.lead_s - 0.005
        elif count and last is not None:
            delta = t - last
            self.jitter.add(abs(delta - FRAME_S) * 1000.0)
            self.paced += 1
            if delta < 0.005:
                self.bunched += 1  # came with the previous frame (two in one pacer tick)
            elif delta > 0.035:
                self.spread += 1   # a tick without a frame
        self.last = t

    def mark(self, name: str, t: float) -> None:
        """A mark queued behind the audio received so far: echoed when that has played."""
        due = self.play_end if self.playing and self.play_end > t else t
        self.marks.append((due, name))

    def due(self, now: float) -> list[str]:
        marks = self.marks
        out = []
        while marks and marks[0][0] <= now:
            out.append(marks.popleft()[1])
        return out

    def clear(self, now: float) -> list[str]:
        """``clear``: drop queued audio; every pending mark is echoed at once."""
        names = [name for _, name in self.marks]
        self.marks.clear()
        self.playing = False
        self.play_end = now
        self.frames = 0
        self.last = None
        self.filled = False
        return names


# --------------------------------------------------------------------------- WebSocket
# A minimal RFC 6455 endpoint: the websockets library costs ~20 us of Python per message
# (assembler, futures, a task wake-up), which at 300 calls is a large part of a generator
# core; these protocols hand each message to a plain callback from data_received.

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()


def ws_frame(opcode: int, payload: bytes, mask_key: bytes | None = None) -> bytes:
    """One final frame; masked (client to server) when ``mask_key`` is given."""
    n = len(payload)
    bit = 0x80 if mask_key is not None else 0
    if n < 126:
        head = bytes((0x80 | opcode, bit | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, bit | 127)) + n.to_bytes(8, "big")
    if mask_key is None:
        return head + payload
    return head + mask_key + apply_mask(payload, mask_key)


class WsParser:
    """Incremental frame parser: ``feed(data)`` -> complete messages ``(opcode, payload)``
    (continuations joined, masks removed, control frames passed through)."""

    __slots__ = ("_buf", "_frag", "_frag_op", "max_size")

    def __init__(self, max_size: int = 2**22) -> None:
        self._buf = bytearray()
        self._frag = bytearray()
        self._frag_op = 0
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if n > self.max_size:
                raise ValueError(f"frame of {n} bytes")
            key = None
            if b1 & 0x80:
                key = bytes(buf[pos:pos + 4])
                pos += 4
            end = pos + n
            if len(buf) < end:
                break
            payload = bytes(buf[pos:end])
            del buf[:end]
            if key is not None:
                payload = apply_mask(payload, key)
            op = b0 & 0x0F
            if op >= OP_CLOSE:
                out.append((op, payload))
            elif op == OP_CONT:
                self._frag += payload
                if b0 & 0x80:
                    out.append((self._frag_op, bytes(self._frag)))
                    self._frag.clear()
            elif b0 & 0x80:
                out.append((op, payload))
            else:
                self._frag_op = op
                self._frag[:] = payload
        return out


class WsClient(asyncio.Protocol):
    """Client side: ``await WsClient.connect(url, on_message)``; ``send_text`` writes now."""

    def __init__(self, host: str, path: str, on_message: Any) -> None:
        self.host = host
        self.path = path
        self.on_message = on_message
        self.key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.mask = secrets.token_bytes(4)
        self.parser = WsParser()
        self.transport: Any = None
        self.head = b""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.upgraded = False  # handshake done
        self.open = False      # we may still send (no close frame sent or received)

    @classmethod
    async def connect(cls, url: str, on_message: Any, timeout: float = 10.0) -> WsClient:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, proto = await loop.create_connection(
                lambda: cls(parts.netloc, path, on_message), parts.hostname, parts.port)
            await proto.opened
        return proto

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
            "Sec-WebSocket-Version: 13\r\nUser-Agent: Twilio.TmeWs/1.0\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.head[:end].decode("latin-1"), self.head[end + 4:]
            if not head.startswith("HTTP/1.1 101") or ws_accept(self.key) not in head:
                self.opened.set_exception(ConnectionError(head.split("\r\n", 1)[0]))
                self.transport.close()
                return
            self.upgraded = self.open = True
            self.opened.set_result(None)
            data = rest
            if not data:
                return
        try:
            messages = self.parser.feed(data)
        except ValueError:
            self.transport.close()
            return
        for op, payload in messages:
            if op in (OP_TEXT, OP_BINARY):
                self.on_message(payload)
            elif op == OP_PING:
                self.transport.write(ws_frame(OP_PONG, payload, self.mask))
            elif op == OP_CLOSE:
                if self.open:
                    self.open = False
                    self.transport.write(ws_frame(OP_CLOSE, payload[:2], self.mask))
                self.transport.close()

    def send_text(self, text: str) -> bool:
        if not self.open:
            return False
        self.transport.write(client_frame(OP_TEXT, text, self.mask))  # native when built
        return True

    async def close(self, timeout: float = 3.0) -> None:
        if self.open:
            self.open = False
            self.transport.write(ws_frame(OP_CLOSE, (1000).to_bytes(2, "big"), self.mask))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)


# --------------------------------------------------------------------------- one call


class Call:
    """One simulated call: Twilio's side of the webhook and the media stream."""

    def __init__(self, proc: CallerProcess, index: int, t_start: float,
                 rng: random.Random, pos: int = 0) -> None:
        self.proc = proc
        self.index = index
        self.slot = pos % len(proc.active)  # the clock's sub-tick of this call
        self.id = f"{proc.name}c{index}"
        self.t_plan = t_start
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.frames = call_frames(proc.speech, rng.uniform(0.45, 1.0))
        self.offset = rng.randrange(len(self.frames))
        self.salt = rng.randrange(1 << 16)
        self.ws: Any = None
        self.k = 0
        self.seq = 0
        self.active = False
        self.stopping = False
        self.t_start: float | None = None
        self.t_closed: float | None = None
        self.closed_early = False
        self.first_audio_ms: float | None = None
        self.clears: list[float] = []
        self.frames_rx = 0
        self.playout = Playout(proc.expected_frames, proc.lead_frames, proc.max_gap_s,
                               proc.gaps, proc.jitter, proc.underrun_times)
        self.converter: Any = None
        # traced: every trace_every-th call OF THIS PROCESS (by global index, the calls dealt
        # round-robin would all land in one process when trace_every == processes)
        if proc.predict and pos % proc.trace_every == 0:
            from agentic_fast.audio import AudioConverter

            self.converter = AudioConverter(proc.converter_format, handoff_ms=proc.handoff_ms)

    # -- setup ---------------------------------------------------------------------------------

    async def run(self) -> None:
        proc = self.proc
        delay = self.t_plan - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        form = incoming_form(self.call_sid, proc.account_sid, f"+1555{self.index:07d}",
                             "+15550001111")
        sig = twilio_signature(proc.auth_token, proc.public_url + VOICE_PATH, form)
        try:
            async with proc.http.post(f"{proc.base_url}{VOICE_PATH}", data=form,
                                      headers={"X-Twilio-Signature": sig}) as resp:
                body = await resp.text()
                if resp.status != 200:
                    proc.error(f"webhook_http_{resp.status}")
                    return
            url, params = parse_stream_twiml(body)
        except ValueError:
            proc.error("twiml_without_stream")
            return
        except Exception as exc:  # connection refused, timeout...
            proc.error(f"webhook_{type(exc).__name__}")
            return
        try:
            self.ws = await WsClient.connect(loopback_url(url, proc.port), self.on_message)
        except Exception as exc:
            proc.error(f"ws_connect_{type(exc).__name__}")
            return
        self.write('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.seq = 1
        start = {"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
                 "start": {"accountSid": proc.account_sid, "streamSid": self.stream_sid,
                           "callSid": self.call_sid, "tracks": ["inbound"],
                           "customParameters": params,
                           "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                           "channels": 1}}}
        self.write(orjson.dumps(start).decode())
        self.t_start = time.monotonic()
        self.active = True
        proc.active[self.slot].append(self)
        try:
            await self.ws.closed
        finally:
            self.active = False
            self.t_closed = time.monotonic()
            if not self.stopping:
                self.closed_early = True
                proc.error("closed_early")

    def write(self, text: str) -> bool:
        """Write one text frame now (no await: the shared clock must not block)."""
        return self.ws.send_text(text)

    # -- the 20 ms clock's work ----------------------------------------------------------------

    def send_media(self, ideal: float, count: bool) -> None:
        k = self.k
        self.k = k + 1
        frame = frame_at(self.frames, k, self.offset, self.salt)
        payload = binascii.b2a_base64(frame, newline=False).decode()
        self.seq += 1
        msg = _MEDIA % (self.seq, k + 1, k * 20, payload, self.stream_sid)
        now = time.monotonic()
        if not self.write(msg):
            return
        proc = self.proc
        if count:
            proc.send_late.add((now - ideal) * 1000.0 if now > ideal else 0.0)
        conv = self.converter
        if conv is not None:
            chunks = conv.feed_twilio_b64(payload)
            if chunks and proc.keep_from <= now:
                for chunk in chunks:
                    key = sample_key(chunk.encode(), SAMPLE_IN)
                    if key is not None:
                        proc.in_samples.append((key, now, self.id))

    def echo_marks(self, names: list[str]) -> None:
        for name in names:
            self.seq += 1
            self.write(_MARK % (self.seq, self.stream_sid, name))

    # -- what the server sends -----------------------------------------------------------------

    def on_message(self, message: bytes) -> None:
        """One message from the server (called from data_received: no task per call)."""
        now = time.monotonic()
        proc = self.proc
        try:
            msg = orjson.loads(message)
            event = msg["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            proc.error("bad_message")
            return
        if msg.get("streamSid") != self.stream_sid:
            proc.error("wrong_stream_sid")
        if event == "media":
            self.on_media(msg, now)
        elif event == "mark":
            try:
                self.playout.mark(msg["mark"]["name"], now)
            except (KeyError, TypeError):
                proc.error("bad_mark")
        elif event == "clear":
            self.clears.append(now)
            self.echo_marks(self.playout.clear(now))
        else:
            proc.error(f"unknown_event_{str(event)[:20]}")

    def on_media(self, msg: dict[str, Any], now: float) -> None:
        proc = self.proc
        try:
            data = binascii.a2b_base64(msg["media"]["payload"], strict_mode=True)
        except (KeyError, TypeError, binascii.Error):
            proc.error("bad_media")
            return
        n = len(data)
        if n == 0 or n % FRAME_BYTES:
            proc.error("media_not_whole_frames")
            if n < FRAME_BYTES:
                return
        if self.first_audio_ms is None and self.t_start is not None:
            self.first_audio_ms = (now - self.t_start) * 1000.0
        count = proc.window[0] <= now <= proc.window[1]
        playout = self.playout
        keep_samples = proc.keep_from <= now
        for i in range(0, n - n % FRAME_BYTES, FRAME_BYTES):
            playout.frame(now, count)
            self.frames_rx += 1
            if keep_samples:
                key = sample_key(data[i:i + FRAME_BYTES], SAMPLE_OUT)
                if key is not None:
                    proc.out_samples.append((key, now, self.id))

    async def stop(self) -> None:
        """``stop`` then close, like Twilio at the end of a call."""
        self.stopping = True
        if self.ws is None or not self.active:
            return
        self.seq += 1
        self.write(orjson.dumps({
            "event": "stop", "sequenceNumber": str(self.seq), "streamSid": self.stream_sid,
            "stop": {"accountSid": self.proc.account_sid, "callSid": self.call_sid}}).decode())
        await self.ws.close()

    def result(self, window: tuple[float, float]) -> dict[str, Any]:
        sustained = (self.t_start is not None and self.t_start <= window[0]
                     and not self.closed_early)
        return {"id": self.id, "t_start": self.t_start, "sustained": sustained,
                "closed_early": self.closed_early, "first_audio_ms": self.first_audio_ms,
                "clears": [t for t in self.clears if window[0] - 1 <= t <= window[1] + 3],
                "frames_rx": self.frames_rx, "frames_tx": self.k,
                "underruns": self.playout.underruns, "stalls": self.playout.stalls,
                "paced": self.playout.paced, "bunched": self.playout.bunched,
                "spread": self.playout.spread}


# --------------------------------------------------------------------------- the process


class CallerProcess:
    """All the calls of one generator process and their one shared 20 ms clock."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.name
        self.port = args.port
        self.base_url = f"http://127.0.0.1:{args.port}"
        self.public_url = args.public_url.rstrip("/")
        self.auth_token = args.auth_token
        self.account_sid = args.account_sid
        self.converter_format = args.converter
        self.handoff_ms = args.handoff_ms
        self.predict = not args.no_predict
        self.trace_every = max(1, args.trace_every)
        self.expected_frames = args.response_ms // 20
        self.lead_frames = args.lead_ms // 20
        self.max_gap_s = args.max_gap_ms / 1000.0
        self.phase_s = args.phase_ms / 1000.0
        self.indices = [int(x) for x in args.calls.split(",") if x]
        self.n_total = args.n_total
        self.seed = args.seed
        self.result_path = Path(args.result)
        self.speech = load_speech_pcm()
        self.gaps = Hist()
        self.jitter = Hist()
        self.underrun_times: list[float] = []  # shared by the calls' playouts (bounded)
        self.send_late = Hist()
        self.tick_busy = Hist()  # how long one tick's sends take (grows with calls/process)
        self.cpu_window_s: float | None = None
        self.tick_lag = LagProbe()  # only its hist/recent are used (fed by the clock)
        self.errors: Counter[str] = Counter()
        self.in_samples: list[tuple[int, float, str]] = []
        self.out_samples: list[tuple[int, float, str]] = []
        self.active: list[list[Call]] = [[] for _ in range(max(1, args.slots))]
        self.calls: list[Call] = []
        self.window = (0.0, 0.0)
        self.keep_from = float("inf")
        self.http: Any = None
        self.recent_late = 0.0
        self.frames_rx_total = 0

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    async def run(self, schedule: dict[str, Any]) -> None:
        import aiohttp

        t0, ramp = schedule["t_start"], schedule["ramp_s"]
        self.window = (schedule["t_steady"], schedule["t_end"])
        self.keep_from = schedule["t_steady"] - 1.0
        t_end = schedule["t_end"]
        rng = random.Random(f"{self.seed}:{self.name}")
        n = max(self.n_total, 1)
        self.calls = [Call(self, i, t0 + ramp * i / n, rng, pos)
                      for pos, i in enumerate(self.indices)]
        gc.collect()
        gc.freeze()
        gc.disable()
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(total=15))
        tasks = [asyncio.create_task(c.run()) for c in self.calls]
        clock = asyncio.create_task(self.clock(t0 + self.phase_s, t_end))
        progress = asyncio.create_task(self.progress(t_end))
        try:
            await clock
            await asyncio.gather(*(c.stop() for c in self.calls))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            progress.cancel()
            for task in tasks:
                task.cancel()
            await self.http.close()
            gc.enable()
        self.write_result()

    async def clock(self, first: float, t_end: float) -> None:
        """THE 20 ms clock of this process: every 20 ms, one frame for every active call.

        The tick is cut into ``slots`` sub-ticks and a call sends in its own (its index
        modulo ``slots``), as Twilio's calls are not in phase either: a sub-tick's burst of
        writes is ``slots`` times shorter, so the process and its neighbours on the core
        lag less. uvloop's timers have 1 ms granularity: a sub-tick may start up to 1 ms
        early (not counted as late) rather than spin on the core it shares.
        """
        slots = self.active
        n_slots = len(slots)
        step = FRAME_S / n_slots
        t = first
        slot = 0
        lag = self.tick_lag
        w0, w1 = self.window
        monotonic = time.monotonic
        cpu0 = None
        while t < t_end:
            if cpu0 is None and t >= w0:
                cpu0 = proc_cpu_s()
            delay = t - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = monotonic()
            late = (now - t) * 1000.0 if now > t else 0.0
            count = w0 <= t <= w1
            if count:
                lag.hist.add(late)
                if late >= SPIKE_MS and len(lag.spikes) < MAX_EVENTS:
                    lag.spikes.append(now)  # when it woke, like the fakes' probe
            if late > lag.recent_max:
                lag.recent_max = late
            active = slots[slot]
            if any(not c.active for c in active):
                active = slots[slot] = [c for c in active if c.active]
            for call in active:
                call.send_media(t, count)
                if call.playout.marks:
                    names = call.playout.due(now)
                    if names:
                        call.echo_marks(names)
            end = monotonic()
            if count:
                self.tick_busy.add((end - now) * 1000.0)
            done = (end - t) * 1000.0
            if done > self.recent_late:
                self.recent_late = done
            t += step
            slot = slot + 1 if slot + 1 < n_slots else 0
        cpu1 = proc_cpu_s()
        if cpu0 is not None and cpu1 is not None:
            self.cpu_window_s = cpu1 - cpu0

    async def progress(self, t_end: float) -> None:
        while True:
            await asyncio.sleep(1.0)
            failed = sum(self.errors.values())
            emit("progress", name=self.name, up=sum(1 for c in self.calls if c.active),
                 planned=len(self.calls), errors=failed,
                 late_max_ms=round(self.recent_late, 2),
                 lag_max_ms=round(self.tick_lag.take_recent(), 2),
                 frames_rx=sum(c.frames_rx for c in self.calls))
            self.recent_late = 0.0

    def write_result(self) -> None:
        window = self.window
        calls = [c.result(window) for c in self.calls]
        write_json(self.result_path, {
            "name": self.name, "calls": calls,
            "in_samples": self.in_samples, "out_samples": self.out_samples,
            "send_late": self.send_late.to_json(), "loop_lag": self.tick_lag.hist.to_json(),
            "tick_busy": self.tick_busy.to_json(),
            "jitter": self.jitter.to_json(), "underrun_gaps": self.gaps.to_json(),
            "spikes": self.tick_lag.spikes, "underrun_times": self.underrun_times,
            "underruns": sum(c["underruns"] for c in calls),
            "stalls": sum(c["stalls"] for c in calls),
            "paced": sum(c["paced"] for c in calls),
            "bunched": sum(c["bunched"] for c in calls),
            "spread": sum(c["spread"] for c in calls),
            "errors": dict(self.errors), "cpu_s": proc_cpu_s(),
            "cpu_window_s": self.cpu_window_s})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.load_callers",
        description="Simulated Twilio callers (one process of a loadgen run; started by "
                    "bench.loadgen, which sends the schedule as one JSON line on stdin).")
    p.add_argument("--name", default="gen0")
    p.add_argument("--port", type=int, required=True, help="server HTTP port on 127.0.0.1")
    p.add_argument("--public-url", required=True)
    p.add_argument("--auth-token", required=True)
    p.add_argument("--account-sid", required=True)
    p.add_argument("--calls", required=True, help="comma-separated global call indices")
    p.add_argument("--n-total", type=int, required=True, help="calls of the whole run")
    p.add_argument("--converter", default="openai",
                   help="AudioConverter format of the server's provider (inbound prediction)")
    p.add_argument("--handoff-ms", type=int, default=20)
    p.add_argument("--lead-ms", type=int, default=120)
    p.add_argument("--response-ms", type=int, default=2000)
    p.add_argument("--max-gap-ms", type=int, default=1000)
    p.add_argument("--phase-ms", type=float, default=0.0)
    p.add_argument("--slots", type=int, default=4,
                   help="sub-ticks of the 20 ms clock; call i sends in sub-tick i mod slots")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-predict", action="store_true", help="no inbound latency samples")
    p.add_argument("--trace-every", type=int, default=1,
                   help="predict inbound chunks (inbound latency) for every k-th call only")
    p.add_argument("--result", required=True, help="where to write the result JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    proc = CallerProcess(args)
    emit("ready", name=proc.name)
    line = sys.stdin.readline()
    if not line.strip():
        return 1
    schedule = orjson.loads(line)
    import uvloop

    profile = os.environ.get("LOADGEN_PROFILE")  # a directory: write cProfile stats there
    if profile:
        import cProfile

        cProfile.runctx("uvloop.run(proc.run(schedule))", globals(), locals(),
                        str(Path(profile) / f"{proc.name}.prof"))
    else:
        uvloop.run(proc.run(schedule))
    emit("done", name=proc.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
