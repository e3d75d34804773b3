"""A real ``redis-server`` (Debian package) on a loopback port, in a temp dir: not a fake,
the store tests run against the real server. Started in a session of its own; stopped,
or killed with SIGKILL to test a crash, by its own pid only."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


class RedisUnavailable(RuntimeError):
    """redis-server is missing or did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` keeping its files in ``directory``;
    ``appendonly`` (fsync always) makes what it acknowledged survive a SIGKILL."""

    def __init__(self, directory: Path, *, port: int | None = None,
                 appendonly: bool = False) -> None:
        if REDIS_SERVER is None:
            raise RedisUnavailable("redis-server is not installed (apt install redis-server)")
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start it and return once it logs that it accepts connections."""
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--logfile", "",
                "--daemonize", "no", "--protected-mode", "yes"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        seen = b""
        while b"Ready to accept connections" not in seen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                self.stop()
                raise RedisUnavailable(f"redis-server did not start in {timeout_s} s: "
                                       f"{seen[-500:]!r}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                code = self.proc.wait()
                raise RedisUnavailable(f"redis-server exited ({code}): {seen[-500:]!r}")
            seen += chunk
        # keep draining its log so it never blocks on a full pipe
        threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True,
                         name=f"redis-log-{self.port}").start()

    def kill(self) -> None:
        """SIGKILL (a crash): nothing is flushed beyond what appendonly already wrote."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()



def _drain(pipe: IO[bytes]) -> None:
    """Read the server's log to EOF (it exits), then close our end."""
    with contextlib.suppress(OSError, ValueError), pipe:
        while pipe.read1(65536):  # type: ignore[attr-defined]
            pass
