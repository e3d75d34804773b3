"""The embedded call store: one SQLite file (stdlib ``sqlite3``, WAL), shared by the worker
processes of one machine.

Every database call runs on the store's own thread (one connection, one thread), so the event
loop never waits on the disk; a batch of events is one ``BEGIN IMMEDIATE`` .. ``COMMIT``.
Other processes write the same file: ``busy_timeout`` makes a writer wait for the lock that
long, after which the batch fails with :class:`StoreUnavailable` and the writer retries it.
Single use of a stream-token nonce is a primary key (``INSERT OR IGNORE``: one process wins).
The schema is versioned (``schema_version``) and migrated on open, under the write lock, so
two workers starting together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from agentic_fast.core.log import get_logger
from agentic_fast.store.base import (
    RECLAIMED_STATUS,
    TERMINAL_STATUSES,
    CallCreated,
    CallEvent,
    CallFieldsSet,
    CallRecord,
    CommandAnswered,
    CommandRecord,
    CommandSent,
    RecordFilter,
    RecordPage,
    StatusChanged,
    StatusEntry,
    StoreError,
    StoreEvent,
    StoreUnavailable,
    TranscriptAdded,
    TranscriptLine,
    decode_cursor,
    encode_cursor,
)

__all__ = ["SCHEMA_VERSION", "SQLiteCallStore"]

log = get_logger("store.sqlite")
T = TypeVar("T")

# Error codes (primary, ``sqlite_errorcode & 0xff``) after which a retry may succeed.
_TRANSIENT = {5: "busy", 6: "locked", 7: "nomem", 8: "readonly", 10: "ioerr", 13: "full",
              14: "cantopen"}
_TERMINAL_SQL = "('" + "','".join(sorted(TERMINAL_STATUSES)) + "')"

# migrations[i] brings the schema from version i to i + 1
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        status TEXT NOT NULL, direction TEXT NOT NULL DEFAULT '',
        from_number TEXT NOT NULL DEFAULT '', to_number TEXT NOT NULL DEFAULT '',
        provider TEXT NOT NULL DEFAULT '', carrier TEXT NOT NULL DEFAULT '',
        call_sid TEXT, reason TEXT, answered_at REAL, ended_at REAL, duration_s REAL,
        answered_by TEXT, end_reason TEXT);
    CREATE INDEX calls_by_time ON calls (created_at DESC, call_id DESC);
    CREATE INDEX calls_by_from ON calls (from_number, created_at);
    CREATE INDEX calls_by_to ON calls (to_number, created_at);
    CREATE TABLE call_status (event_id TEXT PRIMARY KEY, call_id TEXT NOT NULL,
        ts REAL NOT NULL, status TEXT NOT NULL, reason TEXT);
    CREATE INDEX call_status_by_call ON call_status (call_id, ts);
    CREATE TABLE transcript (event_id TEXT PRIMARY KEY, call_id TEXT NOT NULL,
        ts REAL NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL);
    CREATE INDEX transcript_by_call ON transcript (call_id, ts);
    CREATE TABLE commands (call_id TEXT NOT NULL, command_id TEXT NOT NULL, sent_at REAL,
        text TEXT NOT NULL DEFAULT '', answered_at REAL, answer TEXT, duration_s REAL,
        status TEXT, PRIMARY KEY (call_id, command_id));
    CREATE TABLE call_events (event_id TEXT PRIMARY KEY, call_id TEXT NOT NULL,
        ts REAL NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX call_events_by_call ON call_events (call_id, ts);
    CREATE TABLE nonces (nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL);
    CREATE TABLE owners (owner TEXT PRIMARY KEY, lease_until REAL NOT NULL);
    CREATE TABLE live_calls (call_id TEXT PRIMARY KEY, owner TEXT NOT NULL,
        since REAL NOT NULL);
    CREATE INDEX live_calls_by_owner ON live_calls (owner);
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)
_SUMMARY_COLUMNS = ("call_id, created_at, updated_at, status, direction, from_number, "
                    "to_number, provider, carrier, call_sid, reason, answered_at, ended_at, "
                    "duration_s, answered_by, end_reason")


class SQLiteCallStore:
    """:class:`~agentic_fast.store.base.CallStore` on one SQLite file."""

    backend = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 2.0,
                 max_bytes: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).expanduser()
        self.busy_timeout_s = busy_timeout_s
        self.max_bytes = max_bytes  # a quota: reaching it is like a full disk (SQLITE_FULL)
        self.clock = clock
        self._db: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- plumbing -------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise StoreUnavailable("not open", backend=self.backend)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        db = self._db
        try:
            if db is None:
                db = self._db = self._connect()
            return fn(db, *args)
        except sqlite3.Error as exc:
            if db is not None and db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            code = getattr(exc, "sqlite_errorcode", None)
            if isinstance(exc, sqlite3.OperationalError) and (
                    code is None or (code & 0xFF) in _TRANSIENT):
                raise StoreUnavailable(f"{exc} ({self.path})", backend=self.backend) from exc
            raise StoreError(f"sqlite store: {exc} ({self.path})") from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                 check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}",
                                   backend=self.backend) from exc
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash loses nothing
            db.execute("PRAGMA foreign_keys=OFF")
            self._set_quota(db)
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _set_quota(self, db: sqlite3.Connection) -> None:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        pages = 1_073_741_823 if self.max_bytes is None else max(1, self.max_bytes // page)
        db.execute(f"PRAGMA max_page_count={int(pages)}")

    async def set_max_bytes(self, max_bytes: int | None) -> None:
        """Change the quota (None: no limit beyond the disk's)."""
        self.max_bytes = max_bytes
        await self._call(self._set_quota)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(f"store.path: {self.path} has schema version {current}, newer "
                                 f"than this build's {SCHEMA_VERSION}; upgrade agentic-fast")
            for version in range(current, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
                log.info("store.sqlite.migrated", path=str(self.path), version=version + 1)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sqlite")
        await self._call(lambda db: None)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return

        def shut() -> None:
            db, self._db = self._db, None
            if db is not None:
                db.close()
        await asyncio.get_running_loop().run_in_executor(pool, shut)
        pool.shutdown(wait=True)

    async def health(self) -> bool:
        try:
            await self._call(lambda db: db.execute("SELECT count(*) FROM schema_version"))
        except StoreError as exc:
            log.warning("store.health.failed", backend=self.backend, error=str(exc))
            return False
        return True

    # -- writes ---------------------------------------------------------------------------

    async def write_batch(self, events: Sequence[StoreEvent]) -> None:
        if events:
            await self._call(self._write, list(events))

    def _write(self, db: sqlite3.Connection, events: list[StoreEvent]) -> None:
        db.execute("BEGIN IMMEDIATE")
        for event in events:
            _apply(db, event)
        db.execute("COMMIT")

    async def claim_nonce(self, nonce: str, ttl_s: float) -> bool:
        def claim(db: sqlite3.Connection) -> bool:
            now = self.clock()
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM nonces WHERE nonce = ? AND expires_at <= ?", (nonce, now))
            cur = db.execute("INSERT OR IGNORE INTO nonces (nonce, expires_at) VALUES (?, ?)",
                             (nonce, now + ttl_s))
            db.execute("COMMIT")
            return cur.rowcount == 1
        return await self._call(claim)

    # -- ownership ------------------------------------------------------------------------

    async def claim_call(self, call_id: str, owner: str, lease_s: float) -> bool:
        def claim(db: sqlite3.Connection) -> bool:
            now = self.clock()
            db.execute("BEGIN IMMEDIATE")
            _lease(db, owner, now + lease_s)
            db.execute("INSERT OR IGNORE INTO live_calls (call_id, owner, since) "
                       "VALUES (?, ?, ?)", (call_id, owner, now))
            row = db.execute("SELECT owner FROM live_calls WHERE call_id = ?",
                             (call_id,)).fetchone()
            db.execute("COMMIT")
            return bool(row[0] == owner)
        return await self._call(claim)

    async def heartbeat(self, owner: str, lease_s: float) -> None:
        def beat(db: sqlite3.Connection) -> None:
            _lease(db, owner, self.clock() + lease_s)
        await self._call(beat)

    async def release_call(self, call_id: str, owner: str) -> None:
        await self._call(lambda db: db.execute(
            "DELETE FROM live_calls WHERE call_id = ? AND owner = ?", (call_id, owner)))

    async def live_calls(self, owner: str | None = None) -> dict[str, str]:
        def live(db: sqlite3.Connection) -> dict[str, str]:
            if owner is None:
                rows = db.execute("SELECT call_id, owner FROM live_calls").fetchall()
            else:
                rows = db.execute("SELECT call_id, owner FROM live_calls WHERE owner = ?",
                                  (owner,)).fetchall()
            return dict(rows)
        return await self._call(live)

    async def reclaim(self, owner: str | None = None, *, reason: str = "owner_lost") -> list[str]:
        def take(db: sqlite3.Connection) -> list[str]:
            now = self.clock()
            db.execute("BEGIN IMMEDIATE")
            if owner is not None:
                dead = [owner]
            else:  # owners of live calls whose lease ran out (or who never took one)
                dead = [r[0] for r in db.execute(
                    "SELECT DISTINCT l.owner FROM live_calls l LEFT JOIN owners o "
                    "ON o.owner = l.owner WHERE o.lease_until IS NULL OR o.lease_until < ?",
                    (now,))]
            taken: list[str] = []
            for name in dead:
                ids = [r[0] for r in db.execute(
                    "SELECT call_id FROM live_calls WHERE owner = ?", (name,))]
                db.execute("DELETE FROM live_calls WHERE owner = ?", (name,))
                db.execute("DELETE FROM owners WHERE owner = ?", (name,))
                for call_id in ids:
                    _apply(db, StatusChanged(call_id, now, RECLAIMED_STATUS,
                                             f"{reason}: {name}"))
                taken += ids
            db.execute("COMMIT")
            return taken
        ids = await self._call(take)
        if ids:
            log.warning("store.calls.reclaimed", owner=owner or "(lease expired)",
                        calls=len(ids), reason=reason)
        return ids

    # -- reads ----------------------------------------------------------------------------

    async def get(self, call_id: str) -> CallRecord | None:
        return await self._call(self._get, call_id)

    def _get(self, db: sqlite3.Connection, call_id: str) -> CallRecord | None:
        row = db.execute(f"SELECT {_SUMMARY_COLUMNS} FROM calls WHERE call_id = ?",
                         (call_id,)).fetchone()
        if row is None:
            return None
        owner = db.execute("SELECT owner FROM live_calls WHERE call_id = ?",
                           (call_id,)).fetchone()
        statuses = tuple(StatusEntry(*r) for r in db.execute(
            "SELECT ts, status, reason FROM call_status WHERE call_id = ? ORDER BY ts, rowid",
            (call_id,)))
        transcript = tuple(TranscriptLine(*r) for r in db.execute(
            "SELECT ts, role, text FROM transcript WHERE call_id = ? ORDER BY ts, rowid",
            (call_id,)))
        commands = tuple(CommandRecord(*r) for r in db.execute(
            "SELECT command_id, sent_at, text, answered_at, answer, duration_s, status "
            "FROM commands WHERE call_id = ? ORDER BY sent_at, rowid", (call_id,)))
        events = tuple(CallEvent(call_id, ts, kind, json.loads(data), event_id=eid)
                       for eid, ts, kind, data in db.execute(
                           "SELECT event_id, ts, kind, data FROM call_events WHERE call_id = ? "
                           "ORDER BY ts, rowid", (call_id,)))
        return replace(_record(row, owner[0] if owner else None), statuses=statuses,
                       transcript=transcript, commands=commands, events=events)

    async def list_records(self, filters: RecordFilter | None = None, *, limit: int = 50,
                           cursor: str | None = None) -> RecordPage:
        if limit < 1:
            raise ValueError(f"limit: must be >= 1, got {limit}")
        after = decode_cursor(cursor) if cursor else None
        return await self._call(self._list, filters or RecordFilter(), limit, after)

    def _list(self, db: sqlite3.Connection, f: RecordFilter, limit: int,
              after: tuple[float, str] | None) -> RecordPage:
        where, args = [], []
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND call_id < ?))")
            args += [after[0], after[0], after[1]]
        for column, value in (("status", f.status), ("direction", f.direction)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if f.number is not None:
            where.append("(from_number = ? OR to_number = ?)")
            args += [f.number, f.number]
        if f.since is not None:
            where.append("created_at >= ?")
            args.append(f.since)
        sql = (f"SELECT {_SUMMARY_COLUMNS}, (SELECT owner FROM live_calls l "
               f"WHERE l.call_id = calls.call_id) FROM calls"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_at DESC, call_id DESC LIMIT ?")
        rows = db.execute(sql, [*args, limit + 1]).fetchall()
        records = tuple(_record(r[:-1], r[-1]) for r in rows[:limit])
        more = len(rows) > limit
        last = records[-1] if records else None
        return RecordPage(records, encode_cursor(last.created_at, last.call_id)
                          if more and last else None)

    async def prune(self, older_than: float) -> int:
        def prune(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in db.execute(
                f"SELECT call_id FROM calls WHERE created_at < ? AND status IN {_TERMINAL_SQL} "
                "AND call_id NOT IN (SELECT call_id FROM live_calls)", (older_than,))]
            for table in ("call_status", "transcript", "commands", "call_events", "calls"):
                db.executemany(f"DELETE FROM {table} WHERE call_id = ?", [(i,) for i in ids])
            db.execute("DELETE FROM nonces WHERE expires_at <= ?", (self.clock(),))
            db.execute("COMMIT")
            return len(ids)
        count = await self._call(prune)
        if count:
            log.info("store.pruned", backend=self.backend, records=count)
        return count


def _lease(db: sqlite3.Connection, owner: str, until: float) -> None:
    db.execute("INSERT INTO owners (owner, lease_until) VALUES (?, ?) ON CONFLICT (owner) "
               "DO UPDATE SET lease_until = excluded.lease_until", (owner, until))


def _stub(db: sqlite3.Connection, call_id: str, ts: float) -> None:
    """A row for a call whose ``CallCreated`` is not here yet (written by another worker,
    or lost): later events still land; ``CallCreated`` fills the rest."""
    db.execute("INSERT OR IGNORE INTO calls (call_id, created_at, updated_at, status) "
               "VALUES (?, ?, ?, 'initiating')", (call_id, ts, ts))


_SUMMARY_NAMES = tuple(name.strip() for name in _SUMMARY_COLUMNS.split(","))


def _record(row: Sequence[Any], owner: str | None) -> CallRecord:
    return CallRecord(**dict(zip(_SUMMARY_NAMES, row, strict=True)), owner=owner)


def _apply(db: sqlite3.Connection, event: StoreEvent) -> None:
    """One event inside the batch's transaction (idempotent: re-applying changes nothing)."""
    if isinstance(event, CallCreated):
        db.execute(
            "INSERT INTO calls (call_id, created_at, updated_at, status, direction, from_number,"
            " to_number, provider, carrier, call_sid) VALUES (?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (call_id) DO UPDATE SET created_at = min(created_at, excluded.created_at),"
            " direction = excluded.direction, from_number = excluded.from_number,"
            " to_number = excluded.to_number, provider = excluded.provider,"
            " carrier = excluded.carrier, call_sid = coalesce(call_sid, excluded.call_sid),"
            " status = CASE WHEN status = 'initiating' THEN excluded.status ELSE status END",
            (event.call_id, event.ts, event.ts, event.status, event.direction,
             event.from_number, event.to_number, event.provider, event.carrier, event.call_sid))
        db.execute("INSERT OR IGNORE INTO call_status (event_id, call_id, ts, status) "
                   "VALUES (?,?,?,?)", (event.event_id, event.call_id, event.ts, event.status))
    elif isinstance(event, StatusChanged):
        _stub(db, event.call_id, event.ts)
        db.execute("INSERT OR IGNORE INTO call_status (event_id, call_id, ts, status, reason) "
                   "VALUES (?,?,?,?,?)",
                   (event.event_id, event.call_id, event.ts, event.status, event.reason))
        terminal = event.status in TERMINAL_STATUSES
        db.execute(
            f"UPDATE calls SET status = ?, updated_at = ?, reason = coalesce(?, reason),"
            f" answered_at = CASE WHEN ? = 'in-progress' THEN coalesce(answered_at, ?)"
            f" ELSE answered_at END, ended_at = CASE WHEN ? THEN ? ELSE ended_at END"
            f" WHERE call_id = ? AND status NOT IN {_TERMINAL_SQL}",
            (event.status, event.ts, event.reason, event.status, event.ts, terminal, event.ts,
             event.call_id))
    elif isinstance(event, CallFieldsSet):
        if event.fields:
            _stub(db, event.call_id, event.ts)
            names = sorted(event.fields)  # checked against CALL_FIELDS by the event
            sets = ", ".join(f"{n} = ?" for n in names)
            db.execute(f"UPDATE calls SET {sets}, updated_at = max(updated_at, ?) "
                       "WHERE call_id = ?",
                       [*(event.fields[n] for n in names), event.ts, event.call_id])
    elif isinstance(event, TranscriptAdded):
        db.execute("INSERT OR IGNORE INTO transcript (event_id, call_id, ts, role, text) "
                   "VALUES (?,?,?,?,?)",
                   (event.event_id, event.call_id, event.ts, event.role, event.text))
    elif isinstance(event, CommandSent):
        db.execute("INSERT INTO commands (call_id, command_id, sent_at, text) VALUES (?,?,?,?) "
                   "ON CONFLICT (call_id, command_id) DO UPDATE SET sent_at = excluded.sent_at,"
                   " text = excluded.text",
                   (event.call_id, event.command_id, event.ts, event.text))
    elif isinstance(event, CommandAnswered):
        db.execute("INSERT INTO commands (call_id, command_id, answered_at, answer, duration_s,"
                   " status) VALUES (?,?,?,?,?,?) ON CONFLICT (call_id, command_id) DO UPDATE"
                   " SET answered_at = excluded.answered_at, answer = excluded.answer,"
                   " duration_s = excluded.duration_s, status = excluded.status",
                   (event.call_id, event.command_id, event.ts, event.answer, event.duration_s,
                    event.status))
    elif isinstance(event, CallEvent):
        db.execute("INSERT OR IGNORE INTO call_events (event_id, call_id, ts, kind, data) "
                   "VALUES (?,?,?,?,?)", (event.event_id, event.call_id, event.ts, event.kind,
                                           json.dumps(dict(event.data), separators=(",", ":"))))
    else:  # pragma: no cover - the union is closed
        raise StoreError(f"unknown store event {type(event).__name__}")
