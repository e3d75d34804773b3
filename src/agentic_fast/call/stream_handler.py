"""A carrier's media stream WebSocket: admission, authentication, and the read loop.

Carrier-neutral: one :class:`MediaStreamHandler` per carrier serves every upgrade of its
``media_path`` (handed over by ``listener``; the socket itself is ``ws.server_socket.
MediaSocket``); the carrier's :class:`~agentic_fast.carriers.base.MediaStreamProtocol`
parses and checks the frames, its :class:`~agentic_fast.carriers.base.OutboundFrames` builds
ours (resolved once per call). Counters are ``<carrier>.media.*``. Per socket:

1. admission: total and per-address caps, checked before the 101 (refused: 503);
2. ``connected`` + ``start`` must arrive within ``start_timeout_s``; ``start`` must carry a
   valid, unused stream token for a known call, bound to that call's carrier call id — else the
   socket is closed with 1008 (policy violation) before any audio is touched;
3. each message is handed, as it is parsed, to the call's :class:`MediaSink` (the bridge);
   malformed frames, unknown events and bad audio are counted and logged, never fatal;
4. ``stop`` or a closed socket ends the call and tears the bridge down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web

from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.call.stream_token import StreamTokenSigner
from agentic_fast.carriers.base import (
    PARAM_CALL_ID,
    PARAM_TOKEN,
    PCMU_8K,
    Carrier,
    EventKind,
    LegFormat,
    MediaStreamProtocol,
    OutboundFrames,
    StreamStart,
)
from agentic_fast.core import metrics
from agentic_fast.core.errors import (
    AudioFormatError,
    CallRefusedError,
    CarrierApiError,
    CarrierProtocolError,
    PeerUnavailableError,
    StoreError,
    StreamTokenError,
)
from agentic_fast.core.log import BoundLogger, get_logger
from agentic_fast.core.tasks import TaskSet
from agentic_fast.ws.frames import OP_CLOSE, OP_TEXT
from agentic_fast.ws.server_socket import (
    CLOSE_GOING_AWAY,
    CLOSE_OK,
    CLOSE_POLICY_VIOLATION,
    DEFAULT_CONTROL_FRAMES_PER_S,
    DEFAULT_WRITE_BUFFER_BYTES,
    MediaSocket,
    text_frame,
)
from agentic_fast.ws.upgrade import UpgradeRequest, http_error, switching_protocols

log = get_logger("media_stream")

__all__ = ["PARAM_CALL_ID", "PARAM_TOKEN", "BridgeFactory", "ConnectionLimiter", "MediaSink",
           "MediaStreamHandler", "StreamGuard", "StreamSender"]

#: Per socket and reason, log the first few rejections, then every Nth (all are counted).
_LOG_FIRST, _LOG_EVERY = 5, 500
_MEDIA, _MARK, _DTMF, _STOP = EventKind.MEDIA, EventKind.MARK, EventKind.DTMF, EventKind.STOP


class StreamSender:
    """Writes our frames to one media stream (text frames only, stream id fixed).

    Synchronous: a frame goes straight to the socket's transport; ``send`` puts a tick's
    frames and marks in one write. ``build`` is the carrier's builder for this stream,
    ``leg`` the stream's audio format (both from its ``start``)."""

    __slots__ = ("_build", "_socket", "leg", "stream_id")

    def __init__(self, socket: MediaSocket, build: OutboundFrames, stream_id: str,
                 leg: LegFormat = PCMU_8K) -> None:
        self._socket = socket
        self._build = build
        self.stream_id = stream_id
        self.leg = leg

    @property
    def stream_sid(self) -> str:
        """``stream_id`` under its Twilio name (kept for existing readers)."""
        return self.stream_id

    def write_buffer_size(self) -> int:
        """Bytes queued in the socket, not yet taken by the peer (a slow peer grows it)."""
        return self._socket.write_buffer_size()

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def media(self, payload_b64: str) -> bool:
        return self._socket.send_text(self._build.media(payload_b64))

    def mark(self, name: str) -> bool:
        return self._socket.send_text(self._build.mark(name))

    def clear(self) -> bool:
        return self._socket.send_text(self._build.clear())

    def send(self, batch: list[tuple[str, str]]) -> bool:
        """``("media", payload_b64)`` and ``("mark", name)`` frames, in order, in one write."""
        media, mark = self._build.media, self._build.mark
        if len(batch) == 1:
            kind, value = batch[0]
            return self._socket.send_text(media(value) if kind == "media" else mark(value))
        return self._socket.write_frames(b"".join(
            [text_frame(media(v) if k == "media" else mark(v)) for k, v in batch]))

    async def close(self, code: int = CLOSE_OK, reason: str = "") -> None:
        await self._socket.close(code, reason)


class MediaSink(Protocol):
    """What the read loop feeds: the call's bridge (``AudioBridge``)."""

    async def start(self) -> None:
        """The stream is authenticated; audio may flow both ways from now on."""

    def on_media(self, payload_b64: str, timestamp_ms: int) -> None:
        """One inbound ``media`` payload (base64, the leg's codec); AudioFormatError if bad."""

    def on_mark(self, name: str) -> None:
        """The carrier reached (or flushed) one of our marks."""

    def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key."""

    async def close(self, reason: str) -> None:
        """The stream ended: release everything (idempotent)."""


BridgeFactory = Callable[[CallSession, StreamSender], MediaSink]


class StreamGuard(Protocol):
    """The shared call store's checks when a stream starts (``store.StoreRecorder``);
    both raise ``StoreError`` when the store cannot answer."""

    async def adopt(self, manager: CallManager, call_id: str,
                    carrier_call_id: str) -> CallSession | None:
        """A session for a live call answered by another process, or None."""

    async def claim_stream(self, session: CallSession, nonce: bytes,
                           expires_at: float) -> str | None:
        """Claim the token's nonce and the call; the refusal reason, or None."""


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

    __slots__ = ("_counts", "_log", "_prefix")

    def __init__(self, bound_log: BoundLogger, prefix: str) -> None:
        self._log = bound_log
        self._prefix = prefix + ".rejected."
        self._counts: Counter[str] = Counter()

    def __call__(self, reason: str, detail: str) -> None:
        metrics.incr(self._prefix + reason)
        self._counts[reason] += 1
        n = self._counts[reason]
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            self._log.warning("media.rejected", reason=reason, count=n, detail=detail[:200])

    @property
    def total(self) -> int:
        return sum(self._counts.values())


class MediaStreamHandler:
    """Serves ``carrier.media_path``: upgrades arrive from the listener (``upgrade``)."""

    def __init__(self, *, carrier: Carrier, manager: CallManager, tokens: StreamTokenSigner,
                 bridge_factory: BridgeFactory, limiter: ConnectionLimiter,
                 start_timeout_s: float, max_message_bytes: int, heartbeat_s: float,
                 record_dtmf: bool = True,
                 max_control_frames_per_s: int = DEFAULT_CONTROL_FRAMES_PER_S,
                 max_write_buffer_bytes: int = DEFAULT_WRITE_BUFFER_BYTES,
                 guard: StreamGuard | None = None, store_refusal_text: str = "") -> None:
        self.carrier = carrier
        #: the shared store's checks (nonce single use everywhere, ownership), or None
        self.guard = guard
        #: spoken (through the carrier's REST) when a stream is refused because the store
        #: cannot make its checks: the caller hears why instead of silence
        self.store_refusal_text = store_refusal_text
        #: metric prefix: ``twilio.media``, ``telnyx.media``...
        self.prefix = f"{carrier.name}.media"
        self.manager = manager
        self.tokens = tokens
        self.bridge_factory = bridge_factory
        self.limiter = limiter
        self.start_timeout_s = start_timeout_s
        self.max_message_bytes = max_message_bytes
        self.heartbeat_s = heartbeat_s
        self.record_dtmf = record_dtmf
        self.max_control_frames_per_s = max_control_frames_per_s
        self.max_write_buffer_bytes = max_write_buffer_bytes
        self._sockets: set[MediaSocket] = set()
        self._tasks = TaskSet(self.prefix, log)

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    async def close_all(self, reason: str = "server shutdown") -> None:
        """Close every socket still open (the end of a drain) and wait for their calls."""
        for sock in list(self._sockets):
            with contextlib.suppress(Exception):
                await sock.close(CLOSE_GOING_AWAY, reason)
        await self._tasks.wait(timeout=5.0)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp route: reached only by a plain GET, or an upgrade that was not the
        first request of its connection (the listener takes those)."""
        metrics.incr(f"{self.prefix}.not_upgraded")
        return web.Response(status=426, text="media streams need a WebSocket upgrade as the "
                            "first request of a new connection\n",
                            headers={"Upgrade": "websocket", "Connection": "Upgrade"})

    def upgrade(self, transport: asyncio.Transport, request: UpgradeRequest, leftover: bytes,
                remote: str) -> None:
        """Admission, the 101, then the socket's own task (called by the listener)."""
        refused = self.limiter.acquire(remote)
        if refused is not None:
            metrics.incr(f"{self.prefix}.refused.{refused}")
            log.warning("media.refused", reason=refused, remote=remote)
            transport.write(http_error(503, "too many media stream connections"))
            transport.close()
            return
        sock = MediaSocket(max_message_bytes=self.max_message_bytes,
                           heartbeat_s=self.heartbeat_s, remote=remote,
                           max_control_frames_per_s=self.max_control_frames_per_s,
                           max_write_buffer_bytes=self.max_write_buffer_bytes)
        transport.write(switching_protocols(request))
        sock.take_over(transport, leftover)
        self._sockets.add(sock)
        metrics.incr(f"{self.prefix}.connections")
        query = dict(parse_qsl(request.query, max_num_fields=32))
        self._tasks.spawn(self._run(sock, remote, query))

    async def _run(self, sock: MediaSocket, address: str, query: dict[str, str]) -> None:
        try:
            await self._serve(sock, address, query)
        except Exception:
            metrics.incr(f"{self.prefix}.internal_error")
            log.exception("media.internal_error", remote=address)
        finally:
            self._sockets.discard(sock)
            self.limiter.release(address)
            if not sock.closed:
                with contextlib.suppress(Exception):
                    await sock.close()

    async def _serve(self, sock: MediaSocket, address: str, query: dict[str, str]) -> None:
        state = self.carrier.open_stream(query)
        start = await self._await_start(sock, state, address)
        if start is None:
            return
        session = await self._authenticate(start, address)
        if session is None:
            metrics.incr(f"{self.prefix}.unauthenticated")
            await sock.close(CLOSE_POLICY_VIOLATION, "stream not authorised")
            return
        clog = session.log.bind(stream_sid=start.stream_id)
        sender = StreamSender(sock, state.outbound(start), start.stream_id, start.leg)
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
            reason = await _StreamReader(sock, state, session, bridge, clog,
                                         self.record_dtmf, self.prefix).run()
        finally:
            with contextlib.suppress(Exception):
                await bridge.close(reason)
            if session.bridge is bridge:  # the ended call's record stays in the history;
                session.bridge = None     # its machinery (provider, sockets) goes now
            if not session.ended:
                self.manager.complete(session, reason=reason)
            clog.info("media.ended", reason=reason, media=state.media_count,
                      seq_gaps=state.seq_gaps)

    async def _await_start(self, sock: MediaSocket, state: MediaStreamProtocol,
                           address: str) -> StreamStart | None:
        """``connected`` then ``start`` within the timeout; anything else closes with 1008."""
        try:
            async with asyncio.timeout(self.start_timeout_s):
                while True:
                    opcode, data = await sock.receive()
                    if opcode != OP_TEXT:
                        if opcode == OP_CLOSE:
                            return None
                        raise CarrierProtocolError("binary frame before start",
                                                   peer=self.carrier.name, reason="before_start")
                    event = state.receive(data)
                    if event.kind is EventKind.START:
                        assert isinstance(event, StreamStart)
                        return event
        except TimeoutError:
            metrics.incr(f"{self.prefix}.start_timeout")
            log.warning("media.start_timeout", remote=address, timeout_s=self.start_timeout_s)
            await sock.close(CLOSE_POLICY_VIOLATION, "no start in time")
        except CarrierProtocolError as exc:
            metrics.incr(f"{self.prefix}.rejected_before_start.{exc.reason}")
            log.warning("media.bad_handshake", remote=address, reason=exc.reason,
                        detail=str(exc)[:200])
            await sock.close(CLOSE_POLICY_VIOLATION, "protocol violation")
        return None

    async def _authenticate(self, start: StreamStart, address: str) -> CallSession | None:
        params = start.params
        token = params.get(PARAM_TOKEN, "")
        carrier_call_id = start.carrier_call_id
        try:
            claims = self.tokens.claims(token, carrier_call_id)
        except StreamTokenError as exc:
            log.warning("media.token_rejected", reason=exc.reason, call_sid=carrier_call_id,
                        remote=address)
            metrics.incr(f"{self.prefix}.token.{exc.reason}")
            return None
        session = self.manager.get(claims.call_id)
        if session is None and self.guard is not None:
            try:  # answered by another process or instance: its record is in the store
                session = await self.guard.adopt(self.manager, claims.call_id, carrier_call_id)
            except (StoreError, CallRefusedError) as exc:
                self._refused("adopt_failed", claims.call_id, exc)
                return None
        if session is None or session.ended:
            log.warning("media.unknown_call", call_id=claims.call_id, call_sid=carrier_call_id)
            return None
        if session.call_sid is None:  # outbound: the stream beat the REST answer
            self.manager.attach_call_sid(session, carrier_call_id)
        elif session.call_sid != carrier_call_id:
            log.warning("media.call_sid_mismatch", call_id=session.call_id,
                        expected=session.call_sid, got=carrier_call_id)
            return None
        if session.stream_started:
            log.warning("media.second_stream", call_id=session.call_id)
            return None
        try:
            self.tokens.used.consume(claims.nonce, claims.expires_at)
        except StreamTokenError as exc:
            log.warning("media.token_rejected", reason=exc.reason, call_id=session.call_id)
            metrics.incr(f"{self.prefix}.token.{exc.reason}")
            return None
        if self.guard is not None:
            try:
                refusal = await self.guard.claim_stream(session, claims.nonce,
                                                        claims.expires_at)
            except StoreError as exc:  # single use cannot be checked: refuse, fail the call
                self._refused("store_unavailable", session.call_id, exc)
                if not session.ended:
                    self.manager.fail(session, "store-unavailable")
                self._say_refusal(session)
                return None
            if refusal is not None:
                log.warning("media.token_rejected", reason=refusal, call_id=session.call_id,
                            source="store")
                metrics.incr(f"{self.prefix}.token.{refusal}")
                return None
            if session.stream_started or session.ended:  # changed while we waited
                return None
        if not self.manager.mark_stream_started(session):
            return None
        return session

    def _say_refusal(self, session: CallSession) -> None:
        """Tell the caller (the carrier speaks the line and hangs up), in the background."""
        control, call_sid = self.carrier.control, session.call_sid
        if control is None or not call_sid or not self.store_refusal_text:
            return

        async def say() -> None:
            try:
                await control.say_and_hang_up(call_sid, self.store_refusal_text)
            except CarrierApiError as exc:
                metrics.incr(f"{self.prefix}.refusal_unspoken")
                session.log.warning("media.refusal_unspoken", error=str(exc)[:200])

        self._tasks.spawn(say())

    def _refused(self, reason: str, call_id: str, exc: Exception) -> None:
        metrics.incr(f"{self.prefix}.refused.{reason}")
        log.warning("media.refused", reason=reason, call_id=call_id, error=str(exc)[:200])


class _StreamReader:
    """The authenticated stream: each message handled as it is parsed (no task switch)."""

    __slots__ = ("_bridge", "_done", "_media", "_receive", "_record_dtmf", "_reject",
                 "_session", "_sock")

    def __init__(self, sock: MediaSocket, state: MediaStreamProtocol, session: CallSession,
                 bridge: MediaSink, clog: BoundLogger, record_dtmf: bool,
                 prefix: str) -> None:
        self._sock = sock
        self._receive = state.receive
        self._session = session
        self._bridge = bridge
        self._media = bridge.on_media
        self._record_dtmf = record_dtmf
        self._reject = _RejectionLog(clog, prefix)
        self._done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def run(self) -> str:
        """Until ``stop`` or the socket ends; the reason."""
        self._sock.set_handler(self.on_text, self.on_other)
        return await self._done

    def _finish(self, reason: str) -> None:
        if not self._done.done():
            self._done.set_result(reason)

    def on_text(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            event: Any = self._receive(data)  # dispatched on kind: no isinstance per frame
            kind = event.kind
            if kind is _MEDIA:
                self._media(event.payload, event.timestamp_ms)
            elif kind is _MARK:
                self._bridge.on_mark(event.name)
            elif kind is _DTMF:
                if self._record_dtmf:
                    self._session.add_dtmf(event.digit)
                self._bridge.on_dtmf(event.digit)
            elif kind is _STOP:
                self._finish("stream-stopped")
        except CarrierProtocolError as exc:
            self._reject(exc.reason, str(exc))
        except AudioFormatError as exc:
            self._reject("bad_audio", str(exc))
        except Exception as exc:  # a bug must cost this frame, not the connection
            self._reject("internal_error", repr(exc))

    def on_other(self, opcode: int, data: bytes) -> None:
        if opcode == OP_CLOSE:
            code = self._sock.close_code
            if code in (1000, 1001, 1005, None):
                self._finish("socket-closed")
            else:
                self._reject("ws_error", f"close code {code}: {self._sock.close_reason}")
                self._finish("socket-error")
        else:
            self._reject("binary_frame", f"{len(data)} bytes")
