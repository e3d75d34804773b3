"""FastClientConnection against a real python-websockets server on loopback.

Checks the fast path (whole text/binary frames handed to a callback from ``data_received``),
the ordering rule (anything queued before, or not fast-pathed, comes out of ``recv()`` first
and later frames queue behind it), that websockets still handles everything else (handshake,
fragmented and binary messages, pings, close), and that a handler's exception is contained.
No sleeps as synchronisation: every wait is on an event or a condition, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from agentic_fast.core import metrics
from agentic_fast.ws.client_connection import FastClientConnection, StallWatch

TIMEOUT = 5.0


@dataclass
class Loopback:
    client: FastClientConnection
    server: ServerConnection
    got: list[bytes] = field(default_factory=list)  # what the handler saw, in order
    in_task: list[bool] = field(default_factory=list)  # handler ran inside a task?
    _tick: asyncio.Event = field(default_factory=asyncio.Event)

    def handler(self, data: bytes) -> None:
        self.got.append(data)
        self.in_task.append(asyncio.current_task() is not None)
        self._tick.set()

    def queued(self) -> int:
        return len(self.client.recv_messages.frames)

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait for ``predicate``: re-checked on each handler call, else every few ms (the
        assembler's queue length has no event to wait on)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not predicate():
                    self._tick.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._tick.wait(), 0.005)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {self.got!r:.300}") from None


@pytest.fixture
async def loop_ws() -> AsyncIterator[Loopback]:
    accepted: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handle(ws: ServerConnection) -> None:
        accepted.set_result(ws)
        await done.wait()

    async with serve(handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = await connect(f"ws://127.0.0.1:{port}", create_connection=FastClientConnection)
        assert isinstance(client, FastClientConnection)
        ws = await asyncio.wait_for(accepted, TIMEOUT)
        try:
            yield Loopback(client, ws)
        finally:
            done.set()
            await client.close()


def _reader(lb: Loopback) -> asyncio.Task[str]:
    """The owner's reader: recv() and hand each message to the same handler at once."""

    async def read() -> str:
        try:
            while True:
                lb.handler(await lb.client.recv(decode=False))
        except ConnectionClosed as exc:
            close = exc.rcvd or exc.sent
            return f"closed {close.code} {close.reason}".strip() if close else "closed 1006"

    return asyncio.get_running_loop().create_task(read())


async def _stop(task: asyncio.Task[str]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_text_frames_go_to_handler_synchronously_in_order(loop_ws: Loopback) -> None:
    lb = loop_ws
    lb.client.set_handlers(lb.handler)
    sent = [f'{{"n":{i}}}'.encode() for i in range(50)]
    for msg in sent:
        await lb.server.send(msg.decode())
    await lb.until(lambda: len(lb.got) == 50, "50 messages")
    assert lb.got == sent
    assert all(type(d) is bytes for d in lb.got)
    assert not any(lb.in_task), "handler must run from data_received, not a task"
    assert lb.queued() == 0  # nothing went through the assembler


async def test_handshake_and_no_handler_behave_like_base_class(loop_ws: Loopback) -> None:
    lb = loop_ws
    assert lb.client.response is not None and lb.client.response.status_code == 101
    await lb.server.send("plain")
    assert await asyncio.wait_for(lb.client.recv(), TIMEOUT) == "plain"
    lb.client.set_handlers(lb.handler)
    lb.client.set_handlers(None)  # off again: back to recv()
    await lb.server.send("again")
    assert await asyncio.wait_for(lb.client.recv(), TIMEOUT) == "again"
    assert lb.got == []


async def test_messages_queued_before_the_handler_come_first(loop_ws: Loopback) -> None:
    lb = loop_ws
    for i in range(5):
        await lb.server.send(f"a{i}")
    await lb.until(lambda: lb.queued() == 5, "5 queued frames")
    lb.client.set_handlers(lb.handler)
    # the queue is not empty: new frames must queue behind it, not jump ahead
    for i in range(5):
        await lb.server.send(f"b{i}")
    await lb.until(lambda: lb.queued() == 10, "10 queued frames")
    assert lb.got == []
    reader = _reader(lb)
    await lb.until(lambda: len(lb.got) == 10, "backlog drained")
    assert lb.queued() == 0
    assert lb.in_task == [True] * 10  # delivered by the reader
    # queue empty: the fast path takes over
    for i in range(5):
        await lb.server.send(f"c{i}")
    await lb.until(lambda: len(lb.got) == 15, "fast messages")
    assert [d.decode() for d in lb.got] == ([f"a{i}" for i in range(5)]
                                            + [f"b{i}" for i in range(5)]
                                            + [f"c{i}" for i in range(5)])
    assert lb.in_task[10:] == [False] * 5
    await _stop(reader)


async def test_fragmented_and_binary_messages_still_come_through_recv(loop_ws: Loopback
                                                                     ) -> None:
    lb = loop_ws
    lb.client.set_handlers(lb.handler)  # text only: binary is not fast-pathed
    reader = _reader(lb)
    await lb.server.send(["frag", "men", "ted"])  # one text message in three frames
    await lb.server.send("after-fragmented")
    await lb.server.send(b"\x00binary\xff")
    await lb.server.send("after-binary")
    await lb.until(lambda: len(lb.got) == 4, "4 messages")
    assert lb.got == [b"fragmented", b"after-fragmented", b"\x00binary\xff", b"after-binary"]
    assert lb.in_task[0] and lb.in_task[2]  # fragmented and binary: via recv()
    assert lb.queued() == 0
    await lb.server.send("last")
    await lb.until(lambda: len(lb.got) == 5, "last message")
    assert lb.got[4] == b"last" and not lb.in_task[4]  # the queue is empty: fast path again
    await _stop(reader)


async def test_binary_handler(loop_ws: Loopback) -> None:
    lb = loop_ws
    binary: list[bytes] = []
    lb.client.set_handlers(lb.handler, binary.append)
    await lb.server.send(b"\x01\x02")
    await lb.server.send("text")
    await lb.until(lambda: len(lb.got) == 1, "text message")
    assert binary == [b"\x01\x02"]
    assert lb.got == [b"text"]


async def test_text_payload_is_passed_as_is(loop_ws: Loopback) -> None:
    """Fast-path text is not UTF-8-validated (the parser's orjson.loads rejects it)."""
    lb = loop_ws
    lb.client.set_handlers(lb.handler)
    await lb.server.send("\u00e9t\u00e9 \u2603")
    await lb.until(lambda: len(lb.got) == 1, "message")
    assert lb.got == ["\u00e9t\u00e9 \u2603".encode()]


async def test_handler_exception_is_counted_and_connection_stays_usable(loop_ws: Loopback
                                                                       ) -> None:
    lb = loop_ws
    before = metrics.get("ws.fast_path.handler_errors")

    def handler(data: bytes) -> None:
        if data == b"boom":
            raise ValueError("handler bug")
        lb.handler(data)

    lb.client.set_handlers(handler)
    await lb.server.send("one")
    await lb.server.send("boom")
    await lb.server.send("two")
    await lb.until(lambda: len(lb.got) == 2, "messages around the failure")
    assert lb.got == [b"one", b"two"]
    assert lb.client.handler_errors == 1
    assert metrics.get("ws.fast_path.handler_errors") == before + 1
    # still open both ways: the client can send, and ping/pong still works
    await lb.client.send("hello")
    assert await asyncio.wait_for(lb.server.recv(), TIMEOUT) == "hello"
    pong = await lb.client.ping()
    await asyncio.wait_for(pong, TIMEOUT)
    await lb.server.send("three")
    await lb.until(lambda: len(lb.got) == 3, "message after the ping")


async def test_close_is_detected_by_recv_and_wait_closed(loop_ws: Loopback) -> None:
    lb = loop_ws
    lb.client.set_handlers(lb.handler)
    reader = _reader(lb)
    await lb.server.send("before close")
    await lb.server.close(1011, "boom")
    assert await asyncio.wait_for(reader, TIMEOUT) == "closed 1011 boom"
    await asyncio.wait_for(lb.client.wait_closed(), TIMEOUT)
    assert lb.got == [b"before close"]
    with pytest.raises(ConnectionClosedError):
        await lb.client.recv()


async def test_abrupt_close_is_detected(loop_ws: Loopback) -> None:
    lb = loop_ws
    lb.client.set_handlers(lb.handler)
    reader = _reader(lb)
    await lb.server.send("x")
    await lb.until(lambda: lb.got == [b"x"], "message")
    lb.server.transport.abort()
    assert await asyncio.wait_for(reader, TIMEOUT) == "closed 1006"


async def test_write_text_now_sends_whole_frames_after_websockets_pending_ones(
        loop_ws: Loopback) -> None:
    lb = loop_ws
    lb.client.protocol.send_ping(b"queued")  # a websockets frame not written yet
    assert lb.client.protocol.writes
    lb.client.write_text_now('{"type":"input_audio_buffer.append","audio":"AAAA"}')
    lb.client.write_text_now("é" * 200)  # 16-bit length, UTF-8
    assert not lb.client.protocol.writes  # the ping went out first
    assert await asyncio.wait_for(lb.server.recv(), TIMEOUT) == (
        '{"type":"input_audio_buffer.append","audio":"AAAA"}')
    assert await asyncio.wait_for(lb.server.recv(), TIMEOUT) == "é" * 200  # parsed whole


# --------------------------------------------------------------------------- StallWatch


class _StubTransport:
    def __init__(self) -> None:
        self.size = 0

    def get_write_buffer_size(self) -> int:
        return self.size


class _StubProtocol:
    def __init__(self) -> None:
        from websockets.protocol import State
        self.state = State.OPEN


class _StubWs:
    """The parts of FastClientConnection the watch uses; pongs are answered by hand."""

    def __init__(self) -> None:
        self.transport = _StubTransport()
        self.protocol = _StubProtocol()
        self.loop = asyncio.get_running_loop()
        self.probe_pending = False
        self.probes = 0

    def send_probe(self) -> None:
        self.probes += 1
        self.probe_pending = True


def _watch(ws: _StubWs, now: list[float], stalls: list[str], **kw: object) -> StallWatch:
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("max_buffer", 1000)
    return StallWatch(ws, stalls.append, interval_s=3600.0,  # type: ignore[arg-type]
                      clock=lambda: now[0], **kw)  # type: ignore[arg-type]


async def test_stall_watch_fires_once_when_a_probe_stays_unanswered() -> None:
    ws, now, stalls = _StubWs(), [0.0], []
    watch = _watch(ws, now, stalls)
    watch.start()  # the first probe goes at once
    assert ws.probes == 1
    for t in (1.0, 2.0, 4.9):
        now[0] = t
        assert watch.tick() is None
    assert ws.probes == 1  # one probe at a time
    now[0] = 5.0
    reason = watch.tick()
    assert reason is not None and "no pong for 5.0 s" in reason and stalls == [reason]
    assert not watch.running and watch.tick() is None and stalls == [reason]  # once


async def test_stall_watch_answered_probes_keep_it_quiet() -> None:
    ws, now, stalls = _StubWs(), [0.0], []
    watch = _watch(ws, now, stalls)
    watch.start()
    for step in range(1, 100):
        ws.probe_pending = False  # the pong came
        now[0] = step * 1.0
        assert watch.tick() is None
    assert stalls == [] and ws.probes == 100
    watch.stop()


async def test_stall_watch_fires_when_the_write_buffer_stays_full() -> None:
    ws, now, stalls = _StubWs(), [0.0], []
    watch = _watch(ws, now, stalls)
    watch.start()
    ws.transport.size = 5000
    for t in (1.0, 3.0, 5.9):  # full since 1.0 (a drained buffer in between resets it)
        ws.probe_pending = False
        now[0] = t
        assert watch.tick() is None
    ws.transport.size = 10
    now[0] = 6.0
    ws.probe_pending = False
    assert watch.tick() is None
    ws.transport.size = 5000
    for t in (7.0, 11.9):
        ws.probe_pending = False
        now[0] = t
        assert watch.tick() is None
    now[0] = 12.0
    ws.probe_pending = False
    reason = watch.tick()
    assert reason is not None and "write buffer above 1000 B for 5.0 s" in reason
    assert stalls == [reason]


async def test_stall_watch_stops_quietly_on_a_closing_socket() -> None:
    from websockets.protocol import State
    ws, now, stalls = _StubWs(), [0.0], []
    watch = _watch(ws, now, stalls)
    watch.start()
    ws.protocol.state = State.CLOSING
    now[0] = 100.0
    assert watch.tick() is None and not watch.running and stalls == []


async def test_probe_is_answered_by_a_reading_peer_and_not_by_a_stopped_one(
        loop_ws: Loopback) -> None:
    client = loop_ws.client
    client.send_probe()
    assert client.probe_pending
    await asyncio.wait_for(await client.ping(), TIMEOUT)  # pongs come in order
    assert not client.probe_pending
    assert loop_ws.server.transport is not None
    loop_ws.server.transport.pause_reading()  # the peer stops reading
    client.send_probe()
    later = await client.ping()
    done, _ = await asyncio.wait([later], timeout=0.2)  # bounded: no pong can come
    assert not done and client.probe_pending
    loop_ws.server.transport.resume_reading()
    await asyncio.wait_for(later, TIMEOUT)
    assert not client.probe_pending


async def test_a_pong_for_a_later_ping_answers_the_probe(loop_ws: Loopback) -> None:
    """RFC 6455 5.5.3: a peer may answer only the most recent ping."""
    client = loop_ws.client
    client.send_probe()
    client._probe = (b"never-answered", client._probe[1])  # type: ignore[index]
    await asyncio.wait_for(await client.ping(), TIMEOUT)
    assert not client.probe_pending
