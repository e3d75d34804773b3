"""Run the server on uvloop with a graceful drain on SIGTERM/SIGINT.

Twilio never reconnects a media stream, so closing sockets early hangs up on callers: on
the first signal the server stops taking calls (``/readyz`` fails, webhooks answer a polite
refusal) and waits for active calls to end, up to ``server.drain_timeout_s``; a second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import signal

import uvloop
from aiohttp import web

from agentic_fast.call.stream_handler import BridgeFactory
from agentic_fast.core import log as logmod
from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.core.log import get_logger
from agentic_fast.notify import build_notifier
from agentic_fast.server.app import (
    SERVICES,
    begin_drain,
    create_app,
    drain,
    require_public_config,
    start_site,
)
from agentic_fast.server.supervisor import Supervisor
from agentic_fast.server.worker_mode import WorkerMode
from agentic_fast.server.workers import WorkerIdentity

log = get_logger("serve")

#: descriptors kept for all but calls and pending connections: the listening socket, logs,
#: the gateway, the REST client, webhooks and health checks on keep-alive connections
DESCRIPTOR_RESERVE = 64
#: descriptors one call holds: its media stream and its model socket
DESCRIPTORS_PER_CALL = 2


def default_bridge_factory(config: Config) -> BridgeFactory:
    """The production bridge: audio to the configured realtime provider and back."""
    from agentic_fast.call.factory import make_bridge_factory

    return make_bridge_factory(config)


async def serve(config: Config, *, host: str | None = None, port: int | None = None,
                bridge_factory: BridgeFactory | None = None,
                ready: asyncio.Future[int] | None = None,
                worker: WorkerIdentity | None = None) -> None:
    """Serve until a signal; ``ready`` (if given) receives the bound port. ``worker``: this
    process is that worker of several (``serve --workers N``, see ``server/supervisor.py``)."""
    require_public_config(config, host)
    log_config_warnings(config)
    log_capacity(config, raise_nofile_limit())
    notifier = build_notifier(config)  # post-call webhook / Telegram; None when not set
    app = create_app(config, bridge_factory=bridge_factory or default_bridge_factory(config))
    if notifier is not None:
        notifier.attach(app, app[SERVICES].manager)
    mode = None
    if worker is not None:
        mode = WorkerMode(app, worker)
    runner = make_runner(app, config)
    await runner.setup()
    site = await start_site(runner, host or config.server.host,
                            config.server.port if port is None else port,
                            **(mode.site_options() if mode is not None else {}))
    bound = site.port
    direct = None
    if mode is not None:
        await mode.start(site)
        if config.server.worker_direct_ports:  # a test/debug door to this worker alone
            direct = await start_site(runner, "127.0.0.1", 0, handover=mode.handover)
            log.info("worker.direct", worker=worker.worker_id if worker else None,
                     port=direct.port)
    tune_gc(config.server.gc_young_threshold)
    log.info("server.listening", host=host or config.server.host, port=bound,
             public_url=config.server.public_url,
             **({"worker": worker.worker_id} if worker is not None else {}))
    if ready is not None and not ready.done():
        ready.set_result(bound)

    stop = asyncio.Event()
    signals = 0
    drain_task: asyncio.Future[bool] | None = None

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        log.info("server.signal", signal=signal.Signals(signum).name, count=signals)
        if signals == 1:
            begin_drain(app)
        stop.set()
        if signals > 1 and drain_task is not None:
            drain_task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
        timeout = config.server.drain_timeout_s if signals == 1 else 0.0
        drain_task = asyncio.ensure_future(drain(app, timeout))
        try:
            await drain_task
        except asyncio.CancelledError:
            log.warning("server.drain_aborted")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if mode is not None:
            await mode.close()
        await runner.cleanup()
        log.info("server.stopped")


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The app's runner: an idle keep-alive HTTP connection (or one that sends half of a
    next request) is closed after ``server.http_keepalive_s``."""
    return web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0,
                         keepalive_timeout=config.server.http_keepalive_s)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the ``(soft, hard)`` in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
        log.warning("server.nofile_not_raised", soft=soft, hard=hard, error=str(exc))
        return soft, hard
    return target, hard


def capacity_warnings(config: Config, nofile: int) -> tuple[int, list[str]]:
    """How many calls ``nofile`` descriptors hold beside the pending connections and the
    reserve, and a warning (naming the key) for each cap the descriptors cannot honour."""
    server = config.server
    calls = max(0, (nofile - DESCRIPTOR_RESERVE - server.max_pending_total)
                // DESCRIPTORS_PER_CALL)
    warnings = []
    if server.max_connections_total > calls:
        warnings.append(
            f"server.max_connections_total ({server.max_connections_total}) exceeds what "
            f"{nofile} file descriptors hold: {calls} calls at {DESCRIPTORS_PER_CALL} each, "
            f"beside server.max_pending_total ({server.max_pending_total}) and a reserve of "
            f"{DESCRIPTOR_RESERVE}; raise the hard limit (ulimit -Hn) or lower the cap")
    if server.max_pending_total + DESCRIPTOR_RESERVE > nofile:
        warnings.append(
            f"server.max_pending_total ({server.max_pending_total}) leaves no descriptors "
            f"for calls under a limit of {nofile}")
    return calls, warnings


def log_capacity(config: Config, nofile: tuple[int, int]) -> None:
    """Log what the server can hold with its descriptors; warn (counted) about caps above it."""
    soft, hard = nofile
    server = config.server
    calls, warnings = capacity_warnings(config, soft)
    log.info("server.capacity", nofile_soft=soft, nofile_hard=hard, calls=calls,
             max_connections_total=server.max_connections_total,
             max_pending_total=server.max_pending_total,
             max_pending_per_ip=server.max_pending_per_ip,
             head_timeout_s=server.head_timeout_s)
    for warning in warnings:
        metrics.incr("config.warnings")
        log.warning("config.warning", key=warning.split(" ", 1)[0], detail=warning)


def log_config_warnings(config: Config) -> None:
    """Log (and count) each ``Config.warnings()`` line, e.g. a deprecated model, with its key."""
    for warning in config.warnings():
        key = warning.split(":", 1)[0].split(" ", 1)[0]
        metrics.incr("config.warnings")
        log.warning("config.warning", key=key, detail=warning)


def tune_gc(young_threshold: int = 10_000) -> None:
    """Fewer collections on the audio path: the objects built at startup leave the
    collector's generations (``gc.freeze``), and the young generation is collected every
    ``young_threshold`` allocations instead of 700 (a call's objects are short-lived and,
    since calls break their cycles at the end, freed by reference counting). 0 leaves
    Python's defaults. ``server.gc_young_threshold``; README "Load test" has its A/B."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(young_threshold, gen1, gen2)


def run(config: Config, *, host: str | None = None, port: int | None = None,
        workers: int | None = None) -> int:
    """Blocking entry point of ``agentic-fast serve``: one process, or with ``workers``
    (default ``server.workers``) above 1 a supervisor of that many worker processes."""
    logmod.configure(config.logging.level, config.logging.format)
    count = config.server.worker_count if workers is None else workers
    if count > 1:
        return Supervisor(config, count, run_worker, host=host, port=port).run()
    uvloop.run(serve(config, host=host, port=port))
    return 0


def run_worker(config: Config, worker: WorkerIdentity, *, host: str | None, port: int) -> int:
    """A worker process's body (forked by the supervisor): serve on the shared port."""
    uvloop.run(serve(config, host=host, port=port, worker=worker))
    return 0
