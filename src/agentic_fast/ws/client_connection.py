"""A python-websockets client connection that can hand whole messages to a callback.

Why. websockets' asyncio receive path is ``data_received`` -> sans-I/O parse ->
``Connection.process_event`` -> ``Assembler.put`` (a ``SimpleQueue``) -> wake the task blocked
in ``recv()`` -> ``Assembler.get`` -> ``recv()`` returns -> our parse. A provider socket
carries a stream of small JSON events (an audio delta every ~20-40 ms per call), and the
queue round trip plus one task wake-up per message showed up in profiles (``Assembler.get``,
``SimpleQueue.put``/``get``, ``Connection.recv``, ``Task.__step``). :class:`FastClientConnection`
cuts it: once a handler is set, a complete (``fin``) unfragmented TEXT frame, and a BINARY one
if ``on_binary`` is set, is passed as ``bytes`` straight from ``process_event`` (that is, from
inside ``data_received``) to ``on_text(data)`` / ``on_binary(data)``. No queue, no task wake-up.

Everything else goes to websockets unchanged (``super().process_event``): the handshake
response (the first event; ``ClientConnection.process_event`` stores it and resolves
``response_rcvd``), fragmented messages (first frame not ``fin``, then ``CONT`` frames), data
frames of an opcode with no handler, and control frames (ping/pong/close: pongs acknowledge
pings there). Those still come out of ``recv()``, and the close still ends ``recv()`` /
``wait_closed()`` with :class:`~websockets.exceptions.ConnectionClosed` as usual.

Ordering rule. A frame takes the fast path only while the assembler's frame queue is empty.
While anything is queued (messages that arrived before the handler was set, or a binary /
fragmented message that ``recv()`` has not taken yet) new frames are queued behind it, so the
owner must keep a task calling ``recv()`` and hand each message it returns to the same handler
*synchronously* (no ``await`` between ``recv()`` returning and the call). That task drains the
backlog in order; the fast path resumes as soon as the queue is empty. Why this is enough: a
queued frame leaves the queue only inside ``recv()``, in the same task step as ``recv()``
returns it, and a new TEXT frame cannot arrive in the middle of a fragmented message (the
protocol rejects it), so the handler never sees a message before an older one. The handler
can therefore be set at any moment, e.g. by the reader task itself when it starts.

Contract for handlers: they run inside ``data_received``, so they must not block and cannot
await. They get ``bytes`` that websockets has *not* UTF-8-validated (``recv()`` would have,
failing the connection with 1007 on bad UTF-8); ``orjson.loads`` rejects invalid UTF-8, so
our parsers count such a frame as malformed JSON instead. An exception from a handler never
reaches websockets: it is caught, counted (``ws.fast_path.handler_errors``) and logged, and
the connection goes on. Handlers that need a failure to end the connection do it themselves.

Stalled peers. A peer that stops reading (TCP backpressure) while the call goes on would be
noticed only by websockets' keepalive, and late: a ping every ``ping_interval``, then
``ping_timeout`` to answer (about 40 s with 20 + 20), and not at all once the transport's
buffer is above its high-water mark, since ``ping()`` first awaits ``drain()``. Meanwhile the
caller's audio goes into kernel buffers that nobody reads. :class:`StallWatch` notices it
within ``timeout_s``: one timer per socket (nothing on the per-frame path) writes a small
probe ping synchronously (past ``drain()``) and calls ``on_stall`` when the probe has not
been answered for ``timeout_s`` (a pong comes only once the peer has read everything we
wrote before the ping), or when the transport's write buffer has stayed above
``max_buffer`` for ``timeout_s``. The owner then replaces the socket.

Version note: the queue check reads ``recv_messages.frames.queue`` (websockets 14-17
``Assembler`` -> ``SimpleQueue`` -> ``deque``). If that shape is missing the fast path stays
off (everything goes through ``recv()``), counted once as ``ws.fast_path.unavailable``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from agentic_fast.core import metrics
from agentic_fast.core.log import get_logger
from agentic_fast.ws.frames import ClientFramer

__all__ = ["FastClientConnection", "MessageHandler", "StallWatch"]

#: ``handler(payload)``: one whole message's payload, called inside ``data_received``.
MessageHandler = Callable[[bytes], None]

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_log = get_logger("providers.ws")


class FastClientConnection(ClientConnection):
    """:class:`~websockets.asyncio.client.ClientConnection` with optional synchronous message
    handlers (see the module docstring for the rule). Use it through ``connect(...,
    create_connection=FastClientConnection)``; with no handler set it behaves exactly like
    its base class."""

    #: Called with the payload of each whole, unfragmented TEXT message; None: use ``recv()``.
    on_text: MessageHandler | None
    #: Same for BINARY messages.
    on_binary: MessageHandler | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_text = None
        self.on_binary = None
        self.handler_errors = 0
        # the assembler's frame deque (set in connection_made); None: fast path unavailable
        self._queued: deque[Frame] | None = None
        self._framer = ClientFramer()  # masked data frames written past websockets
        # the StallWatch's probe: its payload and (loop) send time; None when answered
        self._probe: tuple[bytes, float] | None = None
        self._probes = 0

    def send_probe(self) -> None:
        """Write one ping now (no await, no ``drain()``), answered by :attr:`probe_pending`
        turning False. Its payload is ours, so websockets' keepalive pings are not touched."""
        self._probes += 1
        data = b"af-probe-%d" % self._probes
        self._probe = (data, self.loop.time())
        self.protocol.send_ping(data)
        self.send_data()

    @property
    def probe_pending(self) -> bool:
        """A probe was sent and no pong for it (or for a later ping) has come."""
        return self._probe is not None

    def acknowledge_pings(self, data: bytes) -> None:
        """A pong arrived: it answers our probe if it carries the probe's payload, or that
        of a ping sent after it (a peer may answer only the latest ping, RFC 6455 5.5.3)."""
        probe = self._probe
        if probe is not None:
            if data == probe[0]:
                self._probe = None
            else:
                entry = self.pending_pings.get(data)
                if entry is not None and entry[1] >= probe[1]:
                    self._probe = None
        super().acknowledge_pings(data)

    def write_text_now(self, text: str) -> None:
        """One whole masked text frame on the transport now (no await, no flow control:
        the caller checks the write buffer). Anything websockets' own protocol has pending
        (an automatic pong) is written first, so frames stay whole and in order; framing
        and mask keys are ours (``wsframe``: native, pooled entropy), not websockets'
        (a ``getrandom`` syscall and Python serialisation per frame)."""
        frame = self._framer.frame_text(text)
        if self.protocol.writes:
            self.send_data()
        self.transport.write(frame)

    def set_handlers(self, on_text: MessageHandler | None,
                     on_binary: MessageHandler | None = None) -> None:
        """Deliver whole text (and binary) messages to these callables from now on; None
        for both turns the fast path off. Messages already queued stay ahead: ``recv()``
        returns them first (see the module docstring)."""
        self.on_text = on_text
        self.on_binary = on_binary

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        queued = getattr(getattr(self.recv_messages, "frames", None), "queue", None)
        if isinstance(queued, deque):
            self._queued = queued
        else:  # pragma: no cover - another websockets layout
            metrics.incr("ws.fast_path.unavailable")

    def process_event(self, event: Event) -> None:  # HOT: once per received frame
        # self.response is None only for the first event, the handshake response, which
        # ClientConnection.process_event must see; after it every event is a Frame.
        queued = self._queued
        if self.response is not None and queued is not None and not queued:
            frame: Frame = event  # type: ignore[assignment]
            if frame.fin:
                opcode = frame.opcode
                if opcode is _TEXT:
                    handler = self.on_text
                elif opcode is _BINARY:
                    handler = self.on_binary
                else:
                    handler = None
                if handler is not None:
                    data = frame.data
                    if type(data) is not bytes:
                        data = bytes(data)
                    try:
                        handler(data)
                    except Exception:
                        self.handler_errors += 1
                        metrics.incr("ws.fast_path.handler_errors")
                        _log.exception("ws.fast_path.handler_error", size=len(data),
                                       opcode=opcode.name)
                    return
        super().process_event(event)


class StallWatch:
    """Notices a peer that stopped reading our socket (module docstring, "Stalled peers").

    ``tick()`` runs every ``interval_s`` on the loop (``start``/``stop``); it can also be
    called directly with an injected ``clock`` (tests). ``on_stall(reason)`` runs at most
    once; the watch stops itself first. ``timeout_s``: how long an unanswered probe, or a
    write buffer above ``max_buffer``, is tolerated.
    """

    __slots__ = ("_clock", "_full_since", "_handle", "_probe_at", "interval_s", "max_buffer",
                 "on_stall", "timeout_s", "ws")

    def __init__(self, ws: FastClientConnection, on_stall: Callable[[str], None], *,
                 timeout_s: float, max_buffer: int, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.ws: FastClientConnection | None = ws
        self.on_stall: Callable[[str], None] | None = on_stall
        self.timeout_s = timeout_s
        self.max_buffer = max_buffer
        self.interval_s = interval_s if interval_s is not None else min(1.0, timeout_s / 4)
        self._clock = clock
        self._full_since: float | None = None
        self._probe_at: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Tick every ``interval_s`` from now on (the first probe goes at once)."""
        self.tick()

    def stop(self) -> None:
        """No more ticks; drops its references (the socket, the callback)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.ws = None
        self.on_stall = None

    @property
    def running(self) -> bool:
        return self.ws is not None

    def tick(self) -> str | None:
        """One check (and the next tick scheduled); the stall reason if it fired."""
        ws = self.ws
        if ws is None:
            return None
        self._handle = None
        if ws.protocol.state is not State.OPEN:
            self.stop()  # closing or closed: the reader reports it
            return None
        reason = self._check(ws, self._clock())
        if reason is not None:
            on_stall = self.on_stall
            self.stop()
            if on_stall is not None:
                on_stall(reason)
            return reason
        self._handle = ws.loop.call_later(self.interval_s, self.tick)
        return None

    def _check(self, ws: FastClientConnection, now: float) -> str | None:
        size = ws.transport.get_write_buffer_size()
        if size > self.max_buffer:
            if self._full_since is None:
                self._full_since = now
            elif now - self._full_since >= self.timeout_s:
                return (f"write buffer above {self.max_buffer} B for "
                        f"{now - self._full_since:.1f} s ({size} B queued)")
        else:
            self._full_since = None
        if self._probe_at is not None and ws.probe_pending:
            if now - self._probe_at >= self.timeout_s:
                return f"no pong for {now - self._probe_at:.1f} s ({size} B queued)"
            return None
        try:
            ws.send_probe()
        except Exception as exc:  # the transport is gone: the reader reports it
            _log.debug("ws.probe_failed", error=repr(exc)[:200])
            return None
        self._probe_at = now
        return None
