"""``agentic-fast serve --workers 2`` as real processes: a call whose webhook and media
stream land on different workers (the stream is handed to the owner), hang-ups forwarded to
the owner, a worker killed mid-call (restarted; the other worker's call goes on), and a
SIGTERM that drains both workers.

Each worker also listens on its own loopback port (``server.worker_direct_ports``), so the
test chooses which worker gets each connection; the shared port is left to the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.twilio_media import FakeTwilioMediaClient
from tests.fakes.twilio_twiml import read_connect_stream
from tests.fakes.twilio_webhooks import TwilioWebhookSender, incoming_call_form, new_sid
from tests.integration.harness import PUBLIC_URL

AUTH_TOKEN = "workers-test-token-0123456789"
INSTANCE = "itest"
#: 24 kHz 16-bit PCM reaches the model: one second of a caller's audio
PCM_SECOND = 48_000


class Supervised:
    """The supervisor process, and every log line of it and its workers as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    async def wait_line(self, pattern: str, start: int = 0, timeout: float = 30
                        ) -> tuple[int, re.Match[str]]:
        """The first line from ``start`` on matching ``pattern`` (its index and match)."""
        regex = re.compile(pattern)
        try:
            return await asyncio.wait_for(self._find(regex, start), timeout)
        except TimeoutError:
            raise AssertionError(f"no line matching {pattern!r}; last lines:\n"
                                 + "".join(self.lines[-40:])) from None

    async def _find(self, regex: re.Pattern[str], start: int) -> tuple[int, re.Match[str]]:
        if True:
            i = start
            while True:
                while i < len(self.lines):
                    found = regex.search(self.lines[i])
                    if found:
                        return i, found
                    i += 1
                assert self.proc.returncode is None or self._reader.done() is False, \
                    "supervisor exited:\n" + "".join(self.lines[-30:])
                self._changed.clear()
                await self._changed.wait()

    async def direct_ports(self, start: int = 0) -> dict[int, int]:
        ports: dict[int, int] = {}
        i = start
        while len(ports) < 2:
            i, found = await self.wait_line(r"worker\.direct worker=(\d+) port=(\d+)", i)
            ports[int(found.group(1))] = int(found.group(2))
            i += 1
        return ports

    async def worker_pids(self) -> dict[int, int]:
        pids: dict[int, int] = {}
        i = 0
        while len(pids) < 2:
            i, found = await self.wait_line(r"worker\.started worker=(\d+) pid=(\d+)", i)
            pids[int(found.group(1))] = int(found.group(2))
            i += 1
        return pids


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAIRealtime]:
    async with FakeOpenAIRealtime() as fake:
        yield fake


@pytest.fixture
async def server(openai: FakeOpenAIRealtime, tmp_path: Path) -> AsyncIterator[Supervised]:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
server:
  public_url: {PUBLIC_URL}
  drain_timeout_s: 20
  instance_id: {INSTANCE}
  worker_direct_ports: true
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
store:
  path: {tmp_path / "calls.db"}
logging:
  level: INFO
""")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENTIC_FAST_CONFIG", "PROMETHEUS_MULTIPROC_DIR"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentic_fast", "serve", "--config", str(config), "--port", "0",
        "--workers", "2", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=env)
    sup = Supervised(proc)
    try:
        await sup.wait_line(r"supervisor\.started")
        yield sup
    finally:
        pids = {int(m.group(1)) for line in sup.lines
                if (m := re.search(r"worker\.started worker=\d+ pid=(\d+)", line))}
        if proc.returncode is None:  # two signals: stop at once (and clean up its dirs)
            for _ in range(2):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                with contextlib.suppress(Exception):
                    await proc.wait()
        for pid in pids:  # workers we started (through the supervisor) that may remain
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


async def _place(http: aiohttp.ClientSession, webhook_port: int, stream_port: int
                 ) -> tuple[FakeTwilioMediaClient, dict[str, str], str]:
    """An inbound call: its webhook to one worker, its stream to another (by port)."""
    hooks = TwilioWebhookSender(http, auth_token=AUTH_TOKEN,
                                base_url=f"http://127.0.0.1:{webhook_port}", public_url=PUBLIC_URL)
    call_sid = new_sid("CA")
    resp = await hooks.post("/twilio/voice", incoming_call_form(call_sid=call_sid))
    stream = read_connect_stream(await resp.text())
    path = urlsplit(stream.url).path
    client = FakeTwilioMediaClient(f"ws://127.0.0.1:{stream_port}{path}",
                                   custom_parameters=stream.parameters, call_sid=call_sid)
    await client.connect()
    return client, stream.parameters, path


async def test_a_stream_landing_on_another_worker_is_handed_to_the_owner(
        server: Supervised, openai: FakeOpenAIRealtime) -> None:
    ports = await server.direct_ports()
    async with aiohttp.ClientSession() as http:
        client, params, path = await _place(http, ports[0], ports[1])
        assert path == f"/w/{INSTANCE}-0/twilio/media-stream"  # the URL names the owner
        await server.wait_line(rf"stream\.handover\.sent owner={INSTANCE}-0 worker={INSTANCE}-1")
        await server.wait_line(r"stream\.handover\.adopted")
        s = await openai.wait_session(0)
        await s.wait_until(lambda: s.audio_bytes.get("audio/pcm", 0) > PCM_SECOND, timeout=10)
        # the owner's pre-warmed model socket carries the call: no second (fresh) one
        assert openai.connection_count == 1
        assert not client.closed.is_set()
        client.assert_no_violations()

        # a hang-up sent to the other worker runs on the owner (its REST call is refused by
        # the unreachable Twilio API: the owner's answer, not the other worker's 404)
        call_id = params["callId"]
        base1 = f"http://127.0.0.1:{ports[1]}"
        resp = await http.post(f"{base1}/calls/{call_id}/hangup")
        assert resp.status == 502, await resp.text()
        assert "refused the hang-up" in (await resp.json())["error"]
        await server.wait_line(rf"control\.forwarded op=hangup call_id={call_id}")
        resp = await http.post(f"{base1}/calls/no-such-call/hangup")
        assert resp.status == 404
        await client.hangup()
        await asyncio.wait_for(client.closed.wait(), 10)

        # the record is complete, as either worker answers it
        for port in ports.values():
            record = await _record_when(http, port, call_id, "completed")
            assert record["call_sid"] == client.call_sid and record["owner"] is None
            assert record["end_reason"] == record["reason"] == "stream-stopped"
            assert record["carrier"] == "twilio" and record["provider"] == "openai"
            assert record["stream_started"] and record["duration_s"] > 0
        stored = await _record_when(http, ports[1], call_id, "completed")  # not its call
        assert stored["source"] == "store"
        assert [s["status"] for s in stored["statuses"]] == ["ringing", "in-progress",
                                                              "completed"]
        # and its token is spent on both workers
        for port in ports.values():
            replay = FakeTwilioMediaClient(f"ws://127.0.0.1:{port}{path}",
                                           custom_parameters=params, call_sid=client.call_sid)
            await replay.connect()
            await asyncio.wait_for(replay.closed.wait(), 10)
            assert replay.close_code == 1008


async def _record_when(http: aiohttp.ClientSession, port: int, call_id: str, status: str,
                       timeout: float = 10.0) -> dict[str, object]:
    """``GET /calls/{id}`` on ``port`` once the record has ``status`` (the owner writes
    it in its next store batch)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await http.get(f"http://127.0.0.1:{port}/calls/{call_id}")
        record = await resp.json()
        if resp.status == 200 and record.get("status") == status:
            return dict(record)
        assert loop.time() < deadline, f"{call_id} on port {port}: {resp.status} {record}"
        await asyncio.sleep(0.05)  # polling the API for a condition, bounded


async def test_a_killed_worker_is_restarted_and_the_other_call_goes_on(
        server: Supervised, openai: FakeOpenAIRealtime) -> None:
    ports = await server.direct_ports()
    pids = await server.worker_pids()
    async with aiohttp.ClientSession() as http:
        survivor, _, _ = await _place(http, ports[0], ports[0])
        victim, victim_params, _ = await _place(http, ports[1], ports[1])
        a, b = await openai.wait_session(0), await openai.wait_session(1)
        for s in (a, b):
            await s.wait_until(lambda s=s: s.audio_bytes.get("audio/pcm", 0) > 0, timeout=10)
        # which model session is whose: the survivor's is the one still fed after the kill
        mark = len(server.lines)
        os.kill(pids[1], signal.SIGKILL)
        i, died = await server.wait_line(r"worker\.died worker=1 pid=(\d+)", mark)
        assert int(died.group(1)) == pids[1]
        i, started = await server.wait_line(r"worker\.started worker=1 pid=(\d+) restarts=1", i)
        assert int(started.group(1)) != pids[1]
        await victim.wait_closed(timeout=10)  # its stream died with its worker

        # two more seconds of the survivor's audio reach its model, in real time (the
        # victim's model session gets nothing more)
        before = {id(s): s.audio_bytes["audio/pcm"] for s in (a, b)}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        waits = [asyncio.ensure_future(s.wait_until(
            lambda s=s: s.audio_bytes["audio/pcm"] >= before[id(s)] + 2 * PCM_SECOND,
            timeout=10)) for s in (a, b)]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        assert any(t.exception() is None for t in done)
        elapsed = loop.time() - t0
        assert elapsed < 3.0, f"2 s of audio took {elapsed:.2f} s: the call stalled"
        assert not survivor.closed.is_set()
        survivor.assert_no_violations()

        # the restarted worker takes calls again, and has recorded its predecessor's call
        # failed (a new process under the same name owns no call yet)
        _, direct = await server.wait_line(r"worker\.direct worker=1 port=(\d+)", i)
        assert (await http.get(f"http://127.0.0.1:{direct.group(1)}/healthz")).status == 200
        victim_id = victim_params["callId"]
        await server.wait_line(rf"store\.calls\.reclaimed_from_previous_run .*{victim_id}", i)
        for port in (ports[0], int(direct.group(1))):  # either worker's API shows it
            resp = await http.get(f"http://127.0.0.1:{port}/calls/{victim_id}")
            assert resp.status == 200
            record = await resp.json()
            assert record["status"] == "failed", record
            assert record["reason"] == f"owner_lost: {INSTANCE}-1", record

        # SIGTERM: both workers drain; the live call keeps going until it hangs up
        server.proc.send_signal(signal.SIGTERM)
        await server.wait_line(r"server\.draining active_calls=1", mark)
        assert not survivor.closed.is_set()
        await survivor.hangup()
    assert await asyncio.wait_for(server.proc.wait(), 30) == 0
    await server.wait_line(r"supervisor\.stopped")
