"""The distributed call store: Redis, through the official ``redis`` package's asyncio client.

Many instances on many machines share one Redis. Keys (``prefix`` first, default
``agentic_fast:``)::

    call:<id>          hash    the record's fields
    call:<id>:st       zset    status history (member: JSON with the event id; score: ts)
    call:<id>:tr       zset    transcript lines (same)
    call:<id>:cmd      hash    <command id>\\x00s (sent) and \\x00a (answer) as JSON
    call:<id>:ev       zset    call events (recording, transfer, end...)
    calls              zset    index of call ids by created_at (paging, since, prune)
    nonce:<nonce>      string  a claimed stream-token nonce (SET NX PX: expires by itself)
    owners             hash    owner -> lease end (epoch s)
    live               hash    live call id -> owner

A batch of events is one ``MULTI``/``EXEC`` pipeline. The few read-modify-write steps (a
status that must not overwrite a terminal one, claiming a call) are Lua scripts, atomic on
the server. Appended items are sorted-set members that carry their event id, so a batch
replayed after an unknown outcome adds nothing twice. Retention is ``prune`` (the index
gives the old ids); nonces expire by TTL. Durability is Redis's: run it with
``appendonly yes`` so records survive a restart of Redis itself.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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

__all__ = ["RedisCallStore"]

log = get_logger("store.redis")

# Lua: the status rule shared by status changes and reclaim. KEYS: call hash, status zset,
# index. ARGV: call_id, ts, status, reason ('' = none), history member.
_STATUS_LUA = """
local function apply_status(k, a)
  redis.call('ZADD', k[2], a[2], a[5])
  if redis.call('HSETNX', k[1], 'call_id', a[1]) == 1 then
    redis.call('HSET', k[1], 'created_at', a[2], 'updated_at', a[2], 'status', 'initiating')
    redis.call('ZADD', k[3], 'NX', a[2], a[1])
  end
  local cur = redis.call('HGET', k[1], 'status')
  if cur == 'completed' or cur == 'failed' then return 0 end
  redis.call('HSET', k[1], 'status', a[3], 'updated_at', a[2])
  if a[4] ~= '' then redis.call('HSET', k[1], 'reason', a[4]) end
  if a[3] == 'in-progress' then redis.call('HSETNX', k[1], 'answered_at', a[2]) end
  if a[3] == 'completed' or a[3] == 'failed' then redis.call('HSET', k[1], 'ended_at', a[2]) end
  return 1
end
"""
_STATUS = _STATUS_LUA + "return apply_status(KEYS, ARGV)"
# KEYS: call hash, status zset, index. ARGV: call_id, ts, status, direction, from, to,
# provider, carrier, call_sid ('' = none), history member.
_CREATE = """
if redis.call('HSETNX', KEYS[1], 'call_id', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'created_at', ARGV[2], 'updated_at', ARGV[2], 'status', ARGV[3])
else
  local c = tonumber(redis.call('HGET', KEYS[1], 'created_at'))
  if c == nil or tonumber(ARGV[2]) < c then
    redis.call('HSET', KEYS[1], 'created_at', ARGV[2])
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  end
  if redis.call('HGET', KEYS[1], 'status') == 'initiating' then
    redis.call('HSET', KEYS[1], 'status', ARGV[3])
  end
end
redis.call('HSET', KEYS[1], 'direction', ARGV[4], 'from_number', ARGV[5], 'to_number', ARGV[6],
           'provider', ARGV[7], 'carrier', ARGV[8])
if ARGV[9] ~= '' then redis.call('HSETNX', KEYS[1], 'call_sid', ARGV[9]) end
redis.call('ZADD', KEYS[3], 'NX', redis.call('HGET', KEYS[1], 'created_at'), ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[10])
return 1
"""
# KEYS: owners, live. ARGV: call_id, owner, lease end.
_CLAIM = """
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not cur then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) return 1 end
if cur == ARGV[2] then return 1 end
return 0
"""
# KEYS: live. ARGV: call_id, owner.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
# KEYS: call hash, status zset, index, live. ARGV: as _STATUS, then the dead owner.
_RECLAIM = _STATUS_LUA + """
if redis.call('HGET', KEYS[4], ARGV[1]) ~= ARGV[6] then return 0 end
redis.call('HDEL', KEYS[4], ARGV[1])
apply_status(KEYS, ARGV)
return 1
"""
_SCRIPTS = {"status": _STATUS, "create": _CREATE, "claim": _CLAIM, "release": _RELEASE,
            "reclaim": _RECLAIM}
_SHA = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in _SCRIPTS.items()}
_SCAN_CHUNK = 200
_MAX_SCAN = 5000  # index entries looked at per page at most (filters are applied here)


def _j(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class RedisCallStore:
    """:class:`~agentic_fast.store.base.CallStore` on a Redis server."""

    backend = "redis"

    def __init__(self, url: str, *, prefix: str = "agentic_fast:", timeout_s: float = 2.0,
                 connect_timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock
        self._client: aioredis.Redis | None = None
        self._index = f"{prefix}calls"
        self._owners = f"{prefix}owners"
        self._live = f"{prefix}live"

    # -- plumbing -------------------------------------------------------------------------

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("not open", backend=self.backend)
        return self._client

    def _key(self, call_id: str, part: str = "") -> str:
        return f"{self.prefix}call:{call_id}{part}"

    def _unavailable(self, exc: Exception) -> StoreError:
        if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError
                      | rx.ReadOnlyError | rx.OutOfMemoryError | rx.BusyLoadingError):
            return StoreUnavailable(f"{type(exc).__name__}: {exc}", backend=self.backend)
        if isinstance(exc, rx.ResponseError) and str(exc).startswith(("MISCONF", "LOADING")):
            return StoreUnavailable(str(exc), backend=self.backend)
        return StoreError(f"redis store: {type(exc).__name__}: {exc}")

    async def _load_scripts(self) -> None:
        for body in _SCRIPTS.values():
            await self.client.script_load(body)

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            try:
                return await self.client.evalsha(_SHA[name], len(keys), *keys, *args)
            except rx.NoScriptError:  # Redis restarted: its script cache is empty
                await self._load_scripts()
                return await self.client.evalsha(_SHA[name], len(keys), *keys, *args)
        except rx.RedisError as exc:
            raise self._unavailable(exc) from exc

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url, decode_responses=True, socket_timeout=self.timeout_s,
                socket_connect_timeout=self.connect_timeout_s,
                retry=Retry(NoBackoff(), 0))  # the writer retries, with its own backoff
        try:
            await self._load_scripts()
        except (rx.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def health(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (rx.RedisError, OSError, StoreError) as exc:
            log.warning("store.health.failed", backend=self.backend, error=str(exc))
            return False

    # -- writes ---------------------------------------------------------------------------

    async def write_batch(self, events: Sequence[StoreEvent]) -> None:
        if not events:
            return
        for attempt in (1, 2):
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    for event in events:
                        self._queue(pipe, event)
                    await pipe.execute()
                return
            except rx.NoScriptError:
                if attempt == 2:
                    raise StoreError("redis store: scripts missing after reload") from None
                try:  # Redis restarted (empty script cache); replaying is idempotent
                    await self._load_scripts()
                except (rx.RedisError, OSError) as exc:
                    raise self._unavailable(exc) from exc
            except (rx.RedisError, OSError) as exc:
                raise self._unavailable(exc) from exc

    def _queue(self, pipe: Any, event: StoreEvent) -> None:
        key = self._key(event.call_id)
        ts = repr(event.ts)
        if isinstance(event, CallCreated):
            member = _j([event.event_id, event.status, None])
            pipe.evalsha(_SHA["create"], 3, key, key + ":st", self._index,
                         event.call_id, ts, event.status, event.direction, event.from_number,
                         event.to_number, event.provider, event.carrier,
                         event.call_sid or "", member)
        elif isinstance(event, StatusChanged):
            member = _j([event.event_id, event.status, event.reason])
            pipe.evalsha(_SHA["status"], 3, key, key + ":st", self._index,
                         event.call_id, ts, event.status, event.reason or "", member)
        elif isinstance(event, CallFieldsSet):
            pipe.hsetnx(key, "call_id", event.call_id)
            pipe.hsetnx(key, "created_at", ts)
            pipe.hsetnx(key, "status", "initiating")
            pipe.zadd(self._index, {event.call_id: event.ts}, nx=True)
            values = {k: (repr(v) if isinstance(v, float) else str(v))
                      for k, v in event.fields.items() if v is not None}
            values["updated_at"] = ts
            pipe.hset(key, mapping=values)
            gone = [k for k, v in event.fields.items() if v is None]
            if gone:
                pipe.hdel(key, *gone)
        elif isinstance(event, TranscriptAdded):
            pipe.zadd(key + ":tr", {_j([event.event_id, event.role, event.text]): event.ts})
        elif isinstance(event, CommandSent):
            pipe.hset(key + ":cmd", f"{event.command_id}\x00s", _j([event.ts, event.text]))
        elif isinstance(event, CommandAnswered):
            pipe.hset(key + ":cmd", f"{event.command_id}\x00a",
                      _j([event.ts, event.answer, event.duration_s, event.status]))
        elif isinstance(event, CallEvent):
            pipe.zadd(key + ":ev", {_j([event.event_id, event.kind, dict(event.data)]):
                                    event.ts})
        else:  # pragma: no cover - the union is closed
            raise StoreError(f"unknown store event {type(event).__name__}")

    async def claim_nonce(self, nonce: str, ttl_s: float) -> bool:
        try:
            done = await self.client.set(f"{self.prefix}nonce:{nonce}", "1", nx=True,
                                         px=max(1, int(ttl_s * 1000)))
        except (rx.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return bool(done)

    # -- ownership ------------------------------------------------------------------------

    async def claim_call(self, call_id: str, owner: str, lease_s: float) -> bool:
        until = repr(self.clock() + lease_s)
        return bool(await self._script("claim", [self._owners, self._live],
                                       [call_id, owner, until]))

    async def heartbeat(self, owner: str, lease_s: float) -> None:
        try:
            await self.client.hset(self._owners, owner, repr(self.clock() + lease_s))
        except (rx.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def release_call(self, call_id: str, owner: str) -> None:
        await self._script("release", [self._live], [call_id, owner])

    async def live_calls(self, owner: str | None = None) -> dict[str, str]:
        try:
            live = cast(dict[str, str], await self.client.hgetall(self._live))
        except (rx.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return live if owner is None else {c: o for c, o in live.items() if o == owner}

    async def reclaim(self, owner: str | None = None, *, reason: str = "owner_lost") -> list[str]:
        now = self.clock()
        try:
            live = cast(dict[str, str], await self.client.hgetall(self._live))
            leases = cast(dict[str, str], await self.client.hgetall(self._owners))
        except (rx.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if owner is not None:
            dead = {owner}
        else:
            dead = {o for o in set(live.values())
                    if o not in leases or float(leases[o]) < now}
        taken = []
        for call_id, holder in live.items():
            if holder not in dead:
                continue
            key = self._key(call_id)
            status = StatusChanged(call_id, now, RECLAIMED_STATUS, f"{reason}: {holder}")
            member = _j([status.event_id, status.status, status.reason])
            if await self._script("reclaim", [key, key + ":st", self._index, self._live],
                                  [call_id, repr(now), status.status, status.reason,
                                   member, holder]):
                taken.append(call_id)
        if dead:
            try:
                await self.client.hdel(self._owners, *dead)
            except (rx.RedisError, OSError) as exc:
                raise self._unavailable(exc) from exc
        if taken:
            log.warning("store.calls.reclaimed", owner=owner or "(lease expired)",
                        calls=len(taken), reason=reason)
        return taken

    # -- reads ----------------------------------------------------------------------------

    async def get(self, call_id: str) -> CallRecord | None:
        key = self._key(call_id)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(key)
                pipe.hget(self._live, call_id)
                pipe.zrange(key + ":st", 0, -1, withscores=True)
                pipe.zrange(key + ":tr", 0, -1, withscores=True)
                pipe.hgetall(key + ":cmd")
                pipe.zrange(key + ":ev", 0, -1, withscores=True)
                fields, owner, st, tr, cmd, ev = await pipe.execute()
        except (rx.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if not fields:
            return None
        statuses = tuple(StatusEntry(ts, *json.loads(m)[1:]) for m, ts in st)
        transcript = tuple(TranscriptLine(ts, *json.loads(m)[1:]) for m, ts in tr)
        events = tuple(CallEvent(call_id, ts, kind, data, event_id=eid)
                       for (eid, kind, data), ts in ((json.loads(m), ts) for m, ts in ev))
        return replace(_record(fields, owner), statuses=statuses, transcript=transcript,
                       commands=_commands(cmd), events=events)

    async def list_records(self, filters: RecordFilter | None = None, *, limit: int = 50,
                           cursor: str | None = None) -> RecordPage:
        if limit < 1:
            raise ValueError(f"limit: must be >= 1, got {limit}")
        f = filters or RecordFilter()
        after = decode_cursor(cursor) if cursor else None
        high: float | str = after[0] if after else "+inf"
        low: float | str = f.since if f.since is not None else "-inf"
        found: list[CallRecord] = []
        offset = scanned = 0
        last_seen: tuple[float, str] | None = None
        try:
            while scanned < _MAX_SCAN:
                chunk = cast(list[tuple[str, float]], await self.client.zrevrangebyscore(
                    self._index, high, low, start=offset, num=_SCAN_CHUNK, withscores=True))
                if not chunk:
                    return RecordPage(tuple(found), None)
                offset += len(chunk)
                if after is not None:  # the cursor's own score: only ids below its id
                    chunk = [(c, s) for c, s in chunk if s != after[0] or c < after[1]]
                async with self.client.pipeline(transaction=False) as pipe:
                    for call_id, _ in chunk:
                        pipe.hgetall(self._key(call_id))
                        pipe.hget(self._live, call_id)
                    replies = await pipe.execute()
                for i, (call_id, score) in enumerate(chunk):
                    scanned += 1
                    last_seen = (score, call_id)
                    fields = replies[2 * i]
                    if not fields:
                        continue  # pruned meanwhile
                    record = _record(fields, replies[2 * i + 1])
                    if f.matches(record):
                        if len(found) == limit:  # one more exists: the page is full
                            last = found[-1]
                            return RecordPage(tuple(found),
                                              encode_cursor(last.created_at, last.call_id))
                        found.append(record)
        except (rx.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        # scan bound reached: a short page, and a cursor where the scan stopped
        if len(found) == limit:
            last = found[-1]
            return RecordPage(tuple(found), encode_cursor(last.created_at, last.call_id))
        assert last_seen is not None
        return RecordPage(tuple(found), encode_cursor(*last_seen))

    async def prune(self, older_than: float) -> int:
        count = 0
        try:
            old = cast(list[str], await self.client.zrangebyscore(
                self._index, "-inf", f"({older_than!r}"))
            for start in range(0, len(old), _SCAN_CHUNK):
                ids = old[start:start + _SCAN_CHUNK]
                async with self.client.pipeline(transaction=False) as pipe:
                    for call_id in ids:
                        pipe.hget(self._key(call_id), "status")
                        pipe.hexists(self._live, call_id)
                    replies = await pipe.execute()
                gone = [c for i, c in enumerate(ids)
                        if replies[2 * i] in TERMINAL_STATUSES and not replies[2 * i + 1]]
                if not gone:
                    continue
                async with self.client.pipeline(transaction=True) as pipe:
                    for call_id in gone:
                        key = self._key(call_id)
                        pipe.delete(key, key + ":st", key + ":tr", key + ":cmd", key + ":ev")
                    pipe.zrem(self._index, *gone)
                    await pipe.execute()
                count += len(gone)
        except (rx.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if count:
            log.info("store.pruned", backend=self.backend, records=count)
        return count


def _opt_float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def _record(h: dict[str, str], owner: str | None) -> CallRecord:
    return CallRecord(
        call_id=h["call_id"], created_at=float(h["created_at"]),
        updated_at=float(h.get("updated_at") or h["created_at"]), status=h["status"],
        direction=h.get("direction", ""), from_number=h.get("from_number", ""),
        to_number=h.get("to_number", ""), provider=h.get("provider", ""),
        carrier=h.get("carrier", ""), call_sid=h.get("call_sid"), reason=h.get("reason"),
        answered_at=_opt_float(h.get("answered_at")), ended_at=_opt_float(h.get("ended_at")),
        duration_s=_opt_float(h.get("duration_s")), answered_by=h.get("answered_by"),
        end_reason=h.get("end_reason"), owner=owner)


def _commands(raw: dict[str, str]) -> tuple[CommandRecord, ...]:
    merged: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        command_id, _, part = name.rpartition("\x00")
        entry = merged.setdefault(command_id, {"command_id": command_id, "sent_at": None,
                                               "text": ""})
        data = json.loads(value)
        if part == "s":
            entry["sent_at"], entry["text"] = data
        else:
            entry["answered_at"], entry["answer"], entry["duration_s"], entry["status"] = data
    ordered = sorted(merged.values(), key=lambda e: (e["sent_at"] is None,
                                                     e["sent_at"] or 0.0, e["command_id"]))
    return tuple(CommandRecord(**e) for e in ordered)
