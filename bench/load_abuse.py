"""Abuse beside healthy calls, for ``loadgen --abuse``: what do the calls feel?

Runs inside the load generator's window against the server under test (127.0.0.1 only,
bounded in connections and time); the healthy calls' underruns and jitter in the same run
are the figure. Kinds:

* ``ping-flood``: one media-stream WebSocket that sends pings as fast as the socket takes
  them and reads its pongs (the case that took the loop from healthy calls);
* ``ping-flood-noread``: the same, never reading (the server's write buffer is what grows);
* ``slowloris``: ``conns`` connections that each send half a request head and hold it.

Each returns a summary: what was sent, how and when the server ended it (close code), and
for slowloris how many connections the server closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from agentic_fast.ws.frames import OP_PING, ClientFramer

KINDS = ("ping-flood", "ping-flood-noread", "slowloris")
_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
_UPGRADE = (b"GET /twilio/media-stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + _KEY
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
_PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def run_abuse(kind: str, port: int, *, start_at: float, seconds: float,
                    conns: int) -> dict[str, Any]:
    """Wait until loop time ``start_at``, then abuse the server for ``seconds``."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    t0 = time.monotonic()
    if kind == "slowloris":
        out = await _slowloris(port, seconds, conns)
    else:
        out = await _ping_flood(port, seconds, read=kind == "ping-flood")
    out.update(kind=kind, started=t0, seconds=seconds)
    return out


async def _ping_flood(port: int, seconds: float, *, read: bool) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_UPGRADE)
    head = await reader.readuntil(b"\r\n\r\n")
    burst = ClientFramer().frame(OP_PING, b"p" * 16) * 500
    got = bytearray()

    async def reading() -> None:
        while data := await reader.read(1 << 16):
            if len(got) < 1 << 20:
                got.extend(data)

    reader_task = asyncio.ensure_future(reading()) if read else None
    t0 = time.monotonic()
    sent, ended = 0, "still open at the end"
    try:
        while time.monotonic() - t0 < seconds:
            if writer.transport.is_closing():
                ended = f"closed by the server after {time.monotonic() - t0:.2f} s"
                break
            writer.write(burst)
            sent += 500
            async with asyncio.timeout(0.5):
                await writer.drain()
    except (OSError, TimeoutError) as exc:
        ended = f"{type(exc).__name__} after {time.monotonic() - t0:.2f} s"
    if reader_task is not None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(reader_task, 0.5)
    code = None
    idx = got.find(b"\x88")  # a server close frame (unmasked, payload < 126)
    if idx >= 0 and len(got) >= idx + 4:
        code = int.from_bytes(got[idx + 2:idx + 4], "big")
    writer.transport.abort()
    return {"upgrade": head.split(b"\r\n", 1)[0].decode(errors="replace"), "pings_sent": sent,
            "ended": ended, "close_code": code}


async def _slowloris(port: int, seconds: float, conns: int) -> dict[str, Any]:
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused = 0
    for _ in range(conns):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            refused += 1
            continue
        writer.write(_PARTIAL)
        opened.append((reader, writer))

    async def closed(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass

    waits = [asyncio.ensure_future(closed(r)) for r, _ in opened]
    done: set[asyncio.Future[None]] = set()
    if waits:
        done, _ = await asyncio.wait(waits, timeout=seconds)
    for task in waits:
        task.cancel()
    for _, writer in opened:
        writer.transport.abort()
    return {"conns": conns, "opened": len(opened), "refused": refused,
            "closed_by_server": len(done)}
