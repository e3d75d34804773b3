"""The dashboard in a real headless Chromium (Debian's package), driven over the DevTools
protocol with ``websockets``: the page loads without console errors, a live simulated call
(fake Twilio caller -> server -> production bridge -> fake OpenAI Realtime) appears in the
live table, its hang-up button ends it (the record says the API ended it), and it moves to
the recent calls, where a click shows its transcript. A screenshot is kept in
``$AGENTIC_FAST_ARTIFACTS`` (default ``tests/artifacts/``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from agentic_fast.call.factory import make_bridge_factory
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.openclaw_gateway import FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.integration.harness import FROM_NUMBER, Harness, connect_live, make_config
from tests.integration.test_voice_openai_e2e import OWNER, _openai_config

pytestmark = pytest.mark.asyncio
TOKEN = "dash-token-0123456789"
CHROMIUM = os.environ.get("AGENTIC_FAST_CHROMIUM") or shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
ARTIFACTS = Path(os.environ.get("AGENTIC_FAST_ARTIFACTS")
                 or Path(__file__).resolve().parents[1] / "artifacts")

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium); the dashboard "
                "browser test needs a real headless browser", allow_module_level=True)


class Browser:
    """One headless Chromium process and a DevTools session on one page."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: asyncio.subprocess.Process | None = None
        self.ws: Any = None
        self.session_id: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self.loaded = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}", "--window-size=1280,900", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        async with asyncio.timeout(30):  # the line Chromium prints once DevTools listens
            line = b""
            while b"DevTools listening on" not in line:
                line = await self.proc.stderr.readline()
                if not line:
                    raise RuntimeError("chromium exited before DevTools listened")
        # the same endpoint as the DevToolsActivePort file (port, then path), which
        # Chromium may still be writing when that line comes
        url = line.decode().split("DevTools listening on", 1)[1].strip()
        assert url.startswith("ws://127.0.0.1:"), url  # loopback only
        self._drain = asyncio.ensure_future(self._drain_stderr())
        self.ws = await websockets.connect(url, max_size=None)
        self._reader = asyncio.ensure_future(self._read())
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"],
                                   flatten=True)
        self.session_id = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = orjson.loads(raw)
            if "id" in msg:
                fut = self._pending.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                continue
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                self.errors.append("console: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                self.errors.append("exception: " + str(
                    details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.errors.append(f"log: {params['entry']['text']} {params['entry'].get('url')}")
            elif method == "Page.loadEventFired":
                self.loaded.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if self.session_id is not None and not method.startswith("Target."):
            msg["sessionId"] = self.session_id
        await self.ws.send(orjson.dumps(msg).decode())
        async with asyncio.timeout(20):
            reply = await fut
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression,
                                 awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"].get("exception", {})
                                 .get("description") or result["exceptionDetails"])
        return result["result"].get("value")

    async def wait_for(self, condition_js: str, timeout_ms: int = 10000) -> Any:
        """Resolve when ``condition_js`` (an expression) is truthy: checked on every DOM
        change (MutationObserver), not on a timer."""
        what = orjson.dumps(condition_js).decode()
        return await self.eval(f"""new Promise((resolve, reject) => {{
            const check = () => {{ const v = ({condition_js}); if (v) {{ obs.disconnect();
                clearTimeout(t); resolve(v); }} }};
            const obs = new MutationObserver(check);
            const t = setTimeout(() => {{ obs.disconnect();
                reject(new Error("timed out waiting for: " + {what})); }},
                {timeout_ms});
            obs.observe(document.documentElement, {{subtree: true, childList: true,
                characterData: true, attributes: true}});
            check();
        }})""")

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()  # by PID: only the process this test started
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    try:
        await b.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        await b.close()
        pytest.skip(f"headless chromium did not start: {exc}")
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def harness(rest: FakeTwilioRest, openai: FakeOpenAIRealtime,
                  gateway: FakeOpenClawGateway, tmp_path: Path) -> AsyncIterator[Harness]:
    extra = _openai_config(openai.url.split("?")[0], openai.api_key, gateway,
                           tmp_path / "device_key", {}, {})
    config = make_config(rest, extra=extra, api_token=TOKEN)
    h = await Harness(config, rest, bridge_factory=make_bridge_factory(config)).__aenter__()
    try:
        yield h
    finally:
        await h.__aexit__(None, None, None)


def _row(table: str, call_id: str) -> str:
    return f"document.querySelector('#{table} tbody tr[data-call-id=\"{call_id}\"]')"


async def test_dashboard_shows_a_live_call_and_hangs_it_up(
        browser: Browser, harness: Harness, rest: FakeTwilioRest,
        openai: FakeOpenAIRealtime) -> None:
    await browser.send("Page.navigate", url=f"{harness.base_url}/dashboard?token={TOKEN}")
    await asyncio.wait_for(browser.loaded.wait(), 20)
    assert await browser.eval("location.pathname + location.search") == "/dashboard"
    await browser.wait_for("document.getElementById('conn').textContent === 'live'")

    # a live simulated call: the fake caller connects, the model answers through the bridge
    call_sid, params, _ = await harness.incoming_call(From=OWNER)
    rest.add_incoming(call_sid, OWNER, FROM_NUMBER)
    model = await openai.wait_session(0)
    await model.wait_received("session.update")
    client = harness.media_client(call_sid, params)
    await connect_live(harness, client)
    call_id = params["callId"]
    await model.user_turn("hello, who is this")
    row_text = await browser.wait_for(
        f"{_row('live', call_id)}?.textContent.includes('in-progress') && "
        f"{_row('live', call_id)}.textContent")
    assert "+15*******00" in row_text and OWNER not in row_text  # masked like the logs
    assert "twilio" in row_text and "openai" in row_text

    await browser.eval(f"{_row('live', call_id)}.querySelector('button.hangup').click()")
    await rest.wait_request(lambda r: r.get("Status") == "completed")
    await client.hangup()  # Twilio ends the media stream of a call hung up by REST
    await browser.wait_for(f"!{_row('live', call_id)} && {_row('recent', call_id)}")
    record = harness.services.manager.get(call_id)
    assert record.status.value == "completed" and record.reason == "hangup-api"
    recent = await browser.eval(f"{_row('recent', call_id)}.textContent")
    assert "hangup-api" in recent

    await browser.eval(f"{_row('recent', call_id)}.click()")
    transcript = await browser.wait_for(
        "!document.getElementById('detail').hidden && "
        "document.getElementById('detail-transcript').textContent")
    said = [entry.text for entry in record.transcript]
    assert said and all(text in transcript for text in said)  # the record's transcript

    shot = await browser.send("Page.captureScreenshot", format="png")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))
    assert browser.errors == []
