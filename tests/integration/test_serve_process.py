"""``agentic-fast serve`` as a real process: uvloop, the production factory, and a graceful
drain on SIGTERM that keeps an active call up until it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.twilio_media import FakeTwilioMediaClient
from tests.fakes.twilio_webhooks import TwilioWebhookSender, incoming_call_form, new_sid
from tests.integration.harness import PUBLIC_URL, stream_parameters

AUTH_TOKEN = "serve-test-token-0123456789"


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAIRealtime]:
    async with FakeOpenAIRealtime() as fake:
        yield fake


async def _start(config: Path) -> tuple[asyncio.subprocess.Process, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTIC_FAST_CONFIG")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentic_fast", "serve", "--config", str(config), "--port", "0",
        "--workers", "1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "server exited before listening"
            found = re.search(r"server\.listening .*port=(\d+)", line)
            if found:
                break

    async def drain_stderr() -> None:  # keep the pipe from filling up
        assert proc.stderr is not None
        while await proc.stderr.readline():
            pass

    asyncio.get_running_loop().create_task(drain_stderr())
    return proc, int(found.group(1))


async def test_serve_drains_on_sigterm_and_keeps_the_active_call(
        openai: FakeOpenAIRealtime, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
server:
  public_url: {PUBLIC_URL}
  drain_timeout_s: 20
twilio:
  account_sid: AC{"0" * 32}
  auth_token: {AUTH_TOKEN}
  from_number: '+15550001111'
  api_base: http://127.0.0.1:9
openai_realtime:
  url: {openai.url.split("?")[0]}
  api_key: {openai.api_key}
gateway:
  url: ws://127.0.0.1:9
  device_key_path: {tmp_path / "device_key"}
calls:
  inbound: open
logging:
  level: INFO
""")
    proc, port = await _start(config)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"{base}/healthz")).status == 200
            assert (await http.get(f"{base}/readyz")).status == 200
            hooks = TwilioWebhookSender(http, auth_token=AUTH_TOKEN, base_url=base,
                                        public_url=PUBLIC_URL)
            call_sid = new_sid("CA")
            resp = await hooks.post("/twilio/voice", incoming_call_form(call_sid=call_sid))
            params = stream_parameters(await resp.text())
            client = FakeTwilioMediaClient(f"ws://127.0.0.1:{port}/twilio/media-stream",
                                           custom_parameters=params, call_sid=call_sid)
            await client.connect()
            s = await openai.wait_session(0)
            await s.wait_until(lambda: s.audio_bytes.get("audio/pcm", 0) > 0, timeout=10)

            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):  # draining: not ready, polite refusal
                while (await http.get(f"{base}/readyz")).status != 503:
                    await asyncio.sleep(0.05)  # polling another process's state
            resp = await hooks.post("/twilio/voice", incoming_call_form())
            assert "<Hangup" in await resp.text()
            # the active call is still bridged: its audio keeps reaching the model
            n = s.audio_bytes["audio/pcm"]
            await s.wait_until(lambda: s.audio_bytes["audio/pcm"] > n + 9600, timeout=10)
            assert proc.returncode is None and not client.closed.is_set()

            await client.hangup()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
