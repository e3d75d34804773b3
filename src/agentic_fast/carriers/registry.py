"""Carriers by name: ``carrier: twilio | telnyx`` in config.yaml picks one.

A carrier package registers its builder when imported (``register("telnyx", build)`` in
``carriers/<name>/carrier.py``); :func:`build_carrier` imports that module on first use, so
adding a carrier edits nothing here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from agentic_fast.carriers.base import Carrier
from agentic_fast.core.config import CARRIERS, Config
from agentic_fast.core.errors import ConfigError

__all__ = ["CarrierBuilder", "build_carrier", "register", "registered"]

#: Builds a carrier from the whole config (its own section, ``server.public_url``...);
#: a built-in also takes a ready REST client as a second argument (tests, fakes).
CarrierBuilder = Callable[..., Carrier]

_BUILDERS: dict[str, CarrierBuilder] = {}


def register(name: str, builder: CarrierBuilder) -> None:
    """Make ``name`` buildable (called by the carrier's module at import)."""
    _BUILDERS[name] = builder


def registered() -> list[str]:
    """Names registered so far (those whose module was imported)."""
    return sorted(_BUILDERS)


def _load(name: str, key: str) -> CarrierBuilder:
    builder = _BUILDERS.get(name)
    if builder is not None:
        return builder
    if name not in CARRIERS:
        raise ConfigError(f"{key}: unknown carrier {name!r} (one of {', '.join(CARRIERS)})",
                          key=key)
    try:
        importlib.import_module(f"agentic_fast.carriers.{name}.carrier")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{key}: carrier {name!r} is not available in this build "
                          f"({exc.name} is missing)", key=key) from exc
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"{key}: carrier {name!r} did not register itself", key=key)
    return builder


def build_carrier(name: str, config: Config, key: str = "carrier", rest: Any = None
                  ) -> Carrier:
    """The carrier ``name`` built from ``config`` (with ``rest`` as its REST client when
    given); ``ConfigError`` naming ``key`` when no such carrier exists."""
    builder = _load(name, key)
    return builder(config) if rest is None else builder(config, rest)
