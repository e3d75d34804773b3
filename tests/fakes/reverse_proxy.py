"""A real nginx reverse proxy on loopback, configured as a TLS-ending proxy would be
(``X-Forwarded-For`` appended, WebSocket upgrades passed through), minus the TLS.

The listening socket is bound here and handed to nginx (its ``NGINX`` environment variable,
the mechanism of its binary upgrade), so the port is known and accepting before nginx runs:
no free-port race and no polling. nginx is started and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.fakes.processes import stop_group

_CONF = """
{user}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            {bind}
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"""


class NginxUnavailable(RuntimeError):
    """No nginx binary on this host."""


def find_nginx() -> str:
    """The nginx binary (PATH, then /usr/sbin); raises ``NginxUnavailable``."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise NginxUnavailable("no nginx binary on PATH or in /usr/sbin")
    return found


class Nginx:
    """One nginx master (and worker) proxying 127.0.0.1:``port`` to ``upstream_port``;
    ``bind`` is the source address of its upstream connections (e.g. 127.0.0.2)."""

    def __init__(self, binary: str, workdir: Path, *, upstream_port: int,
                 bind: str | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.upstream_port = upstream_port
        self.bind = bind
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.set_inheritable(True)
        self._sock = sock
        self.port = sock.getsockname()[1]
        conf = self.workdir / "nginx.conf"
        conf.write_text(_CONF.format(
            dir=self.workdir, port=self.port, upstream=self.upstream_port,
            user="user root;" if os.geteuid() == 0 else "",
            bind=f"proxy_bind {self.bind};" if self.bind else ""))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NGINX": f"{sock.fileno()};"}
        self._proc = await asyncio.create_subprocess_exec(
            self.binary, "-p", str(self.workdir), "-c", str(conf),
            "-e", str(self.workdir / "error.log"), env=env, pass_fds=(sock.fileno(),),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the master (its PID) and wait; SIGKILL its process group after ``grace_s``."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_group(proc, grace_s, term_group=False)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.workdir / "error.log").read_text(errors="replace")
        except OSError:
            return "(no nginx log)"
        return "\n".join(text.splitlines()[-lines:])
