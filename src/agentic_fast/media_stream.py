"""The Twilio Media Streams WebSocket: admission, authentication, and the read loop.

One :class:`MediaStreamHandler` serves every ``GET /twilio/media-stream``. Per socket:

1. admission: total and per-address caps, checked before the upgrade;
2. ``connected`` + ``start`` must arrive within ``start_timeout_s``; ``start`` must carry a
   valid, unused stream token for a known call, bound to that call's CallSid — otherwise the
   socket is closed with 1008 (policy violation) before any audio is touched;
3. the read loop hands each message to the call's :class:`MediaSink` (the bridge);
   malformed frames, unknown events and bad audio are counted and logged, never fatal;
4. ``stop`` or a closed socket ends the call and tears the bridge down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from agentic_fast import metrics
from agentic_fast.calls import CallManager, CallSession
from agentic_fast.errors import AudioFormatError, PeerUnavailableError
from agentic_fast.log import BoundLogger, get_logger
from agentic_fast.telephony.media import (
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    TwilioOutbound,
    TwilioProtocolError,
    TwilioStreamState,
)
from agentic_fast.telephony.stream_token import StreamTokenError, StreamTokenSigner

log = get_logger("media_stream")

#: ``<Parameter>`` names the webhook puts on the stream (see server.voice_webhook).
PARAM_CALL_ID = "callId"
PARAM_TOKEN = "streamToken"
#: Per socket and reason, log the first few rejections, then every Nth (all are counted).
_LOG_FIRST, _LOG_EVERY = 5, 500


class TwilioStreamSender:
    """Writes our frames to one Media Stream (text frames only, streamSid fixed)."""

    __slots__ = ("_build", "_transport", "_ws", "stream_sid")

    def __init__(self, ws: web.WebSocketResponse, stream_sid: str,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self._ws = ws
        self._transport = transport
        self._build = TwilioOutbound(stream_sid)
        self.stream_sid = stream_sid

    def write_buffer_size(self) -> int:
        """Bytes queued in the socket, not yet taken by the peer (a slow peer grows it)."""
        transport = self._transport
        if transport is None or not hasattr(transport, "get_write_buffer_size"):
            return 0
        return int(transport.get_write_buffer_size())

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def media(self, payload_b64: str) -> None:
        await self._ws.send_str(self._build.media(payload_b64))

    async def mark(self, name: str) -> None:
        await self._ws.send_str(self._build.mark(name))

    async def clear(self) -> None:
        await self._ws.send_str(self._build.clear())

    async def close(self, code: int = WSCloseCode.OK, message: bytes = b"") -> None:
        await self._ws.close(code=code, message=message)


class MediaSink(Protocol):
    """What the read loop feeds: the call's bridge (``AudioBridge``)."""

    async def start(self) -> None:
        """The stream is authenticated; audio may flow both ways from now on."""

    def on_media(self, payload_b64: str, timestamp_ms: int) -> None:
        """One inbound ``media`` payload (base64 mu-law); raises AudioFormatError if bad."""

    def on_mark(self, name: str) -> None:
        """Twilio reached (or flushed) one of our marks."""

    def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key."""

    async def close(self, reason: str) -> None:
        """The stream ended: release everything (idempotent)."""


BridgeFactory = Callable[[CallSession, TwilioStreamSender], MediaSink]


class ConnectionLimiter:
    """Caps concurrent media sockets in total and per remote address."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._per_address: Counter[str] = Counter()
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    def acquire(self, address: str) -> str | None:
        """Take a slot; returns the refusal reason, or None when admitted."""
        if self._total >= self.max_total:
            return "total"
        if self._per_address[address] >= self.max_per_address:
            return "per_address"
        self._total += 1
        self._per_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self._total -= 1
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]


class _RejectionLog:
    """Counts every rejected frame by reason; logs a bounded sample of them."""

    __slots__ = ("_counts", "_log")

    def __init__(self, bound_log: BoundLogger) -> None:
        self._log = bound_log
        self._counts: Counter[str] = Counter()

    def __call__(self, reason: str, detail: str) -> None:
        metrics.incr(f"twilio.media.rejected.{reason}")
        self._counts[reason] += 1
        n = self._counts[reason]
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            self._log.warning("media.rejected", reason=reason, count=n, detail=detail[:200])

    @property
    def total(self) -> int:
        return sum(self._counts.values())


class MediaStreamHandler:
    """aiohttp handler of ``GET /twilio/media-stream``."""

    def __init__(self, *, manager: CallManager, tokens: StreamTokenSigner,
                 bridge_factory: BridgeFactory, limiter: ConnectionLimiter,
                 start_timeout_s: float, max_message_bytes: int, heartbeat_s: float,
                 record_dtmf: bool = True) -> None:
        self.manager = manager
        self.tokens = tokens
        self.bridge_factory = bridge_factory
        self.limiter = limiter
        self.start_timeout_s = start_timeout_s
        self.max_message_bytes = max_message_bytes
        self.heartbeat_s = heartbeat_s
        self.record_dtmf = record_dtmf
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    async def close_all(self, message: bytes = b"server shutdown") -> None:
        """Close every socket still open (the end of a drain)."""
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=message)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        address = request.remote or "?"
        refused = self.limiter.acquire(address)
        if refused is not None:
            metrics.incr(f"twilio.media.refused.{refused}")
            log.warning("media.refused", reason=refused, remote=address)
            raise web.HTTPServiceUnavailable(text="too many media stream connections")
        ws = web.WebSocketResponse(
            max_msg_size=self.max_message_bytes,
            heartbeat=self.heartbeat_s or None,
            autoping=True,
            compress=False,
        )
        try:
            await ws.prepare(request)
            self._sockets.add(ws)
            metrics.incr("twilio.media.connections")
            await self._serve(ws, address, request.transport)
        finally:
            self._sockets.discard(ws)
            self.limiter.release(address)
            if not ws.closed:
                await ws.close()
        return ws

    async def _serve(self, ws: web.WebSocketResponse, address: str,
                     transport: asyncio.BaseTransport | None) -> None:
        state = TwilioStreamState()
        start = await self._await_start(ws, state, address)
        if start is None:
            return
        session = self._authenticate(start, address)
        if session is None:
            metrics.incr("twilio.media.unauthenticated")
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"stream not authorised")
            return
        clog = session.log.bind(stream_sid=start.stream_sid)
        sender = TwilioStreamSender(ws, start.stream_sid, transport)
        bridge = self.bridge_factory(session, sender)
        session.bridge = bridge
        reason = "socket-closed"
        try:
            try:
                await bridge.start()
            except PeerUnavailableError as exc:
                # the bridge already told the caller and failed the call; end the stream
                reason = "provider-unavailable"
                clog.warning("media.bridge_start_failed", error=str(exc)[:200])
                return
            clog.info("media.started", remote=address)
            reason = await self._read_loop(ws, state, session, bridge, clog)
        finally:
            with contextlib.suppress(Exception):
                await bridge.close(reason)
            if not session.ended:
                self.manager.complete(session, reason=reason)
            clog.info("media.ended", reason=reason, media=state.media_count,
                      seq_gaps=state.seq_gaps)

    async def _await_start(self, ws: web.WebSocketResponse, state: TwilioStreamState,
                           address: str) -> Start | None:
        """``connected`` then ``start`` within the timeout; anything else closes with 1008."""
        try:
            async with asyncio.timeout(self.start_timeout_s):
                while True:
                    msg = await ws.receive()
                    if msg.type is not WSMsgType.TEXT:
                        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                            return None
                        detail = "binary frame" if msg.type is WSMsgType.BINARY else msg.type
                        raise TwilioProtocolError(f"{detail} before start",
                                                  reason="before_start")
                    event = state.receive(msg.data)
                    if isinstance(event, Start):
                        return event
        except TimeoutError:
            metrics.incr("twilio.media.start_timeout")
            log.warning("media.start_timeout", remote=address, timeout_s=self.start_timeout_s)
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no start in time")
        except TwilioProtocolError as exc:
            metrics.incr(f"twilio.media.rejected_before_start.{exc.reason}")
            log.warning("media.bad_handshake", remote=address, reason=exc.reason,
                        detail=str(exc)[:200])
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"protocol violation")
        return None

    def _authenticate(self, start: Start, address: str) -> CallSession | None:
        params = start.custom_parameters
        token = params.get(PARAM_TOKEN, "")
        try:
            claims = self.tokens.claims(token, start.call_sid)
        except StreamTokenError as exc:
            log.warning("media.token_rejected", reason=exc.reason, call_sid=start.call_sid,
                        remote=address)
            metrics.incr(f"twilio.media.token.{exc.reason}")
            return None
        session = self.manager.get(claims.call_id)
        if session is None or session.ended:
            log.warning("media.unknown_call", call_id=claims.call_id, call_sid=start.call_sid)
            return None
        if session.call_sid is None:  # outbound: the stream beat the REST answer
            self.manager.attach_call_sid(session, start.call_sid)
        elif session.call_sid != start.call_sid:
            log.warning("media.call_sid_mismatch", call_id=session.call_id,
                        expected=session.call_sid, got=start.call_sid)
            return None
        if session.stream_started:
            log.warning("media.second_stream", call_id=session.call_id)
            return None
        try:
            self.tokens.used.consume(claims.nonce, claims.expires_at)
        except StreamTokenError as exc:
            log.warning("media.token_rejected", reason=exc.reason, call_id=session.call_id)
            metrics.incr(f"twilio.media.token.{exc.reason}")
            return None
        if not self.manager.mark_stream_started(session):
            return None
        return session

    async def _read_loop(self, ws: web.WebSocketResponse, state: TwilioStreamState,
                         session: CallSession, bridge: MediaSink, clog: BoundLogger) -> str:
        reject = _RejectionLog(clog)
        receive = state.receive
        on_media = bridge.on_media
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                try:
                    event = receive(msg.data)
                    if type(event) is Media:
                        on_media(event.payload, event.timestamp_ms)
                    elif type(event) is Mark:
                        bridge.on_mark(event.name)
                    elif type(event) is Dtmf:
                        if self.record_dtmf:
                            session.add_dtmf(event.digit)
                        bridge.on_dtmf(event.digit)
                    elif type(event) is Stop:
                        return "stream-stopped"
                except TwilioProtocolError as exc:
                    reject(exc.reason, str(exc))
                except AudioFormatError as exc:
                    reject("bad_audio", str(exc))
            elif kind is WSMsgType.BINARY:
                reject("binary_frame", f"{len(msg.data)} bytes")
            elif kind is WSMsgType.ERROR:
                # aiohttp reports an oversize frame here and closes the socket (1009)
                reject("ws_error", repr(ws.exception()))
                return "socket-error"
            else:  # CLOSE / CLOSING / CLOSED
                return "socket-closed"
