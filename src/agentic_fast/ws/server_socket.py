"""Server side of one media-stream WebSocket, on the raw transport (RFC 6455, no extensions).

A call's socket carries 50 inbound messages a second. Through aiohttp each one is queued,
wakes the reading task and resets a heartbeat timer; here a frame is parsed in
``data_received`` and, once the stream is authenticated, handed *synchronously* to the
call's handler (``set_handler``): no queue, no task switch. Before that (``connected`` and
``start``) messages wait in a small bounded queue read with :meth:`receive`; reading pauses
when it is full. Sends are synchronous whole frames on the transport (``send_text``,
``write_frames``): one write per call per 20 ms tick.

Protocol checks: client frames must be masked; no RSV bits (no extension is negotiated);
control frames short and unfragmented; continuation rules; message size cap (close 1009);
anything else closes with 1002. Pings are answered; a heartbeat pings a peer silent for a
whole period and drops it when no frame comes back within half a period. Closing sends a
close frame, waits (bounded) for the peer's, then closes the transport.

Abuse bounds: more than ``max_control_frames_per_s`` pings/pongs in one second closes the
socket with 1008 (a ping flood cannot take the loop from the other calls); the transport's
write buffer pauses reading at half of ``max_write_buffer_bytes`` (a peer that does not
read its pongs stops being read) and drops the connection, close code 1008, beyond it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from agentic_fast.core import metrics
from agentic_fast.core.errors import WebSocketProtocolError
from agentic_fast.ws.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_payload,
    frame_header,
    mask,
    server_frame,
)

#: close codes (RFC 6455 7.4.1)
CLOSE_OK = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

_VALID_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                          1014}) | frozenset(range(3000, 5000))
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")

#: what :meth:`MediaSocket.receive` returns once the socket is closed
CLOSED = (OP_CLOSE, b"")

TextHandler = Callable[[bytes], None]
OtherHandler = Callable[[int, bytes], None]

#: defaults of the abuse bounds (``server.ws_max_control_frames_per_s``,
#: ``server.ws_max_write_buffer_bytes``)
DEFAULT_CONTROL_FRAMES_PER_S = 20
DEFAULT_WRITE_BUFFER_BYTES = 256 * 1024


class PendingHold(Protocol):
    """A slot among the listener's pending connections, held until the stream starts."""

    def release(self) -> None:
        """Give the slot back (idempotent)."""

    def set_evict(self, evict: Callable[[], None]) -> None:
        """What to call when the listener needs the slot for a newer connection."""


class MediaSocket(asyncio.Protocol):
    """One accepted WebSocket (the HTTP upgrade is done by ``listener``)."""

    def __init__(self, *, max_message_bytes: int, heartbeat_s: float = 0.0,
                 queue_limit: int = 32, close_timeout_s: float = 2.0,
                 remote: str = "?",
                 max_control_frames_per_s: int = DEFAULT_CONTROL_FRAMES_PER_S,
                 max_write_buffer_bytes: int = DEFAULT_WRITE_BUFFER_BYTES,
                 clock: Callable[[], float] | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_control_frames_per_s = max_control_frames_per_s  # 0: no limit
        self.max_write_buffer_bytes = max_write_buffer_bytes
        self.heartbeat_s = heartbeat_s
        self.queue_limit = queue_limit
        self.close_timeout_s = close_timeout_s
        self.remote = remote
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_event_loop()
        self._clock = clock or self._loop.time
        self._buf = bytearray()
        self._need = 0                    # bytes the buffered partial frame needs at least
        self._frag_op = 0                 # opcode of a fragmented message in progress
        self._frag: list[bytes] = []
        self._frag_size = 0
        self._queue: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._on_text: TextHandler | None = None
        self._on_other: OtherHandler | None = None
        self._paused = False              # reading paused: the queue is full
        self._write_paused = False        # reading paused: the write buffer is above high water
        self._reading_paused = False      # what the transport was last told
        self._ctl_window_end = 0.0        # control frames counted per one-second window
        self._ctl_count = 0
        self._pending: PendingHold | None = None
        self._close_sent = False
        self._close_received = False
        self._lost = False
        self.close_code: int | None = None     # the peer's (or ours when we abort)
        self.close_reason = ""
        self._closed: asyncio.Future[int] = self._loop.create_future()
        self._close_timer: asyncio.TimerHandle | None = None
        self._hb_timer: asyncio.TimerHandle | None = None
        self._rx_frames = 0
        self._hb_seen = 0
        self._pinged = False
        self.dropped_writes = 0

    def take_over(self, transport: asyncio.Transport, leftover: bytes = b"") -> None:
        """Become the protocol of an upgraded connection: ``transport`` now delivers to this
        socket, and ``leftover`` (bytes that came after the request head) is read as the
        first frames. The caller has written the 101 response."""
        transport.set_protocol(self)
        self.connection_made(transport)
        if leftover:
            self.data_received(leftover)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream protocol is always handed a stream (write) transport
        stream = cast(asyncio.Transport, transport)
        self.transport = stream
        limit = self.max_write_buffer_bytes
        stream.set_write_buffer_limits(high=limit // 2, low=limit // 8)
        if self.heartbeat_s > 0:
            self._hb_timer = self._loop.call_later(self.heartbeat_s, self._heartbeat)

    def data_received(self, data: bytes) -> None:
        if self._close_received:  # closing: what still arrives is discarded
            return
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:  # the frame is still incomplete: no re-parse
                return
            view = bytes(buf)
            buf.clear()
        else:
            view = data
        end = len(view)
        pos = 0
        need = 2
        try:
            while not self._close_received and end - pos >= 2:
                b0, b1 = view[pos], view[pos + 1]
                length = b1 & 0x7F
                head = 2
                if length == 126:
                    if end - pos < 4:
                        need = 4
                        break
                    length = _U16.unpack_from(view, pos + 2)[0]
                    head = 4
                elif length == 127:
                    if end - pos < 10:
                        need = 10
                        break
                    length = _U64.unpack_from(view, pos + 2)[0]
                    head = 10
                if not b1 & 0x80:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "unmasked client frame")
                if b0 & 0x70:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
                opcode = b0 & 0x0F
                if opcode >= 8 and (length > 125 or not b0 & 0x80):
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "bad control frame")
                if length > self.max_message_bytes:
                    raise WebSocketProtocolError(CLOSE_TOO_BIG, "message too big")
                stop = pos + head + 4 + length
                if stop > end:
                    need = stop - pos
                    break
                key = view[pos + head:pos + head + 4]
                payload = mask(memoryview(view)[pos + head + 4:stop], key)
                pos = stop
                self._rx_frames += 1
                self._frame(b0 & 0x80, opcode, payload)
        except WebSocketProtocolError as exc:
            metrics.incr(f"ws.protocol_error.{exc.code}")
            self._fail(exc.code, exc.detail)
            return
        if pos < end and not self._close_received:
            buf += view[pos:]
            self._need = need

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._release_pending()
        for timer in (self._close_timer, self._hb_timer):
            if timer is not None:
                timer.cancel()
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL
        self._wake()
        if not self._closed.done():
            self._closed.set_result(self.close_code)
        if self._on_other is not None:
            handler, self._on_other, self._on_text = self._on_other, None, None
            handler(OP_CLOSE, b"")

    def pause_writing(self) -> None:
        """The write buffer passed half its bound: stop reading (no more pongs to queue)."""
        metrics.incr("ws.write_paused")
        self._write_paused = True
        self._sync_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._sync_reading()

    def _sync_reading(self) -> None:
        """Pause reading while the queue is full or the write buffer high; else read."""
        want = self._paused or self._write_paused
        transport = self.transport
        if want != self._reading_paused and transport is not None and not self._lost:
            self._reading_paused = want
            if want:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # -- the listener's pending slot (held from the upgrade until the stream starts) --------

    def hold_pending(self, slot: PendingHold) -> None:
        """Hold ``slot`` until :meth:`set_handler` (the stream started) or the end; the
        listener may evict this socket for a newer connection meanwhile (close 1013)."""
        if self._lost:
            slot.release()
            return
        self._pending = slot
        slot.set_evict(self.evict)

    def _release_pending(self) -> None:
        slot, self._pending = self._pending, None
        if slot is not None:
            slot.release()

    def evict(self) -> None:
        """Make room for a newer connection: close with 1013 (try again later) now."""
        metrics.incr("ws.evicted")
        self._close_now(CLOSE_TRY_AGAIN_LATER, "server busy")

    # -- frames ------------------------------------------------------------------------------

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            if self._frag_op:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR,
                                             "new message inside a fragmented one")
            if fin:
                self._message(opcode, payload)
            else:
                self._frag_op, self._frag, self._frag_size = opcode, [payload], len(payload)
        elif opcode == OP_CONT:
            if not self._frag_op:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            self._frag_size += len(payload)
            if self._frag_size > self.max_message_bytes:
                raise WebSocketProtocolError(CLOSE_TOO_BIG, "message too big")
            self._frag.append(payload)
            if fin:
                op, parts = self._frag_op, self._frag
                self._frag_op, self._frag, self._frag_size = 0, [], 0
                self._message(op, b"".join(parts))
        elif opcode == OP_PING:
            self._control_frame()
            self._write(server_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            self._control_frame()  # else nothing to do: any frame proves the peer alive
        elif opcode == OP_CLOSE:
            self._peer_close(payload)
        else:
            raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _control_frame(self) -> None:
        """Count a ping/pong; past the per-second limit the socket closes with 1008."""
        limit = self.max_control_frames_per_s
        if not limit:
            return
        now = self._clock()
        if now >= self._ctl_window_end:  # a new one-second window
            self._ctl_window_end = now + 1.0
            self._ctl_count = 0
        self._ctl_count += 1
        if self._ctl_count > limit:
            metrics.incr("ws.control_flood")
            raise WebSocketProtocolError(CLOSE_POLICY_VIOLATION, "too many control frames")

    def _message(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            handler = self._on_text
            if handler is not None:
                handler(payload)
                return
        elif self._on_other is not None:
            self._on_other(opcode, payload)
            return
        self._queue.append((opcode, payload))
        self._wake()
        if len(self._queue) >= self.queue_limit and not self._paused:
            self._paused = True
            self._sync_reading()

    def _peer_close(self, payload: bytes) -> None:
        self._close_received = True
        code, reason = CLOSE_OK, ""
        if len(payload) >= 2:
            code = _U16.unpack_from(payload)[0]
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                code = CLOSE_INVALID_DATA
            if code not in _VALID_CLOSE:
                code = CLOSE_PROTOCOL_ERROR
        elif len(payload) == 1:
            code = CLOSE_PROTOCOL_ERROR
        else:
            code = 1005  # no status code
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if not self._close_sent:  # echo it (RFC 6455 5.5.1), then end the TCP connection
            self._close_sent = True
            echo = CLOSE_OK if code == 1005 else code
            if echo in (CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA):
                echo = CLOSE_PROTOCOL_ERROR
            self._write(server_frame(OP_CLOSE, close_payload(echo)))
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _fail(self, code: int, reason: str) -> None:
        """A protocol violation: close with ``code`` and stop reading."""
        self._close_received = True  # read nothing more
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if not self._close_sent:
            self._close_sent = True
            self._write(server_frame(OP_CLOSE, close_payload(code, reason)))
        transport = self.transport
        if transport is not None and not self._lost:
            if transport.can_write_eof() and not transport.is_closing():
                # half-close and read (discarding) until the peer's EOF: closing with its
                # unread bytes in our buffer would reset the connection, and the peer
                # could lose the close frame
                transport.write_eof()
            else:
                transport.close()
            if self._close_timer is None:  # a peer that never reads nor closes
                self._close_timer = self._loop.call_later(self.close_timeout_s, self._abort)
        self._wake()

    def _close_now(self, code: int, reason: str) -> None:
        """End the connection at once with ``code``: the close frame goes out if it fits
        (the write buffer is empty), else the connection is aborted."""
        self._close_received = True  # read nothing more
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        transport = self.transport
        if not self._close_sent:
            self._close_sent = True
            if transport is not None and not transport.get_write_buffer_size():
                self._write(server_frame(OP_CLOSE, close_payload(code, reason)))
        if transport is not None and not self._lost:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
        self._wake()

    def _heartbeat(self) -> None:
        """Every ``heartbeat_s``: a peer heard from since the last check is left alone; a
        silent one gets a ping and half a period to send anything back, or is dropped."""
        self._hb_timer = None
        if self._lost or self._close_sent:
            return
        if self._rx_frames != self._hb_seen:  # heard from the peer since the last check
            self._hb_seen = self._rx_frames
            self._pinged = False
            self._hb_timer = self._loop.call_later(self.heartbeat_s, self._heartbeat)
            return
        if not self._pinged:
            self._pinged = True
            self._write(server_frame(OP_PING, b""))
            self._hb_timer = self._loop.call_later(self.heartbeat_s / 2, self._heartbeat)
            return
        metrics.incr("ws.heartbeat_timeout")
        self.close_code, self.close_reason = CLOSE_ABNORMAL, "heartbeat timeout"
        if self.transport is not None:
            self.transport.abort()

    # -- reading (before the handler is set) ----------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> tuple[int, bytes]:
        """The next queued message ``(opcode, payload)``; :data:`CLOSED` once closed."""
        while not self._queue:
            if self._close_received or self._lost:
                return CLOSED
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._queue.popleft()
        if self._paused and len(self._queue) < self.queue_limit // 2:
            self._paused = False
            self._sync_reading()
        return item

    def set_handler(self, on_text: TextHandler, on_other: OtherHandler) -> None:
        """From now on deliver messages synchronously: text to ``on_text(payload)``, binary
        to ``on_other(OP_BINARY, payload)``, and ``on_other(OP_CLOSE, b"")`` once when the
        socket is gone. Messages already queued are delivered first."""
        while self._queue:
            opcode, payload = self._queue.popleft()
            if opcode == OP_TEXT:
                on_text(payload)
            else:
                on_other(opcode, payload)
        self._on_text, self._on_other = on_text, on_other
        self._release_pending()  # the stream started: no longer a pending connection
        if self._paused:
            self._paused = False
            self._sync_reading()
        if self._lost:
            self.connection_lost(None)

    # -- writing -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """A close frame was sent or the connection is gone: nothing more can be sent."""
        return self._close_sent or self._lost

    def _write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or self._lost or transport.is_closing():
            self.dropped_writes += 1
            return False
        transport.write(data)
        if self._write_paused and transport.get_write_buffer_size() > self.max_write_buffer_bytes:
            metrics.incr("ws.write_buffer_overflow")
            self._close_now(CLOSE_POLICY_VIOLATION, "write buffer full")
            return False
        return True

    def send_text(self, text: str | bytes) -> bool:
        """One text frame now; False (counted) if the socket is closing."""
        if self._close_sent:
            self.dropped_writes += 1
            return False
        data = text.encode() if isinstance(text, str) else text
        return self._write(frame_header(OP_TEXT, len(data)) + data)

    def write_frames(self, frames: bytes) -> bool:
        """Several already built frames in one write (see ``text_frame``)."""
        if self._close_sent:
            self.dropped_writes += 1
            return False
        return self._write(frames)

    def write_buffer_size(self) -> int:
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    async def close(self, code: int = CLOSE_OK, reason: str = "") -> None:
        """Send a close frame, wait (bounded) for the peer's, then end the connection."""
        if not self._close_sent and not self._lost:
            self._close_sent = True
            self._write(server_frame(OP_CLOSE, close_payload(code, reason)))
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
        if self._lost:
            return
        if self._paused:  # the peer's close must be read
            self._paused = False
            self._sync_reading()
        if not self._close_received and self.transport is not None:
            self._close_timer = self._loop.call_later(self.close_timeout_s, self._abort)
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Drop the connection now (no close handshake)."""
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abort()

    async def wait_closed(self) -> int:
        """Until the TCP connection is gone; the close code (1006 when none was received)."""
        return await asyncio.shield(self._closed)


def text_frame(text: str) -> bytes:
    """One unmasked text frame (server -> client), to batch with :meth:`write_frames`."""
    data = text.encode()
    return frame_header(OP_TEXT, len(data)) + data
