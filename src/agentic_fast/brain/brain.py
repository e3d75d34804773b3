"""ConversationBrain: from a call's transcripts and tool calls to the agent, and back.

The bridge calls the :class:`~agentic_fast.call.bridge.ConversationSink` methods on the event
loop; each returns at once. Turn pieces are assembled on the spot (cheap), then every
event goes into its call's bounded queue (``put_nowait`` semantics: a full queue drops the
event, counted and logged). A pool of ``workers`` tasks drains the queues: a call is
handled by at most one worker at a time (so its turns keep their order), one event per
visit, round robin over the calls with work. A command's gateway run happens on that
worker, so the next turn of the same call is analysed with the answer in context.

Per turn (mode ``transcript``/``both``): trusted caller? -> small-talk rules -> classifier
(error or timeout: the raw turn is the command) -> PIN verified? -> dedupe -> gateway run.
A tool call (mode ``tool``/``both``) skips the analysis. In mode ``both`` a tool call and a
transcript turn within ``delegation_window_s`` of each other are one command (sent once).

A run says a filler after ``filler_after_s``, is aborted at ``deadline_s`` (``chat.abort``;
the caller is told), and on hang-up (always) or barge-in (if ``barge_in_aborts``). The
answer is made speakable and said (``provider.say``) or returned as the tool's output.
Every command is recorded on the ``CallSession`` (``add_command``; updated in place).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from agentic_fast.brain.intent import (
    ACTION,
    MAX_COMMAND_CHARS,
    RUN_COMMAND,
    ChatModelClassifier,
    Intent,
    IntentClassifier,
    parse_tool_arguments,
    rule_intent,
    run_command_declaration,
)
from agentic_fast.brain.policy import (
    CallerPolicy,
    CallGate,
    PinResult,
    command_key,
    party_number,
    related,
)
from agentic_fast.brain.speech import Phrases, say, send_tool_output, speakable
from agentic_fast.brain.turns import (
    CALLER,
    AssistantTurn,
    CallState,
    Command,
    Digit,
    MemoryTurn,
    QueueItem,
    ToolCall,
    UserTurn,
    normalise_role,
)
from agentic_fast.call.admission import mask_number
from agentic_fast.call.manager import CallSession
from agentic_fast.core import metrics
from agentic_fast.core.errors import (
    AgenticFastError,
    ClassifierError,
    GatewayTimeoutError,
    InvalidClassificationError,
    PeerUnavailableError,
)
from agentic_fast.core.log import get_logger
from agentic_fast.gateway.protocol import ABORTED, FINAL, voice_session_key

if TYPE_CHECKING:
    from agentic_fast.core.config import BrainConfig, Config
    from agentic_fast.gateway.client import GatewayClient

__all__ = ["ConversationBrain", "IntentClassifier"]

_log = get_logger("brain")

_ENDED_MEMORY: Final = 4096  # ids of ended calls remembered to ignore late events


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class ConversationBrain:
    """The ``ConversationSink`` of every call; one per process (see module docstring).

    ``await start()`` on the running loop (spawns the workers), ``await close()`` at
    shutdown. ``tools()`` are the function tools to give the realtime model.
    """

    def __init__(self, config: BrainConfig, gateway: GatewayClient, *,
                 classifier: IntentClassifier | None = None, session_scope: str = "call",
                 agent_id: str = "main", phrases: Phrases | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if session_scope not in ("call", "caller"):
            raise ValueError(f"session_scope must be call or caller, got {session_scope!r}")
        self.config = config
        self.mode = config.mode
        self.gateway = gateway
        self.session_scope = session_scope
        self.agent_id = agent_id
        self.phrases = phrases or Phrases()
        self.policy = CallerPolicy(config.allowed_callers, config.pin)
        self._classifier = classifier
        self._clock = clock
        self._calls: dict[str, CallState] = {}
        self._ended: dict[str, None] = {}  # ordered set of ended call ids (bounded)
        self._sweep_at = 256
        self._ready: asyncio.Queue[CallState] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._pending_total = 0
        self._busy = 0
        self._changed = asyncio.Event()
        self._closed = False
        self._handlers: dict[type, Callable[[CallState, Any], Any]] = {
            UserTurn: self._on_user_turn, AssistantTurn: self._on_assistant_turn,
            Digit: self._on_digit, ToolCall: self._on_tool_call}
        if not self.policy.allows_anyone:
            _log.warning("brain.no_allowed_callers",
                         detail="brain.allowed_callers is empty: no caller can send commands")
        if self.mode != "tool" and classifier is None:
            _log.warning("brain.no_classifier",
                         detail="every turn that is not small talk goes to the agent as-is")

    @classmethod
    def from_config(cls, config: Config, gateway: GatewayClient,
                    **kwargs: Any) -> ConversationBrain:
        """The brain of ``config`` (its classifier built from ``brain.classifier`` unless
        the mode is ``tool``); ``gateway`` is the process's shared client."""
        brain = config.brain
        if "classifier" not in kwargs and brain.mode != "tool":
            kwargs["classifier"] = ChatModelClassifier.from_config(brain.classifier)
            if not brain.classifier.api_key:
                _log.warning("brain.classifier_no_key", base_url=brain.classifier.base_url,
                             detail="requests will fail unless the endpoint needs no key")
        kwargs.setdefault("session_scope", config.gateway.session_scope)
        return cls(brain, gateway, **kwargs)

    # -- public API ----------------------------------------------------------------------------

    def tools(self) -> list[dict[str, Any]]:
        """OpenAI Realtime function tools for the session (empty in mode ``transcript``)."""
        if self.mode == "transcript":
            return []
        return [{"type": "function", **run_command_declaration()}]

    def function_declarations(self) -> list[dict[str, Any]]:
        """The same tool as Gemini Live ``functionDeclarations`` (empty in ``transcript``)."""
        return [] if self.mode == "transcript" else [run_command_declaration()]

    def session_key(self, session: CallSession) -> str:
        """The agent session of a call: per call (call SID) or per caller (their number)."""
        ident = party_number(session) if self.session_scope == "caller" else ""
        return voice_session_key(ident or session.call_sid or session.call_id,
                                 agent_id=self.agent_id)

    @property
    def pending(self) -> int:
        """Events queued for all calls."""
        return self._pending_total

    async def start(self) -> None:
        """Spawn the worker pool (idempotent)."""
        if self._workers:
            return
        if self._classifier is not None:
            await self._classifier.start()
        self._workers = [asyncio.create_task(self._worker(), name=f"brain-worker-{i}")
                         for i in range(self.config.workers)]
        _log.info("brain.started", mode=self.mode, workers=self.config.workers,
                  queue_size=self.config.queue_size, scope=self.session_scope)

    async def close(self) -> None:
        """Abort every run in flight, stop the workers, close the classifier."""
        self._closed = True
        for call in list(self._calls.values()):
            self._end(call, "shutdown")
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        if self._classifier is not None:
            await self._classifier.close()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no event is queued, held in a turn or being handled (tests, drain)."""
        try:
            async with asyncio.timeout(timeout):
                while not self._idle():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # -- ConversationSink: called by the bridge, never blocks ---------------------------------

    def on_turn(self, session: CallSession, role: str, text: str) -> None:
        if self.mode == "tool":
            return
        call = self._call(session)
        if call is None:
            return
        try:
            role = normalise_role(role)
        except ValueError:
            metrics.incr("brain.turn.bad_role")
            call.log.warning("brain.turn.bad_role", role=role[:40])
            return
        now = self._clock()
        if role == CALLER:
            call.last_piece_at = now
            turn = call.assembler.add(text, now)
            if turn is not None:
                self._cancel_flush(call)
                self._enqueue(call, UserTurn(turn, now))
            else:  # an unfinished sentence: wait gap_s for more (every piece re-arms it)
                self._cancel_flush(call)
                call.flush_timer = asyncio.get_running_loop().call_later(
                    call.assembler.gap_s, self._flush_due, call)
            self._notify()
            return
        self._flush_now(call)  # the assistant answered: the caller's turn is over
        self._enqueue(call, AssistantTurn(text))

    def on_dtmf(self, session: CallSession, digit: str) -> None:
        call = self._call(session)
        if call is not None and call.gate.allowed and call.gate.pin.required:
            self._enqueue(call, Digit(digit))

    def on_tool_call(self, session: CallSession, call_id: str, name: str,
                     arguments: str) -> None:
        call = self._call(session)
        if call is None:
            return
        if self.mode == "transcript" or name != RUN_COMMAND:
            metrics.incr("brain.tool.unknown")
            call.log.warning("brain.tool.unknown", name=name[:60], mode=self.mode)
            self._tool_result(call, call_id, error=f"Unknown tool {name!r}.")
            return
        command = parse_tool_arguments(arguments)
        if command is None:
            metrics.incr("brain.tool.bad_arguments")
            call.log.warning("brain.tool.bad_arguments", arguments=arguments[:200])
            self._tool_result(call, call_id,
                              error='Pass {"command": "<instruction>"} with a non-empty text.')
            return
        now = self._clock()
        inflight = call.inflight
        if inflight is not None and inflight.status is None and self._joins(inflight,
                                                                            command, now):
            inflight.tool_call_ids.append(call_id)
            metrics.incr("brain.tool.joined")
            call.log.info("brain.tool.joined", tool_call_id=call_id, source=inflight.source)
            return
        if self.mode == "both":
            call.tool_calls.append((now, command))
        if not self._enqueue(call, ToolCall(call_id, command, now)):
            self._tool_result(call, call_id, error="The assistant is busy; try again shortly.")

    def on_barge_in(self, session: CallSession) -> None:
        call = self._calls.get(session.call_id)
        if call is None or call.inflight is None or call.inflight.task is None:
            return
        if not self.config.barge_in_aborts:
            metrics.incr("brain.barge_in.kept")
            return
        metrics.incr("brain.abort.barge_in")
        call.log.info("brain.abort", reason="barge-in", command=call.inflight.text[:120])
        call.abort_reason = "barge-in"
        call.inflight.task.cancel()

    def on_call_end(self, session: CallSession) -> None:
        call = self._calls.get(session.call_id)
        if call is None:
            self._remember_ended(session.call_id)
            return
        self._end(call, "hang-up")

    # -- sink helpers -------------------------------------------------------------------------

    def _call(self, session: CallSession) -> CallState | None:
        call = self._calls.get(session.call_id)
        if call is not None:
            return call
        if self._closed or session.ended or session.call_id in self._ended:
            metrics.incr("brain.events.after_end")
            return None
        if len(self._calls) >= self._sweep_at:  # calls that ended without on_call_end
            for stale in [c for c in self._calls.values() if c.session.ended]:
                self._end(stale, "ended")
            self._sweep_at = max(256, 2 * len(self._calls))
        gate = CallGate(self.policy, party_number(session))
        call = CallState(session, gate, self.config.turn_gap_s, self.config.memory_turns)
        self._calls[session.call_id] = call
        return call

    def _enqueue(self, call: CallState, item: QueueItem) -> bool:
        """Queue ``item`` for its call (never waits); False (counted, logged) when full."""
        if call.closed:
            return False
        if (self._pending_total >= self.config.queue_size
                or len(call.pending) >= self.config.call_queue_size):
            metrics.incr("brain.queue.full")
            call.log.warning("brain.queue_full", item=type(item).__name__,
                             call_pending=len(call.pending), pending=self._pending_total)
            return False
        call.pending.append(item)
        self._pending_total += 1
        if not call.scheduled:
            call.scheduled = True
            self._ready.put_nowait(call)
        self._notify()
        return True

    def _flush_due(self, call: CallState) -> None:
        call.flush_timer = None
        if not call.closed:
            self._flush_now(call)
            self._notify()

    def _flush_now(self, call: CallState) -> None:
        self._cancel_flush(call)
        turn = call.assembler.flush()
        if turn is not None:
            self._enqueue(call, UserTurn(turn, call.last_piece_at))

    @staticmethod
    def _cancel_flush(call: CallState) -> None:
        if call.flush_timer is not None:
            call.flush_timer.cancel()
            call.flush_timer = None

    def _joins(self, cmd: Command, command: str, now: float) -> bool:
        """Is a new tool call the command already in flight? Same text, or (mode both) the
        transcript command of the same caller turn (close in time, about the same thing)."""
        if cmd.key == command_key(command):
            return True
        if (self.mode == "both" and cmd.source == "transcript" and not cmd.linked
                and abs(now - cmd.at) <= self.config.delegation_window_s
                and related(cmd.text, command)):
            cmd.linked = True
            return True
        return False

    def _end(self, call: CallState, reason: str) -> None:
        call.closed = True
        self._calls.pop(call.session.call_id, None)
        self._remember_ended(call.session.call_id)
        self._cancel_flush(call)
        call.assembler.flush()
        self._pending_total -= len(call.pending)
        dropped = len(call.pending)
        call.pending.clear()
        cmd = call.inflight
        if cmd is not None and cmd.task is not None and not cmd.task.done():
            call.abort_reason = reason
            cmd.task.cancel()
            metrics.incr(f"brain.abort.{reason.replace('-', '_')}")
            call.log.info("brain.abort", reason=reason, command=cmd.text[:120])
        call.log.info("brain.call_end", reason=reason, dropped=dropped)
        self._notify()

    def _remember_ended(self, call_id: str) -> None:
        self._ended[call_id] = None
        if len(self._ended) > _ENDED_MEMORY:
            del self._ended[next(iter(self._ended))]

    def _notify(self) -> None:
        self._changed.set()

    def _idle(self) -> bool:
        return (self._pending_total == 0 and self._busy == 0
                and not any(c.assembler.pending for c in self._calls.values()))

    # -- the worker pool ------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            call = await self._ready.get()
            try:
                if call.pending and not call.closed:
                    item = call.pending.popleft()
                    self._pending_total -= 1
                    self._busy += 1
                    try:
                        await self._handlers[type(item)](call, item)
                    except Exception:
                        metrics.incr("brain.handler.error")
                        call.log.exception("brain.handler_error",
                                           item=type(item).__name__)
                    finally:
                        self._busy -= 1
            finally:
                if call.pending and not call.closed:
                    self._ready.put_nowait(call)  # round robin: other calls go first
                else:
                    call.scheduled = False
                self._notify()

    # -- handlers (on a worker; one at a time per call) --------------------------------------

    async def _on_assistant_turn(self, call: CallState, item: AssistantTurn) -> None:
        call.memory.add("assistant", item.text)

    async def _on_user_turn(self, call: CallState, item: UserTurn) -> None:
        context = call.memory.recent()
        last_assistant = call.memory.last_assistant
        call.memory.add(CALLER, item.text)
        metrics.incr("brain.turns")
        if not self._allowed(call):
            return
        if call.take_tool_call_near(item.at, self.config.delegation_window_s, item.text):
            metrics.incr("brain.turn.delegated")
            call.log.info("brain.turn.delegated", detail="the model called the tool for it")
            return
        intent = rule_intent(item.text, last_assistant)
        if intent is None:
            intent = await self._classify(call, item.text, context)
        metrics.incr(f"brain.intent.{intent.kind}.{intent.source}")
        call.log.info("brain.intent", intent=intent.kind, source=intent.source,
                      chars=len(item.text))
        if intent.kind != ACTION:
            return
        if not call.gate.pin.verified:
            self._hold(call, intent.command, "transcript", item.at)
            return
        await self._run_command(call, intent.command, "transcript", item.at)

    async def _on_tool_call(self, call: CallState, item: ToolCall) -> None:
        if not self._allowed(call):
            metrics.incr("brain.refused.tool")
            self._tool_result(call, item.call_id,
                              error="Commands are not available to this caller.")
            return
        if not call.gate.pin.verified:
            held = self._hold(call, item.command, "tool", item.at, announce=False)
            self._tool_result(call, item.call_id, error=self.phrases.pin_prompt if held
                              else self.phrases.pin_locked)
            return
        await self._run_command(call, item.command, "tool", item.at, tool_call_id=item.call_id)

    async def _on_digit(self, call: CallState, item: Digit) -> None:
        gate = call.gate
        result = gate.pin.feed(item.digit)
        if result in (PinResult.IGNORED, PinResult.COLLECTING):
            return
        metrics.incr(f"brain.pin.{result.value}")
        if result is PinResult.OK:
            call.log.info("brain.pin.ok")
            self._say(call, self.phrases.pin_ok, "pin_ok")
            # a held command stays good for the dedupe window
            held = gate.take_held(self._clock(), self.config.dedupe_window_s)
            if held is not None:
                await self._run_command(call, held.command, held.source, held.at)
            return
        call.log.warning("brain.pin.wrong", attempts=gate.pin.attempts, locked=gate.pin.locked)
        locked = result is PinResult.LOCKED
        if locked:
            gate.held = None
        self._say(call, self.phrases.pin_locked if locked else self.phrases.pin_wrong,
                  result.value)

    def _allowed(self, call: CallState) -> bool:
        if call.gate.allowed:
            return True
        if call.gate.first_refusal():
            metrics.incr("brain.refused.caller")
            call.log.warning("brain.refused", reason="caller not allowed",
                             caller=mask_number(party_number(call.session)))
        return False

    def _hold(self, call: CallState, command: str, source: str, at: float, *,
              announce: bool = True) -> bool:
        """No PIN yet: keep the command to run once the PIN is right (False: locked)."""
        metrics.incr("brain.refused.pin")
        call.log.info("brain.refused", reason="pin required", source=source)
        held = call.gate.hold(command, source, at)
        if held and announce:
            self._say(call, self.phrases.pin_prompt, "pin_prompt")
        return held

    async def _classify(self, call: CallState, text: str,
                        context: tuple[MemoryTurn, ...]) -> Intent:
        fallback = Intent(ACTION, " ".join(text.split())[:MAX_COMMAND_CHARS], "fallback")
        if self._classifier is None:
            return fallback
        try:
            return await self._classifier.classify(text, context)
        except ClassifierError as exc:
            kind = "invalid" if isinstance(exc, InvalidClassificationError) else "failed"
            metrics.incr(f"brain.classifier.{kind}")
            call.log.warning("brain.classifier_error", kind=kind, error=str(exc)[:200])
            return fallback

    # -- commands -----------------------------------------------------------------------------

    async def _run_command(self, call: CallState, text: str, source: str, at: float, *,
                           tool_call_id: str | None = None) -> None:
        now = self._clock()
        key = command_key(text)
        dup = call.duplicate_of(key, now, self.config.dedupe_window_s)
        if dup is not None:
            metrics.incr("brain.command.duplicate")
            call.log.info("brain.command.duplicate", source=source, first=dup.source)
            if tool_call_id is not None:
                if dup.status is None:
                    dup.tool_call_ids.append(tool_call_id)
                else:
                    self._tool_result(call, tool_call_id, **self._outcome(dup))
            return
        session = call.session
        record: dict[str, Any] = {
            "command": text, "source": source, "status": "running",
            "session_key": self.session_key(session), "run_id": None,
            "started_at": _iso(session.clock.time()), "ended_at": None, "duration_s": None,
            "answer": None, "spoken": None, "error": None}
        cmd = Command(text, key, source, at, now, record)
        if tool_call_id is not None:
            cmd.tool_call_ids.append(tool_call_id)
        call.recent.append(cmd)
        session.add_command(record)
        metrics.incr(f"brain.command.sent.{source}")
        call.log.info("brain.command.sent", source=source, command=text[:200])
        call.inflight = cmd
        call.abort_reason = None
        cmd.task = asyncio.create_task(self._execute(call, cmd))
        try:
            await asyncio.wait((cmd.task,))
        finally:
            if not cmd.task.done():  # the worker itself is being cancelled (shutdown)
                call.abort_reason = call.abort_reason or "shutdown"
                cmd.task.cancel()
            call.inflight = None
        if cmd.status is None:  # cancelled before it ever ran
            self._finish(call, cmd, "aborted", error=call.abort_reason or "cancelled")
        self._deliver(call, cmd)

    async def _execute(self, call: CallState, cmd: Command) -> None:
        """Run ``cmd`` on the gateway; sets its outcome (never raises but on cancel)."""
        config = self.config
        loop = asyncio.get_running_loop()
        filler = (loop.call_later(config.filler_after_s, self._filler, call, cmd)
                  if config.filler_after_s > 0 else None)
        run = final = None
        try:
            if not self.gateway.is_open:
                if config.gateway_wait_s <= 0:
                    raise GatewayTimeoutError("the gateway is not connected")
                await self.gateway.wait_ready(timeout=config.gateway_wait_s)
            run = self.gateway.run(cmd.record["session_key"], cmd.text,
                                   deadline_s=config.deadline_s)
            async with run:
                cmd.record["run_id"] = run.run_id
                async for event in run:
                    if event.terminal:
                        final = event
                        break
        except asyncio.CancelledError:
            self._finish(call, cmd, "aborted", error=call.abort_reason or "cancelled")
            raise
        except GatewayTimeoutError as exc:
            status = "timeout" if run is not None and run.run_id is not None else "unavailable"
            self._finish(call, cmd, status, error=str(exc))
        except PeerUnavailableError as exc:
            self._finish(call, cmd, "unavailable", error=str(exc))
        except AgenticFastError as exc:
            self._finish(call, cmd, "error", error=str(exc))
        else:
            if final is None:
                self._finish(call, cmd, "error", error="run ended without an answer")
            elif final.state == FINAL:
                self._finish(call, cmd, "done", answer=final.text)
            elif final.state == ABORTED:
                self._finish(call, cmd, "cancelled", error="aborted by the gateway")
            else:
                self._finish(call, cmd, "error", error=f"{final.error_kind or 'unknown'}: "
                             f"{(final.error_message or '')[:300]}")
        finally:
            if filler is not None:
                filler.cancel()

    def _filler(self, call: CallState, cmd: Command) -> None:
        if cmd.status is None and not call.closed:
            metrics.incr("brain.filler")
            self._say(call, self.phrases.filler, "filler")

    def _finish(self, call: CallState, cmd: Command, status: str, *, answer: str | None = None,
                error: str | None = None) -> None:
        if cmd.status is not None:
            return
        cmd.status = status
        phrases = self.phrases
        if status == "done":
            cmd.spoken = speakable(answer or "") or phrases.done
        else:
            cmd.spoken = {"timeout": phrases.timeout, "unavailable": phrases.unavailable,
                          "cancelled": phrases.cancelled, "aborted": phrases.cancelled,
                          }.get(status, phrases.failed)
        duration = self._clock() - cmd.started
        cmd.record.update(status=status, ended_at=_iso(call.session.clock.time()),
                          duration_s=round(duration, 3), answer=(answer or "")[:4000] or None,
                          error=error,
                          spoken=None if status == "aborted" else cmd.spoken)
        metrics.incr(f"brain.command.{status}")
        call.session.emit("call.command", cmd.record)
        metrics.observe("agent_command", duration, status)
        log = call.log.info if status in ("done", "aborted") else call.log.warning
        log("brain.command.end", status=status, source=cmd.source,
            duration_s=round(duration, 3), run_id=cmd.record["run_id"],
            error=(error or "")[:200])

    @staticmethod
    def _outcome(cmd: Command) -> dict[str, str]:
        return {"result": cmd.spoken} if cmd.status == "done" else {"error": cmd.spoken}

    def _deliver(self, call: CallState, cmd: Command) -> None:
        """Speak the outcome (or answer the waiting tool calls). A run we aborted (hang-up,
        barge-in) says nothing; its tool calls still get an answer."""
        if cmd.status == "aborted":
            for call_id in cmd.tool_call_ids:
                self._tool_result(call, call_id, error=f"Cancelled ({cmd.record['error']}).")
            return
        if cmd.tool_call_ids:
            for call_id in cmd.tool_call_ids:
                self._tool_result(call, call_id, **self._outcome(cmd))
        else:
            self._say(call, cmd.spoken, cmd.status or "answer")

    # -- speaking ---------------------------------------------------------------------------

    def _live(self, call: CallState) -> bool:
        if call.closed or call.session.ended:
            metrics.incr("brain.speak.after_end")
            return False
        return True

    def _say(self, call: CallState, text: str, what: str) -> None:
        if self._live(call):
            say(call.session.bridge, text, call.log, what)

    def _tool_result(self, call: CallState, call_id: str, *, result: str | None = None,
                     error: str | None = None) -> None:
        if self._live(call):
            send_tool_output(call.session.bridge, call_id, call.log, result=result,
                             error=error)
