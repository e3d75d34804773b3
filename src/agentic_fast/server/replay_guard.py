"""Remembers answered webhooks, so a replay is not answered twice (``server.state_dir``).

A Twilio signature has no timestamp: a signed voice webhook replayed later (by an attacker
who saw one, or a retry that outlived the call) would otherwise place a new call and get a
fresh stream token once the call left the in-memory history, or after a restart. The guard
keeps ``(CallSid, event)`` pairs for ``server.replay_window_s`` (default a day, far beyond
Twilio's retry window of at most 15 s) in a small SQLite file, bounded to
``server.replay_max_entries`` rows (oldest dropped first), plus a bounded in-memory mirror
of the most recent ones.

Failures never stop a call: when the file cannot be opened or written (read-only
directory, full disk, corrupt file), the error is logged and counted
(``replay_guard.db_error``) and the guard goes on with its in-memory set alone, so replays
are still refused until the next restart. Without ``state_dir`` the set is memory-only.
One SQLite statement or two per voice webhook (never per audio frame); the file is in WAL
mode without a sync per commit, so a crash of the process loses nothing written.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from agentic_fast.core import metrics
from agentic_fast.core.log import get_logger

log = get_logger("replay_guard")

#: The in-memory mirror's bound when a database holds the full set.
MIRROR_ENTRIES = 4096
#: Keys longer than this are cut (a CallSid is 34 characters).
MAX_KEY_CHARS = 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    call_sid TEXT NOT NULL,
    event TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (call_sid, event)
);
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (seen_at);
"""


class ReplayGuard:
    """A bounded, expiring, persistent set of ``(call_sid, event)`` pairs."""

    def __init__(self, path: Path | None, *, window_s: float, max_entries: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.window_s = window_s
        self.max_entries = max_entries
        self.clock = clock
        self._mirror: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._mirror_max = max_entries
        self._db: sqlite3.Connection | None = None
        self._rows = 0
        self.errors = 0
        if path is not None:
            self._open(path)

    @property
    def persistent(self) -> bool:
        """True while the pairs are kept in the file (they outlive a restart)."""
        return self._db is not None

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=0.05, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                self._db = db
                self._rows = db.execute("SELECT count(*) FROM seen").fetchone()[0]
                self._prune()
            except BaseException:
                self._db = None
                db.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            self._failed("open", exc)
            return
        self._mirror_max = min(self.max_entries, MIRROR_ENTRIES)
        log.info("replay_guard.opened", path=str(path), entries=self._rows,
                 window_s=self.window_s)

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        metrics.incr("replay_guard.db_error")
        if self.errors <= 3 or self.errors % 100 == 0:
            log.error("replay_guard.db_error", op=op, path=str(self.path), error=str(exc),
                      count=self.errors, fallback="memory")

    def seen(self, call_sid: str, event: str) -> bool:
        """True when ``(call_sid, event)`` was remembered within the window."""
        key = (call_sid[:MAX_KEY_CHARS], event[:MAX_KEY_CHARS])
        since = self.clock() - self.window_s
        at = self._mirror.get(key)
        if at is not None and at >= since:
            return True
        if self._db is None:
            return False
        try:
            row = self._db.execute(
                "SELECT 1 FROM seen WHERE call_sid = ? AND event = ? AND seen_at >= ?",
                (*key, since)).fetchone()
        except sqlite3.Error as exc:
            self._failed("read", exc)
            return False
        return row is not None

    def remember(self, call_sid: str, event: str) -> None:
        """Add ``(call_sid, event)`` (now); drops expired and, past the bound, oldest pairs."""
        key = (call_sid[:MAX_KEY_CHARS], event[:MAX_KEY_CHARS])
        now = self.clock()
        mirror = self._mirror
        mirror[key] = now
        mirror.move_to_end(key)
        since = now - self.window_s
        while mirror and (len(mirror) > self._mirror_max
                          or next(iter(mirror.values())) < since):
            mirror.popitem(last=False)
        if self._db is None:
            return
        try:
            cur = self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?, ?)", (*key, now))
            self._rows += cur.rowcount
            if self._rows > self.max_entries:
                self._prune()
        except sqlite3.Error as exc:
            self._failed("write", exc)

    def _prune(self) -> None:
        """Drop expired pairs, then the oldest beyond ``max_entries`` in small batches (a
        1/256 of the bound at a time), so no single webhook pays for a large delete."""
        assert self._db is not None
        db = self._db
        cur = db.execute("DELETE FROM seen WHERE seen_at < ?", (self.clock() - self.window_s,))
        self._rows = max(0, self._rows - cur.rowcount)
        excess = self._rows - self.max_entries
        if excess > 0:
            batch = excess + self.max_entries // 256
            cur = db.execute("DELETE FROM seen WHERE rowid IN "
                             "(SELECT rowid FROM seen ORDER BY seen_at LIMIT ?)", (batch,))
            metrics.incr("replay_guard.evicted", cur.rowcount)
            self._rows -= cur.rowcount

    def __len__(self) -> int:
        return self._rows if self._db is not None else len(self._mirror)

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error as exc:  # pragma: no cover - close of a broken file
                self._failed("close", exc)
            self._db = None
