"""Hand an accepted connection to the worker that owns its call (file descriptor passing).

A media stream's URL names the worker that answered the call's webhook
(:mod:`agentic_fast.server.workers`). When another worker of this machine accepts it, its
listener (``FrontProtocol``) has read the request head and nothing else; :meth:`Handover.take`
sends the socket's descriptor (``SCM_RIGHTS``) and the bytes already read, in one datagram,
to the owner's Unix socket (``<runtime_dir>/w<id>.fd``), then closes its own copy. The
owner's :class:`HandoverReceiver` adopts the descriptor as a new connection and replays the
bytes through its own listener, which answers the upgrade with the call's pre-warmed state.

A stream for a worker that is gone (its socket refuses, or its queue is full) or for another
instance starts where it landed (a fresh model socket), counted: ``stream.handover.orphan``,
``stream.handover.foreign``. Every step is a non-blocking system call: nothing waits.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

from agentic_fast.core import metrics
from agentic_fast.core.log import get_logger
from agentic_fast.server.workers import WorkerIdentity

__all__ = ["MAX_HANDOVER_BYTES", "Handover", "HandoverReceiver"]

log = get_logger("handover")

#: the already-read bytes travel in one datagram: a request head (16 KiB at most) plus what
#: followed it; a connection with more than this is served where it landed
MAX_HANDOVER_BYTES = 64 * 1024

#: adopts a received connection: (socket, bytes already read from it)
Adopt = Callable[[socket.socket, bytes], None]


class Handover:
    """The sending side, one per worker: decides where a stream for ``owner`` goes."""

    def __init__(self, identity: WorkerIdentity) -> None:
        self.identity = identity
        self.owner = identity.owner
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def take(self, owner: str, transport: asyncio.Transport, data: bytes) -> bool:
        """Send the connection behind ``transport`` (``data`` read so far) to ``owner`` and
        close it here (True); False: serve it here (it is ours, foreign or orphaned)."""
        if owner == self.owner:
            return False
        worker = self.identity.sibling(owner)
        if worker is None:
            metrics.incr("stream.handover.foreign")
            log.info("stream.handover.foreign", owner=owner, worker=self.owner)
            return False
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < 0 or len(data) > MAX_HANDOVER_BYTES:
            metrics.incr("stream.handover.unsendable")
            return False
        try:
            # (socket.send_fds drops its address argument: sendmsg it is)
            self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         array.array("i", [fd]))],
                               0, str(self.identity.fd_path(worker)))
        except OSError as exc:  # gone (ENOENT, ECONNREFUSED) or its queue is full (EAGAIN)
            metrics.incr("stream.handover.orphan")
            log.warning("stream.handover.orphan", owner=owner, worker=self.owner,
                        error=exc.strerror or str(exc))
            return False
        metrics.incr("stream.handover.sent")
        log.info("stream.handover.sent", owner=owner, worker=self.owner, bytes=len(data))
        transport.pause_reading()
        transport.close()  # our copy only: the owner's descriptor keeps the connection
        return True

    def close(self) -> None:
        self._sock.close()


class HandoverReceiver:
    """The receiving side: a datagram socket at ``path`` whose connections ``adopt`` takes."""

    def __init__(self, path: Path, adopt: Adopt) -> None:
        self.path = path
        self._adopt = adopt
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous worker with this id died without cleaning up
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind(str(path))
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(self._sock, MAX_HANDOVER_BYTES + 1, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                metrics.incr("stream.handover.receive_failed")
                log.warning("stream.handover.receive_failed", error=str(exc))
                return
            if len(fds) != 1 or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                metrics.incr("stream.handover.malformed")
                log.warning("stream.handover.malformed", fds=len(fds), flags=flags)
                for fd in fds:
                    os.close(fd)
                continue
            try:
                sock = socket.socket(fileno=fds[0])
                sock.setblocking(False)
            except OSError:
                os.close(fds[0])
                metrics.incr("stream.handover.malformed")
                continue
            metrics.incr("stream.handover.adopted")
            log.info("stream.handover.adopted", bytes=len(data))
            self._adopt(sock, data)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
