"""Control actions reach a call wherever the request lands: a tiny RPC between workers.

Each worker serves length-prefixed JSON on a Unix socket (``<runtime_dir>/w<id>.ctl``):
a request is ``{"op": "hangup", "call_id": "..."}``, a reply ``{"owned": bool, "status":
int, "body": {...}}`` (``owned`` false: the call is not live on that worker). A frame is a
4-byte big-endian length and that many bytes of UTF-8 JSON (at most ``MAX_FRAME``).

:class:`CallRouter` is what the HTTP side uses: :class:`LocalWorkersRouter` asks this
machine's other workers; a store-backed router can look the owner up and reach other
instances the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agentic_fast.core import metrics
from agentic_fast.core.log import get_logger
from agentic_fast.server.workers import WorkerIdentity

__all__ = ["MAX_FRAME", "CallRouter", "ControlReply", "ControlServer", "LocalWorkersRouter",
           "request"]

log = get_logger("control")

MAX_FRAME = 64 * 1024
_LEN = struct.Struct(">I")

#: an op's handler on the owner: (call id, request) -> reply, None when the call is not here
OpHandler = Callable[[str, Mapping[str, Any]], Awaitable["ControlReply | None"]]


@dataclass(frozen=True, slots=True)
class ControlReply:
    """The owner's answer to a control action: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]


class CallRouter(Protocol):
    """Finds the process that owns a live call and runs a control action there."""

    async def forward(self, call_id: str, op: str, args: Mapping[str, Any]
                      ) -> ControlReply | None:
        """The owner's reply to ``op`` on ``call_id``; None when no other process owns it."""


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    size = _LEN.unpack(await reader.readexactly(_LEN.size))[0]
    if size > MAX_FRAME:
        raise ValueError(f"control frame of {size} bytes (max {MAX_FRAME})")
    return json.loads(await reader.readexactly(size))


def _frame(obj: Any) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"control frame of {len(data)} bytes (max {MAX_FRAME})")
    return _LEN.pack(len(data)) + data


class ControlServer:
    """One worker's control socket: runs ``ops`` for the calls it owns."""

    def __init__(self, path: Path, ops: Mapping[str, OpHandler]) -> None:
        self.path = path
        self._ops = ops
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a worker with this id that died
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    req = await _read_frame(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(_frame(await self._answer(req)))
                await writer.drain()
        except (ValueError, ConnectionError) as exc:
            metrics.incr("control.bad_request")
            log.warning("control.bad_request", error=str(exc))
        finally:
            writer.close()

    async def _answer(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict) or not isinstance(req.get("call_id"), str):
            metrics.incr("control.bad_request")
            return {"owned": False, "status": 400, "body": {"error": "bad control request"}}
        handler = self._ops.get(str(req.get("op")))
        if handler is None:
            metrics.incr("control.bad_request")
            return {"owned": False, "status": 400,
                    "body": {"error": f"unknown control op {req.get('op')!r}"}}
        reply = await handler(req["call_id"], req)
        if reply is None:
            return {"owned": False, "status": 404, "body": {"error": "unknown call"}}
        metrics.incr(f"control.served.{req['op']}")
        return {"owned": True, "status": reply.status, "body": reply.body}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def request(path: Path, req: Mapping[str, Any], timeout_s: float = 5.0
                  ) -> dict[str, Any]:
    """One control request to the worker at ``path``; raises ``OSError`` (gone),
    ``TimeoutError`` or ``ValueError`` (a bad reply)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(_frame(dict(req)))
            await writer.drain()
            reply = await _read_frame(reader)
        finally:
            writer.close()
    if not isinstance(reply, dict):
        raise ValueError("control reply is not an object")
    return reply


class LocalWorkersRouter:
    """Asks every other worker of this machine (at once); the owner's reply wins."""

    def __init__(self, identity: WorkerIdentity, timeout_s: float = 5.0) -> None:
        self.identity = identity
        self.timeout_s = timeout_s

    async def forward(self, call_id: str, op: str, args: Mapping[str, Any]
                      ) -> ControlReply | None:
        req = {**args, "op": op, "call_id": call_id}

        async def ask(worker: int) -> dict[str, Any] | None:
            try:
                return await request(self.identity.control_path(worker), req, self.timeout_s)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                metrics.incr("control.forward_failed")
                log.warning("control.forward_failed", worker=worker, op=op, call_id=call_id,
                            error=str(exc) or type(exc).__name__)
                return None

        replies = await asyncio.gather(*(ask(w) for w in self.identity.siblings()))
        for reply in replies:
            if reply is not None and reply.get("owned"):
                body = reply.get("body")
                metrics.incr(f"control.forwarded.{op}")
                return ControlReply(int(reply.get("status", 502)),
                                    body if isinstance(body, dict) else {})
        return None
