"""Load generator: N concurrent simulated Twilio calls against a real ``agentic-fast serve``.

    python -m bench.loadgen -n 20 --duration 20                 # one run, openai (PCM16)
    python -m bench.loadgen --sweep 50,100,200,300 --mode openai-pcmu --baseline-relay
    python -m bench.loadgen --capacity --mode openai            # largest N that holds up

Per run it starts, each as its own process and only those (killed by PID at the end, on
error and on Ctrl-C): the fake provider(s) (bench.load_fakes, pinned to the generator
cores, sharing one port), the server under test (``python -m agentic_fast serve`` with a
generated config, pinned with ``taskset -c <server core>``; or the bare relay of
``--baseline-relay``), and the caller processes (bench.load_callers, pinned to the
generator cores, each driving its calls from one 20 ms clock cut into ``--slots``
sub-ticks, so that calls are out of phase like real ones). Everything is on loopback.

Timeline of a run (CLOCK_MONOTONIC, shared by all processes): calls start one after the
other over the ramp; after the warm-up the steady-state window of ``--duration`` seconds
begins; every figure except first-audio latency is taken inside that window; at its end the
callers send ``stop`` and hang up. The server's CPU time (utime+stime from /proc) is read at
both ends of the window, its RSS before the first call (idle) and at the end of the window.

A run is *invalid* (column ``valid`` = NO, with the reason) when a generator or fake process
could not keep its own cadence (send lateness p99 or loop lag p99 over the thresholds): its
figures would then measure the generator, not the server. For the capacity search such a run
still counts as a *pass* when the server met the criterion anyway (a lagging generator or
fake can only add underruns and jitter: frames sent, answered or time-stamped late), and as
"generator-limited" otherwise; the report says which.

Outputs: a table with a legend on stdout, ``loadgen.json`` (every figure, settings, machine)
and ``loadgen.png`` (latency percentiles, CPU and RSS per call against N) in ``--out``,
plus each run's raw files (config, server log, per-process results) under ``runs/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import json
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import load_report as rep
from bench.load_abuse import KINDS as ABUSE_KINDS
from bench.load_abuse import run_abuse
from bench.load_api import ApiPoller, summary_line

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_URL = "https://loadgen.example.test"
MODES = ("openai", "openai-pcmu", "gemini")
CONVERTER = {"openai": "openai", "openai-pcmu": "openai-pcmu", "gemini": "gemini"}
MAX_CALLS = 5000
MAX_RUNS = 30


# --------------------------------------------------------------------------- processes


class Children:
    """Every process this tool started (and only those), to be stopped by PID."""

    def __init__(self) -> None:
        self.procs: dict[int, tuple[str, asyncio.subprocess.Process]] = {}

    def add(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.procs[proc.pid] = (name, proc)

    async def stop(self, proc: asyncio.subprocess.Process, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.procs.pop(proc.pid, None)
        return proc.returncode

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(p, 3.0) for _, p in list(self.procs.values())),
                             return_exceptions=True)

    def kill_all_now(self) -> None:
        """Last resort (interpreter exit): SIGKILL whatever is still running."""
        for pid, (_name, proc) in list(self.procs.items()):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.procs.clear()


CHILDREN = Children()


def pin_prefix(cores: list[int], pin: bool) -> list[str]:
    if not pin:
        return []
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found: install util-linux or run with --no-pin")
    return ["taskset", "-c", ",".join(str(c) for c in cores)]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when this tool dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def spawn(name: str, cmd: list[str], *, stdout: Any = asyncio.subprocess.PIPE,
                stderr: Any = None, env: dict[str, str] | None = None
                ) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=str(ROOT), stdin=asyncio.subprocess.PIPE, stdout=stdout,
        stderr=stderr, env=env, start_new_session=True,  # Ctrl-C reaches us only
        preexec_fn=_die_with_parent)
    CHILDREN.add(name, proc)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A generator or fake process: its JSON lines (ready, progress) read in the background."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, result: Path) -> None:
        self.name = name
        self.proc = proc
        self.result = result
        self.ready = asyncio.get_running_loop().create_future()
        self.last: dict[str, Any] = {}
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                doc = json.loads(raw)
            except ValueError:
                sys.stderr.write(f"  [{self.name}] {raw.decode(errors='replace').rstrip()}\n")
                continue
            if doc.get("kind") == "ready" and not self.ready.done():
                self.ready.set_result(doc)
            elif doc.get("kind") == "progress":
                self.last = doc
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(
                f"{self.name} exited before it was ready (code {self.proc.returncode})"))

    async def send(self, line: str) -> None:
        if self.proc.stdin is not None and self.proc.returncode is None:
            with contextlib.suppress(ConnectionError):
                self.proc.stdin.write(line.encode() + b"\n")
                await self.proc.stdin.drain()

    def load(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.result.read_text())
        except (OSError, ValueError):
            return None


# --------------------------------------------------------------------------- one run


def server_config(port: int, fake_port: int, mode: str, n: int, args: argparse.Namespace,
                  auth_token: str, account_sid: str, api_token: str = "",
                  store_path: Path | None = None) -> str:
    """The config of the server under test (loopback fakes around it)."""
    limit = n + 64
    return f"""\
# generated by bench.loadgen
server:
  host: 127.0.0.1
  port: {port}
  public_url: {PUBLIC_URL}
  api_token: '{api_token}'
  drain_timeout_s: 2
  max_connections_total: {limit}
  max_connections_per_ip: {limit}
  stream_token_ttl_s: 600
{_workers_keys(getattr(args, 'server_workers', 1))}{_gc_keys(args)}twilio:
  account_sid: {account_sid}
  auth_token: {auth_token}
  from_number: '+15550001111'
  api_base: http://127.0.0.1:9
  request_timeout_s: 2
audio:
  provider: {mode}
  handoff_ms: {args.handoff_ms}
openai_realtime:
  api_key: loadgen-fake-key
  url: ws://127.0.0.1:{fake_port}/v1/realtime
  greeting: "Greet the caller."
gemini:
  api_key: loadgen-fake-key
  url: ws://127.0.0.1:{fake_port}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent
gateway:
  url: ws://127.0.0.1:9
bridge:
  lead_ms: {args.lead_ms}
  mark_every_frames: {args.mark_every}
calls:
  max_concurrent_calls: {limit}
{_admission_keys()}logging:
  level: INFO
  format: json
{_metrics_keys(args)}{_store_keys(args, store_path)}"""


def _metrics_keys(args: argparse.Namespace) -> str:
    """``metrics.enabled: false`` with ``--no-metrics`` (the A/B of the metrics' cost: no
    histograms, no audio-path sampling); else nothing (the server's default, on)."""
    if not getattr(args, "no_metrics", False):
        return ""
    return "metrics:\n  enabled: false\n"


def _admission_keys() -> str:
    """``calls.inbound: open`` and no rate limits (generated callers ramp faster than the
    default rates), where the server under test has those keys: an A/B run against an older
    commit (``PYTHONPATH=<old>/src``) gets a config that commit accepts."""
    from dataclasses import fields

    from agentic_fast.core.config import CallsConfig

    if "inbound" not in {f.name for f in fields(CallsConfig)}:
        return ""
    return ("  inbound: open\n  rate_limits:\n    per_caller_per_minute: 0\n"
            "    global_per_second: 0\n")


def _workers_keys(workers: int = 1) -> str:
    """``server.workers`` where the server has the key: 1 by default, the figure of one
    process on one core (``serve`` defaults to a worker per core, which would put several on
    the pinned one); ``--server-workers N`` for the per-worker figure (N workers, pinned
    alike, CPU summed over the supervisor and its workers)."""
    from dataclasses import fields

    from agentic_fast.core.config import ServerConfig

    if "workers" not in {f.name for f in fields(ServerConfig)}:
        return ""
    return f"  workers: {workers}\n"


def _store_keys(args: argparse.Namespace, path: Path | None) -> str:
    """The call store of the server under test, where it has one: SQLite in the run's own
    directory (never the user's ``~/.agentic_fast/calls.db``), or Redis at ``--store-url``
    (a fresh key prefix per run)."""
    try:
        from agentic_fast.core.config import StoreConfig  # noqa: F401
    except ImportError:  # a commit from before the store
        return ""
    url = getattr(args, "store_url", None)
    if url:
        return (f"store:\n  backend: redis\n  url: {url}\n"
                f"  key_prefix: 'loadgen-{os.getpid()}-{time.time_ns()}:'\n")
    return f"store:\n  path: {path}\n" if path is not None else ""


def _gc_keys(args: argparse.Namespace) -> str:
    """``server.gc_young_threshold`` when ``--gc-young-threshold`` is given (the A/B of
    the collector's tuning); else the server's default."""
    if getattr(args, "gc_young_threshold", None) is None:
        return ""
    return f"  gc_young_threshold: {args.gc_young_threshold}\n"


async def wait_http(url: str, proc: asyncio.subprocess.Process, timeout: float) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"server exited with code {proc.returncode} while starting")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server not up at {url} after {timeout:.0f} s")


def log_counts(path: Path) -> tuple[Counter[str], Counter[str]]:
    """(errors, warnings) of a JSON server log, counted by event name."""
    errors: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return errors, warnings
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                errors["unparsed_log_line"] += 1
            continue
        level = doc.get("level")
        event = str(doc.get("event", "?"))[:60]
        if level in ("ERROR", "CRITICAL"):
            errors[event] += 1
        elif level == "WARNING":
            warnings[event] += 1
    return errors, warnings


class Run:
    """One load run: N calls, one mode, against the server or the bare relay."""

    def __init__(self, args: argparse.Namespace, n: int, mode: str, target: str,
                 duration: float, label: str, gen_procs: int) -> None:
        self.args = args
        self.gen_procs = gen_procs
        self.n = n
        self.mode = mode
        self.target = target
        self.duration = duration
        self.label = label
        self.dir = Path(args.out) / "runs" / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.gens: list[Child] = []
        self.fakes: list[Child] = []
        self.server: asyncio.subprocess.Process | None = None
        self._last_progress = 0.0

    async def execute(self) -> dict[str, Any]:
        try:
            return await self._execute()
        finally:
            await asyncio.gather(*(CHILDREN.stop(c.proc, 3.0) for c in self.gens + self.fakes),
                                 return_exceptions=True)
            if self.server is not None:
                await CHILDREN.stop(self.server, 8.0)

    async def _execute(self) -> dict[str, Any]:
        args, n = self.args, self.n
        pin = not args.no_pin
        gen_pin = pin_prefix(args.gen_cores, pin)
        py = sys.executable
        auth_token = secrets.token_hex(16)
        api_token = secrets.token_hex(16)
        account_sid = "AC" + secrets.token_hex(16)
        fake_port, port = free_port(), free_port()
        protocol = "gemini" if self.mode == "gemini" else "openai"

        # 1. fake provider(s), sharing one port
        n_fakes = args.fake_procs or max(1, math.ceil(n / 300))
        for i in range(n_fakes):
            name = f"fake{i}"
            result = self.dir / f"{name}.json"
            cmd = [*gen_pin, py, "-m", "bench.load_fakes", "provider", "--protocol", protocol,
                   "--port", str(fake_port), "--name", name, "--result", str(result),
                   "--seed", str(args.seed), "--response-ms", str(args.response_ms),
                   "--speedup", str(args.speedup), "--turn-every-ms", str(args.turn_every_ms),
                   # the first delta fits in the bridge's lead: all of it is sent at once
                   "--first-delta-ms", str(min(100, args.lead_ms // 20 * 20)),
                   "--interrupt-every", str(args.interrupt_every)]
            self.fakes.append(Child(name, await spawn(name, cmd), result))
        await self._ready(self.fakes, 30.0)

        # 2. the server under test (or the relay)
        log_path = self.dir / "server.log"
        log_file = log_path.open("wb")
        env = {**os.environ, "AGENTIC_FAST_REQUIRE_EXT": "1"}
        srv_pin = pin_prefix([args.server_core], pin)
        if self.target == "server":
            cfg = self.dir / "config.yaml"
            cfg.write_text(server_config(port, fake_port, self.mode, n, args, auth_token,
                                         account_sid, api_token, self.dir / "calls.db"))
            cmd = [*srv_pin, py, "-m", "agentic_fast", "serve", "--config", str(cfg)]
        else:
            cmd = [*srv_pin, py, "-m", "bench.load_fakes", "relay", "--port", str(port),
                   "--provider-url", f"ws://127.0.0.1:{fake_port}/v1/realtime",
                   "--auth-token", auth_token, "--public-url", PUBLIC_URL,
                   "--handoff-ms", str(args.handoff_ms)]
        self.server = await spawn(self.target, cmd, stdout=log_file,
                                  stderr=asyncio.subprocess.STDOUT, env=env)
        log_file.close()
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz", self.server, 30.0)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}\n--- {log_path} (tail) ---\n{tail}") from None
        await asyncio.sleep(1.0)
        spid = self.server.pid
        rss_idle = rep.proc_rss_kb(spid)

        # 3. caller processes, calls dealt round-robin, their sub-ticks interleaved over 20 ms
        n_gens = min(self.gen_procs, n)
        for g in range(n_gens):
            name = f"gen{g}"
            result = self.dir / f"{name}.json"
            calls = ",".join(str(i) for i in range(g, n, n_gens))
            cores = [args.gen_cores[g % len(args.gen_cores)]] if args.spread_gens \
                else args.gen_cores
            converter = CONVERTER[self.mode] if self.target == "server" else "openai-pcmu"
            cmd = [
                *pin_prefix(cores, pin), py, "-m", "bench.load_callers", "--name", name,
                "--port", str(port),
                "--public-url", PUBLIC_URL, "--auth-token", auth_token,
                "--account-sid", account_sid, "--calls", calls, "--n-total", str(n),
                "--converter", converter,
                "--handoff-ms", str(args.handoff_ms), "--lead-ms", str(args.lead_ms),
                "--response-ms", str(args.response_ms),
                "--phase-ms", f"{20.0 * g / (n_gens * args.slots):.3f}", "--slots", str(args.slots),
                "--seed", str(args.seed), "--result", str(result),
                "--trace-every", str(max(1, math.ceil(n / args.trace_calls)))]
            self.gens.append(Child(name, await spawn(name, cmd), result))
        await self._ready(self.gens, 60.0)

        # 4. the schedule, the same for every process
        ramp = args.ramp if args.ramp is not None else max(1.0, n / args.ramp_rate)
        t_start = time.monotonic() + 0.5
        t_steady = t_start + ramp + args.warmup
        t_end = t_steady + self.duration
        sched = json.dumps({"t_start": t_start, "ramp_s": ramp, "t_steady": t_steady,
                            "t_end": t_end})
        for child in self.fakes + self.gens:
            await child.send(sched)
        poller: asyncio.Task[dict[str, Any]] | None = None
        if args.poll_calls_hz and self.target == "server":  # inside the window only
            poller = asyncio.create_task(ApiPoller(
                f"http://127.0.0.1:{port}", args.poll_calls_hz, t_start=t_steady, t_end=t_end,
                token=api_token, limit=args.poll_calls_limit).run(), name="api-poller")
        abuse: asyncio.Task[dict[str, Any]] | None = None
        if args.abuse and self.target == "server":  # inside the window, beside the calls
            abuse = asyncio.create_task(run_abuse(
                args.abuse, port, start_at=t_steady + min(args.abuse_at, self.duration / 2),
                seconds=args.abuse_s, conns=args.abuse_conns), name="abuse")

        # 5. watch; CPU at both ends of the window (the server and its workers, if any)
        cpu0 = cpu1 = None
        rss_end = None
        rss_max = 0
        last_cpu, last_t = rep.tree_cpu_s(spid), time.monotonic()
        while True:
            now = time.monotonic()
            if cpu0 is None and now >= t_steady:
                cpu0 = rep.tree_cpu_s(spid)
            if now >= t_end:
                cpu1 = rep.tree_cpu_s(spid)
                rss_end = rep.tree_rss_kb(spid)
                break
            rss = rep.tree_rss_kb(spid) or 0
            if t_steady <= now:
                rss_max = max(rss_max, rss)
            cpu = rep.tree_cpu_s(spid)
            pct = None
            if cpu is not None and last_cpu is not None and now > last_t:
                pct = 100.0 * (cpu - last_cpu) / (now - last_t)
            last_cpu, last_t = cpu, now
            self._progress(now, t_start, t_steady, t_end, pct, rss)
            if self.server.returncode is not None:
                raise RuntimeError(f"the {self.target} exited during the run "
                                   f"(code {self.server.returncode}); see {log_path}")
            next_stop = t_steady if cpu0 is None and t_steady > now else t_end
            await asyncio.sleep(max(0.0, min(1.0, next_stop - now)))

        api_poll = abuse_result = None
        if abuse is not None:
            try:
                async with asyncio.timeout(args.abuse_s + 15.0):
                    abuse_result = await abuse
            except (TimeoutError, OSError) as exc:
                print(f"  the abuse task failed: {exc!r}", file=sys.stderr)
        if poller is not None:
            try:
                async with asyncio.timeout(15.0):
                    api_poll = await poller
            except TimeoutError:
                print("  the /calls poller did not finish in time", file=sys.stderr)

        # 6. wind down: callers hang up and report, then the fakes, then the server
        for child in self.gens:
            try:
                async with asyncio.timeout(30.0):
                    await child.proc.wait()
            except TimeoutError:
                print(f"  {child.name} did not finish in time; stopped", file=sys.stderr)
        for child in self.fakes:
            await child.send("stop")
        for child in self.fakes:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20.0):
                    await child.proc.wait()
        code = await CHILDREN.stop(self.server, 8.0)
        errors, warnings = log_counts(log_path) if self.target == "server" else (
            Counter(), Counter())
        server = {"cpu_window_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                  "rss_idle_kb": rss_idle, "rss_end_kb": rss_end, "rss_max_kb": rss_max,
                  "exit_code": code if code not in (-signal.SIGTERM, 0) else 0,
                  "log_errors": dict(errors), "log_warnings": dict(warnings),
                  "api_poll": api_poll, "abuse": abuse_result}
        meta = {"n": n, "mode": self.mode, "target": self.target,
                "window": (t_steady, t_end),
                "thresholds": {"gen_late_p99_ms": args.max_gen_late_ms,
                               "loop_lag_p99_ms": args.max_loop_lag_ms},
                "label": self.label, "ramp_s": ramp, "warmup_s": args.warmup,
                "generator_cores": len(args.gen_cores),
                "expected": [c.name for c in self.gens + self.fakes]}
        rep.write_json(self.dir / "run_meta.json", {"meta": meta, "server": server})
        return assemble(self.dir, meta, server)

    async def _ready(self, children: list[Child], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(c.ready for c in children))

    def _progress(self, now: float, t_start: float, t_steady: float, t_end: float,
                  cpu_pct: float | None, rss_kb: int) -> None:
        if self.args.quiet:
            return
        every = 1.0 if sys.stdout.isatty() else 5.0
        if now - self._last_progress < every - 0.05:
            return
        self._last_progress = now
        gp = [c.last for c in self.gens]
        up = sum(p.get("up", 0) for p in gp)
        errs = sum(p.get("errors", 0) for p in gp)
        late = max((p.get("late_max_ms", 0.0) for p in gp), default=0.0)
        lag = max((p.get("lag_max_ms", 0.0) for p in gp), default=0.0)
        flag = max((c.last.get("lag_max_ms", 0.0) for c in self.fakes), default=0.0)
        if now < t_steady:
            phase = f"ramp/warm-up, window starts in {t_steady - now:4.1f}s"
        else:
            phase = f"window {now - t_steady:5.1f}/{t_end - t_steady:.0f}s"
        cpu = "-" if cpu_pct is None else f"{cpu_pct:3.0f}%"
        print(f"  [{self.label}] {phase} | calls up {up}/{self.n} err {errs} | "
              f"gen tick max {late:5.1f}ms lag max {lag:5.1f}ms | fake lag max {flag:5.1f}ms | "
              f"{self.target} cpu {cpu} rss {rss_kb / 1024:6.1f}MB", flush=True)


def assemble(run_dir: Path, meta: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """A run's figures from its raw files (also what ``--reanalyse`` does)."""
    gens, fakes, missing = [], [], []
    for name in meta["expected"]:
        try:
            doc = json.loads((run_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            missing.append(name)
            continue
        (gens if name.startswith("gen") else fakes).append(doc)
    result = rep.analyse_run(meta, gens, fakes, server)
    duration = meta["window"][1] - meta["window"][0]
    busy = {d["name"]: round(100.0 * d["cpu_window_s"] / duration, 1)
            for d in gens + fakes if d.get("cpu_window_s") is not None}
    result["peer_cpu_pct"] = busy
    result["generator_cores_busy_pct"] = round(
        sum(busy.values()) / max(1, meta.get("generator_cores", 1)), 1)
    if missing:
        result["valid"] = False
        result["invalid_reasons"].append(f"no result from {', '.join(missing)}")
    result["label"] = meta.get("label")
    result["ramp_s"] = meta.get("ramp_s")
    result["warmup_s"] = meta.get("warmup_s")
    result["processes"] = {"callers": len(gens), "fakes": len(fakes)}
    result["raw_dir"] = str(run_dir)
    result["server_rss_max_mb"] = (server.get("rss_max_kb") or 0) / 1024.0
    result["api_poll"] = server.get("api_poll")
    result["abuse"] = server.get("abuse")
    result["violation_examples"] = [e for f in fakes
                                    for e in f.get("violation_examples", [])][:10]
    return result


def reanalyse(out: Path) -> list[dict[str, Any]]:
    """Rebuild every run of an earlier output directory from its raw files."""
    runs = []
    for meta_path in sorted(out.glob("runs/*/run_meta.json")):
        doc = json.loads(meta_path.read_text())
        runs.append(assemble(meta_path.parent, doc["meta"], doc["server"]))
    return runs


# --------------------------------------------------------------------------- sweeps


async def run_one(args: argparse.Namespace, n: int, mode: str, target: str,
                  duration: float, index: int) -> dict[str, Any]:
    procs = args.gen_procs or max(1, math.ceil(n / args.calls_per_proc))
    best: dict[str, Any] | None = None
    for attempt in range(3):
        label = f"{index:02d}-{target}-{mode}-n{n}" + (f"-retry{attempt}" if attempt else "")
        print(f"\n== run {label}: {n} calls, {target} ({mode}), {procs} caller process(es); "
              f"ramp + warm-up, then a {duration:.0f}s window ==", flush=True)
        result = await Run(args, n, mode, target, duration, label, procs).execute()
        print(rep.table([result]))
        print(rep.details(result), flush=True)
        if result.get("api_poll"):
            print(summary_line(result["api_poll"]), flush=True)
        if result.get("abuse"):
            print(f"  abuse: {result['abuse']}", flush=True)
        lagged = [g for g in result["generator"]["processes"]
                  if g["name"] in result["lagging_processes"]]
        late = _worst_lateness(result)
        if best is not None and late >= _worst_lateness(best):
            print(f"  spreading the calls did not help (worst caller lateness p99 {late:.1f} "
                  "ms): the generator side is at its limit; keeping the earlier run",
                  flush=True)
            return best
        best = result
        if result["valid"] or not lagged or args.gen_procs or procs >= n:
            break
        busy = result.get("generator_cores_busy_pct") or 0.0
        tick = max((g["tick_busy"] or {}).get("p99") or 0.0 for g in lagged)
        if busy > 85.0 or tick < args.max_gen_late_ms / 2:
            why = (f"the generator cores are {busy:.0f}% busy" if busy > 85.0 else
                   f"a tick's sends take only {tick:.1f} ms (p99): the lateness comes from "
                   "waiting for the CPU, not from calls per process")
            print(f"  {why}; more caller processes would not help: give the generator "
                  "more (quiet) cores with --gen-cores", flush=True)
            break
        procs = min(n, procs * 2)  # shorter ticks per process
        print(f"  a caller process missed its 20 ms cadence: spreading the calls over {procs} "
              "processes and running again", flush=True)
    return result


def _worst_lateness(result: dict[str, Any]) -> float:
    """The worst caller process's send lateness p99 (ms) of a run."""
    return max(((g.get("send_late") or {}).get("p99") or 0.0
                for g in result["generator"]["processes"]), default=0.0)


async def sweep(args: argparse.Namespace, ns: list[int]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for n in ns:
        if not args.relay_only:
            runs.append(await run_one(args, n, args.mode, "server", args.duration,
                                      len(runs) + 1))
        if args.baseline_relay or args.relay_only:
            runs.append(await run_one(args, n, "openai-pcmu", "relay", args.duration,
                                      len(runs) + 1))
    return runs


def next_probe(lo: int | None, hi: int | None, n: int, cap: int, resolution: int) -> int | None:
    """The next N of the capacity search (None: done). ``lo``: largest passing N so far,
    ``hi``: smallest failing N so far. Doubles until the first failure, then bisects."""
    if hi is None:
        if n >= cap:
            return None
        return min(n * 2, cap)
    low = lo or 0
    if hi - low <= resolution:
        return None
    return (low + hi) // 2


async def capacity(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    duration = max(args.duration, args.capacity_duration)
    runs: list[dict[str, Any]] = []
    lo: int | None = None
    hi: int | None = None
    n = args.capacity_start
    gen_limit: int | None = None  # smallest N the generator could not drive (and failed)
    lagged_passes: list[int] = []  # N that passed although the generator lagged
    verdict = "search bounded by --capacity-runs"
    while len(runs) < args.capacity_runs:
        r = await run_one(args, n, args.mode, "server", duration, len(runs) + 1)
        runs.append(r)
        ok = rep.capacity_pass(r, args.max_jitter_ms)
        if not r["valid"] and ok:
            # A lagging generator or fake can only add underruns and jitter (frames sent,
            # answered or stamped late), never remove them: the server passed regardless.
            r["pass_despite_generator_lag"] = True
            lagged_passes.append(n)
            print(f"  capacity probe N={n}: PASS although the generator lagged "
                  f"({'; '.join(r['invalid_reasons'])[:160]}): lag only worsens these "
                  "figures", flush=True)
            lo = n if lo is None else max(lo, n)
        elif not r["valid"]:
            # not the server's failure: search below, and say where the generator gave out
            gen_limit = n if gen_limit is None else min(gen_limit, n)
            print(f"  capacity probe N={n}: generator-limited "
                  f"({'; '.join(r['invalid_reasons'])[:160]})", flush=True)
            if lo is None:
                break
        else:
            print(f"  capacity probe N={n}: {'PASS' if ok else 'FAIL'}", flush=True)
            if ok:
                lo = n if lo is None else max(lo, n)
            else:
                hi = n if hi is None else min(hi, n)
        ceiling = min(x for x in (hi, gen_limit) if x is not None) \
            if hi is not None or gen_limit is not None else None
        resolution = max(args.capacity_resolution, int(0.05 * (lo or n)))
        nxt = next_probe(lo, ceiling, n, args.capacity_max, resolution)
        if nxt is None:
            verdict = ("converged" if hi is not None and (gen_limit is None or hi <= gen_limit)
                       else f"generator-limited at N={gen_limit}: the server passed every "
                            "valid run; add generator cores (--gen-cores)"
                       if gen_limit is not None else f"passed up to --capacity-max {n}")
            break
        n = nxt
    if gen_limit is not None and lo is None:
        verdict = (f"stopped at N={gen_limit}: the generator could not keep its cadence; "
                   "add generator cores (--gen-cores) or processes (--calls-per-proc)")
    if lagged_passes:
        verdict += (f"; passes with a lagging generator at N={lagged_passes} (conservative: "
                    "the lag can only add underruns and jitter)")
    cap = {"capacity_calls": lo, "first_failing_calls": hi, "generator_limit_calls": gen_limit,
           "passes_despite_generator_lag": lagged_passes, "verdict": verdict,
           "criterion": f"run >= {duration:.0f}s, every call sustained, 0 underruns, "
                        f"0 stalls, 0 errors, jitter p99 < {args.max_jitter_ms} ms; a run "
                        "whose generator lagged counts only when it passes",
           "server_core": args.server_core, "generator_cores": args.gen_cores}
    return runs, cap


# --------------------------------------------------------------------------- CLI


def parse_cores(text: str) -> list[int]:
    cores: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cores.extend(range(int(a), int(b) + 1))
        elif part.strip():
            cores.append(int(part))
    return cores


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Simulate N concurrent Twilio calls against agentic-fast serve (started "
                    "here, pinned to one core) with fake providers; measure CPU, memory, "
                    "underruns, jitter, latencies; sweep N or search the capacity.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("-n", "--calls", type=int, help="one run with this many calls "
                      "(default 20 when no --sweep/--capacity)")
    what.add_argument("--sweep", help="comma-separated call counts, e.g. 50,100,200,300")
    what.add_argument("--capacity", action="store_true",
                      help="search the largest N meeting the capacity criterion")
    what.add_argument("--reanalyse", metavar="OUT_DIR",
                      help="no runs: recompute table, JSON and PNG from an earlier --out "
                           "directory's raw files (after a change to the analysis)")
    p.add_argument("--mode", choices=MODES, default="openai",
                   help="audio.provider of the server: openai (PCM16 24 kHz), openai-pcmu "
                        "(mu-law passthrough), gemini")
    p.add_argument("--baseline-relay", action="store_true",
                   help="also run the bare relay at every N and report ratios")
    p.add_argument("--relay-only", action="store_true", help="run only the bare relay")
    p.add_argument("--duration", type=float, default=30.0, help="steady-state window, s")
    p.add_argument("--warmup", type=float, default=5.0, help="after the ramp, before the window")
    p.add_argument("--ramp", type=float, default=None,
                   help="seconds over which calls start (default N / --ramp-rate, >= 1)")
    p.add_argument("--ramp-rate", type=float, default=50.0, help="calls started per second")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server-core", type=int, default=None,
                   help="core of the server (default: the first allowed core)")
    p.add_argument("--gen-cores", default=None,
                   help="cores of callers and fakes, e.g. 1 or 1-3 (default: all others)")
    p.add_argument("--spread-gens", action="store_true",
                   help="pin each caller process to one generator core (round robin) "
                        "instead of all of them")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--slots", type=int, default=4,
                   help="a caller process sends its calls' frames in this many sub-ticks of "
                        "the 20 ms clock (call phases spread like real calls)")
    p.add_argument("--calls-per-proc", type=int, default=100,
                   help="calls per caller process (more processes = shorter clock ticks)")
    p.add_argument("--gen-procs", type=int, default=None, help="caller processes (overrides)")
    p.add_argument("--fake-procs", type=int, default=None,
                   help="fake provider processes (default one per 300 calls)")
    p.add_argument("--trace-calls", type=int, default=100,
                   help="calls whose inbound audio is predicted for the inbound latency join "
                        "(the prediction runs the AudioConverter per frame: generator CPU)")
    p.add_argument("--handoff-ms", type=int, default=20, help="audio.handoff_ms of the server")
    p.add_argument("--lead-ms", type=int, default=120, help="bridge.lead_ms of the server")
    p.add_argument("--mark-every", type=int, default=10,
                   help="bridge.mark_every_frames of the server")
    p.add_argument("--response-ms", type=int, default=2000, help="length of every response")
    p.add_argument("--turn-every-ms", type=int, default=4000,
                   help="a caller turn (and response) this long after each response starts")
    p.add_argument("--interrupt-every", type=int, default=3,
                   help="interrupt every k-th response halfway (0: never)")
    p.add_argument("--speedup", type=float, default=5.0,
                   help="the fake streams responses this many times faster than real time")
    p.add_argument("--max-gen-late-ms", type=float, default=5.0,
                   help="a run is invalid if a caller process's send lateness p99 exceeds it")
    p.add_argument("--max-loop-lag-ms", type=float, default=5.0,
                   help="a run is invalid if a caller/fake loop lag p99 exceeds it")
    p.add_argument("--max-jitter-ms", type=float, default=20.0, help="capacity: jitter p99 bound")
    p.add_argument("--capacity-start", type=int, default=50)
    p.add_argument("--capacity-max", type=int, default=1000)
    p.add_argument("--capacity-runs", type=int, default=8, help="bound on capacity runs")
    p.add_argument("--capacity-duration", type=float, default=60.0,
                   help="minimum window of a capacity run, s")
    p.add_argument("--capacity-resolution", type=int, default=10,
                   help="stop bisecting when pass/fail are this close (or 5%%)")
    p.add_argument("--out", default=None,
                   help="output directory (default bench/results/loadgen-<time>)")
    p.add_argument("--json", default=None, help="JSON path (default <out>/loadgen.json)")
    p.add_argument("--png", default=None, help="PNG path (default <out>/loadgen.png)")
    p.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    p.add_argument("--poll-calls-hz", type=float, default=0.0,
                   help="poll GET /calls (all pages, then one call in full) this often during "
                        "the window, and probe /healthz between polls (loop lag as the client "
                        "sees it); 0 = off")
    p.add_argument("--poll-calls-limit", type=int, default=50,
                   help="page size (limit) of the /calls polls")
    p.add_argument("--server-workers", type=int, default=1,
                   help="server.workers of the server under test (all pinned to "
                        "--server-core; CPU is the supervisor's and its workers' together)")
    p.add_argument("--store-url", default=None,
                   help="redis://... : the server under test keeps its call store in this "
                        "Redis (default: SQLite in the run's directory)")
    p.add_argument("--no-metrics", action="store_true",
                   help="metrics.enabled: false on the server (no histograms, no sampling): "
                        "run once with and once without to measure what metrics cost")
    p.add_argument("--gc-young-threshold", type=int, default=None,
                   help="server.gc_young_threshold of the server (0: Python's default "
                        "collector, nothing frozen); default: the server's own")
    p.add_argument("--abuse", choices=ABUSE_KINDS, default=None,
                   help="abuse the server beside the calls during the window (bench/"
                        "load_abuse.py): a ping flood that reads (or never reads) its pongs, "
                        "or slowloris partial request heads; the calls' underruns are the "
                        "figure")
    p.add_argument("--abuse-at", type=float, default=10.0,
                   help="seconds into the window the abuse starts")
    p.add_argument("--abuse-s", type=float, default=5.0, help="how long it lasts (1..60 s)")
    p.add_argument("--abuse-conns", type=int, default=1000,
                   help="slowloris connections (1..5000)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    if args.server_core is None:
        args.server_core = allowed[0]
    args.gen_cores = parse_cores(args.gen_cores) if args.gen_cores else \
        [c for c in allowed if c != args.server_core] or [args.server_core]
    if args.server_core in args.gen_cores and not args.no_pin:
        print(f"warning: server core {args.server_core} is also a generator core: the "
              "server's figures will include generator load", file=sys.stderr)
    if args.sweep:
        ns = [int(x) for x in args.sweep.split(",") if x.strip()]
    elif args.capacity:
        ns = []
    else:
        ns = [args.calls or 20]
    if any(not 1 <= n <= MAX_CALLS for n in ns) or len(ns) > MAX_RUNS:
        p.error(f"call counts must be 1..{MAX_CALLS}, at most {MAX_RUNS} of them")
    if not 1 <= args.capacity_runs <= MAX_RUNS or args.capacity_max > MAX_CALLS:
        p.error(f"--capacity-runs 1..{MAX_RUNS}, --capacity-max <= {MAX_CALLS}")
    if not 1 <= args.slots <= 20:
        p.error("--slots 1..20")
    if not 1 <= args.abuse_s <= 60 or not 1 <= args.abuse_conns <= 5000:
        p.error("--abuse-s 1..60, --abuse-conns 1..5000")
    if not 0 <= args.poll_calls_hz <= 100 or not 1 <= args.poll_calls_limit <= 200:
        p.error("--poll-calls-hz 0..100, --poll-calls-limit 1..200")
    if not 1.0 <= args.duration <= 3600 or not 0 <= args.warmup <= 600:
        p.error("--duration 1..3600 s, --warmup 0..600 s")
    if args.response_ms % 20 or args.response_ms + 500 >= args.turn_every_ms:
        p.error("--response-ms must be a multiple of 20 and well below --turn-every-ms")
    if args.mode == "gemini" and importlib.util.find_spec(
            "agentic_fast.providers.gemini.provider") is None and not args.relay_only:
        p.error("--mode gemini: agentic_fast.providers.gemini.provider does not exist yet")
    if importlib.util.find_spec("agentic_fast.providers.openai.provider") is None \
            and args.mode != "gemini" and not args.relay_only:
        p.error("agentic_fast.providers.openai.provider does not exist yet")
    if args.out is None:
        args.out = args.reanalyse or str(ROOT / "bench" / "results" /
                                         f"loadgen-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    return ns


async def amain(args: argparse.Namespace, ns: list[int]) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from agentic_fast.audio import IMPLEMENTATION

    print(f"loadgen: mode {args.mode}, server on core {args.server_core}, callers/fakes on "
          f"cores {args.gen_cores}{' (not pinned)' if args.no_pin else ''}, audio "
          f"{IMPLEMENTATION}; output in {out}", flush=True)
    cap: dict[str, Any] | None = None
    if args.reanalyse:
        runs = reanalyse(Path(args.reanalyse))
        if not runs:
            print(f"no runs/*/run_meta.json under {args.reanalyse}", file=sys.stderr)
            return 1
        for r in runs:
            print(rep.details(r))
        return report(args, out, runs, None)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):  # stop our processes, then exit
        loop.add_signal_handler(signum, main_task.cancel)
    try:
        if args.capacity:
            runs, cap = await capacity(args)
        else:
            runs = await sweep(args, ns)
    finally:
        await CHILDREN.stop_all()
    return report(args, out, runs, cap)


def report(args: argparse.Namespace, out: Path, runs: list[dict[str, Any]],
           cap: dict[str, Any] | None) -> int:
    from agentic_fast.audio import IMPLEMENTATION

    ratio_rows = rep.ratios(runs)
    doc = {"tool": "bench.loadgen", "argv": sys.argv[1:],
           "started": datetime.now().isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "server_core": args.server_core,
                       "generator_cores": args.gen_cores, "pinned": not args.no_pin,
                       "python": sys.version.split()[0], "audio": IMPLEMENTATION},
           "settings": {k: v for k, v in vars(args).items() if k not in ("json", "png")},
           "runs": runs, "ratios": ratio_rows, "capacity": cap}
    json_path = Path(args.json) if args.json else out / "loadgen.json"
    png_path = Path(args.png) if args.png else out / "loadgen.png"
    rep.write_json(json_path, doc)
    problem = rep.plot_png(png_path, runs, title=f"agentic-fast loadgen {args.mode} "
                           f"(server core {args.server_core}, generator {args.gen_cores})")
    print("\n== summary ==")
    print(rep.table(runs))
    if ratio_rows:
        print()
        print(rep.ratio_table(ratio_rows))
    if cap is not None:
        met = cap["capacity_calls"] is not None and cap["capacity_calls"] >= 300
        print(f"\ncapacity: {cap['capacity_calls']} calls (first failing: "
              f"{cap['first_failing_calls']}); {cap['verdict']}\n  criterion: "
              f"{cap['criterion']}\n  target >= 300 calls on one core: "
              f"{'met' if met else 'not met'}")
    print()
    print(rep.LEGEND)
    print(f"\nJSON: {json_path}")
    print(f"PNG:  {png_path}" if problem is None else f"PNG:  not written ({problem})")
    invalid = [r["label"] for r in runs if not r.get("valid")]
    if invalid:
        print(f"INVALID runs (generator or fake lagged, see reasons above): {invalid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ns = check_args(parser, args)
    if not args.no_pin:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(args.gen_cores))  # keep ourselves off the server core
    try:
        import uvloop

        return uvloop.run(amain(args, ns))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: stopping the processes this run started", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        CHILDREN.kill_all_now()


if __name__ == "__main__":
    raise SystemExit(main())
