"""Pick and build the realtime provider named by ``audio.provider`` (see :mod:`.registry`)."""

from agentic_fast.providers.registry import provider_factory

__all__ = ["provider_factory"]
