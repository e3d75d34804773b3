"""Shared fixtures: every audio test runs against both implementations."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from agentic_fast._audiocore import numpy_twin as numpy_twin


def _native() -> ModuleType | None:
    try:
        from agentic_fast import _audio
    except ImportError:
        return None
    return _audio


@pytest.fixture(params=["native", "python"], scope="session")
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The native extension or its numpy twin (the same API)."""
    if request.param == "python":
        return numpy_twin
    native = _native()
    if native is None:
        if os.environ.get("AGENTIC_FAST_REQUIRE_EXT") == "1":
            pytest.fail("AGENTIC_FAST_REQUIRE_EXT=1 but agentic_fast._audio is not importable")
        pytest.skip("native extension not built")
    return native


@pytest.fixture(scope="session")
def both_impls() -> tuple[ModuleType, ModuleType]:
    """(native, python) for parity tests; skipped without the extension."""
    native = _native()
    if native is None:
        if os.environ.get("AGENTIC_FAST_REQUIRE_EXT") == "1":
            pytest.fail("AGENTIC_FAST_REQUIRE_EXT=1 but agentic_fast._audio is not importable")
        pytest.skip("native extension not built")
    return native, numpy_twin


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own HOME: the default call store (``store.path``,
    ``~/.agentic_fast/calls.db``) of every app a test builds is a fresh file, never the
    user's."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
