"""First assistant audio with two workers: a stream on the worker that answered its webhook
(direct) versus a stream handed over from the other worker (fd passing).

Starts ``agentic-fast serve --workers 2`` (each worker also on a loopback port of its own,
``server.worker_direct_ports``) against the fake OpenAI Realtime (which speaks the greeting),
places ``--calls`` calls each way, one at a time, with the fake Twilio caller, and prints the
p50/p95 of the time from the stream's connect to the first assistant audio frame, and from
the webhook to it.

    PYTHONPATH=src:. python -m bench.first_audio_workers --calls 20

Loopback only; bounded in count and time; not a load test (one call at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.twilio_media import FakeTwilioMediaClient
from tests.fakes.twilio_twiml import read_connect_stream
from tests.fakes.twilio_webhooks import TwilioWebhookSender, incoming_call_form, new_sid

PUBLIC_URL = "https://agent.example.test"
AUTH_TOKEN = "bench-workers-token-0123456789"


async def _start(config: Path) -> tuple[asyncio.subprocess.Process, dict[int, int], list[int]]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENTIC_FAST_CONFIG", "PROMETHEUS_MULTIPROC_DIR"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentic_fast", "serve", "--config", str(config), "--port", "0",
        "--workers", "2", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=env)
    assert proc.stderr is not None
    ports: dict[int, int] = {}
    pids: list[int] = []
    listening = 0
    async with asyncio.timeout(60):
        while listening < 2:
            line = (await proc.stderr.readline()).decode()
            assert line, "server exited"
            if m := re.search(r"worker\.direct worker=(\d+) port=(\d+)", line):
                ports[int(m.group(1))] = int(m.group(2))
            if m := re.search(r"worker\.started worker=\d+ pid=(\d+)", line):
                pids.append(int(m.group(1)))
            listening += "server.listening" in line

    async def drain() -> None:
        assert proc.stderr is not None
        while await proc.stderr.readline():
            pass

    asyncio.get_running_loop().create_task(drain())
    return proc, ports, pids


async def _call(http: aiohttp.ClientSession, hook_port: int, stream_port: int
                ) -> tuple[float, float]:
    """(stream connect -> first audio, webhook -> first audio), in milliseconds."""
    hooks = TwilioWebhookSender(http, auth_token=AUTH_TOKEN,
                                base_url=f"http://127.0.0.1:{hook_port}", public_url=PUBLIC_URL)
    call_sid = new_sid("CA")
    t_hook = time.monotonic()
    resp = await hooks.post("/twilio/voice", incoming_call_form(call_sid=call_sid))
    stream = read_connect_stream(await resp.text())
    client = FakeTwilioMediaClient(
        f"ws://127.0.0.1:{stream_port}{urlsplit(stream.url).path}",
        custom_parameters=stream.parameters, call_sid=call_sid)
    t_stream = time.monotonic()
    await client.connect()
    await client.wait_for(lambda: client.media, timeout=10)
    first = client.media[0].at
    await client.hangup()
    return (first - t_stream) * 1000, (first - t_hook) * 1000


def _summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name:<26} p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms"


async def main(calls: int) -> None:
    async with FakeOpenAIRealtime() as openai:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(f"""
server:
  public_url: {PUBLIC_URL}
  worker_direct_ports: true
twilio:
  account_sid: AC{"0" * 32}
  auth_token: {AUTH_TOKEN}
  from_number: '+15550001111'
  api_base: http://127.0.0.1:9
openai_realtime:
  url: {openai.url.split("?")[0]}
  api_key: {openai.api_key}
  greeting: Hello, how can I help?
gateway:
  url: ws://127.0.0.1:9
  device_key_path: {Path(tmp) / "device_key"}
calls:
  inbound: open
  rate_limits:
    per_caller_per_minute: 0
    global_per_second: 0
logging:
  level: INFO
""")
            proc, ports, pids = await _start(config)
            try:
                async with aiohttp.ClientSession() as http:
                    results: dict[str, list[tuple[float, float]]] = {"direct": [],
                                                                     "handed over": []}
                    for _ in range(calls):  # interleaved: both paths see the same conditions
                        results["direct"].append(await _call(http, ports[0], ports[0]))
                        results["handed over"].append(await _call(http, ports[0], ports[1]))
                print(f"first assistant audio, {calls} calls each way, 2 workers, loopback")
                for name, rows in results.items():
                    print(_summary(f"{name}: stream->audio", [r[0] for r in rows]))
                    print(_summary(f"{name}: webhook->audio", [r[1] for r in rows]))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls each way (max 200)")
    args = parser.parse_args()
    asyncio.run(main(max(1, min(args.calls, 200))))
