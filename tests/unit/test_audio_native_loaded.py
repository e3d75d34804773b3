"""The native extension really loaded where it must (CI sets AGENTIC_FAST_REQUIRE_EXT=1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import agentic_fast.audio as audio

REQUIRED = os.environ.get("AGENTIC_FAST_REQUIRE_EXT") == "1"


@pytest.mark.skipif(not REQUIRED, reason="AGENTIC_FAST_REQUIRE_EXT is not set")
def test_native_extension_is_the_active_implementation() -> None:
    from agentic_fast import _audio

    assert audio.IMPLEMENTATION == "native"
    assert audio.implementation_module() is _audio
    assert _audio.__file__.endswith((".so", ".pyd"))
    assert audio.AudioConverter is _audio.AudioConverter
    assert audio.ulaw_encode is _audio.ulaw_encode


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTIC_FAST_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_no_ext_switch_selects_the_python_twin() -> None:
    out = _run("import agentic_fast.audio as a; print(a.IMPLEMENTATION)", AGENTIC_FAST_NO_EXT="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python"


def test_require_ext_without_extension_is_an_import_error() -> None:
    # Hide the extension by making its import fail, the way a missing build would.
    code = (
        "import sys; sys.modules['agentic_fast._audio'] = None\n"
        "import agentic_fast.audio"
    )
    out = _run(code, AGENTIC_FAST_REQUIRE_EXT="1")
    assert out.returncode != 0
    assert "AGENTIC_FAST_REQUIRE_EXT=1" in out.stderr


def test_missing_extension_falls_back_to_python_when_not_required() -> None:
    code = (
        "import sys; sys.modules['agentic_fast._audio'] = None\n"
        "import agentic_fast.audio as a; print(a.IMPLEMENTATION)"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python"
