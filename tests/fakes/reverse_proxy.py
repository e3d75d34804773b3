"""A real nginx reverse proxy on loopback, running the site that ``docs/deploy.md`` documents.

The fenced ``nginx`` block of docs/deploy.md that starts with ``SITE_MARKER`` is taken as it
is; only the deployment's own names are replaced (the upstream address, the ``listen``
address, the certificate paths; each must occur exactly once, so a doc edit that moves them
fails loudly), and ``proxy_bind`` is added when a test needs the proxy's upstream side on its
own address. TLS is real: a self-signed certificate for 127.0.0.1 is made here, and
``client_ssl()`` trusts it.

The listening socket is bound here and handed to nginx (its ``NGINX`` environment variable,
the mechanism of its binary upgrade), so the port is known and accepting before nginx runs:
no free-port race and no polling. nginx is started and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.processes import stop_group

DEPLOY_DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
SITE_MARKER = "# agentic-fast nginx site"
#: what the documented site names that a test replaces (documented value -> test template)
SITE_PLACEHOLDERS = {
    "server 127.0.0.1:8080;": "server 127.0.0.1:{upstream};",
    "listen 443 ssl;": "listen 127.0.0.1:{port} ssl;",
    "/etc/letsencrypt/live/voice.example.com/fullchain.pem": "{cert}",
    "/etc/letsencrypt/live/voice.example.com/privkey.pem": "{key}",
}
PROXY_PASS = "proxy_pass http://agentic_fast;"

# The test's own frame around the site: nginx runs unprivileged in a temp folder.
_MAIN = """
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
    include {dir}/site.conf;
}}
"""


class DeployDocError(AssertionError):
    """docs/deploy.md no longer has the nginx site the proxy tests run."""


def documented_site(doc: Path = DEPLOY_DOC) -> str:
    """The fenced ``nginx`` block of docs/deploy.md that starts with ``SITE_MARKER``."""
    blocks = re.findall(r"^```nginx\n(.*?)^```", doc.read_text(), flags=re.S | re.M)
    sites = [b for b in blocks if b.startswith(SITE_MARKER)]
    if len(sites) != 1:
        raise DeployDocError(f"{doc}: expected one ```nginx block starting with "
                             f"{SITE_MARKER!r}, found {len(sites)}")
    return sites[0]


def site_config(site: str, *, port: int, upstream: int, cert: Path, key: Path,
                bind: str | None = None) -> str:
    """The documented ``site`` with a test's addresses and certificate put in."""
    for documented, template in SITE_PLACEHOLDERS.items():
        count = site.count(documented)
        if count != 1:
            raise DeployDocError(f"{DEPLOY_DOC}: the nginx site must contain {documented!r} "
                                 f"exactly once (found {count}); update SITE_PLACEHOLDERS")
        site = site.replace(documented, template.format(
            port=port, upstream=upstream, cert=cert, key=key))
    if bind is not None:
        if site.count(PROXY_PASS) != 1:
            raise DeployDocError(f"{DEPLOY_DOC}: the nginx site must contain {PROXY_PASS!r}")
        site = site.replace(PROXY_PASS, f"{PROXY_PASS}\n        proxy_bind {bind};")
    return site


def self_signed_certificate(workdir: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A fresh EC key and a one-day self-signed certificate for ``host`` (an IP SAN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class NginxUnavailable(RuntimeError):
    """No nginx binary on this host."""


def find_nginx() -> str:
    """The nginx binary (PATH, then /usr/sbin); raises ``NginxUnavailable``."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise NginxUnavailable("no nginx binary on PATH or in /usr/sbin")
    return found


class Nginx:
    """One nginx master (and worker) running the documented site: TLS on
    127.0.0.1:``port``, proxying to ``upstream_port``; ``bind`` is the source address of its
    upstream connections (e.g. 127.0.0.2)."""

    def __init__(self, binary: str, workdir: Path, *, upstream_port: int,
                 bind: str | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.upstream_port = upstream_port
        self.bind = bind
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.cert: Path | None = None

    def client_ssl(self) -> ssl.SSLContext:
        """A client context that trusts this proxy's certificate (and nothing else)."""
        assert self.cert is not None, "start() first"
        return ssl.create_default_context(cafile=str(self.cert))

    def url(self, path: str, scheme: str = "https") -> str:
        """``scheme``://127.0.0.1:``port````path`` (``wss`` for the media stream)."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.set_inheritable(True)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.cert, key = self_signed_certificate(self.workdir)
        (self.workdir / "site.conf").write_text(site_config(
            documented_site(), port=self.port, upstream=self.upstream_port, cert=self.cert,
            key=key, bind=self.bind))
        conf = self.workdir / "nginx.conf"
        conf.write_text(_MAIN.format(dir=self.workdir,
                                     user="user root;" if os.geteuid() == 0 else ""))
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
