"""The call store wired into a server process: every call's record, the stream-token and
ownership checks, and this process's lease.

:class:`StoreRecorder` is three things for the app:

- the manager's *recorder* (``CallManager.recorder``): every event a call emits (created,
  status, CallSid, transcript line, agent command, first audio, barge-in) becomes a store
  event handed to the writer: a dataclass and a deque append, O(1), never on the per-frame
  path, never awaiting the store;
- the media stream's *guard*: when a stream starts, its token's nonce is claimed in the store
  (single use across processes and machines) and this process claims the call (ownership);
  a stream for a call answered by another process or instance is *adopted* from the record;
- the *lease*: one heartbeat task per process renews its lease every ``lease_s / 3`` and
  reclaims the live calls of owners whose lease ran out (recorded ``failed``, reason
  ``owner_lost: <owner>``).

What each failure loses (everything counted in ``agentic_fast.core.metrics`` and logged):

- store down or slow mid-call: nothing while the writer's queue has room (``store.queue_size``
  events, all calls together); the calls go on, their events are written when it is back.
- store down at a new call: the webhook answers with a spoken line and hangs up
  (``calls.refused.store_unavailable``); a stream whose checks cannot be made is refused.
- this process cut off from the store for longer than ``store.lease_s``: another process may
  reclaim its live calls as ``failed`` (``owner_lost``); their later lines still land, but the
  status stays failed (terminal statuses are final).
- a process killed: its queued events (at most ``store.batch_interval_s`` of them) and the
  end of its live calls, which the others record as ``failed`` / ``owner_lost`` after the lease,
  or its successor of the same name (a restarted worker) as soon as it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.call.status import CallStatus
from agentic_fast.core import metrics
from agentic_fast.core.errors import StoreError, StoreUnavailable
from agentic_fast.core.log import get_logger
from agentic_fast.core.tasks import TaskSet
from agentic_fast.store.base import (
    CallCreated,
    CallEvent,
    CallFieldsSet,
    CallRecord,
    CommandAnswered,
    CommandSent,
    StatusChanged,
    TranscriptAdded,
)
from agentic_fast.store.service import StoreService

__all__ = ["StoreRecorder"]

log = get_logger("store.recorder")

#: How long a successful store answer vouches for the store (no round trip per webhook).
_FRESH_S = 1.0
#: Extra seconds a claimed nonce is remembered beyond its token's expiry (clock skew).
_NONCE_MARGIN_S = 60.0
#: How long a stream for an unknown call waits for its record to be written elsewhere.
_ADOPT_WAIT_S = 1.0
_EVENT_KINDS = {"call.first_audio": "first_audio", "call.barge_in": "barge_in"}


class StoreRecorder:
    """One per app: records calls, guards streams, holds this process's lease."""

    def __init__(self, service: StoreService, owner: str, *, provider: str = "",
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.store = service.store
        self.owner = owner
        self.lease_s = service.config.lease_s
        self.provider = provider
        self.clock = clock
        self.monotonic = monotonic
        self._tasks = TaskSet("store.recorder", log)
        self._heartbeat: asyncio.Task[None] | None = None
        self._ok_at: float | None = None  # monotonic time of the last store answer

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (a store down now is tolerated: calls are refused politely until
        it answers), start the writer and the heartbeat."""
        try:
            await self.service.start()
            await self.reclaim_previous()
            await self.store.heartbeat(self.owner, self.lease_s)
            self._ok()
        except StoreUnavailable as exc:
            metrics.incr("store.open.failed")
            log.error("store.unavailable_at_start", backend=self.store.backend,
                      error=str(exc), owner=self.owner)
            self.service.start_background()
        log.info("store.started", backend=self.store.backend, owner=self.owner)
        self.start_heartbeat()

    def start_heartbeat(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat_forever(), name="store-heartbeat")

    async def stop_heartbeat(self) -> None:
        """Stop renewing the lease (shutdown; tests simulating a dead process)."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self, *, release: bool = True) -> int:
        """Stop the heartbeat, release this process's live calls (unless ``release`` is
        False: a crash), drain the writer; returns the store events lost."""
        await self.stop_heartbeat()
        await self._tasks.wait(timeout=self.service.config.shutdown_timeout_s)
        if release:
            with contextlib.suppress(StoreError):
                for call_id in await self.store.live_calls(self.owner):
                    await self.store.release_call(call_id, self.owner)
        return await self.service.close()

    async def settle(self, timeout_s: float = 5.0) -> None:
        """Wait for the recorder's own tasks (ends, releases), then for the writer to write
        everything queued (tests, benchmarks)."""
        await self._tasks.wait(timeout=timeout_s)
        await asyncio.wait_for(self.service.writer.flush(), timeout_s)

    # -- the lease ------------------------------------------------------------------------

    async def reclaim_previous(self) -> list[str]:
        """Record as ``failed`` (``owner_lost: <owner>``) the live calls a previous process
        of this name left: a starting process owns no call, so any call still owned under
        its name died with that process (a worker killed and restarted under the same
        name, a server with a fixed ``server.instance_id``). Without this, the new process's
        heartbeat would renew the dead one's lease and its calls would stay live forever."""
        taken = await self.store.reclaim(self.owner, reason="owner_lost")
        if taken:
            metrics.incr("store.calls.reclaimed", len(taken))
            log.warning("store.calls.reclaimed_from_previous_run", owner=self.owner,
                        calls=len(taken), call_ids=",".join(taken[:20]))
        return taken

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.beat()

    async def beat(self) -> list[str]:
        """Renew this process's lease, then reclaim the calls of owners whose lease ran out
        (returns their ids). Errors are logged and counted, never raised."""
        try:
            await self.store.heartbeat(self.owner, self.lease_s)
            self._ok()
            taken = await self.store.reclaim(reason="owner_lost")
        except StoreError as exc:
            self._ok_at = None
            metrics.incr("store.heartbeat.failed")
            log.warning("store.heartbeat.failed", owner=self.owner, error=str(exc)[:200])
            return []
        if taken:
            metrics.incr("store.calls.reclaimed", len(taken))
            log.warning("store.calls.reclaimed", by=self.owner, calls=len(taken),
                        call_ids=",".join(taken[:20]))
        return taken

    def _ok(self) -> None:
        self._ok_at = self.monotonic()

    async def ready_for_call(self) -> bool:
        """Whether the store can vouch for a new call now: a recent answer and a writer that
        is not failing, else one health round trip."""
        fresh = self._ok_at is not None and self.monotonic() - self._ok_at < _FRESH_S
        if fresh and not self.service.writer.failing:
            return True
        if await self.store.health():
            self._ok()
            return True
        self._ok_at = None
        return False

    # -- streams (the media stream handler's guard) ----------------------------------------

    async def adopt(self, manager: CallManager, call_id: str,
                    carrier_call_id: str) -> CallSession | None:
        """A local session for ``call_id`` whose webhook another process answered (from its
        record), or None (no such live call). Raises ``StoreUnavailable``."""
        record = await self.store.get(call_id)
        # the answering process writes the record in its next batch: wait that long for it
        waits = int(_ADOPT_WAIT_S / self.service.config.batch_interval_s) + 1
        for _ in range(waits):
            if record is not None:
                break
            await asyncio.sleep(self.service.config.batch_interval_s)
            record = await self.store.get(call_id)
        self._ok()
        if record is None or record.ended:
            return None
        if record.call_sid and record.call_sid != carrier_call_id:
            log.warning("media.call_sid_mismatch", call_id=call_id, expected=record.call_sid,
                        got=carrier_call_id, source="store")
            return None
        existing = manager.get(call_id)  # adopted meanwhile by a concurrent stream
        if existing is not None:
            return existing
        session = manager.adopt(call_id, record.direction, record.from_number,
                                record.to_number, call_sid=record.call_sid or carrier_call_id,
                                carrier=record.carrier)
        metrics.incr("store.streams.adopted")
        session.log.info("call.adopted_from_store", first_owner=record.owner or "")
        return session

    async def claim_stream(self, session: CallSession, nonce: bytes,
                           expires_at: float) -> str | None:
        """Claim the token's nonce (single use everywhere) and the call (this process owns
        it); the refusal reason, or None. Raises ``StoreUnavailable``."""
        ttl = max(1.0, expires_at - self.clock()) + _NONCE_MARGIN_S
        if not await self.store.claim_nonce(nonce.hex(), ttl):
            return "replayed"
        if not await self.store.claim_call(session.call_id, self.owner, self.lease_s):
            return "owned_elsewhere"
        self._ok()
        return None

    # -- the manager's recorder -------------------------------------------------------------

    def __call__(self, session: CallSession, type_: str, data: dict[str, Any]) -> None:
        """Turn one call event into store events (O(1); never raises into the call)."""
        try:
            self._record(session, type_, data)
        except Exception:  # a bug here must never break a call
            metrics.incr("store.record.error")
            session.log.exception("store.record.error", type=type_)

    def _record(self, session: CallSession, type_: str, data: dict[str, Any]) -> None:
        append = self.service.append
        call_id = session.call_id
        if type_ == "call.transcript":
            entry = session.transcript[-1]
            append(TranscriptAdded(call_id, entry.ts, entry.role, entry.text))
        elif type_ == "call.status":
            self._status(session)
        elif type_ == "call.command":
            command_id = f"{id(data):x}"  # the brain's record dict: the same at send and end
            now = self.clock()
            if data.get("status") == "running":
                append(CommandSent(call_id, now, command_id, str(data.get("command") or "")))
            else:
                answer = data.get("answer") or data.get("error") or ""
                append(CommandAnswered(call_id, now, command_id, str(answer),
                                       float(data.get("duration_s") or 0.0),
                                       str(data.get("status") or "")))
        elif type_ == "call.created":
            if not session.adopted:  # the first owner wrote it
                append(CallCreated(call_id, session.created_at, session.direction.value,
                                   session.from_number, session.to_number, self.provider,
                                   session.carrier, session.call_sid, session.status.value))
        elif type_ == "call.updated":
            if session.call_sid:
                append(CallFieldsSet(call_id, self.clock(), {"call_sid": session.call_sid}))
        elif type_ in _EVENT_KINDS:
            append(CallEvent(call_id, self.clock(), _EVENT_KINDS[type_], data))

    def _status(self, session: CallSession) -> None:
        now = self.clock()
        status = session.status
        event = StatusChanged(session.call_id, now, status.value,
                              session.reason if status.terminal else None)
        fields: dict[str, str | float | None] = {}
        if session.answered_by:
            fields["answered_by"] = session.answered_by
        if status.terminal:
            fields.update(duration_s=round(session.duration, 3), end_reason=session.reason)
        if status.terminal and not session.stream_started and not session.adopted:
            # its stream may have started on another process: that one writes the end
            self._tasks.spawn(self._end_unless_moved(session, event, fields))
            return
        self.service.append(event)
        if fields:
            self.service.append(CallFieldsSet(session.call_id, now, fields))
        if status.terminal and session.stream_started:
            self._tasks.spawn(self._release(session.call_id))

    async def _end_unless_moved(self, session: CallSession, event: StatusChanged,
                                fields: dict[str, str | float | None]) -> None:
        record: CallRecord | None = None
        if session.status is CallStatus.FAILED and session.reason == "stream-timeout":
            with contextlib.suppress(StoreError):
                record = await self.store.get(session.call_id)
        if record is not None and record.owner and record.owner != self.owner:
            metrics.incr("store.calls.moved")
            session.log.info("call.moved", owner=record.owner)
            return
        self.service.append(event)
        if fields:
            self.service.append(CallFieldsSet(session.call_id, event.ts, fields))

    async def _release(self, call_id: str) -> None:
        try:
            await self.store.release_call(call_id, self.owner)
        except StoreError as exc:  # the lease runs out; the call is already recorded ended
            metrics.incr("store.release.failed")
            log.warning("store.release.failed", call_id=call_id, error=str(exc)[:200])
