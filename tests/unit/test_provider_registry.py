"""The provider registry: names, built-ins found lazily, clear errors."""

from __future__ import annotations

import pytest

from agentic_fast.core.config import Config
from agentic_fast.core.errors import ConfigError
from agentic_fast.providers import registry


def _builder(config, context):  # type: ignore[no-untyped-def]
    return lambda session: None


def test_a_registered_name_becomes_a_valid_audio_provider() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_text("audio:\n  provider: unit-toy\n", env={})
    assert err.value.key == "audio.provider"
    registry.register("unit-toy", _builder)
    assert "unit-toy" in registry.names()
    config = Config.from_text("audio:\n  provider: unit-toy\n", env={})
    assert registry.provider_factory(config)(None) is None  # type: ignore[arg-type]


def test_a_name_is_registered_once_and_must_be_plain() -> None:
    registry.register("unit-once", _builder)
    registry.register("unit-once", _builder)  # the same builder again: harmless
    with pytest.raises(ValueError, match="registered already"):
        registry.register("unit-once", lambda c, x: _builder(c, x))
    with pytest.raises(ValueError, match="provider name"):
        registry.register("bad name!", _builder)


def test_builtin_providers_need_their_api_key() -> None:
    for name, key in (("openai", "openai_realtime.api_key"), ("gemini", "gemini.api_key")):
        config = Config.from_text(f"audio:\n  provider: {name}\n", env={})
        with pytest.raises(ConfigError) as err:
            registry.provider_factory(config)
        assert err.value.key == key
