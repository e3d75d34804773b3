"""The Docker image: built from the repository's Dockerfile, started, healthy, not root.

Runs where a Docker daemon answers (``docker info``) and the Dockerfile's base image is
already on it (the build pulls nothing else from an image registry; it needs the Python
package index for the dependencies). Otherwise it skips with the reason; with
``AGENTIC_FAST_DOCKER_TEST=1`` it runs regardless, and a missing daemon or image fails.
Everything it creates (image, container) is removed by name, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
FORCE = os.environ.get("AGENTIC_FAST_DOCKER_TEST") == "1"
BUILD_TIMEOUT_S = 1800
HEALTHY_TIMEOUT_S = 120


def _docker(*args: str, timeout: float = 60, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check, stdin=subprocess.DEVNULL)


def base_image() -> str:
    """The ``PYTHON_IMAGE`` build argument's default in the Dockerfile."""
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert found, "Dockerfile: no ARG PYTHON_IMAGE=<image>"
    return found.group(1)


def docker_unavailable() -> str | None:
    """Why the image cannot be built here, or None."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        info = _docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker daemon ({lines[-1] if lines else f'exit {info.returncode}'})"
    image = base_image()
    if _docker("image", "inspect", image, check=False).returncode != 0:
        return f"base image {image} is not available locally (no image registry here)"
    return None


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    reason = docker_unavailable()
    if reason is not None:
        if FORCE:
            pytest.fail(f"AGENTIC_FAST_DOCKER_TEST=1 but {reason}")
        pytest.skip(f"{reason}; AGENTIC_FAST_DOCKER_TEST=1 forces the test")
    tag = f"agentic-fast-test:{uuid.uuid4().hex[:12]}"
    try:
        build = _docker("build", "-t", tag, str(ROOT),
                        timeout=BUILD_TIMEOUT_S, check=False)
        assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
        yield tag
    finally:
        _docker("image", "rm", "--force", tag, check=False)


class HealthEvents:
    """``docker events`` for one container's health, read on a thread: ``wait()`` returns the
    first ``healthy``/``unhealthy`` status (started before the container, so none is lost)."""

    def __init__(self, name: str) -> None:
        self._proc = subprocess.Popen(
            ["docker", "events", "--filter", f"container={name}",
             "--filter", "event=health_status", "--format", "{{json .}}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True)
        self.status: str | None = None
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            action = json.loads(line).get("Action", "")
            if action.startswith("health_status"):
                self.status = action.split(":", 1)[-1].strip()
                break
        self._done.set()

    def wait(self, timeout: float) -> str | None:
        self._done.wait(timeout)
        return self.status

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def test_image_runs_healthy_as_non_root_and_stops_cleanly(image: str) -> None:
    name = f"agentic-fast-test-{uuid.uuid4().hex[:12]}"
    events = HealthEvents(name)
    try:
        run = _docker(
            "run", "--detach", "--name", name, "--publish", "127.0.0.1::8080",
            # the image's own HEALTHCHECK command, checked every second instead of 15 s
            "--health-interval", "1s",
            "--env", "PUBLIC_URL=https://voice.example.test",
            "--env", "AGENTIC_FAST_API_TOKEN=docker-test-token",
            "--env", "OPENAI_API_KEY=sk-docker-test",  # never used: no call is placed
            image, check=False)
        assert run.returncode == 0, run.stderr
        status = events.wait(HEALTHY_TIMEOUT_S)
        logs = _docker("logs", name, check=False)
        assert status == "healthy", (status, (logs.stdout + logs.stderr)[-3000:])

        port = _docker("port", name, "8080/tcp").stdout.split()[0].rsplit(":", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["status"] == "ok"

        uid = _docker("exec", name, "id", "-u").stdout.strip()
        assert uid != "0"
        assert _docker("inspect", "--format", "{{.Config.User}}", name).stdout.strip() == "agentic"
        impl = _docker("exec", name, "python", "-c",
                       "import agentic_fast.audio as a; print(a.IMPLEMENTATION)")
        assert impl.stdout.strip() == "native"

        stop = _docker("stop", "--time", "45", name, timeout=90)
        assert stop.returncode == 0
        exit_code = _docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = _docker("logs", name, check=False)
        assert exit_code == "0", (logs.stdout + logs.stderr)[-3000:]
        assert "server.stopped" in logs.stdout + logs.stderr  # the drain ran to its end
    finally:
        events.close()
        _docker("rm", "--force", name, check=False)
