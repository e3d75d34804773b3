"""MediaSocket: the server side of one WebSocket, driven through a fake transport.

Every frame the server writes back is parsed with python-websockets' own frame parser
(unmasked, as a client would read it), so framing mistakes show up as parse errors.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from websockets.frames import Close, Frame, Opcode

from agentic_fast.ws.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ClientFramer,
    close_payload,
    frame_header,
    mask,
)
from agentic_fast.ws.server_socket import CLOSED, MediaSocket, text_frame
from tests.ws_frames import parse_frames

pytestmark = pytest.mark.asyncio
WAIT = 5.0  # upper bound on any wait for an event that must happen


class FakeTransport:
    """Records what the socket does to its transport; ends the connection like asyncio:
    ``close``/``abort`` call ``connection_lost`` soon after, once."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.written = bytearray()
        self.writes = 0
        self.closing = False
        self.close_calls = 0
        self.abort_calls = 0
        self.pause_calls = 0
        self.resume_calls = 0
        self.reading = True
        self.buffered = 0
        self.limits: tuple[int | None, int | None] = (None, None)
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.aborted: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.on_write: Callable[[bytes], None] | None = None
        self._wrote = asyncio.Event()

    # -- the asyncio.Transport surface MediaSocket uses

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.written += data
        self.writes += 1
        self._wrote.set()
        if self.on_write is not None:
            self.on_write(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.close_calls += 1
        if not self.closed.done():
            self.closed.set_result(None)
        self._end()

    def abort(self) -> None:
        self.abort_calls += 1
        if not self.aborted.done():
            self.aborted.set_result(None)
        self._end()

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.pause_calls += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self.resume_calls += 1

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def can_write_eof(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    # -- helpers

    def _end(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.loop.call_soon(self._lost)

    def _lost(self) -> None:
        self.protocol.connection_lost(None)
        self.lost.set_result(None)

    async def wait_write(self) -> None:
        """Until something more is written."""
        self._wrote.clear()
        await asyncio.wait_for(self._wrote.wait(), WAIT)

    def frames(self) -> list[Frame]:
        return parse_frames(bytes(self.written))


def close_of(frame: Frame) -> Close:
    assert frame.opcode is Opcode.CLOSE, frame
    return Close.parse(frame.data)  # raises on a code a server must not send


_framer = ClientFramer()


def cframe(opcode: int, payload: bytes | str = b"", *, fin: bool = True, rsv: int = 0,
           masked: bool = True, length_bytes: bytes | None = None) -> bytes:
    """One client frame, possibly broken (no FIN, RSV bits, unmasked)."""
    data = payload.encode() if isinstance(payload, str) else payload
    if fin and not rsv and masked and length_bytes is None:
        return _framer.frame(opcode, data)
    head = bytearray(frame_header(opcode, len(data), 0x80 if masked else 0))
    if not fin:
        head[0] &= 0x7F
    head[0] |= rsv
    if length_bytes is not None:  # a non-minimal length encoding
        head = head[:1] + length_bytes
    if not masked:
        return bytes(head) + data
    key = os.urandom(4)
    return bytes(head) + key + mask(data, key)


@pytest.fixture
def make() -> Callable[..., tuple[MediaSocket, FakeTransport]]:
    def _make(**kwargs: object) -> tuple[MediaSocket, FakeTransport]:
        kwargs.setdefault("max_message_bytes", 1 << 20)
        sock = MediaSocket(**kwargs)  # type: ignore[arg-type]
        transport = FakeTransport(sock)
        sock.connection_made(transport)  # type: ignore[arg-type]
        return sock, transport

    return _make


async def receive(sock: MediaSocket) -> tuple[int, bytes]:
    return await asyncio.wait_for(sock.receive(), WAIT)


async def assert_failed(sock: MediaSocket, transport: FakeTransport, code: int) -> None:
    """The socket closed with ``code``: one close frame written, then the transport closed."""
    [frame] = [f for f in transport.frames() if f.opcode is Opcode.CLOSE]
    assert close_of(frame).code == code
    assert transport.frames()[-1] is not None and transport.frames()[-1].opcode is Opcode.CLOSE
    assert transport.close_calls >= 1 and transport.closing
    assert sock.close_code == code and sock.closed
    assert await receive(sock) == CLOSED
    await asyncio.wait_for(transport.lost, WAIT)
    assert await asyncio.wait_for(sock.wait_closed(), WAIT) == code


# -- reading messages ---------------------------------------------------------------------

async def test_text_message_is_delivered_by_receive(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_TEXT, '{"event":"connected"}'))
    assert await receive(sock) == (OP_TEXT, b'{"event":"connected"}')
    sock.data_received(cframe(OP_BINARY, b"\x00\xff"))
    assert await receive(sock) == (OP_BINARY, b"\x00\xff")
    sock.data_received(cframe(OP_TEXT, b""))
    assert await receive(sock) == (OP_TEXT, b"")
    assert transport.written == b"" and not sock.closed


async def test_receive_waits_for_a_message(make) -> None:
    sock, _ = make()
    waiting = asyncio.ensure_future(sock.receive())
    await asyncio.sleep(0)  # let it start waiting (not a synchronisation guess)
    assert not waiting.done()
    sock.data_received(cframe(OP_TEXT, "late"))
    assert await asyncio.wait_for(waiting, WAIT) == (OP_TEXT, b"late")


async def test_frames_split_byte_by_byte(make) -> None:
    sock, _ = make()
    got: list[bytes] = []
    sock.set_handler(got.append, lambda op, data: got.append(bytes([op]) + data))
    small = cframe(OP_TEXT, "hello")
    medium = cframe(OP_TEXT, "m" * 300)          # 16-bit length
    large = cframe(OP_BINARY, b"\x01" * 70_000)  # 64-bit length
    for frame, expected in ((small, b"hello"), (medium, b"m" * 300),
                            (large, b"\x02" + b"\x01" * 70_000)):
        step = 1 if len(frame) < 1000 else 997  # byte by byte, then in odd-sized chunks
        for i in range(0, len(frame) - 1, step):
            sock.data_received(frame[i:min(i + step, len(frame) - 1)])
            assert got == [], f"delivered after {i + step} of {len(frame)} bytes"
        sock.data_received(frame[-1:])
        assert got == [expected]
        got.clear()
    # the header itself split at every possible point
    for cut in range(1, 11):
        frame = cframe(OP_TEXT, "x" * 70_000)
        sock.data_received(frame[:cut])
        sock.data_received(frame[cut:])
        assert got == [b"x" * 70_000]
        got.clear()


async def test_several_frames_in_one_chunk(make) -> None:
    sock, transport = make()
    frames = [cframe(OP_TEXT, f"m{i}") for i in range(5)]
    tail = cframe(OP_TEXT, "last one")
    sock.data_received(b"".join(frames) + cframe(OP_PING, b"p") + tail[:3])
    for i in range(5):
        assert await receive(sock) == (OP_TEXT, f"m{i}".encode())
    assert [(f.opcode, f.data) for f in transport.frames()] == [(Opcode.PONG, b"p")]
    sock.data_received(tail[3:] + cframe(OP_TEXT, "after"))
    assert await receive(sock) == (OP_TEXT, b"last one")
    assert await receive(sock) == (OP_TEXT, b"after")


async def test_fragmented_messages_are_joined(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_TEXT, "hel", fin=False) + cframe(OP_CONT, "lo ", fin=False)
                       + cframe(OP_PING, b"mid") + cframe(OP_CONT, "", fin=False))
    # a control frame between fragments is answered at once
    assert [(f.opcode, f.data) for f in transport.frames()] == [(Opcode.PONG, b"mid")]
    sock.data_received(cframe(OP_CONT, "world"))
    assert await receive(sock) == (OP_TEXT, b"hello world")
    sock.data_received(cframe(OP_BINARY, b"\x01", fin=False) + cframe(OP_CONT, b"\x02"))
    assert await receive(sock) == (OP_BINARY, b"\x01\x02")
    # and a plain message after a fragmented one
    sock.data_received(cframe(OP_TEXT, "plain"))
    assert await receive(sock) == (OP_TEXT, b"plain")


@pytest.mark.parametrize("size", [125, 126, 127, 65_535, 65_536, 200_000])
async def test_length_encodings(make, size: int) -> None:
    sock, _ = make(max_message_bytes=200_000)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    sock.data_received(cframe(OP_BINARY, payload))
    assert await receive(sock) == (OP_BINARY, payload)


async def test_non_minimal_length_encoding_is_accepted(make) -> None:
    sock, _ = make()
    # 5 bytes announced with the 16-bit and the 64-bit forms (RFC: "minimal" is a SHOULD)
    sock.data_received(cframe(OP_TEXT, "abcde", length_bytes=b"\xfe\x00\x05"))
    sock.data_received(cframe(OP_TEXT, "fghij", length_bytes=b"\xff" + (5).to_bytes(8, "big")))
    assert await receive(sock) == (OP_TEXT, b"abcde")
    assert await receive(sock) == (OP_TEXT, b"fghij")


async def test_message_of_exactly_the_limit_is_accepted(make) -> None:
    sock, transport = make(max_message_bytes=1024)
    sock.data_received(cframe(OP_TEXT, "a" * 1024))
    assert await receive(sock) == (OP_TEXT, b"a" * 1024)
    sock.data_received(cframe(OP_TEXT, "b" * 1000, fin=False) + cframe(OP_CONT, "c" * 24))
    assert await receive(sock) == (OP_TEXT, b"b" * 1000 + b"c" * 24)
    assert transport.written == b""


# -- protocol errors ------------------------------------------------------------------------

async def test_unmasked_frame_is_a_protocol_error(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_TEXT, "fine"))
    sock.data_received(cframe(OP_TEXT, "naked", masked=False) + cframe(OP_TEXT, "ignored"))
    assert await receive(sock) == (OP_TEXT, b"fine")  # what came before is kept
    await assert_failed(sock, transport, 1002)


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
async def test_reserved_bits_are_a_protocol_error(make, rsv: int) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_TEXT, "compressed?", rsv=rsv))
    await assert_failed(sock, transport, 1002)


async def test_oversize_frame_is_refused_from_its_header(make) -> None:
    sock, transport = make(max_message_bytes=1024)
    frame = cframe(OP_TEXT, "a" * 1025)
    sock.data_received(frame[:4])  # the 16-bit length is enough to refuse it
    await assert_failed(sock, transport, 1009)


async def test_oversize_64bit_length_is_refused(make) -> None:
    sock, transport = make(max_message_bytes=1024)
    sock.data_received(b"\x82\xff" + (1 << 62).to_bytes(8, "big"))
    await assert_failed(sock, transport, 1009)


async def test_oversize_fragmented_message_is_refused(make) -> None:
    sock, transport = make(max_message_bytes=1024)
    sock.data_received(cframe(OP_TEXT, "a" * 400, fin=False) + cframe(OP_CONT, "b" * 400,
                                                                      fin=False))
    assert transport.written == b""
    sock.data_received(cframe(OP_CONT, "c" * 400))
    await assert_failed(sock, transport, 1009)


async def test_continuation_without_a_message_is_a_protocol_error(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_CONT, "orphan"))
    await assert_failed(sock, transport, 1002)


async def test_new_message_inside_a_fragmented_one_is_a_protocol_error(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_TEXT, "one", fin=False) + cframe(OP_TEXT, "two"))
    await assert_failed(sock, transport, 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
async def test_unknown_opcode_is_a_protocol_error(make, opcode: int) -> None:
    sock, transport = make()
    sock.data_received(cframe(opcode, b"?"))
    await assert_failed(sock, transport, 1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
async def test_long_control_frame_is_a_protocol_error(make, opcode: int) -> None:
    sock, transport = make()
    sock.data_received(cframe(opcode, b"\x03\xe8" + b"x" * 124))  # 126 bytes
    await assert_failed(sock, transport, 1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
async def test_fragmented_control_frame_is_a_protocol_error(make, opcode: int) -> None:
    sock, transport = make()
    sock.data_received(cframe(opcode, b"\x03\xe8", fin=False))
    await assert_failed(sock, transport, 1002)


async def test_control_frame_of_125_bytes_is_fine(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_PING, b"p" * 125))
    assert [(f.opcode, f.data) for f in transport.frames()] == [(Opcode.PONG, b"p" * 125)]
    assert not sock.closed


async def test_nothing_is_read_after_a_protocol_error(make) -> None:
    sock, transport = make()
    got: list[bytes] = []
    sock.set_handler(got.append, lambda op, data: None)
    sock.data_received(cframe(OP_CONT, "bad") + cframe(OP_TEXT, "after"))
    sock.data_received(cframe(OP_TEXT, "later"))
    assert got == []
    assert len(transport.frames()) == 1


# -- ping / pong / close from the peer -----------------------------------------------------

@pytest.mark.parametrize("payload", [b"", b"abc", bytes(range(125))])
async def test_ping_is_answered_with_a_pong_of_the_same_payload(make, payload: bytes) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_PING, payload))
    [pong] = transport.frames()
    assert pong.opcode is Opcode.PONG and pong.data == payload and pong.fin
    sock.data_received(cframe(OP_PONG, b"unsolicited"))  # ignored
    assert len(transport.frames()) == 1 and not sock.closed


async def test_peer_close_is_echoed_and_the_connection_ends(make) -> None:
    sock, transport = make()
    waiting = asyncio.ensure_future(sock.receive())
    sock.data_received(cframe(OP_TEXT, "before") + cframe(OP_CLOSE, close_payload(1000, "bye"))
                       + cframe(OP_TEXT, "after the close"))
    assert await asyncio.wait_for(waiting, WAIT) == (OP_TEXT, b"before")
    [echo] = transport.frames()
    assert close_of(echo).code == 1000
    assert transport.close_calls == 1 and transport.abort_calls == 0
    assert sock.close_code == 1000 and sock.close_reason == "bye" and sock.closed
    assert await receive(sock) == CLOSED
    assert await receive(sock) == CLOSED  # and stays so
    assert await asyncio.wait_for(sock.wait_closed(), WAIT) == 1000
    assert not sock.send_text("too late")


@pytest.mark.parametrize(("code", "echo"), [(1001, 1001), (1011, 1011), (3000, 3000),
                                            (4999, 4999), (1008, 1008)])
async def test_peer_close_codes_are_echoed(make, code: int, echo: int) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_CLOSE, close_payload(code)))
    [frame] = transport.frames()
    assert close_of(frame).code == echo
    assert sock.close_code == code


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
async def test_peer_close_with_an_invalid_code_is_answered_1002(make, code: int) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_CLOSE, close_payload(code, "odd")))
    [frame] = transport.frames()
    assert close_of(frame).code == 1002
    assert sock.close_code == 1002
    await asyncio.wait_for(transport.lost, WAIT)


async def test_peer_close_without_a_code(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_CLOSE, b""))
    [frame] = transport.frames()
    assert close_of(frame).code == 1000
    assert sock.close_code == 1005  # "no status received"


async def test_peer_close_with_a_one_byte_body_is_a_protocol_error(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_CLOSE, b"\x03"))
    assert close_of(transport.frames()[0]).code == 1002
    assert sock.close_code == 1002


async def test_peer_close_with_a_non_utf8_reason(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_CLOSE, b"\x03\xe8\xff\xfe"))
    assert close_of(transport.frames()[0]).code in (1002, 1007)
    assert sock.close_code == 1007


async def test_connection_lost_without_a_close_is_1006(make) -> None:
    sock, transport = make()
    waiting = asyncio.ensure_future(sock.receive())
    transport.abort()
    assert await asyncio.wait_for(waiting, WAIT) == CLOSED
    assert sock.close_code == 1006 and sock.closed
    assert await asyncio.wait_for(sock.wait_closed(), WAIT) == 1006


async def test_eof_closes_the_transport(make) -> None:
    sock, _ = make()
    assert not sock.eof_received()


# -- flow control and handlers ---------------------------------------------------------------

async def test_full_queue_pauses_reading_and_draining_resumes_it(make) -> None:
    sock, transport = make(queue_limit=4)
    sock.data_received(b"".join(cframe(OP_TEXT, f"m{i}") for i in range(3)))
    assert transport.reading
    sock.data_received(cframe(OP_TEXT, "m3"))
    assert not transport.reading and transport.pause_calls == 1
    # bytes already in flight are still parsed and kept, in order
    sock.data_received(cframe(OP_TEXT, "m4") + cframe(OP_TEXT, "m5"))
    assert transport.pause_calls == 1
    assert await receive(sock) == (OP_TEXT, b"m0")
    assert not transport.reading  # still nearly full
    for i in range(1, 6):
        assert await receive(sock) == (OP_TEXT, f"m{i}".encode())
    assert transport.reading and transport.resume_calls == 1
    # and it pauses again when it fills again
    sock.data_received(b"".join(cframe(OP_TEXT, "again") for _ in range(4)))
    assert not transport.reading and transport.pause_calls == 2


async def test_set_handler_delivers_queued_messages_first_then_synchronously(make) -> None:
    sock, transport = make(queue_limit=3)
    sock.data_received(cframe(OP_TEXT, "q1") + cframe(OP_BINARY, b"q2") + cframe(OP_TEXT, "q3"))
    assert not transport.reading
    log: list[tuple[str, int, bytes]] = []
    sock.set_handler(lambda data: log.append(("text", OP_TEXT, data)),
                     lambda op, data: log.append(("other", op, data)))
    assert log == [("text", OP_TEXT, b"q1"), ("other", OP_BINARY, b"q2"),
                   ("text", OP_TEXT, b"q3")]
    assert transport.reading  # the handler drains everything: reading resumes
    log.clear()
    sock.data_received(cframe(OP_TEXT, "now") + cframe(OP_BINARY, b"\x00"))
    assert log == [("text", OP_TEXT, b"now"), ("other", OP_BINARY, b"\x00")]  # no await
    log.clear()
    sock.data_received(cframe(OP_CLOSE, close_payload(1000)))
    assert log == []  # the close frame itself is not a message...
    await asyncio.wait_for(transport.lost, WAIT)
    assert log == [("other", OP_CLOSE, b"")]  # ...the end of the connection is, once
    sock.connection_lost(None)
    assert log == [("other", OP_CLOSE, b"")]


async def test_set_handler_after_the_connection_is_gone(make) -> None:
    sock, transport = make()
    sock.data_received(cframe(OP_TEXT, "queued"))
    transport.abort()
    await asyncio.wait_for(transport.lost, WAIT)
    log: list[tuple[int, bytes]] = []
    sock.set_handler(lambda data: log.append((OP_TEXT, data)),
                     lambda op, data: log.append((op, data)))
    assert log == [(OP_TEXT, b"queued"), (OP_CLOSE, b"")]


# -- writing -------------------------------------------------------------------------------

async def test_send_text_writes_one_unmasked_text_frame(make) -> None:
    sock, transport = make()
    assert sock.send_text('{"event":"media"}')
    assert sock.send_text(b"raw bytes")
    assert sock.send_text("\u2603" * 100)
    assert sock.write_frames(text_frame("a") + text_frame("b" * 70_000))
    assert transport.writes == 4
    frames = transport.frames()
    assert [(f.opcode, f.fin, f.rsv1) for f in frames] == [(Opcode.TEXT, True, False)] * 5
    assert [f.data for f in frames] == [b'{"event":"media"}', b"raw bytes",
                                        ("\u2603" * 100).encode(), b"a", b"b" * 70_000]
    assert sock.dropped_writes == 0
    transport.buffered = 1234
    assert sock.write_buffer_size() == 1234


async def test_sends_after_close_are_dropped_and_counted(make) -> None:
    sock, transport = make(close_timeout_s=WAIT)
    closing = asyncio.ensure_future(sock.close(1001, "going"))
    await transport.wait_write()
    assert sock.closed
    assert not sock.send_text("late")
    assert not sock.write_frames(text_frame("late"))
    assert sock.dropped_writes == 2
    assert len(transport.frames()) == 1
    sock.data_received(cframe(OP_CLOSE, close_payload(1001)))
    await asyncio.wait_for(closing, WAIT)
    assert not sock.send_text("later")
    assert sock.dropped_writes == 3


async def test_sends_after_the_connection_is_lost_are_dropped(make) -> None:
    sock, transport = make()
    transport.abort()
    await asyncio.wait_for(transport.lost, WAIT)
    assert not sock.send_text("x")
    assert sock.dropped_writes == 1 and transport.written == b""


async def test_close_waits_for_the_peers_close_frame(make) -> None:
    sock, transport = make(close_timeout_s=WAIT)
    closing = asyncio.ensure_future(sock.close(1000, "done"))
    await transport.wait_write()
    [ours] = transport.frames()
    assert (close_of(ours).code, close_of(ours).reason) == (1000, "done")
    assert not closing.done() and transport.close_calls == 0
    sock.data_received(cframe(OP_CLOSE, close_payload(1000)))
    await asyncio.wait_for(closing, WAIT)
    assert len(transport.frames()) == 1  # the peer's close is not echoed back
    assert transport.close_calls == 1 and transport.abort_calls == 0
    assert sock.close_code == 1000
    assert await receive(sock) == CLOSED


async def test_close_aborts_when_the_peer_never_answers(make) -> None:
    loop = asyncio.get_running_loop()
    sock, transport = make(close_timeout_s=0.05)
    t0 = loop.time()
    await asyncio.wait_for(sock.close(1008, "policy"), WAIT)
    assert transport.aborted.done() and transport.close_calls == 0
    assert loop.time() - t0 >= 0.04  # not before the timeout
    assert close_of(transport.frames()[0]).code == 1008
    assert sock.close_code == 1008


async def test_close_twice_and_after_the_peer_closed(make) -> None:
    sock, transport = make(close_timeout_s=WAIT)
    sock.data_received(cframe(OP_CLOSE, close_payload(1000)))
    await asyncio.wait_for(sock.close(), WAIT)
    await asyncio.wait_for(sock.close(), WAIT)
    assert len(transport.frames()) == 1 and transport.abort_calls == 0


async def test_close_after_the_connection_is_lost_returns_at_once(make) -> None:
    sock, transport = make()
    transport.abort()
    await asyncio.wait_for(transport.lost, WAIT)
    await asyncio.wait_for(sock.close(), WAIT)
    assert transport.written == b""


# -- heartbeat -------------------------------------------------------------------------------

def _pings(transport: FakeTransport) -> int:
    return sum(f.opcode is Opcode.PING for f in transport.frames())


async def test_heartbeat_pings_a_live_peer_and_keeps_it(make) -> None:
    sock, transport = make(heartbeat_s=0.04)
    loop = asyncio.get_running_loop()
    enough = loop.create_future()

    def answer(data: bytes) -> None:  # the peer answers every ping with a pong
        frame = parse_frames(data)[0]
        if frame.opcode is Opcode.PING:
            loop.call_soon(sock.data_received, cframe(OP_PONG, frame.data))
            if _pings(transport) >= 4 and not enough.done():
                enough.set_result(None)

    transport.on_write = answer
    await asyncio.wait_for(enough, WAIT)
    assert transport.abort_calls == 0 and not sock.closed
    # then the peer goes silent: dropped after the next ping goes unanswered
    transport.on_write = None
    await asyncio.wait_for(transport.aborted, WAIT)
    assert sock.close_code == 1006 and sock.close_reason == "heartbeat timeout"
    assert await receive(sock) == CLOSED


async def test_heartbeat_counts_any_frame_as_a_sign_of_life(make) -> None:
    sock, transport = make(heartbeat_s=0.04)
    loop = asyncio.get_running_loop()
    enough = loop.create_future()

    def talk(data: bytes) -> None:  # the peer ignores pings but keeps sending messages
        if parse_frames(data)[0].opcode is Opcode.PING:
            loop.call_soon(sock.data_received, cframe(OP_TEXT, "media"))
            if _pings(transport) >= 3 and not enough.done():
                enough.set_result(None)

    transport.on_write = talk
    await asyncio.wait_for(enough, WAIT)
    assert transport.abort_calls == 0
    assert await receive(sock) == (OP_TEXT, b"media")


async def test_a_streaming_peer_is_never_pinged(make) -> None:
    """Twilio sends 50 messages a second: the heartbeat costs it nothing."""
    sock, transport = make(heartbeat_s=0.02)
    loop = asyncio.get_running_loop()
    checks = 0
    original = sock._heartbeat

    def counted() -> None:
        nonlocal checks
        checks += 1
        original()

    sock._heartbeat = counted  # type: ignore[method-assign]
    sock._hb_timer.cancel()
    sock._hb_timer = loop.call_later(0.02, counted)
    while checks < 5:  # the peer's cadence: a frame every 5 ms over five heartbeats
        sock.data_received(cframe(OP_TEXT, "media"))
        await asyncio.sleep(0.005)
    assert _pings(transport) == 0 and transport.abort_calls == 0


async def test_heartbeat_drops_a_silent_peer(make) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sock, transport = make(heartbeat_s=0.05)
    await asyncio.wait_for(transport.aborted, WAIT)
    elapsed = loop.time() - t0
    assert elapsed >= 0.07  # one heartbeat, then half of one for the answer
    assert _pings(transport) == 1
    assert sock.close_code == 1006 and sock.close_reason == "heartbeat timeout"
    await asyncio.wait_for(transport.lost, WAIT)
    assert await asyncio.wait_for(sock.wait_closed(), WAIT) == 1006


async def test_heartbeat_stops_once_closing(make) -> None:
    # the close handshake is left to close_timeout_s: while it runs (several heartbeats
    # long), no ping is sent and the heartbeat does not abort the connection
    sock, transport = make(heartbeat_s=0.02, close_timeout_s=0.15)
    await asyncio.wait_for(sock.close(1001, "bye"), WAIT)
    assert transport.aborted.done()
    assert _pings(transport) == 0
    assert sock.close_code == 1001  # ended by the close timeout, not "heartbeat timeout"
    assert sock.close_reason == "bye"


async def test_no_heartbeat_when_disabled(make) -> None:
    sock, transport = make(heartbeat_s=0)
    assert sock._hb_timer is None
    assert transport.written == b""


# -- abuse bounds: control-frame rate, write buffer, the listener's pending slot ------------

class Clock:
    """An injected clock for the control-frame window."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_ping_flood_closes_with_1008_after_the_per_second_limit(make) -> None:
    from agentic_fast.core import metrics
    clock = Clock()
    sock, transport = make(max_control_frames_per_s=5, clock=clock)
    before = metrics.get("ws.control_flood")
    sock.data_received(b"".join(cframe(OP_PING, b"p") for _ in range(5)))
    assert [f.opcode for f in transport.frames()] == [Opcode.PONG] * 5 and not sock.closed
    clock.now += 1.0  # a new second: five more are fine
    sock.data_received(b"".join(cframe(OP_PING, b"q") for _ in range(5)))
    assert not sock.closed
    # a flood in one read, still in that second: its first ping is the sixth and closes
    # the socket; nothing after it is read or answered
    sock.data_received(b"".join(cframe(OP_PING, b"r") for _ in range(10_000)))
    pongs = [f for f in transport.frames() if f.opcode is Opcode.PONG]
    assert len(pongs) == 10
    await assert_failed(sock, transport, 1008)
    assert close_of(transport.frames()[-1]).reason == "too many control frames"
    assert metrics.get("ws.control_flood") == before + 1


async def test_unsolicited_pongs_count_as_control_frames(make) -> None:
    sock, transport = make(max_control_frames_per_s=3, clock=Clock())
    sock.data_received(b"".join(cframe(OP_PONG) for _ in range(4)))
    await assert_failed(sock, transport, 1008)


async def test_control_frame_limit_zero_is_off(make) -> None:
    sock, transport = make(max_control_frames_per_s=0)
    sock.data_received(b"".join(cframe(OP_PING) for _ in range(1000)))
    assert len(transport.frames()) == 1000 and not sock.closed


async def test_media_frames_are_not_rate_limited(make) -> None:
    sock, _ = make(max_control_frames_per_s=1, queue_limit=10_000)
    sock.data_received(b"".join(cframe(OP_TEXT, "m") for _ in range(500)))
    assert not sock.closed and (await receive(sock)) == (OP_TEXT, b"m")


async def test_write_buffer_limits_are_set_and_high_water_pauses_reading(make) -> None:
    sock, transport = make(max_write_buffer_bytes=64 * 1024, queue_limit=2)
    assert transport.limits == (32 * 1024, 8 * 1024)
    sock.pause_writing()  # the transport's buffer passed high water
    assert not transport.reading
    sock.data_received(cframe(OP_TEXT, "a") + cframe(OP_TEXT, "b"))  # the queue fills too
    await receive(sock)
    await receive(sock)  # the queue drained: still paused for the write buffer
    assert not transport.reading
    sock.resume_writing()
    assert transport.reading and transport.pause_calls == 1 and transport.resume_calls == 1


async def test_write_buffer_beyond_its_bound_drops_the_connection_1008(make) -> None:
    from agentic_fast.core import metrics
    sock, transport = make(max_write_buffer_bytes=16 * 1024)
    before = metrics.get("ws.write_buffer_overflow")
    transport.buffered = 10_000
    sock.pause_writing()
    assert sock.send_text("x" * 100)  # still under the bound
    transport.buffered = 16 * 1024 + 1  # the peer reads nothing
    assert not sock.send_text("x" * 100)
    await asyncio.wait_for(transport.aborted, WAIT)
    assert sock.close_code == 1008 and sock.close_reason == "write buffer full"
    assert await asyncio.wait_for(sock.wait_closed(), WAIT) == 1008
    assert metrics.get("ws.write_buffer_overflow") == before + 1
    assert not sock.send_text("more") and transport.abort_calls == 1


class Slot:
    def __init__(self) -> None:
        self.released = 0
        self.evict: Callable[[], None] | None = None

    def release(self) -> None:
        self.released += 1

    def set_evict(self, evict: Callable[[], None]) -> None:
        self.evict = evict


async def test_pending_slot_is_released_when_the_stream_starts(make) -> None:
    sock, _ = make()
    slot = Slot()
    sock.hold_pending(slot)
    assert slot.released == 0
    sock.set_handler(lambda payload: None, lambda op, payload: None)
    assert slot.released == 1
    sock.connection_lost(None)
    assert slot.released == 1


async def test_pending_slot_is_released_when_the_connection_ends(make) -> None:
    sock, transport = make()
    slot = Slot()
    sock.hold_pending(slot)
    transport.close()
    await asyncio.wait_for(transport.lost, WAIT)
    assert slot.released == 1


async def test_evicted_pending_socket_closes_with_1013(make) -> None:
    sock, transport = make()
    slot = Slot()
    sock.hold_pending(slot)
    assert slot.evict is not None
    slot.evict()
    await asyncio.wait_for(transport.lost, WAIT)
    assert close_of(transport.frames()[-1]).code == 1013
    assert sock.close_code == 1013 and await receive(sock) == CLOSED
    assert slot.released == 1
