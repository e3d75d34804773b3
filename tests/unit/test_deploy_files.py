"""The deployment files agree with the code: every config key the docs name exists, the
supervisors wait longer than the drain, the image's HEALTHCHECK command works without curl.

Cheap checks that run everywhere (the image itself is built in
tests/integration/test_docker.py where Docker is available).
"""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import json
import re
import socket
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from agentic_fast.core.config import Config, ServerConfig

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "agentic_fast"
DOCS = ("docs/deploy.md", "docs/design.md")
#: aiohttp's runner shutdown after the drain (its shutdown_timeout), plus margin
AFTER_DRAIN_S = 10.0


def config_keys(cls: type = Config, prefix: str = "") -> set[str]:
    """Every dotted key path of the config (sections and leaves)."""
    keys = set()
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        keys.add(path)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys |= config_keys(type(default), path + ".")
    return keys


def source_text() -> str:
    return "\n".join(p.read_text() for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("doc", DOCS)
def test_every_config_key_a_doc_names_exists(doc: str) -> None:
    """A dotted name in backticks that starts with a config section is a config key, or a log
    event / counter the code emits (its literal, or an f-string prefix, is in src/)."""
    keys = config_keys()
    sections = {k for k in keys if "." not in k}
    text = (ROOT / doc).read_text()
    source = source_text()
    unknown = []
    for span in re.findall(r"`([^`\n]+)`", text):
        for name in re.findall(r"\b([a-z_]+(?:\.[a-z_]+)+)\b", span):
            if name.split(".")[0] not in sections or name in keys:
                continue
            parent = name.rsplit(".", 1)[0]
            if f'"{name}"' in source or f'"{parent}.{{' in source:
                continue  # a log event or a counter, not a key
            unknown.append(name)
    assert not unknown, f"{doc} names config keys that do not exist: {unknown}"


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value.strip())
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_compose_waits_for_the_drain_and_mounts_config_and_state() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    app = compose["services"]["agentic-fast"]
    drain = ServerConfig().drain_timeout_s
    assert _seconds(app["stop_grace_period"]) >= drain + AFTER_DRAIN_S
    assert app.get("stop_signal", "SIGTERM") == "SIGTERM"
    targets = {v.split(":")[1] for v in app["volumes"]}
    assert {"/etc/agentic-fast/config.yaml", "/var/lib/agentic-fast"} <= targets
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'VOLUME ["/var/lib/agentic-fast"]' in dockerfile
    assert "AGENTIC_FAST_CONFIG=/etc/agentic-fast/config.yaml" in dockerfile
    assert all(p.startswith("127.0.0.1:") for p in app["ports"])  # behind the proxy only


def test_systemd_unit_waits_for_the_drain() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((ROOT / "deploy/agentic-fast.service").read_text())
    service = unit["Service"]
    assert _seconds(service["TimeoutStopSec"]) >= ServerConfig().drain_timeout_s + AFTER_DRAIN_S
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root")
    assert service["NoNewPrivileges"] == "yes"


def test_env_example_names_only_variables_config_reads() -> None:
    config = (ROOT / "config.yaml").read_text()
    read = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", config))
    lines = (ROOT / "deploy/agentic-fast.env.example").read_text().splitlines()
    named = {m.group(1) for line in lines
             if (m := re.match(r"#?\s*([A-Z_][A-Z0-9_]*)=", line))}
    assert named and named <= read, named - read


def healthcheck_argv() -> list[str]:
    """The exec-form ``HEALTHCHECK ... CMD [...]`` of the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, flags=re.M)
    assert match, "Dockerfile: no exec-form HEALTHCHECK CMD"
    argv = json.loads(match.group(1))
    assert argv[0] == "python", argv  # the image has no curl or wget
    return argv


async def _run_healthcheck(port: int) -> int:
    argv = healthcheck_argv()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv[1:], env={"AGENTIC_FAST_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 30)


async def test_healthcheck_command_passes_on_healthz_and_fails_without_it() -> None:
    answers = {"status": 200}

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=answers["status"])

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        assert await _run_healthcheck(port) == 0
        answers["status"] = 503
        assert await _run_healthcheck(port) != 0
    finally:
        await runner.cleanup()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert await _run_healthcheck(closed) != 0
