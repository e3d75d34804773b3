"""``agentic-fast demo``: one whole simulated call through the real server, in process and
as ``python -m agentic_fast demo``; its timeline's steps come in order, exit status 0."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentic_fast.demo import voice
from agentic_fast.demo.run import LISTEN_MS, run_demo
from agentic_fast.demo.timeline import STEPS

SRC = Path(__file__).resolve().parents[2] / "src"


def _steps_in(text: str) -> list[str]:
    """The step names of the timeline lines in printed output, in order."""
    return re.findall(r"^\s*\d+\.\d{3} s  (\w+)", text, flags=re.MULTILINE)


async def test_the_demo_call_runs_every_step_in_order() -> None:
    out = io.StringIO()
    code, timeline = await run_demo(out, timeout_s=30)
    assert code == 0, out.getvalue()
    assert [e.step for e in timeline.entries] == list(STEPS)
    assert _steps_in(out.getvalue()) == list(STEPS)
    text = {e.step: e.text for e in timeline.entries}
    assert voice.REQUEST_TEXT in text["transcript"]
    assert "run_command" in text["tool_call"]
    assert "Paris" in text["command"]
    # the truncate point is what the caller heard: at least the time it listened
    heard = int(re.search(r"audio_end_ms=(\d+)", text["truncate"])[1])  # type: ignore[index]
    assert LISTEN_MS <= heard < LISTEN_MS + 1000
    assert "status completed" in text["record"]
    assert "1 agent command(s)" in text["record"]
    assert "demo call complete" in out.getvalue()


async def test_a_demo_that_cannot_finish_says_which_step_and_fails(capsys) -> None:
    code, timeline = await run_demo(io.StringIO(), timeout_s=0.5)
    assert code == 1
    err = capsys.readouterr().err
    assert re.search(r"^demo failed: timed out after 0.5 s waiting for .+", err, re.MULTILINE)
    assert timeline.get("record") is None


def test_python_dash_m_agentic_fast_demo(tmp_path: Path) -> None:
    # a user's secrets in the environment are not read (nor needed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTIC_FAST")}
    env.update(PYTHONPATH=str(SRC), OPENAI_API_KEY="sk-must-not-be-used",
               AGENTIC_FAST_CONFIG=str(tmp_path / "missing.yaml"))
    proc = subprocess.run([sys.executable, "-m", "agentic_fast", "demo"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _steps_in(proc.stdout) == list(STEPS)
    assert "sk-must-not-be-used" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args", [["demo", "--audio", "--seconds", "0.5"]])
def test_python_dash_m_agentic_fast_demo_audio(tmp_path: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-m", "agentic_fast", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "implementation" in proc.stdout
