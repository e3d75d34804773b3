"""Lightweight peers for load runs: fake OpenAI Realtime / Gemini Live servers, bare relay.

    python -m bench.load_fakes provider --protocol openai|gemini --port P --result R.json
    python -m bench.load_fakes relay --port P --provider-url ws://... --auth-token T ...

Both are started by ``python -m bench.loadgen``. The fakes in ``tests/fakes`` validate every
event with the SDKs' pydantic models, which costs more than the server under test; these
keep the wire shapes of protocols.md 2 and 3 and check only what is cheap: the first event
(``session.update`` / ``setup``), event types, base64 and sizes of audio, the audio format,
``response.cancel`` / ``conversation.item.truncate`` against what was really sent. Anything
else counts as a protocol *violation* (reported as an error of the run). Several fake
processes may share one port (SO_REUSEPORT).

Script of every provider connection (times in audio received from the server):

* the greeting (OpenAI ``response.create``; Gemini ``clientContent``/``realtimeInput.text``)
  is answered at once; then a caller turn every ``turn_every_ms`` after a response started
  (OpenAI: ``speech_started`` 500 ms before, then ``speech_stopped``/``committed``/items
  and the response; Gemini: ``inputTranscription`` and the response);
* a response is exactly ``response_ms`` of speech (the fixture at a random gain/offset),
  streamed ``speedup`` x faster than real time: a first delta of ``first_delta_ms`` (it fits
  in the bridge's lead, so the bridge sends all of it at once), then ``delta_ms`` deltas;
* every ``interrupt_every``-th response is interrupted halfway through its deltas (OpenAI:
  ``input_audio_buffer.speech_started`` + the cancelled response's ``.done`` events; Gemini:
  ``serverContent.interrupted`` + ``turnComplete``); the caller's reply follows after
  ``interrupt_reply_ms``.

Measurements: inbound chunk hashes with receive times (joined with the callers' predicted
chunks), the predicted Twilio frames of each response's FIRST delta (a fresh per-response
``AudioConverter``: the bridge flushes or clears its converter between responses, which
resets it) with the delta's send time, and per connection the times interrupts were sent.

The relay (``--baseline-relay`` of loadgen) is the floor a bridge can be compared with:
aiohttp + uvloop, signed webhook, media stream, one provider socket per call (OpenAI
``audio/pcmu``), caller payloads joined to ``handoff_ms`` chunks and forwarded without
transcoding, assistant deltas cut into 160-byte frames and sent at once (no pacing, no
marks), ``clear`` + ``response.cancel`` on ``speech_started``.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import gc
import hashlib
import hmac
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.load_callers import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WsParser,
    ws_accept,
    ws_frame,
)
from bench.load_report import (
    SAMPLE_IN,
    SAMPLE_OUT,
    LagProbe,
    emit,
    proc_cpu_s,
    sample_key,
    write_json,
)

OPENAI_BPMS = {"pcm16": 48, "pcmu": 8}
#: 1 in this many audio pieces received is strictly base64-decoded (the rest: sized).
DECODE_EVERY = 8
_WIRE_FMT = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu"}
_CONVERTER = {"pcm16": "openai", "pcmu": "openai-pcmu", "gemini": "gemini"}
_OPENAI_CLIENT_TYPES = frozenset({
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.truncate",
    "conversation.item.delete", "conversation.item.retrieve", "response.create",
    "response.cancel"})


def _write(ws: Any, text: str, binary: bool = False) -> bool:
    """One frame now, without awaiting (websockets connection: the relay's provider side)."""
    try:
        if binary:
            ws.protocol.send_binary(text.encode())
        else:
            ws.protocol.send_text(text.encode())
        ws.send_data()
    except Exception:
        return False
    return True


class WsServerConn(asyncio.Protocol):
    """Server side of one provider socket (see load_callers' minimal WebSocket): the
    handshake, then every message to ``conn.on_message(opcode, payload)``."""

    def __init__(self, fake: FakeProvider) -> None:
        self.fake = fake
        self.transport: Any = None
        self.head = b""
        self.upgraded = False
        self.open = False
        self.parser = WsParser()
        self.conn: _Conn | None = None
        self.path = ""
        self.pending: list[bytes] = []  # frames of this loop iteration, one write at its end

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 16384:
                    self.transport.close()
                return
            lines = self.head[:end].decode("latin-1").split("\r\n")
            data = self.head[end + 4:]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            key = headers.get("sec-websocket-key")
            if key is None or headers.get("upgrade", "").lower() != "websocket":
                self.fake.violation("bad_handshake", lines[0])
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()
                return
            self.path = lines[0].split(" ")[1] if " " in lines[0] else ""
            self.transport.write(
                ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Accept: {ws_accept(key)}\r\n\r\n"
                 ).encode())
            self.upgraded = self.open = True
            self.conn = self.fake.new_conn(self)
            self.conn.opened()
            if not data:
                return
        try:
            messages = self.parser.feed(data)
        except ValueError as exc:
            self.fake.violation("bad_frame", str(exc))
            self.transport.close()
            return
        conn = self.conn
        assert conn is not None
        for op, payload in messages:
            if op in (OP_TEXT, OP_BINARY):
                try:
                    conn.on_message(op, payload)
                except Exception as exc:
                    self.fake.violation("handler_crash", repr(exc))
            elif op == OP_PING:
                self.queue(ws_frame(OP_PONG, payload))
            elif op == OP_CLOSE:
                if self.open:
                    self.open = False
                    self.queue(ws_frame(OP_CLOSE, payload[:2]))
                self.flush()
                self.transport.close()

    def queue(self, frame: bytes) -> None:
        """Frames sent in one loop iteration go out in one write (as a real server's TCP
        stream often carries several WebSocket frames in one segment): the fake's own
        syscalls were a third of its CPU at 300 calls."""
        pending = self.pending
        pending.append(frame)
        if len(pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            if not self.transport.is_closing():
                self.transport.write(data)

    def send_text(self, text: str) -> None:
        if self.open:
            self.queue(ws_frame(OP_TEXT, text.encode()))

    def send_binary(self, data: bytes) -> None:
        if self.open:
            self.queue(ws_frame(OP_BINARY, data))

    def close(self, code: int, reason: str) -> None:
        if self.open:
            self.open = False
            self.queue(ws_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode()))
        self.flush()
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.conn is not None:
            self.conn.stop()
            self.fake.open_conns -= 1


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


# --------------------------------------------------------------------------- assistant audio


class AssistantVoice:
    """Speech for the assistant: the fixture at 8 kHz (mu-law) or 24 kHz (PCM16), cut at a
    voiced offset and scaled by a random gain, so that every response is unique."""

    def __init__(self, seed: str) -> None:
        from bench.load_callers import load_speech_pcm

        pcm8 = load_speech_pcm().astype(np.float64)
        pcm24 = np.interp(np.arange(len(pcm8) * 3) / 3.0, np.arange(len(pcm8)), pcm8)
        # each source twice over: a cut that wraps around is a plain slice
        self.loops = {8: np.concatenate([pcm8, pcm8]), 24: np.concatenate([pcm24, pcm24])}
        frames = len(pcm8) // 160
        energy = [float(np.sqrt(np.mean(pcm8[i * 160:(i + 1) * 160] ** 2)))
                  for i in range(frames)]
        loud = [i for i in range(frames - 5) if min(energy[i:i + 5]) > 300.0]
        self.voiced = loud or [0]
        self.rng = random.Random(seed)

    def make(self, fmt: str, ms: int) -> bytes:
        """``ms`` of speech: ``pcmu`` (mu-law 8 kHz) or ``pcm16`` (24 kHz)."""
        from agentic_fast.audio import ulaw_encode

        gain = self.rng.uniform(0.4, 1.0)
        rate = 8 if fmt == "pcmu" else 24
        loop = self.loops[rate]
        period = len(loop) // 2
        offset = self.rng.choice(self.voiced) * 160 * (rate // 8)
        need = ms * rate
        if need <= period:
            src = loop[offset:offset + need]
        else:
            src = loop[(offset + np.arange(need)) % period]
        pcm = np.clip(src * gain, -32768, 32767).astype("<i2").tobytes()
        return ulaw_encode(pcm) if fmt == "pcmu" else pcm


# --------------------------------------------------------------------------- the fake process


class FakeProvider:
    """One fake provider process: all its connections and what they measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.name
        self.protocol = args.protocol
        self.port = args.port
        self.result_path = Path(args.result)
        self.response_ms = args.response_ms
        self.first_delta_ms = args.first_delta_ms
        self.delta_ms = args.delta_ms
        self.speedup = args.speedup
        self.turn_every_ms = args.turn_every_ms
        self.interrupt_every = args.interrupt_every
        self.interrupt_reply_ms = args.interrupt_reply_ms
        self.voice = AssistantVoice(f"{args.seed}:{args.name}")
        self.lag = LagProbe()
        self.in_samples: list[tuple[int, float, str]] = []
        self.out_samples: list[tuple[int, float, str]] = []
        self.interrupts: dict[str, list[float]] = {}
        self.violations: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.violation_examples: list[str] = []
        self.conns = 0
        self.open_conns = 0
        self.sized = 0
        self.keep_from = float("inf")
        self.window = (0.0, 0.0)

    def violation(self, kind: str, detail: str = "") -> None:
        self.violations[kind] += 1
        if len(self.violation_examples) < 20:
            self.violation_examples.append(f"{kind}: {detail[:200]}")

    def audio_size(self, b64: str) -> int:
        """Decoded size of base64 audio (binascii.Error if malformed). Every
        ``DECODE_EVERY``-th piece is strictly decoded (alphabet, padding); the others are
        sized from their length, which is exact for valid base64: decoding every piece cost
        a quarter of a fake's CPU at 300 calls."""
        self.sized += 1
        if self.sized % DECODE_EVERY == 0:
            return len(binascii.a2b_base64(b64, strict_mode=True))
        n = len(b64)
        if n % 4:
            raise binascii.Error("base64 length is not a multiple of 4")
        return n // 4 * 3 - (b64[-1] == "=") - (b64[-2] == "=") if n else 0

    def deltas(self, audio: bytes, bpms: int) -> list[bytes]:
        first = self.first_delta_ms * bpms
        step = self.delta_ms * bpms
        return [audio[:first]] + [audio[i:i + step] for i in range(first, len(audio), step)]

    def predict_first(self, converter_format: str, delta: bytes, t_send: float,
                      conn_id: str) -> None:
        """Hash the Twilio frames the bridge will make of a response's first delta."""
        if t_send < self.keep_from:
            return
        from agentic_fast.audio import AudioConverter

        conv = AudioConverter(converter_format)
        for frame in conv.feed_provider(delta):
            key = sample_key(binascii.a2b_base64(frame), SAMPLE_OUT)
            if key is not None:
                self.out_samples.append((key, t_send, conn_id))

    def record_in(self, audio_b64: str, t: float, conn_id: str) -> None:
        if t >= self.keep_from:
            key = sample_key(audio_b64.encode(), SAMPLE_IN)
            if key is not None:
                self.in_samples.append((key, t, conn_id))

    def record_interrupt(self, conn_id: str, t: float) -> None:
        if self.window[0] - 1 <= t <= self.window[1]:
            self.interrupts.setdefault(conn_id, []).append(t)

    def new_conn(self, ws: WsServerConn) -> _Conn:
        self.conns += 1
        self.open_conns += 1
        conn_id = f"{self.name}.{self.conns}"
        return OpenAIConn(self, ws, conn_id) if self.protocol == "openai" \
            else GeminiConn(self, ws, conn_id)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        server = await loop.create_server(lambda: WsServerConn(self), "127.0.0.1", self.port,
                                          reuse_port=True)
        self.cpu_window_s: float | None = None
        async with server:
            self.lag.start()
            emit("ready", name=self.name, port=self.port)
            line = await reader.readline()
            if line.strip():
                schedule = orjson.loads(line)
                self.window = (schedule["t_steady"], schedule["t_end"])
                self.keep_from = schedule["t_steady"] - 1.0
                self.lag.window = self.window
                cpu: dict[str, float | None] = {}
                for key, at in (("w0", self.window[0]), ("w1", self.window[1])):
                    loop.call_later(max(0.0, at - time.monotonic()),
                                    lambda key=key: cpu.__setitem__(key, proc_cpu_s()))
                gc.collect()
                gc.freeze()
                gc.disable()
                progress = asyncio.create_task(self.progress())
                deadline = schedule["t_end"] + 120.0 - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(deadline, 1.0)):
                        await reader.readline()  # "stop" or EOF
                progress.cancel()
                gc.enable()
                if cpu.get("w0") is not None and cpu.get("w1") is not None:
                    self.cpu_window_s = cpu["w1"] - cpu["w0"]  # type: ignore[operator]
            self.lag.stop()
        write_json(self.result_path, {
            "name": self.name, "conns": self.conns, "in_samples": self.in_samples,
            "out_samples": self.out_samples, "interrupts": self.interrupts,
            "violations": dict(self.violations), "violation_examples": self.violation_examples,
            "notes": dict(self.notes), "loop_lag": self.lag.hist.to_json(),
            "spikes": self.lag.spikes,
            "cpu_s": proc_cpu_s(), "cpu_window_s": self.cpu_window_s})

    async def progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            emit("progress", name=self.name, conns=self.open_conns,
                 lag_max_ms=round(self.lag.take_recent(), 2),
                 violations=sum(self.violations.values()))


class _Conn:
    """What both fake protocols share: the turn schedule and the response task."""

    def __init__(self, fake: FakeProvider, ws: WsServerConn, conn_id: str) -> None:
        self.fake = fake
        self.ws = ws
        self.id = conn_id
        self.received_ms = 0.0
        self.next_turn_ms = float(fake.turn_every_ms)
        self.responses = 0
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = False

    @property
    def responding(self) -> bool:
        return self.task is not None and not self.task.done()

    def start_response(self) -> None:
        if self.responding:
            self.fake.notes["turn_while_responding"] += 1
            return
        self.responses += 1
        self.next_turn_ms = self.received_ms + self.fake.turn_every_ms
        self.cancel_requested = False
        self.task = asyncio.get_running_loop().create_task(self.stream(self.responses))

    def interrupt_this(self, number: int) -> bool:
        every = self.fake.interrupt_every
        return bool(every) and number % every == 0

    def opened(self) -> None:
        """The handshake is done."""

    def on_message(self, opcode: int, message: bytes) -> None:
        raise NotImplementedError

    async def stream(self, number: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


class OpenAIConn(_Conn):
    """One Realtime session (GA shape, protocols.md 2)."""

    def __init__(self, fake: FakeProvider, ws: WsServerConn, conn_id: str) -> None:
        super().__init__(fake, ws, conn_id)
        self.fmt: str | None = None
        self.seq = 0
        self.session: dict[str, Any] = {
            "type": "realtime", "object": "realtime.session", "id": f"sess_{conn_id}",
            "model": "gpt-realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000},
                                 "voice": "marin"}}}
        self.speech_item: str | None = None
        self.active_id: str | None = None
        self.audio_items: dict[str, int] = {}  # assistant item -> bytes sent
        self.last_item: str | None = None
        self._handlers = {
            "input_audio_buffer.append": self.on_append,
            "session.update": self.on_session_update,
            "conversation.item.create": self.on_item_create,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
            "conversation.item.truncate": self.on_truncate,
        }

    def send(self, event: dict[str, Any]) -> None:
        self.seq += 1
        event["event_id"] = f"event_{self.id}_{self.seq}"
        self.ws.send_text(_dumps(event))

    def error(self, code: str, message: str, client_event: dict[str, Any]) -> None:
        eid = client_event.get("event_id")
        self.send({"type": "error", "error": {
            "type": "invalid_request_error", "code": code, "message": message,
            "param": None, "event_id": eid if isinstance(eid, str) else None}})

    def opened(self) -> None:
        self.send({"type": "session.created", "session": self.session})

    def on_message(self, opcode: int, message: bytes) -> None:
        t = time.monotonic()
        fake = self.fake
        if opcode != OP_TEXT:
            fake.violation("binary_frame", f"{len(message)} bytes")
            return
        try:
            event = orjson.loads(message)
            kind = event["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            fake.violation("bad_event", repr(message[:100]))
            return
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(event, t)
        elif kind in _OPENAI_CLIENT_TYPES:
            self.on_other(event)
        else:
            fake.violation("unknown_event_type", str(kind))
            self.error("invalid_value", f"Invalid value: '{kind}'.", event)

    def on_append(self, event: dict[str, Any], t: float) -> None:  # HOT
        fake = self.fake
        audio = event.get("audio")
        if self.fmt is None:
            fake.violation("append_before_session_update")
            return
        if type(audio) is not str:
            fake.violation("append_audio_not_string")
            return
        try:
            nbytes = fake.audio_size(audio)
        except binascii.Error:
            fake.violation("append_bad_base64")
            self.error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio.",
                       event)
            return
        if self.fmt == "pcm16" and nbytes % 2:
            fake.violation("append_odd_pcm16")
        fake.record_in(audio, t, self.id)
        self.received_ms += nbytes / OPENAI_BPMS[self.fmt]
        if self.responding:
            return
        if self.speech_item is None and self.received_ms >= self.next_turn_ms - 500:
            self.speech_item = f"item_u{self.id}_{self.responses}"
            self.send({"type": "input_audio_buffer.speech_started",
                       "audio_start_ms": int(self.received_ms), "item_id": self.speech_item})
        if self.received_ms >= self.next_turn_ms:
            self.user_turn()

    def user_turn(self) -> None:
        item = self.speech_item or f"item_u{self.id}_{self.responses}"
        self.speech_item = None
        self.send({"type": "input_audio_buffer.speech_stopped",
                   "audio_end_ms": int(self.received_ms), "item_id": item})
        self.send({"type": "input_audio_buffer.committed", "item_id": item,
                   "previous_item_id": self.last_item})
        user = {"id": item, "type": "message", "object": "realtime.item",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self.add_item(user)
        self.send({"type": "conversation.item.input_audio_transcription.completed",
                   "item_id": item, "content_index": 0,
                   "transcript": "Please tell me the weather in Paris tomorrow.",
                   "usage": {"type": "duration", "seconds": 3.0}})
        self.start_response()

    def add_item(self, item: dict[str, Any]) -> None:
        prev, self.last_item = self.last_item, item["id"]
        self.send({"type": "conversation.item.added", "previous_item_id": prev, "item": item})
        if item.get("status") == "completed":
            self.send({"type": "conversation.item.done", "previous_item_id": prev,
                       "item": item})

    def on_session_update(self, event: dict[str, Any], t: float) -> None:
        session = event.get("session")
        if not isinstance(session, dict) or session.get("type") != "realtime":
            self.fake.violation("session_update_not_realtime", str(session)[:100])
            self.error("invalid_value", "session.type must be 'realtime'", event)
            return
        audio = session.get("audio") or {}
        fmts = []
        for side in ("input", "output"):
            fmt = (audio.get(side) or {}).get("format")
            if fmt is not None:
                self.session["audio"][side]["format"] = fmt
            wire = self.session["audio"][side]["format"].get("type")
            fmts.append(_WIRE_FMT.get(wire))
        if None in fmts or fmts[0] != fmts[1]:
            self.fake.violation("session_audio_format", str(audio)[:100])
        self.fmt = fmts[1] or "pcm16"
        for key in ("instructions", "output_modalities", "tools", "tool_choice"):
            if key in session:
                self.session[key] = session[key]
        self.send({"type": "session.updated", "session": self.session})

    def on_item_create(self, event: dict[str, Any], t: float) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or "type" not in item:
            self.fake.violation("item_create_bad_item")
            self.error("missing_required_parameter", "Missing required parameter: 'item'.",
                       event)
            return
        item = {**item, "object": "realtime.item", "status": "completed"}
        item.setdefault("id", f"item_c{self.id}_{self.seq}")
        self.add_item(item)

    def on_response_create(self, event: dict[str, Any], t: float) -> None:
        if self.responding:
            self.fake.notes["response_create_while_active"] += 1
            self.error("conversation_already_has_active_response",
                       "Conversation already has an active response in progress.", event)
            return
        self.start_response()

    def on_response_cancel(self, event: dict[str, Any], t: float) -> None:
        wanted = event.get("response_id")
        if not self.responding or (wanted is not None and wanted != self.active_id):
            self.fake.notes["cancel_not_active"] += 1  # the usual barge-in race
            self.error("response_cancel_not_active",
                       "Cancellation failed: no active response found", event)
            return
        self.fake.notes["cancel"] += 1
        self.cancel_requested = True

    def on_truncate(self, event: dict[str, Any], t: float) -> None:
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        sent = self.audio_items.get(item_id) if isinstance(item_id, str) else None
        if sent is None:
            self.fake.violation("truncate_unknown_item", str(item_id))
            self.error("invalid_value", f"Item with item_id '{item_id}' not found.", event)
            return
        have_ms = sent // OPENAI_BPMS[self.fmt or "pcm16"]
        if type(end_ms) is not int or end_ms < 0 or end_ms > have_ms \
                or event.get("content_index") != 0:
            self.fake.violation("truncate_beyond_audio", f"{end_ms} > {have_ms}")
            self.error("invalid_value", f"Audio content of {have_ms}ms is already shorter "
                       f"than {end_ms}ms", event)
            return
        self.fake.notes["truncate"] += 1
        self.audio_items[item_id] = end_ms * OPENAI_BPMS[self.fmt or "pcm16"]
        self.send({"type": "conversation.item.truncated", "item_id": item_id,
                   "content_index": 0, "audio_end_ms": end_ms})

    def on_other(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "input_audio_buffer.commit":
            self.send({"type": "input_audio_buffer.committed",
                       "item_id": f"item_m{self.id}_{self.seq}",
                       "previous_item_id": self.last_item})
        elif kind == "input_audio_buffer.clear":
            self.send({"type": "input_audio_buffer.cleared"})
        elif kind == "conversation.item.delete":
            self.send({"type": "conversation.item.deleted", "item_id": event.get("item_id")})
        else:
            self.fake.notes[f"ignored.{kind}"] += 1

    async def stream(self, number: int) -> None:
        fake = self.fake
        fmt = self.fmt or "pcm16"
        bpms = OPENAI_BPMS[fmt]
        rid = f"resp_{self.id}_{number}"
        item_id = f"item_a{self.id}_{number}"
        self.active_id = rid
        ids = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        item = {"id": item_id, "type": "message", "object": "realtime.item",
                "status": "in_progress", "role": "assistant", "content": []}
        self.send({"type": "response.created", "response": {
            "object": "realtime.response", "id": rid, "status": "in_progress",
            "status_details": None, "output": [], "usage": None}})
        self.send({"type": "response.output_item.added", "response_id": rid,
                   "output_index": 0, "item": item})
        self.add_item(item)
        self.send({"type": "response.content_part.added", **ids,
                   "part": {"type": "audio", "transcript": ""}})
        if len(self.audio_items) > 32:
            self.audio_items.pop(next(iter(self.audio_items)))
        self.audio_items[item_id] = 0
        deltas = fake.deltas(fake.voice.make(fmt, fake.response_ms), bpms)
        cut = len(deltas) // 2 if self.interrupt_this(number) else -1
        pause = fake.delta_ms / fake.speedup / 1000.0
        status, reason = "completed", None
        for i, delta in enumerate(deltas):
            if i:
                await asyncio.sleep(pause)
            if self.cancel_requested:
                status, reason = "cancelled", "client_cancelled"
                break
            if i == cut:  # the caller talks over the assistant: server VAD barges in
                self.speech_item = f"item_u{self.id}_{number}b"
                t = time.monotonic()
                self.send({"type": "input_audio_buffer.speech_started",
                           "audio_start_ms": int(self.received_ms),
                           "item_id": self.speech_item})
                fake.record_interrupt(self.id, t)
                self.next_turn_ms = self.received_ms + fake.interrupt_reply_ms
                status, reason = "cancelled", "turn_detected"
                break
            msg = _dumps({"type": "response.output_audio.delta", **ids,
                          "delta": binascii.b2a_base64(delta, newline=False).decode(),
                          "event_id": f"event_{self.id}_d{number}_{i}"})
            if i == 0:
                t = time.monotonic()
                self.ws.send_text(msg)
                fake.predict_first(_CONVERTER[fmt], delta, t, self.id)
            else:
                self.ws.send_text(msg)
            self.audio_items[item_id] = self.audio_items.get(item_id, 0) + len(delta)
            if i % 2 == 0:
                self.send({"type": "response.output_audio_transcript.delta", **ids,
                           "delta": "word "})
        self.finish(rid, item, ids, status, reason)

    def finish(self, rid: str, item: dict[str, Any], ids: dict[str, Any], status: str,
               reason: str | None) -> None:
        transcript = "Tomorrow in Paris it will be sunny."
        self.send({"type": "response.output_audio.done", **ids})
        self.send({"type": "response.output_audio_transcript.done", **ids,
                   "transcript": transcript})
        self.send({"type": "response.content_part.done", **ids,
                   "part": {"type": "audio", "transcript": transcript}})
        done_item = {**item, "status": "completed" if status == "completed" else "incomplete",
                     "content": [{"type": "output_audio", "transcript": transcript}]}
        self.send({"type": "response.output_item.done", "response_id": rid,
                   "output_index": 0, "item": done_item})
        self.send({"type": "conversation.item.done", "previous_item_id": None,
                   "item": done_item})
        self.active_id = None
        self.send({"type": "response.done", "response": {
            "object": "realtime.response", "id": rid, "status": status,
            "status_details": None if reason is None else {"type": status, "reason": reason},
            "output": [done_item], "conversation_id": f"conv_{self.id}",
            "usage": {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10}}})


class GeminiConn(_Conn):
    """One Live session (BidiGenerateContent, protocols.md 3): binary JSON frames out."""

    def __init__(self, fake: FakeProvider, ws: WsServerConn, conn_id: str) -> None:
        super().__init__(fake, ws, conn_id)
        self.setup_done = False

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.send_binary(orjson.dumps(msg))

    def on_message(self, opcode: int, message: bytes) -> None:
        t = time.monotonic()
        fake = self.fake
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            msg = None
        if type(msg) is not dict or len(msg) != 1:
            fake.violation("bad_message", repr(message[:100]))
            return
        key = next(iter(msg))
        if not self.setup_done:
            if key != "setup" or not str((msg.get("setup") or {}).get("model", "")
                                         ).startswith("models/"):
                fake.violation("first_message_not_setup", str(key))
                self.ws.close(1007, "Request contains an invalid argument.")
                return
            self.setup_done = True
            self.send({"setupComplete": {}})
            return
        if key in ("realtimeInput", "realtime_input"):
            self.on_realtime_input(msg[key], t)
        elif key in ("clientContent", "client_content"):
            body = msg[key] or {}
            if body.get("turnComplete") or body.get("turn_complete"):
                self.start_response()
        elif key in ("toolResponse", "tool_response"):
            fake.notes["tool_response"] += 1
        else:
            fake.violation("unknown_client_message", str(key))

    def on_realtime_input(self, body: Any, t: float) -> None:  # HOT
        fake = self.fake
        if not isinstance(body, dict):
            fake.violation("realtime_input_not_object")
            return
        blobs = []
        audio = body.get("audio")
        if audio is not None:
            blobs.append(audio)
        for key in ("mediaChunks", "media_chunks"):
            blobs.extend(body.get(key) or ())
        if body.get("text"):
            self.start_response()
        for blob in blobs:
            data = blob.get("data") if isinstance(blob, dict) else None
            mime = (blob.get("mimeType") or blob.get("mime_type")) if isinstance(blob, dict) \
                else None
            if type(data) is not str or mime != "audio/pcm;rate=16000":
                fake.violation("audio_blob", f"mime={mime!r}")
                continue
            try:
                nbytes = fake.audio_size(data)
            except binascii.Error:
                fake.violation("audio_bad_base64")
                continue
            if nbytes % 2:
                fake.violation("audio_odd_pcm16")
            fake.record_in(data, t, self.id)
            self.received_ms += nbytes / 32.0
        if not self.responding and self.received_ms >= self.next_turn_ms:
            self.send({"serverContent": {"inputTranscription": {
                "text": "Please tell me the weather in Paris tomorrow."}}})
            self.start_response()

    async def stream(self, number: int) -> None:
        fake = self.fake
        deltas = fake.deltas(fake.voice.make("pcm16", fake.response_ms), 48)
        cut = len(deltas) // 2 if self.interrupt_this(number) else -1
        pause = fake.delta_ms / fake.speedup / 1000.0
        for i, delta in enumerate(deltas):
            if i:
                await asyncio.sleep(pause)
            if i == cut:
                t = time.monotonic()
                self.send({"serverContent": {"interrupted": True}})
                fake.record_interrupt(self.id, t)
                self.send({"serverContent": {"turnComplete": True}})
                self.next_turn_ms = self.received_ms + fake.interrupt_reply_ms
                return
            msg = orjson.dumps({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
                "mimeType": "audio/pcm;rate=24000",
                "data": binascii.b2a_base64(delta, newline=False).decode()}}]}}})
            t = time.monotonic()
            self.ws.send_binary(msg)
            if i == 0:
                fake.predict_first("gemini", delta, t, self.id)
            if i % 2 == 0:
                self.send({"serverContent": {"outputTranscription": {"text": "word "}}})
        self.send({"serverContent": {"generationComplete": True}})
        self.send({"serverContent": {"turnComplete": True}, "usageMetadata": {
            "promptTokenCount": 100, "responseTokenCount": 50, "totalTokenCount": 150}})


# --------------------------------------------------------------------------- bare relay


def _signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    import base64

    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(),
                                     hashlib.sha1).digest()).decode()


class BareRelay:
    """The baseline: Twilio <-> provider with no transcoding, pacing, marks or state."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port = args.port
        self.provider_url = args.provider_url
        self.auth_token = args.auth_token
        self.public_url = args.public_url.rstrip("/")
        self.chunk_bytes = args.handoff_ms * 8
        self.warm: dict[str, asyncio.Task[Any]] = {}
        host = self.public_url.split("://", 1)[1]
        self.stream_url = f"wss://{host}/twilio/media-stream"

    async def voice(self, request: Any) -> Any:
        from aiohttp import web

        form = {k: str(v) for k, v in (await request.post()).items()}
        sig = request.headers.get("X-Twilio-Signature", "")
        expected = _signature(self.auth_token, self.public_url + request.path_qs, form)
        if not hmac.compare_digest(sig, expected):
            return web.Response(status=403, text="forbidden")
        call_sid = form.get("CallSid", "")
        self.warm[call_sid] = asyncio.get_running_loop().create_task(self.connect_provider())
        twiml = ('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                 f'<Stream url="{self.stream_url}"><Parameter name="callSid" '
                 f'value="{call_sid}"/></Stream></Connect></Response>')
        return web.Response(text=twiml, content_type="text/xml")

    async def connect_provider(self) -> Any:
        from websockets.asyncio.client import connect

        ws = await connect(self.provider_url + "?model=gpt-realtime", compression=None,
                           additional_headers={"Authorization": "Bearer relay"},
                           max_size=2**22, ping_interval=None, close_timeout=2)
        await ws.recv()  # session.created
        await ws.send(_dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcmu"}},
                      "output": {"format": {"type": "audio/pcmu"}}}}}))
        while orjson.loads(await ws.recv()).get("type") != "session.updated":
            pass
        return ws

    async def media(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        tws = web.WebSocketResponse(compress=False, max_msg_size=65536)
        await tws.prepare(request)
        stream_sid = call_sid = ""
        async for msg in tws:
            if msg.type is not WSMsgType.TEXT:
                break
            ev = orjson.loads(msg.data)
            if ev.get("event") == "start":
                stream_sid, call_sid = ev["streamSid"], ev["start"]["callSid"]
                break
        if not stream_sid:
            return tws
        task = self.warm.pop(call_sid, None)
        pws = await (task if task is not None else self.connect_provider())
        _write(pws, '{"type":"response.create"}')  # greeting
        reader = asyncio.get_running_loop().create_task(self.pump_out(pws, tws, stream_sid))
        buf = bytearray()
        chunk = self.chunk_bytes
        try:
            async for msg in tws:
                if msg.type is not WSMsgType.TEXT:
                    break
                ev = orjson.loads(msg.data)
                kind = ev.get("event")
                if kind == "media":
                    buf += binascii.a2b_base64(ev["media"]["payload"])
                    if len(buf) >= chunk:
                        audio = binascii.b2a_base64(bytes(buf[:chunk]), newline=False).decode()
                        del buf[:chunk]
                        _write(pws, '{"type":"input_audio_buffer.append","audio":"'
                               + audio + '"}')
                elif kind == "stop":
                    break
        finally:
            reader.cancel()
            with contextlib.suppress(Exception):
                await pws.close()
            await tws.close()
        return tws

    async def pump_out(self, pws: Any, tws: Any, stream_sid: str) -> None:
        head = '{"event":"media","streamSid":"' + stream_sid + '","media":{"payload":"'
        clear = '{"event":"clear","streamSid":"' + stream_sid + '"}'
        active = None
        with contextlib.suppress(Exception):
            async for message in pws:
                ev = orjson.loads(message)
                kind = ev.get("type")
                if kind == "response.output_audio.delta":
                    data = binascii.a2b_base64(ev["delta"])
                    for i in range(0, len(data) - 159, 160):
                        await tws.send_str(head + binascii.b2a_base64(
                            data[i:i + 160], newline=False).decode() + '"}}')
                elif kind == "input_audio_buffer.speech_started" and active is not None:
                    await tws.send_str(clear)  # barge-in (only while a response is active)
                    _write(pws, _dumps({"type": "response.cancel", "response_id": active}))
                elif kind == "response.created":
                    active = ev["response"]["id"]
                elif kind == "response.done":
                    active = None

    async def run(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_get("/twilio/media-stream", self.media)
        app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        stop = asyncio.Event()
        import signal

        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        await stop.wait()
        await runner.cleanup()


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load_fakes",
                                description="Peers of a loadgen run (started by bench.loadgen).")
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("provider", help="fake OpenAI Realtime / Gemini Live server")
    f.add_argument("--protocol", choices=("openai", "gemini"), default="openai")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--name", default="fake0")
    f.add_argument("--result", required=True)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--response-ms", type=int, default=2000)
    f.add_argument("--first-delta-ms", type=int, default=100)
    f.add_argument("--delta-ms", type=int, default=200)
    f.add_argument("--speedup", type=float, default=5.0)
    f.add_argument("--turn-every-ms", type=int, default=4000)
    f.add_argument("--interrupt-every", type=int, default=3)
    f.add_argument("--interrupt-reply-ms", type=int, default=700)
    r = sub.add_parser("relay", help="bare relay server (the baseline)")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--provider-url", required=True)
    r.add_argument("--auth-token", required=True)
    r.add_argument("--public-url", required=True)
    r.add_argument("--handoff-ms", type=int, default=20)
    return p


def main(argv: list[str] | None = None) -> int:
    import uvloop

    args = build_parser().parse_args(argv)
    profile = os.environ.get("LOADGEN_PROFILE")  # a directory: write cProfile stats there
    if args.what == "provider" and profile:
        import cProfile

        fake = FakeProvider(args)
        cProfile.runctx("uvloop.run(fake.run())", globals(), locals(),
                        str(Path(profile) / f"{fake.name}.prof"))
    elif args.what == "provider":
        uvloop.run(FakeProvider(args).run())
    else:
        uvloop.run(BareRelay(args).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
