"""How long a call takes to notice a model server that stops reading (TCP backpressure).

One call's provider against the fake OpenAI Realtime server on loopback, caller audio
written in real time (PCM16 24 kHz, 40 ms chunks); after ``--healthy-s`` the server stops
reading the socket (``pause_reading``: nothing is closed). Reported: seconds until the
provider drops the socket and a new session carries the call, and what the stalled socket
held meanwhile (write buffer peak, audio dropped for backpressure). ``--watch 0`` is the
code without the stall watch (websockets' keepalive alone, ``ping_interval_s`` 20 s); the
run gives up after ``--max-s``.

    PYTHONPATH=src python -m bench.provider_stall --watch 5
    PYTHONPATH=src python -m bench.provider_stall --watch 0 --max-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from typing import Any

from tests.fakes.openai_realtime import FakeOpenAIRealtime

from agentic_fast.core.config import OpenAIRealtimeConfig
from agentic_fast.providers.openai.provider import OpenAIRealtimeProvider

CHUNK = base64.b64encode(bytes(24 * 40 * 2)).decode()  # 40 ms of PCM16 24 kHz silence


class _Listener:
    def __init__(self) -> None:
        self.failed: str | None = None

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None

    def on_failed(self, reason: str) -> None:
        self.failed = reason


async def run(watch_s: float, healthy_s: float, max_s: float, ping_s: float) -> dict[str, Any]:
    async with FakeOpenAIRealtime() as fake:
        settings = OpenAIRealtimeConfig(api_key=fake.api_key,
                                        url=f"ws://127.0.0.1:{fake.port}/v1/realtime",
                                        model=fake.model)
        provider = OpenAIRealtimeProvider(settings, call_id="bench", connect_timeout_s=5.0,
                                          ping_interval_s=ping_s,
                                          stall_timeout_s=watch_s or None)
        listener = _Listener()
        provider.attach(listener)  # type: ignore[arg-type]
        await provider.connect()
        ws = provider._conn.ws  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        start = loop.time()
        stopped_at: float | None = None
        noticed: float | None = None
        peak = 0
        chunks = 0
        while loop.time() - start < healthy_s + max_s:
            now = loop.time()
            if stopped_at is None and now - start >= healthy_s:
                fake.sessions[0].stop_reading()
                stopped_at = now
            provider.send_audio(CHUNK)
            chunks += 1
            peak = max(peak, ws.transport.get_write_buffer_size())
            if stopped_at is not None and (fake.connection_count > 1 or listener.failed):
                noticed = now - stopped_at
                break
            await asyncio.sleep(0.04)  # real-time caller audio (the workload, not a sync)
        stats = dict(provider.stats)
        await provider.close()
    return {"watch_s": watch_s, "ping_interval_s": ping_s,
            "noticed_after_s": None if noticed is None else round(noticed, 2),
            "gave_up_after_s": None if noticed is not None else max_s,
            "new_sessions": fake.connection_count - 1, "failed": listener.failed,
            "chunks_sent": chunks, "write_buffer_peak_bytes": peak,
            "audio_backpressure_dropped": stats["audio_backpressure_dropped"],
            "stalls": stats.get("stalls", 0), "reconnects": stats["reconnects"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--watch", type=float, default=5.0,
                        help="stall_timeout_s (0: no stall watch, keepalive only)")
    parser.add_argument("--healthy-s", type=float, default=1.0)
    parser.add_argument("--max-s", type=float, default=60.0)
    parser.add_argument("--ping-s", type=float, default=20.0, help="keepalive ping interval")
    args = parser.parse_args()
    started = time.perf_counter()
    result = asyncio.run(run(args.watch, args.healthy_s, args.max_s, args.ping_s))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
