"""``agentic-fast demo``: one complete simulated phone call, on loopback, in a few seconds.

The real server (``server.app``, its bridge factory with the ConversationBrain and the
OpenClaw gateway client) answers a simulated Twilio caller who plays recorded speech; the
voice model and the OpenClaw agent are local stand-ins (:mod:`agentic_fast.demo.model`,
:mod:`agentic_fast.demo.agent`). No keys, no network, no config file: the config is built
here and reads no environment variable. The timeline printed shows each step with its time
since the start; the exit status is 0 when the whole call went through, 1 (with a line
saying which step) when a step failed or did not come within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from agentic_fast.call.factory import make_bridge_factory
from agentic_fast.core.config import Config
from agentic_fast.core.errors import RemoteProtocolError
from agentic_fast.core.log import configure
from agentic_fast.demo import voice
from agentic_fast.demo.agent import DemoAgent
from agentic_fast.demo.caller import CallerSettings, DemoCaller, unexpected
from agentic_fast.demo.model import DemoModel
from agentic_fast.demo.timeline import Timeline
from agentic_fast.server.app import create_app, start_site
from agentic_fast.server.runner import make_runner

PUBLIC_URL = "https://demo.agentic-fast.invalid"  # only signed for, never connected to
CALLER = "+15551230000"
GREETING = "Hi! How can I help?"
LISTEN_MS = 900  # how much of the answer the caller hears before interrupting
DEFAULT_TIMEOUT_S = 20.0


def demo_config(*, model_url: str, model_key: str, agent_url: str, agent_token: str,
                account_sid: str, auth_token: str, state_dir: Path) -> Config:
    """The demo server's config: loopback everywhere, the stand-ins as model and agent."""
    text = f"""
server:
  host: 127.0.0.1
  port: 0
  public_url: {PUBLIC_URL}
twilio:
  account_sid: {account_sid}
  auth_token: {auth_token}
  from_number: '+15557654321'
  api_base: http://127.0.0.1:9  # a closed loopback port: the demo call never needs REST
openai_realtime:
  url: {model_url}
  api_key: {model_key}
  greeting: '{GREETING}'
audio:
  provider: openai-pcmu
gateway:
  url: {agent_url}
  token: {agent_token}
  device_key_path: {state_dir / "gateway_device_key"}
brain:
  mode: tool
  allowed_callers: ['{CALLER}']
"""
    return Config.from_text(text, source="demo (built in code)", env={})


class _Step:
    """What the demo is waiting for (named in the failure line)."""

    def __init__(self) -> None:
        self.name = "setup"


async def run_demo(out: TextIO | None = sys.stdout, *,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, Timeline]:
    """Run the call; (exit status, timeline). Failures are reported on stderr."""
    timeline = Timeline(out)
    step = _Step()
    keys = {"model_key": "demo-" + secrets.token_hex(8),
            "agent_token": secrets.token_hex(16),
            "account_sid": "AC" + secrets.token_hex(16), "auth_token": secrets.token_hex(16)}
    model = DemoModel(timeline, keys["model_key"],
                      [voice.REQUEST_TEXT, voice.INTERRUPTION_TEXT])
    agent = DemoAgent(timeline, keys["agent_token"])
    runner: Any = None
    caller: DemoCaller | None = None
    with tempfile.TemporaryDirectory(prefix="agentic-fast-demo-") as state:
        async with aiohttp.ClientSession() as http:
            try:
                async with asyncio.timeout(timeout_s):
                    await model.start()
                    await agent.start()
                    config = demo_config(model_url=model.url, agent_url=agent.url,
                                         state_dir=Path(state), **keys)
                    app = create_app(config, bridge_factory=make_bridge_factory(config))
                    runner = make_runner(app, config)
                    await runner.setup()
                    site = await start_site(runner, "127.0.0.1", 0)
                    base = f"http://127.0.0.1:{site.port}"
                    timeline.mark("listening", f"server on {base}; stand-ins: voice model "
                                  f"{model.url}, OpenClaw agent {agent.url}")
                    caller = DemoCaller(CallerSettings(base, PUBLIC_URL, keys["account_sid"],
                                                       keys["auth_token"], CALLER),
                                        timeline, http)
                    await _call(caller, timeline, http, base, step)
            except TimeoutError:
                if caller is not None and caller.error is not None:  # why it never came
                    _report_failure(f"{step.name}: {caller.error}")
                else:
                    _report_failure(f"timed out after {timeout_s:g} s waiting for {step.name}")
                return 1, timeline
            except (RemoteProtocolError, aiohttp.ClientError, OSError) as exc:
                _report_failure(f"{step.name}: {exc}")
                return 1, timeline
            finally:
                await _close(caller, runner, model, agent)
    timeline.say(f"demo call complete in {timeline.now():.1f} s")
    return 0, timeline


async def _call(caller: DemoCaller, timeline: Timeline, http: aiohttp.ClientSession,
                base: str, step: _Step) -> None:
    step.name = "the TwiML answer"
    params = await caller.dial()
    step.name = "the media stream"
    await caller.connect(params)
    step.name = "the greeting (first assistant audio)"
    await timeline.wait("first_audio")
    await caller.wait_quiet()
    step.name = "the caller's request"
    request = voice.request_audio()
    timeline.mark("caller_speaks", f"the caller speaks: {len(request) / 8000:.1f} s of "
                  f'recorded speech ("{voice.REQUEST_TEXT}")')
    ended = await caller.say(request)
    step.name = "the transcript of the request"
    await timeline.wait("transcript")
    step.name = "the model's run_command call"
    await timeline.wait("tool_call")
    step.name = "the agent's answer"
    await timeline.wait("command")
    await timeline.wait("agent_answer")
    step.name = "the answer spoken back"
    first = await caller.audio_after(ended)
    timeline.mark("answer_audio", f"the answer is spoken back: first audio "
                  f"{(first - ended) * 1000:.0f} ms after the caller stopped speaking (the "
                  f"model's end-of-turn silence included)")
    step.name = "the barge-in"
    await caller.listen(LISTEN_MS)
    timeline.mark("barge_in", f'the caller interrupts ("{voice.INTERRUPTION_TEXT}") after '
                  f"hearing {LISTEN_MS} ms of the answer")
    caller.say(voice.interruption_audio())
    step.name = "the server's clear"
    await timeline.wait("clear")
    step.name = "the truncate at the model"
    await timeline.wait("truncate")
    step.name = "the hang-up"
    await caller.hang_up()
    if caller.error is not None:
        raise caller.error
    step.name = "the final record"
    async with http.get(f"{base}/calls/{caller.call_id}") as resp:
        if resp.status != 200:
            raise unexpected(f"GET /calls/{caller.call_id} answered HTTP {resp.status}")
        record = await resp.json()
    if record.get("status") != "completed":
        raise unexpected(f"the call ended {record.get('status')!r} "
                            f"({record.get('reason')}), not 'completed'")
    commands = record.get("commands") or []
    timeline.mark("record", f"GET /calls/{caller.call_id}: status {record['status']}, "
                  f"{record.get('duration_s')} s, "
                  f"{record.get('transcript_total')} transcript turns, "
                  f"{len(commands)} agent command(s)")
    for entry in record.get("transcript") or []:
        timeline.say(f"{'':10}{entry['role']:>9}: {entry['text']}")
    for command in commands:
        timeline.say(f"{'':11}command: {json.dumps(command.get('command'))} "
                     f"({command.get('source')}, {command.get('status')})")


async def _close(caller: DemoCaller | None, runner: Any, model: DemoModel,
                 agent: DemoAgent) -> None:
    """Tear everything down (bounded: a stuck part must not hang the demo)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            if caller is not None:
                await caller.close()
            if runner is not None:
                await runner.cleanup()
            await model.close()
            await agent.close()


def _report_failure(message: str) -> None:
    print(f"demo failed: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``agentic-fast demo [--timeout S] [--verbose]``."""
    parser = argparse.ArgumentParser(
        prog="agentic-fast demo",
        description="Run one complete simulated phone call on loopback (the server, a "
                    "simulated Twilio caller, stand-ins for the voice model and the OpenClaw "
                    "agent) and print its timeline. 'demo --audio' runs the audio path demo.")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds before the demo gives up (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--verbose", action="store_true", help="also print the server's logs")
    args = parser.parse_args(argv)
    if args.verbose:
        configure("INFO")
    code, _ = asyncio.run(run_demo(timeout_s=args.timeout))
    return code
