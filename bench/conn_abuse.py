"""Connection-abuse reproduction against a real ``agentic-fast serve`` process on 127.0.0.1.

    PYTHONPATH=src python -m bench.conn_abuse [--src DIR] [--partial 800] [--flood-s 3]

Starts the server from ``--src`` (default ``src``), then: ``--partial`` connections that
each send half a request head to ``/healthz`` (the server's descriptors and RSS, whether a
fresh ``/healthz`` answers, how many of them the server closes within 20 s); a ping flood
from one media socket that never reads its pongs, and one that reads them (RSS peak, how
it ends). Loopback only, bounded in count and time. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from agentic_fast.ws.frames import OP_PING, ClientFramer

CONFIG = ("server: {public_url: 'https://agent.example.test', host: 127.0.0.1}\n"
          "openai_realtime: {api_key: sk-bench-not-used, url: 'ws://127.0.0.1:9/v1'}\n")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /twilio/media-stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY.encode()
           + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def server_stats(pid: int) -> tuple[int, float]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return fds, rss


async def start(src: str) -> tuple[asyncio.subprocess.Process, int]:
    path = Path(tempfile.mkdtemp()) / "config.yaml"
    path.write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=src)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentic_fast", "serve", "--config", str(path), "--port", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise RuntimeError("server exited")
            found = re.search(r"server\.listening .*port=(\d+)", line)
            if found:
                break

    async def drain() -> None:
        assert proc.stderr is not None
        while await proc.stderr.readline():
            pass

    asyncio.get_running_loop().create_task(drain())
    return proc, int(found.group(1))


async def healthz(port: int) -> str:
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status = (await reader.readline()).decode().split(" ")[1]
            writer.close()
    except (OSError, TimeoutError, IndexError) as exc:
        return f"failed ({type(exc).__name__})"
    return f"{status} in {1000 * (time.perf_counter() - t0):.1f} ms"


async def partial_heads(proc: asyncio.subprocess.Process, port: int, n: int) -> None:
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        conns.append((reader, writer))
    await asyncio.sleep(0.5)
    fds, rss = server_stats(proc.pid)
    print(f"partial heads: {n} open: server fds={fds} rss={rss:.0f} MB; "
          f"/healthz {await healthz(port)}")
    t0 = time.perf_counter()

    async def closed(reader: asyncio.StreamReader) -> float:
        with contextlib.suppress(OSError):
            await reader.read()
        return time.perf_counter() - t0

    tasks = [asyncio.ensure_future(closed(r)) for r, _ in conns]
    done, pending = await asyncio.wait(tasks, timeout=20)
    times = sorted(t.result() for t in done)
    fds, rss = server_stats(proc.pid)
    print(f"  closed by the server within 20 s: {len(done)}/{n}"
          + (f" (last at {times[-1]:.1f} s)" if times else "")
          + f"; then server fds={fds} rss={rss:.0f} MB")
    for t in pending:
        t.cancel()
    for _, w in conns:
        w.transport.abort()


async def ping_flood(proc: asyncio.subprocess.Process, port: int, seconds: float,
                     read: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE)
    await reader.readuntil(b"\r\n\r\n")
    chunk = ClientFramer().frame(OP_PING, b"p" * 16) * 2000
    got = bytearray()

    async def reading() -> None:
        while data := await reader.read(1 << 16):
            got.extend(data[:64] if len(got) > 1 << 20 else data)

    reader_task = asyncio.ensure_future(reading()) if read else None
    t0 = time.perf_counter()
    sent, peak, ended = 0, 0.0, "still open"
    try:
        while time.perf_counter() - t0 < seconds:
            writer.write(chunk)
            sent += 2000
            async with asyncio.timeout(0.5):
                await writer.drain()
            peak = max(peak, server_stats(proc.pid)[1])
    except (OSError, TimeoutError) as exc:
        ended = f"{type(exc).__name__} after {time.perf_counter() - t0:.2f} s"
    if reader_task is not None:
        await asyncio.sleep(0.2)
        reader_task.cancel()
    code = ""
    idx = got.find(b"\x88")
    if idx >= 0 and len(got) >= idx + 4:
        code = f", close frame {int.from_bytes(got[idx + 2:idx + 4], 'big')}"
    fds, rss = server_stats(proc.pid)
    print(f"ping flood ({'reads' if read else 'never reads'} pongs): sent {sent} pings, "
          f"{ended}{code}; server rss peak {peak:.0f} MB, after: fds={fds} rss={rss:.0f} MB")
    writer.transport.abort()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", default="src")
    parser.add_argument("--partial", type=int, default=800)
    parser.add_argument("--flood-s", type=float, default=3.0)
    args = parser.parse_args()
    proc, port = await start(os.path.abspath(args.src))
    try:
        fds, rss = server_stats(proc.pid)
        print(f"idle: server fds={fds} rss={rss:.0f} MB; /healthz {await healthz(port)}")
        await partial_heads(proc, port, args.partial)
        await ping_flood(proc, port, args.flood_s, read=False)
        await ping_flood(proc, port, args.flood_s, read=True)
        print(f"after: /healthz {await healthz(port)}")
    finally:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
