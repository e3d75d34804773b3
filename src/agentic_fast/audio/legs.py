"""The converter for a call's phone leg (``carriers.base.LegFormat``) and provider."""

from __future__ import annotations

from typing import Any

from agentic_fast.audio import AudioConverter
from agentic_fast.carriers.base import L16_16K, PCMU_8K, LegFormat
from agentic_fast.core.errors import AudioFormatError

__all__ = ["converter_for"]


def converter_for(provider: str, leg: LegFormat, handoff_ms: int) -> Any:
    """An ``AudioConverter`` between ``leg`` (the carrier's frames: ``leg.frame_bytes``
    per 20 ms) and ``provider``'s format; ``AudioFormatError`` for a leg no converter
    handles (today: mu-law 8 kHz, 160-byte frames; L16 16 kHz big-endian, 640-byte frames,
    which needs a PCM16 provider). Resolved once per call, never per frame."""
    if leg == PCMU_8K:
        return AudioConverter(provider, handoff_ms=handoff_ms)
    if leg == L16_16K:
        from agentic_fast.audio.l16 import L16Converter

        try:
            return L16Converter(provider, handoff_ms=handoff_ms)
        except ValueError as exc:
            raise AudioFormatError(str(exc)) from None
    raise AudioFormatError(f"no audio converter for a {leg.codec} {leg.sample_rate} Hz leg "
                           f"({leg.frame_bytes}-byte frames) to provider {provider!r}")
