"""Churn of short calls: is memory given back after each round?

Rounds of short calls through the production wiring (fake Twilio caller -> server ->
AudioBridge -> provider -> fake OpenAI Realtime, the brain and a fake gateway), all in one
process on uvloop with the collector tuned as ``serve`` tunes it (``tune_gc``: frozen,
gen0 threshold 10,000). After each round: RSS, objects tracked by the collector, and live
call machinery (bridges, providers, provider sockets, media sockets). The fakes' own records
are cleared per call so that only the server's memory is measured.

    PYTHONPATH=src:. python -m bench.churn_soak --rounds 3 --calls 200 --concurrency 20
    PYTHONPATH=src:. python -m bench.churn_soak --minutes 10 --concurrency 50   # soak

Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.integration.harness import Harness, make_config
from tests.integration.test_voice_openai_e2e import _openai_config

from agentic_fast.call.factory import make_bridge_factory
from agentic_fast.call.manager import CallManager
from agentic_fast.server.runner import tune_gc

MACHINERY = ("AudioBridge", "OpenAIRealtimeProvider", "GeminiLiveProvider",
             "FastClientConnection", "MediaSocket")


def rss_mb() -> float:
    """Resident set size now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * resource.getpagesize() / 2**20, 1)


def snapshot() -> dict[str, Any]:
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return {"rss_mb": rss_mb(), "gc_tracked": sum(counts.values()),
            "machinery": {k: counts[k] for k in MACHINERY if counts[k]}}


async def one_call(h: Harness, openai: FakeOpenAIRealtime, speak_s: float) -> None:
    call_sid, params, _ = await h.incoming_call()
    client = h.media_client(call_sid, params)
    await client.connect()
    await asyncio.sleep(speak_s)  # the call's length (the workload, not a sync)
    await client.hangup()
    h.clients.remove(client)
    call = h.services.manager.get(params["callId"])
    async with asyncio.timeout(10):
        while call is not None and not call.ended:
            await asyncio.sleep(0.01)
    openai.sessions[:] = [s for s in openai.sessions if not s.closed.is_set()]
    openai.handshakes.clear()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    logging.disable(logging.INFO)
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeTwilioRest() as rest, FakeOpenAIRealtime() as openai, \
                FakeOpenClawGateway(token="gw", default_script=ChatScript(noise=False)) as gw:
            config = make_config(rest, extra=_openai_config(
                openai.url.split("?")[0], openai.api_key, gw, Path(tmp) / "key", {}, {}))
            manager = CallManager(max_concurrent_calls=args.concurrency * 2)
            h = Harness(config, rest, manager=manager,
                        bridge_factory=make_bridge_factory(config))
            await h.__aenter__()
            try:
                await one_call(h, openai, 0.05)
                if not args.no_tune_gc:
                    tune_gc()
                out.append({"round": 0, **snapshot()})
                started = time.monotonic()
                sem = asyncio.Semaphore(args.concurrency)

                async def limited() -> None:
                    async with sem:
                        await one_call(h, openai, args.call_s)

                n = 0
                while True:
                    n += 1
                    t0 = time.monotonic()
                    await asyncio.gather(*(limited() for _ in range(args.calls)))
                    out.append({"round": n, "round_s": round(time.monotonic() - t0, 1),
                                "history": len(manager._history), **snapshot()})
                    print(json.dumps(out[-1]), flush=True)
                    if args.minutes:
                        if time.monotonic() - started >= args.minutes * 60:
                            break
                    elif n >= args.rounds:
                        break
            finally:
                await h.__aexit__(None, None, None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--call-s", type=float, default=0.5, help="each call's length")
    parser.add_argument("--minutes", type=float, default=0.0, help="soak: rounds until then")
    parser.add_argument("--no-tune-gc", action="store_true")
    args = parser.parse_args()
    print(json.dumps({"first": uvloop.run(run(args))[0]}))


if __name__ == "__main__":
    main()
