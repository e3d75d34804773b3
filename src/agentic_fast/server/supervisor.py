"""``serve --workers N``: one supervisor process, N worker processes on one port.

The supervisor reserves the port (a bound, never listening ``SO_REUSEPORT`` socket, so
``--port 0`` picks one port for all), makes a private runtime directory for the workers'
Unix sockets and a fresh ``PROMETHEUS_MULTIPROC_DIR``, and forks the workers (ids
``0..N-1``). Each worker runs its own uvloop and accepts on the port with ``SO_REUSEPORT``
(the kernel spreads connections); see ``server/worker_mode.py`` for what ties them together.

It does no I/O of its own: it waits for signals (``sigtimedwait``). A worker that dies is
reaped, logged and counted (``workers.died``), ``mark_process_dead`` is called for its
metrics, and it is forked again with the same id after a backoff (``core/backoff.py``; the
episode restarts once a worker has lived ``STABLE_S``); the other workers and their calls are
untouched. On SIGTERM/SIGINT every worker is told to drain (``server/runner.py`` rules) and
the supervisor exits 0 once the last one has; a second signal is passed on (stop at once).
Workers leave the terminal's process group (a Ctrl-C reaches the supervisor only) and get
SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agentic_fast.core import metrics
from agentic_fast.core.backoff import Backoff, BackoffRun
from agentic_fast.core.config import Config
from agentic_fast.core.log import get_logger
from agentic_fast.server.workers import WorkerIdentity, runtime_dir

__all__ = ["RESTART_BACKOFF", "STABLE_S", "Supervisor"]

log = get_logger("supervisor")

#: the wait before re-forking a worker that died: at once, then 0.5 s doubling up to 30 s
RESTART_BACKOFF = Backoff(base_s=0.5, factor=2.0, max_delay_s=30.0, max_attempts=None,
                          max_total_s=None, first_immediate=True, jitter=0.1)
#: a worker that lived this long before dying restarts at once (a fresh backoff episode)
STABLE_S = 60.0
#: the longest the supervisor waits without looking at its children (a lost SIGCHLD)
_POLL_S = 1.0
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1


class WorkerBody(Protocol):
    """What a forked worker runs (``runner.run_worker``); its return is the exit status."""

    def __call__(self, config: Config, worker: WorkerIdentity, *, host: str | None,
                 port: int) -> int: ...


@dataclass
class _Worker:
    worker_id: int
    pid: int = 0
    started: float = 0.0
    backoff: BackoffRun | None = None
    restart_at: float | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Runs ``count`` workers (each forked to run ``body``) of ``config`` on ``host:port``
    until a signal drains them."""

    def __init__(self, config: Config, count: int, body: WorkerBody, *,
                 host: str | None = None, port: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if count < 2:
            raise ValueError("a supervisor runs 2 workers or more (1: serve in-process)")
        self.config = config
        self.count = count
        self._body = body
        self.host = host or config.server.host
        self.port = config.server.port if port is None else port
        self._clock = clock
        self._workers = [_Worker(i) for i in range(count)]
        self._by_pid: dict[int, _Worker] = {}
        self._signals = 0
        self._runtime: Path | None = None
        self._reserve: socket.socket | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        """Fork the workers, keep them running, drain on a signal; the exit status."""
        self._reserve = _reserve_port(self.host, self.port)
        self.port = self._reserve.getsockname()[1]
        self._runtime = runtime_dir(self.config.server.state_dir)
        prom = self._runtime / "prometheus"
        prom.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom)  # read when prometheus loads
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for worker in self._workers:
                self._spawn(worker)
            log.info("supervisor.started", pid=os.getpid(), workers=self.count,
                     host=self.host, port=self.port, instance_id=self.config.server.instance_id,
                     runtime_dir=str(self._runtime))
            self._loop()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            self._reserve.close()
            shutil.rmtree(self._runtime, ignore_errors=True)
        log.info("supervisor.stopped")
        return 0

    def _loop(self) -> None:
        while True:
            self._reap()
            if self._signals and not self._by_pid:
                return
            self._restart_due()
            timeout = _POLL_S
            due = [w.restart_at for w in self._workers if w.restart_at is not None]
            if due:
                timeout = max(0.0, min(timeout, min(due) - self._clock()))
            info = signal.sigtimedwait(_SIGNALS, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self._on_signal(info.si_signo)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        log.info("supervisor.signal", signal=signal.Signals(signum).name, count=self._signals,
                 workers=len(self._by_pid))
        for worker in self._workers:
            worker.restart_at = None  # draining: nothing is restarted
        for pid in list(self._by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # a second one tells them to stop at once

    # -- children ------------------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        assert self._runtime is not None
        identity = WorkerIdentity(self.config.server.instance_id, worker.worker_id, self.count,
                                  self._runtime)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's body runs in the forked process
            os._exit(self._child(identity))
        worker.pid, worker.started, worker.restart_at = pid, self._clock(), None
        self._by_pid[pid] = worker
        log.info("worker.started", worker=worker.worker_id, pid=pid, restarts=worker.restarts)

    def _child(self, identity: WorkerIdentity) -> int:  # pragma: no cover - forked process
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            os.setpgid(0, 0)  # a terminal's Ctrl-C goes to the supervisor, which drains us
            _die_with_parent()
            if self._reserve is not None:
                self._reserve.close()
            _fresh_metric_values()
            code = self._body(self.config, identity, host=self.host, port=self.port)
        except BaseException:
            log.exception("worker.crashed", worker=identity.worker_id)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return code

    def _reap(self) -> None:
        while self._by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._by_pid.pop(pid, None)
            if worker is not None:
                self._exited(worker, pid, status)

    def _exited(self, worker: _Worker, pid: int, status: int) -> None:
        _mark_dead(pid)
        code = os.waitstatus_to_exitcode(status)
        worker.exits.append(code)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        if self._signals:
            log.info("worker.stopped", worker=worker.worker_id, pid=pid, status=how,
                     remaining=len(self._by_pid))
            return
        lived = self._clock() - worker.started
        if worker.backoff is None or lived >= STABLE_S:
            worker.backoff = RESTART_BACKOFF.start()
        delay = worker.backoff.next_delay() or 0.0
        worker.restart_at = self._clock() + delay
        worker.restarts += 1
        metrics.incr("workers.died")
        # its live calls are gone with it (the carrier hangs up on a closed stream)
        log.error("worker.died", worker=worker.worker_id, pid=pid, status=how,
                  lived_s=round(lived, 3), restart_in_s=round(delay, 3),
                  detail="its calls ended with it")

    def _restart_due(self) -> None:
        now = self._clock()
        for worker in self._workers:
            if worker.restart_at is not None and worker.restart_at <= now:
                metrics.incr("workers.restarted")
                self._spawn(worker)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (never listening) to ``host:port`` with ``SO_REUSEPORT``: holds the
    port, and picks one for ``port`` 0, that every worker then listens on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:  # pragma: no cover - forked process
    """SIGTERM (a drain) to this worker if the supervisor dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _fresh_metric_values() -> None:  # pragma: no cover - forked process
    """prometheus-client picks its value class (memory or mmap files) when it is imported;
    if the supervisor had imported it before setting ``PROMETHEUS_MULTIPROC_DIR``, choose
    again in the worker, before any metric exists."""
    values = sys.modules.get("prometheus_client.values")
    if values is None:
        return
    chosen = values.get_value_class()
    values.ValueClass = chosen  # type: ignore[attr-defined]
    export = sys.modules.get("agentic_fast.core.metrics_export")
    if export is not None:
        export.ValueClass = chosen  # type: ignore[attr-defined]


def _mark_dead(pid: int) -> None:
    """Drop a gone worker's live gauges from the shared metrics (``docs/metrics.md``)."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except Exception as exc:
        log.warning("supervisor.mark_dead_failed", pid=pid, error=str(exc))
