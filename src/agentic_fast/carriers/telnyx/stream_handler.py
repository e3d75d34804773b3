"""The Telnyx media stream WebSocket (``GET /telnyx/media-stream``): auth and read loop.

Admission, the 101 and the socket's life are the Twilio handler's (the same listener, caps
and drain); what differs is the protocol: Telnyx sends ``connected`` + ``start`` whose
``client_state`` carries our call id and a single-use stream token bound to the call's
``call_control_id`` (set by our ``answer`` / ``dial``), then ``media`` in the codec we asked
for. A stream whose token, call or codec does not match is closed with 1008 before any
audio is touched. ``stop`` or a closed socket ends the call's bridge.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.call.stream_token import StreamTokenError, StreamTokenSigner
from agentic_fast.carriers.telnyx.media import (
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    StreamError,
    TelnyxCodec,
    TelnyxOutbound,
    TelnyxProtocolError,
    TelnyxStreamState,
)
from agentic_fast.carriers.twilio.stream_handler import (
    ConnectionLimiter,
    MediaSink,
    MediaStreamHandler,
    _RejectionLog,
)
from agentic_fast.core import metrics
from agentic_fast.core.errors import AudioFormatError, PeerUnavailableError
from agentic_fast.core.log import BoundLogger, get_logger
from agentic_fast.ws.frames import OP_CLOSE, OP_TEXT
from agentic_fast.ws.server_socket import CLOSE_OK, CLOSE_POLICY_VIOLATION, MediaSocket, text_frame

__all__ = ["TelnyxMediaStreamHandler", "TelnyxStreamSender", "client_state_for",
           "parse_client_state"]

log = get_logger("telnyx.media")
_OUT = TelnyxOutbound()


def client_state_for(call_id: str, token: str) -> str:
    """``client_state`` of a call we answer or dial: base64 of ``"<call_id> <token>"``."""
    return base64.b64encode(f"{call_id} {token}".encode()).decode("ascii")


def parse_client_state(state: str | None) -> tuple[str, str] | None:
    """``(call_id, token)`` from one of our ``client_state`` values, else None."""
    if not state or len(state) > 2048:
        return None
    try:
        text = base64.b64decode(state, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    call_id, sep, token = text.partition(" ")
    return (call_id, token) if sep and call_id and token else None


class TelnyxStreamSender:
    """Writes our frames to one Telnyx stream (bidirectional RTP mode); the bridge's sender."""

    __slots__ = ("_socket", "stream_id")

    def __init__(self, socket: MediaSocket, stream_id: str) -> None:
        self._socket = socket
        self.stream_id = stream_id

    def write_buffer_size(self) -> int:
        return self._socket.write_buffer_size()

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def media(self, payload_b64: str) -> bool:
        return self._socket.send_text(_OUT.media(payload_b64))

    def mark(self, name: str) -> bool:
        return self._socket.send_text(_OUT.mark(name))

    def clear(self) -> bool:
        return self._socket.send_text(_OUT.clear())

    def send(self, batch: list[tuple[str, str]]) -> bool:
        """``("media", payload_b64)`` and ``("mark", name)`` frames, in order, in one write."""
        media, mark = _OUT.media, _OUT.mark
        if len(batch) == 1:
            kind, value = batch[0]
            return self._socket.send_text(media(value) if kind == "media" else mark(value))
        return self._socket.write_frames(b"".join(
            [text_frame(media(v) if k == "media" else mark(v)) for k, v in batch]))

    async def close(self, code: int = CLOSE_OK, reason: str = "") -> None:
        await self._socket.close(code, reason)


class TelnyxMediaStreamHandler(MediaStreamHandler):
    """Serves ``/telnyx/media-stream``; ``codec`` is what every call's answer/dial asks for."""

    PEER = "telnyx"

    def __init__(self, *, manager: CallManager, tokens: StreamTokenSigner,
                 bridge_factory: object, limiter: ConnectionLimiter, codec: TelnyxCodec,
                 start_timeout_s: float, max_message_bytes: int, heartbeat_s: float,
                 record_dtmf: bool = True, **limits: int) -> None:
        super().__init__(manager=manager, tokens=tokens, bridge_factory=bridge_factory,  # type: ignore[arg-type]
                         limiter=limiter, start_timeout_s=start_timeout_s,
                         max_message_bytes=max_message_bytes, heartbeat_s=heartbeat_s,
                         record_dtmf=record_dtmf, **limits)
        self.codec = codec

    async def _serve(self, sock: MediaSocket, address: str) -> None:
        state = TelnyxStreamState(self.codec)
        start = await self._await_telnyx_start(sock, state, address)
        if start is None:
            return
        session = self._authenticate_telnyx(start, address)
        if session is None:
            metrics.incr("telnyx.media.unauthenticated")
            await sock.close(CLOSE_POLICY_VIOLATION, "stream not authorised")
            return
        clog = session.log.bind(stream_id=start.stream_id)
        sender = TelnyxStreamSender(sock, start.stream_id)
        bridge = self.bridge_factory(session, sender)  # type: ignore[arg-type]
        session.bridge = bridge
        reason = "socket-closed"
        try:
            try:
                await bridge.start()
            except PeerUnavailableError as exc:
                reason = "provider-unavailable"
                clog.warning("media.bridge_start_failed", error=str(exc)[:200])
                return
            clog.info("media.started", remote=address, codec=self.codec.name)
            reason = await _TelnyxReader(sock, state, session, bridge, clog,
                                         self.record_dtmf).run()
        finally:
            try:
                await bridge.close(reason)
            except Exception:
                metrics.incr("telnyx.media.bridge_close_error")
            if session.bridge is bridge:
                session.bridge = None
            if not session.ended:
                self.manager.complete(session, reason=reason)
            clog.info("media.ended", reason=reason, media=state.media_count,
                      seq_gaps=state.seq_gaps)

    async def _await_telnyx_start(self, sock: MediaSocket, state: TelnyxStreamState,
                                  address: str) -> Start | None:
        """``connected`` (optional) then ``start`` in time; anything else closes with 1008."""
        try:
            async with asyncio.timeout(self.start_timeout_s):
                while True:
                    opcode, data = await sock.receive()
                    if opcode != OP_TEXT:
                        if opcode == OP_CLOSE:
                            return None
                        raise TelnyxProtocolError("binary frame before start",
                                                  reason="before_start")
                    event = state.receive(data)
                    if isinstance(event, Start):  # anything but connected raised
                        return event
        except TimeoutError:
            metrics.incr("telnyx.media.start_timeout")
            log.warning("media.start_timeout", remote=address, timeout_s=self.start_timeout_s)
            await sock.close(CLOSE_POLICY_VIOLATION, "no start in time")
        except TelnyxProtocolError as exc:
            metrics.incr(f"telnyx.media.rejected_before_start.{exc.reason}")
            log.warning("media.bad_handshake", remote=address, reason=exc.reason,
                        detail=str(exc)[:200])
            await sock.close(CLOSE_POLICY_VIOLATION, "protocol violation")
        return None

    def _refuse(self, reason: str, **fields: object) -> None:
        metrics.incr(f"telnyx.media.token.{reason}")
        log.warning("media.token_rejected", reason=reason, **fields)

    def _authenticate_telnyx(self, start: Start, address: str) -> CallSession | None:
        parsed = parse_client_state(start.client_state)
        if parsed is None:
            self._refuse("missing", call_control_id=start.call_control_id, remote=address)
            return None
        _, token = parsed
        try:
            claims = self.tokens.claims(token, start.call_control_id)
        except StreamTokenError as exc:
            self._refuse(exc.reason, call_control_id=start.call_control_id, remote=address)
            return None
        session = self.manager.get(claims.call_id)
        if session is None or session.ended:
            log.warning("media.unknown_call", call_id=claims.call_id,
                        call_control_id=start.call_control_id)
            return None
        if session.call_sid is None:  # outbound: the stream beat the dial's answer
            self.manager.attach_call_sid(session, start.call_control_id)
        elif session.call_sid != start.call_control_id:
            log.warning("media.call_control_id_mismatch", call_id=session.call_id,
                        expected=session.call_sid, got=start.call_control_id)
            return None
        if session.stream_started:
            log.warning("media.second_stream", call_id=session.call_id)
            return None
        try:
            self.tokens.used.consume(claims.nonce, claims.expires_at)
        except StreamTokenError as exc:
            self._refuse(exc.reason, call_id=session.call_id)
            return None
        if not self.manager.mark_stream_started(session):
            return None
        return session


class _TelnyxReader:
    """The authenticated stream: each message handled as it is parsed (no task switch)."""

    __slots__ = ("_bridge", "_clog", "_done", "_media", "_receive", "_record_dtmf", "_reject",
                 "_session", "_sock")

    def __init__(self, sock: MediaSocket, state: TelnyxStreamState, session: CallSession,
                 bridge: MediaSink, clog: BoundLogger, record_dtmf: bool) -> None:
        self._sock = sock
        self._receive = state.receive
        self._session = session
        self._bridge = bridge
        self._media = bridge.on_media
        self._record_dtmf = record_dtmf
        self._clog = clog
        self._reject = _RejectionLog(clog, "telnyx.media.rejected")
        self._done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def run(self) -> str:
        self._sock.set_handler(self.on_text, self.on_other)
        return await self._done

    def _finish(self, reason: str) -> None:
        if not self._done.done():
            self._done.set_result(reason)

    def on_text(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            event = self._receive(data)
            if type(event) is Media:
                if event.track == "inbound":  # we asked for inbound_track only
                    self._media(event.payload, event.timestamp_ms)
            elif type(event) is Mark:
                self._bridge.on_mark(event.name)
            elif type(event) is Dtmf:
                if self._record_dtmf:
                    self._session.add_dtmf(event.digit)
                self._bridge.on_dtmf(event.digit)
            elif type(event) is StreamError:
                metrics.incr(f"telnyx.media.error_frames.{event.code}")
                self._clog.warning("media.telnyx_error", code=event.code, title=event.title,
                                   detail=event.detail)
            elif type(event) is Stop:
                self._finish("stream-stopped")
        except TelnyxProtocolError as exc:
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
