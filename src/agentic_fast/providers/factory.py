"""Pick and build the realtime provider named by ``audio.provider``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentic_fast.call.manager import CallSession
from agentic_fast.core.config import Config
from agentic_fast.core.errors import ConfigError
from agentic_fast.providers.base import RealtimeProvider


def provider_factory(config: Config, *, tools: list[dict[str, Any]] | None = None,
                     gemini_declarations: list[dict[str, Any]] | None = None,
                     ) -> Callable[[CallSession], RealtimeProvider]:
    """A function making one provider per call; checks the provider's settings up front.

    ``tools`` are OpenAI Realtime function tools; ``gemini_declarations`` are the same
    functions as bare Gemini FunctionDeclarations (``{name, description, parameters}``, the
    brain's ``run_command``). Gemini gets them wrapped in one Tool
    (``[{"functionDeclarations": [...]}]``): the Live API closes a setup whose ``tools``
    hold bare declarations (1007)."""
    name = config.audio.provider
    timeout = config.bridge.provider_connect_timeout_s
    stall = config.bridge.provider_stall_timeout_s or None
    if name in ("openai", "openai-pcmu"):
        from agentic_fast.providers.openai.provider import OpenAIRealtimeProvider

        if not config.openai_realtime.api_key:
            raise ConfigError("openai_realtime.api_key is not set (audio.provider is "
                              f"{name})", key="openai_realtime.api_key")
        settings = config.openai_realtime
        # a minimum barge-in speech duration needs us (not the server's VAD) to cancel
        server_cancels = config.bridge.barge_in_min_speech_ms == 0

        def make_openai(session: CallSession) -> RealtimeProvider:
            return OpenAIRealtimeProvider(settings, call_id=session.call_id,
                                          connect_timeout_s=timeout, tools=tools or None,
                                          interrupt_response=server_cancels,
                                          stall_timeout_s=stall)

        return make_openai
    if name == "gemini":
        from agentic_fast.providers.gemini.provider import GeminiLiveProvider

        if not config.gemini.api_key:
            raise ConfigError("gemini.api_key is not set (audio.provider is gemini)",
                              key="gemini.api_key")
        from agentic_fast.providers.gemini.events import function_tool

        gemini = config.gemini
        gemini_tools = [function_tool(*gemini_declarations)] if gemini_declarations else None

        def make_gemini(session: CallSession) -> RealtimeProvider:
            return GeminiLiveProvider(gemini, call_id=session.call_id,
                                      connect_timeout_s=timeout,
                                      tools=gemini_tools, stall_timeout_s=stall)

        return make_gemini
    raise ConfigError(f"unknown audio.provider {name!r}", key="audio.provider")
