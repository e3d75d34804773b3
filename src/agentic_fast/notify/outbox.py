"""The persisted outbox of post-call deliveries (SQLite, ``<server.state_dir>/outbox.sqlite3``).

Each ended call is one ``calls`` row (its record as JSON, and the summary once written)
and one ``deliveries`` row per destination, inserted in one transaction, so a restart or
a receiver outage loses nothing. A delivered row is deleted (the call's row goes with its
last delivery); one that fails for good moves to ``dead`` (bounded, with the record, for
an operator to inspect or replay). The number of waiting deliveries is bounded.

This class is synchronous: the notifier runs every call on its own single thread (never
on the event loop). WAL mode without a sync per commit: a crash of the process loses
nothing written. Without a path the outbox lives in memory (lost on restart).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agentic_fast.core import metrics
from agentic_fast.core.errors import OutboxFullError
from agentic_fast.core.log import get_logger

log = get_logger("notify.outbox")

#: Dead letters kept at most (the oldest go first).
DEAD_MAX: Final = 1000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    summary TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL REFERENCES calls (call_id),
    destination TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (call_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    created_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    record TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """A delivery due now: its row, and its call's record and summary."""

    id: int
    call_id: str
    destination: str
    created_at: float
    attempts: int
    progress: int
    record: str
    summary: str | None


class Outbox:
    """Deliveries waiting to be made, in a SQLite file (or memory)."""

    def __init__(self, path: Path | None, *, max_pending: int) -> None:
        self.path = path
        self.max_pending = max_pending
        self._db = self._open(path)

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def _open(self, path: Path | None) -> sqlite3.Connection:
        if path is not None:
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                db = sqlite3.connect(path, timeout=5.0, isolation_level=None,
                                     check_same_thread=False)
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.executescript(_SCHEMA)
                except BaseException:
                    db.close()
                    raise
                log.info("notify.outbox.opened", path=str(path), pending=self._count(db))
                return db
            except (sqlite3.Error, OSError) as exc:
                metrics.incr("notify.outbox.db_error")
                log.error("notify.outbox.db_error", op="open", path=str(path), error=str(exc),
                          fallback="memory")
                self.path = None
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.executescript(_SCHEMA)
        return db

    @staticmethod
    def _count(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT count(*) FROM deliveries").fetchone()[0])

    def pending(self) -> int:
        """Deliveries waiting (due or not)."""
        return self._count(self._db)

    def add(self, call_id: str, record: str, destinations: Sequence[str], now: float) -> int:
        """Queue ``record`` for each destination (idempotent per call and destination);
        returns how many deliveries were added. Raises ``OutboxFullError``."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._count(db) + len(destinations) > self.max_pending:
                raise OutboxFullError(f"{self.max_pending} deliveries are waiting")
            db.execute("INSERT OR IGNORE INTO calls (call_id, record, created_at) "
                       "VALUES (?, ?, ?)", (call_id, record, now))
            added = 0
            for destination in destinations:
                cur = db.execute(
                    "INSERT OR IGNORE INTO deliveries (call_id, destination, created_at, "
                    "next_at) VALUES (?, ?, ?, ?)", (call_id, destination, now, now))
                added += cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

    def claim_due(self, now: float, limit: int, lease_s: float) -> list[Pending]:
        """Up to ``limit`` deliveries due at ``now`` (oldest first), each pushed ``lease_s``
        ahead so a crash during its attempt retries it later instead of never."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                "SELECT d.id, d.call_id, d.destination, d.created_at, d.attempts, d.progress, "
                "c.record, c.summary FROM deliveries d JOIN calls c USING (call_id) "
                "WHERE d.next_at <= ? ORDER BY d.next_at, d.id LIMIT ?", (now, limit)).fetchall()
            db.executemany("UPDATE deliveries SET next_at = ? WHERE id = ?",
                           [(now + lease_s, row[0]) for row in rows])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return [Pending(*row) for row in rows]

    def next_due(self) -> float | None:
        """When the earliest delivery is due (``None``: nothing waits)."""
        row = self._db.execute("SELECT min(next_at) FROM deliveries").fetchone()
        return None if row[0] is None else float(row[0])

    def set_summary(self, call_id: str, summary: str) -> None:
        self._db.execute("UPDATE calls SET summary = ? WHERE call_id = ?", (summary, call_id))

    def retry(self, item_id: int, *, attempts: int, next_at: float, progress: int,
              error: str) -> None:
        self._db.execute("UPDATE deliveries SET attempts = ?, next_at = ?, progress = ?, "
                         "last_error = ? WHERE id = ?",
                         (attempts, next_at, progress, error, item_id))

    def done(self, item: Pending) -> None:
        """The delivery was made: remove it (and its call once no delivery is left)."""
        self._remove(item)

    def dead(self, item: Pending, *, attempts: int, error: str, now: float) -> None:
        """The delivery failed for good: move it to ``dead`` (bounded)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO dead (call_id, destination, created_at, dead_at, attempts, "
                       "error, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (item.call_id, item.destination, item.created_at, now, attempts,
                        error, item.record))
            db.execute("DELETE FROM dead WHERE id <= (SELECT max(id) FROM dead) - ?",
                       (DEAD_MAX,))
            self._remove(item, transaction=False)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _remove(self, item: Pending, *, transaction: bool = True) -> None:
        db = self._db
        if transaction:
            db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM deliveries WHERE id = ?", (item.id,))
            db.execute("DELETE FROM calls WHERE call_id = ? AND NOT EXISTS "
                       "(SELECT 1 FROM deliveries WHERE call_id = ?)",
                       (item.call_id, item.call_id))
            if transaction:
                db.execute("COMMIT")
        except BaseException:
            if transaction:
                db.execute("ROLLBACK")
            raise

    def dead_letters(self) -> list[tuple[str, str, int, str]]:
        """``(call_id, destination, attempts, error)`` of the dead letters, oldest first."""
        rows = self._db.execute(
            "SELECT call_id, destination, attempts, error FROM dead ORDER BY id").fetchall()
        return [tuple(row) for row in rows]

    def close(self) -> None:
        self._db.close()
