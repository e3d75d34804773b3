"""ReplayGuard: a bounded, expiring set of answered webhooks that survives a restart."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agentic_fast.core import metrics
from agentic_fast.server.replay_guard import ReplayGuard


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def guard(path: Path | None, clock: Clock, *, window_s: float = 600.0,
          max_entries: int = 1000) -> ReplayGuard:
    return ReplayGuard(path, window_s=window_s, max_entries=max_entries, clock=clock)


def test_remembers_and_expires(tmp_path: Path) -> None:
    clock = Clock()
    g = guard(tmp_path / "r.sqlite3", clock)
    assert g.persistent
    assert not g.seen("CA1", "voice")
    g.remember("CA1", "voice")
    assert g.seen("CA1", "voice")
    assert not g.seen("CA1", "status")  # pairs, not sids
    clock.now += 599
    assert g.seen("CA1", "voice")
    clock.now += 2
    assert not g.seen("CA1", "voice")
    g.close()


def test_survives_a_restart_and_outlives_the_memory_mirror(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "state" / "replay.sqlite3"
    g = guard(path, clock, max_entries=100_000)
    for i in range(5000):  # more than the in-memory mirror keeps
        g.remember(f"CA{i:032d}", "voice")
    assert g.seen(f"CA{0:032d}", "voice")
    g.close()
    again = guard(path, clock, max_entries=100_000)
    assert again.seen(f"CA{0:032d}", "voice") and again.seen(f"CA{4999:032d}", "voice")
    assert len(again) == 5000
    again.close()


def test_size_is_bounded_oldest_dropped(tmp_path: Path) -> None:
    clock = Clock()
    g = guard(tmp_path / "r.sqlite3", clock, max_entries=100)
    for i in range(1000):
        clock.now += 0.001
        g.remember(f"CA{i}", "voice")
        assert len(g) <= 100
    assert g.seen("CA999", "voice")
    g.close()
    reopened = guard(tmp_path / "r.sqlite3", clock, max_entries=100)
    assert not reopened.seen("CA0", "voice")
    assert reopened.seen("CA999", "voice")
    reopened.close()


def test_memory_only_without_a_path() -> None:
    clock = Clock()
    g = guard(None, clock, max_entries=100)
    assert not g.persistent
    for i in range(150):
        g.remember(f"CA{i}", "voice")
    assert len(g) == 100 and g.seen("CA149", "voice") and not g.seen("CA0", "voice")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_dir_falls_back_to_memory(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    _check_fallback(ro / "sub" / "r.sqlite3", caplog)


def test_a_path_that_is_a_directory_falls_back_to_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "r.sqlite3").mkdir()
    _check_fallback(tmp_path / "r.sqlite3", caplog)


def test_a_corrupt_file_falls_back_to_memory(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    _check_fallback(path, caplog)


def _check_fallback(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = metrics.get("replay_guard.db_error")
    with caplog.at_level(logging.ERROR, logger="agentic_fast"):
        g = guard(path, Clock())
    assert not g.persistent
    assert metrics.get("replay_guard.db_error") == before + 1
    assert any("replay_guard.db_error" in r.getMessage() for r in caplog.records)
    g.remember("CA1", "voice")  # still refuses replays, in memory
    assert g.seen("CA1", "voice")


def test_write_errors_are_counted_and_memory_carries_on(tmp_path: Path) -> None:
    clock = Clock()
    g = guard(tmp_path / "r.sqlite3", clock)
    g._db.execute("DROP TABLE seen")  # the file breaks under the guard
    before = metrics.get("replay_guard.db_error")
    g.remember("CA1", "voice")
    assert g.seen("CA1", "voice")  # from memory
    assert not g.seen("CA2", "voice")
    assert metrics.get("replay_guard.db_error") == before + 2  # the write and the read
    g.close()
