"""Providers found by name: ``audio.provider`` selects one registered here.

A provider module registers a :data:`Builder` under its name (``register("toy",
build_toy)``); :func:`provider_factory` looks the name up, and the builder checks the
provider's settings up front and returns the per-call constructor. The built-in providers
are registered lazily (their modules are imported only when selected), so a third provider
needs nothing but its own module, imported before the config is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentic_fast.core.config import PROVIDER_NAMES, Config
from agentic_fast.core.errors import ConfigError

if TYPE_CHECKING:
    from agentic_fast.call.manager import CallSession
    from agentic_fast.providers.base import RealtimeProvider

__all__ = ["Builder", "ProviderContext", "names", "provider_factory", "register"]


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What every provider gets beside the config: the per-call bridge settings and the
    brain's function tools (OpenAI Realtime tools, and the same as bare declarations)."""

    connect_timeout_s: float
    stall_timeout_s: float | None
    tools: list[dict[str, Any]] | None = None
    declarations: list[dict[str, Any]] | None = field(default=None)


#: ``builder(config, context)`` -> a function making one provider per call; raises
#: :class:`ConfigError` (naming the key) when the provider's settings are unusable.
Builder = Callable[[Config, ProviderContext], Callable[["CallSession"], "RealtimeProvider"]]

_builders: dict[str, Builder] = {}
#: built-in providers: name -> the module that registers it when imported
_lazy: dict[str, str] = {
    "openai": "agentic_fast.providers.openai.provider",
    "openai-pcmu": "agentic_fast.providers.openai.provider",
    "gemini": "agentic_fast.providers.gemini.provider",
}


def register(name: str, builder: Builder, *, replace: bool = False) -> None:
    """Make ``audio.provider: <name>`` build providers with ``builder``."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"provider name must be letters, digits, - or _; got {name!r}")
    if name in _builders and not replace and _builders[name] is not builder:
        raise ValueError(f"provider {name!r} is registered already")
    _builders[name] = builder
    if name not in PROVIDER_NAMES:
        PROVIDER_NAMES.append(name)


def names() -> list[str]:
    """Every name ``audio.provider`` may take."""
    return list(PROVIDER_NAMES)


def provider_factory(config: Config, *, tools: list[dict[str, Any]] | None = None,
                     gemini_declarations: list[dict[str, Any]] | None = None,
                     ) -> Callable[[CallSession], RealtimeProvider]:
    """A function making one provider per call (the one ``audio.provider`` names); checks
    the provider's settings up front.

    ``tools`` are OpenAI Realtime function tools; ``gemini_declarations`` the same functions
    as bare declarations (``{name, description, parameters}``, the brain's ``run_command``).
    """
    name = config.audio.provider
    builder = _builders.get(name)
    if builder is None and name in _lazy:
        importlib.import_module(_lazy[name])
        builder = _builders.get(name)
    if builder is None:
        raise ConfigError(f"unknown audio.provider {name!r} (known: {', '.join(names())})",
                          key="audio.provider")
    context = ProviderContext(connect_timeout_s=config.bridge.provider_connect_timeout_s,
                              stall_timeout_s=config.bridge.provider_stall_timeout_s or None,
                              tools=tools, declarations=gemini_declarations)
    return builder(config, context)
