"""Builds each call's AudioBridge, with its provider socket opened early (pre-warm).

The webhook calls :meth:`AudioBridgeFactory.prewarm` while it answers the carrier, so the TLS and
session handshake with the model happen while the carrier is still opening the media stream;
the stream then gets a provider that is (nearly) ready. A pre-warmed provider whose stream
never arrives is closed when the call ends (``discard``), never leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from agentic_fast.call.bridge import AudioBridge, BridgeSettings, ConversationSink
from agentic_fast.call.manager import CallDirection, CallManager, CallSession
from agentic_fast.call.pacer import SharedPacer
from agentic_fast.call.stream_handler import StreamSender
from agentic_fast.call.timers import CallLimits
from agentic_fast.carriers.base import CallControl
from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.core.errors import CarrierApiError
from agentic_fast.core.log import get_logger
from agentic_fast.core.tasks import TaskSet
from agentic_fast.providers.base import RealtimeProvider

log = get_logger("bridge")

ProviderFactory = Callable[[CallSession], RealtimeProvider]


class AudioBridgeFactory:
    """``BridgeFactory`` for the media stream handler; one per server."""

    def __init__(self, config: Config, provider_factory: ProviderFactory, *,
                 pacer: SharedPacer | None = None,
                 conversation: ConversationSink | None = None) -> None:
        self.config = config
        self.provider_factory = provider_factory
        self.pacer = pacer or SharedPacer()
        self.conversation = conversation
        b = config.bridge
        self.settings = BridgeSettings(
            handoff_ms=config.audio.handoff_ms, lead_ms=b.lead_ms,
            mark_every_frames=b.mark_every_frames,
            max_queue_frames=int(b.max_queue_s * 50),
            barge_in_min_speech_ms=b.barge_in_min_speech_ms,
            connect_timeout_s=b.provider_connect_timeout_s)
        self.limits = call_limits(config)
        self._warm: dict[str, RealtimeProvider] = {}
        self._tasks = TaskSet("bridge.factory", log)
        self.manager: CallManager | None = None
        #: the carrier's call control (REST), to end calls gracefully
        self.rest: CallControl | None = None
        self.controls: dict[str, CallControl | None] = {}
        #: objects started with the app and closed with it (gateway client, brain)
        self.owned: list[Any] = []

    def bind_server(self, manager: CallManager, rest: CallControl | None) -> None:
        """Called by ``create_app``: what the factory needs to end a call gracefully."""
        self.manager = manager
        self.rest = rest

    def bind_carriers(self, controls: Mapping[str, CallControl | None]) -> None:
        """Called by ``create_app``: each carrier's call control, by name (a call on a
        carrier other than the default ends through its own)."""
        self.controls = dict(controls)

    def _control(self, session: CallSession) -> CallControl | None:
        if session.carrier and session.carrier in self.controls:
            return self.controls[session.carrier]
        return self.rest

    # -- pre-warm ---------------------------------------------------------------------------

    def prewarm(self, session: CallSession) -> None:
        if not self.config.bridge.prewarm or session.call_id in self._warm:
            return
        provider = self.provider_factory(session)
        self._warm[session.call_id] = provider
        metrics.incr("bridge.prewarm")
        self._spawn(self._connect_quietly(provider, session))

    async def _connect_quietly(self, provider: RealtimeProvider, session: CallSession) -> None:
        try:
            async with asyncio.timeout(self.config.bridge.provider_connect_timeout_s):
                await provider.connect()
        except Exception as exc:  # the bridge retries when the stream arrives
            metrics.incr("bridge.prewarm.failed")
            session.log.warning("bridge.prewarm_failed", error=repr(exc)[:200])

    def discard(self, session: CallSession) -> None:
        """The call ended: close a pre-warmed provider its stream never used."""
        provider = self._warm.pop(session.call_id, None)
        if provider is not None:
            metrics.incr("bridge.prewarm.discarded")
            self._spawn(provider.close())

    # -- MediaStreamHandler's factory ---------------------------------------------------------

    def __call__(self, session: CallSession, sender: StreamSender) -> AudioBridge:
        provider = self._warm.pop(session.call_id, None) or self.provider_factory(session)
        if session.direction is CallDirection.OUTBOUND:
            speak_first = session.prompt or None
        else:
            speak_first = self.config.openai_realtime.greeting or None
        return AudioBridge(session, sender, provider, self.pacer, settings=self.settings,
                           speak_first=speak_first, conversation=self.conversation,
                           on_provider_failed=self.provider_failed,
                           write_buffer=sender.write_buffer_size,
                           limits=self.limits, on_call_limit=self.end_call, leg=sender.leg)

    async def provider_failed(self, session: CallSession, reason: str) -> None:
        """The model cannot be reached: say so to the caller, then end the call cleanly."""
        if self.manager is not None and not session.ended:
            self.manager.fail(session, f"provider-unavailable: {reason}")
        rest = self._control(session)
        if rest is not None and session.call_sid:
            try:
                await rest.say_and_hang_up(session.call_sid,
                                                self.config.bridge.unavailable_message)
                return
            except CarrierApiError as exc:
                session.log.warning("bridge.fallback_failed", error=str(exc)[:200])
        bridge = session.bridge
        sender = getattr(bridge, "sender", None)
        if sender is not None:  # no REST: closing the stream plays the TwiML's <Say>
            with contextlib.suppress(Exception):
                await sender.close()

    def end_call(self, session: CallSession, reason: str, unsaid: str | None) -> None:
        """A call time limit was reached and its goodbye played (``unsaid``: the goodbye
        the model never voiced): record ``reason`` as the call's end, then hang up."""
        if session.ended:  # the caller (or the carrier) ended it meanwhile: nothing to hang up
            session.log.info("call.limit_after_end", reason=reason, ended_by=session.reason)
            return
        if self.manager is not None:
            self.manager.complete(session, reason=reason)
        self._spawn(self._hang_up(session, reason, unsaid))

    async def _hang_up(self, session: CallSession, reason: str, unsaid: str | None) -> None:
        rest = self._control(session)
        if rest is not None and session.call_sid:
            try:
                if unsaid:  # the carrier says the goodbye the model did not
                    await rest.say_and_hang_up(session.call_sid, unsaid)
                else:
                    await rest.hang_up(session.call_sid)
                session.log.info("call.hung_up", reason=reason, twilio_said_goodbye=bool(unsaid))
                return
            except CarrierApiError as exc:
                metrics.incr("calls.limit.hangup_failed")
                session.log.warning("call.hangup_failed", reason=reason, error=str(exc)[:200])
        sender = getattr(session.bridge, "sender", None)
        if sender is not None:  # no REST: ending the stream ends the call's TwiML
            with contextlib.suppress(Exception):
                await sender.close()

    async def start(self) -> None:
        """App startup: start what the factory owns (the brain, the gateway link)."""
        for part in self.owned:
            start = getattr(part, "start", None)
            if start is not None:
                await start()

    async def close(self) -> None:
        for part in reversed(self.owned):
            with contextlib.suppress(Exception):
                await part.close()
        for provider in list(self._warm.values()):
            with contextlib.suppress(Exception):
                await provider.close()
        self._warm.clear()
        self._tasks.cancel_all()
        await self.pacer.close()

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)


def call_limits(config: Config) -> CallLimits:
    """The ``calls.*`` time limits of every call."""
    c = config.calls
    return CallLimits(
        max_duration_s=c.max_duration_s, duration_warning_s=c.duration_warning_s,
        duration_warning_message=c.duration_warning_message,
        duration_goodbye_message=c.duration_goodbye_message,
        silence_timeout_s=c.silence_timeout_s, silence_grace_s=c.silence_grace_s,
        silence_prompt_message=c.silence_prompt_message,
        silence_goodbye_message=c.silence_goodbye_message,
        goodbye_timeout_s=c.goodbye_timeout_s)


def make_bridge_factory(config: Config) -> AudioBridgeFactory:
    """The production factory: the provider named by ``audio.provider``, and the
    ConversationBrain with the process's one OpenClaw gateway connection."""
    from agentic_fast.brain import ConversationBrain
    from agentic_fast.gateway import GatewayClient
    from agentic_fast.providers.factory import provider_factory

    gateway = GatewayClient.from_config(config.gateway)
    brain = ConversationBrain.from_config(config, gateway)
    factory = AudioBridgeFactory(
        config, provider_factory(config, tools=brain.tools(),
                                 gemini_declarations=brain.function_declarations()),
        conversation=brain)
    factory.owned = [gateway, brain]
    return factory
