"""Shared argument checking and per-provider parameters for both AudioConverter twins."""

from __future__ import annotations

from dataclasses import dataclass

from agentic_fast._audiocore.tables import FIR_DESIGNS, FirDesign
from agentic_fast.core.errors import AudioFormatError

TWILIO_RATE = 8000
#: One Twilio frame: 20 ms of 8 kHz mu-law.
TWILIO_FRAME_BYTES = 160
HANDOFF_MS_RANGE = (20, 100)
#: Largest Twilio payload accepted in one message (Twilio sends 160 bytes = 20 ms).
DEFAULT_MAX_PAYLOAD_BYTES = 4000

#: provider -> (rate the provider takes, rate it sends, passthrough mu-law?)
PROVIDER_FORMATS: dict[str, tuple[int, int, bool]] = {
    "openai": (24000, 24000, False),       # audio/pcm, PCM16 24 kHz both ways
    "gemini": (16000, 24000, False),       # PCM16 16 kHz in, 24 kHz out
    "openai-pcmu": (8000, 8000, True),     # audio/pcmu: mu-law passthrough, re-chunking only
}


@dataclass(frozen=True, slots=True)
class ConverterSpec:
    """Everything an AudioConverter needs to know about its call's provider leg."""

    provider: str
    handoff_ms: int
    provider_in_rate: int
    provider_out_rate: int
    passthrough: bool
    #: bytes per chunk handed to the provider (mu-law in passthrough, PCM16 otherwise)
    chunk_bytes: int
    max_payload_bytes: int
    upsampler: FirDesign | None
    downsampler: FirDesign | None

    @property
    def inbound_delay_ms(self) -> float:
        return self.upsampler.delay_ms if self.upsampler else 0.0

    @property
    def outbound_delay_ms(self) -> float:
        return self.downsampler.delay_ms if self.downsampler else 0.0


def converter_spec(provider: str, handoff_ms: int = 40,
                   max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> ConverterSpec:
    """Validate AudioConverter arguments; raises ``ValueError`` naming the bad one."""
    if provider not in PROVIDER_FORMATS:
        raise ValueError(
            f"provider must be one of {sorted(PROVIDER_FORMATS)}, got {provider!r}"
        )
    lo, hi = HANDOFF_MS_RANGE
    valid_int = isinstance(handoff_ms, int) and not isinstance(handoff_ms, bool)
    if not valid_int or not lo <= handoff_ms <= hi:
        raise ValueError(f"handoff_ms must be an integer from {lo} to {hi}, got {handoff_ms!r}")
    if not isinstance(max_payload_bytes, int) or not 160 <= max_payload_bytes <= 64000:
        raise ValueError(f"max_payload_bytes must be from 160 to 64000, got {max_payload_bytes!r}")
    in_rate, out_rate, passthrough = PROVIDER_FORMATS[provider]
    if passthrough:
        chunk = TWILIO_RATE * handoff_ms // 1000
        up = down = None
    else:
        chunk = in_rate * handoff_ms // 1000 * 2
        up = FIR_DESIGNS[(TWILIO_RATE, in_rate)]
        down = FIR_DESIGNS[(out_rate, TWILIO_RATE)]
    return ConverterSpec(provider, handoff_ms, in_rate, out_rate, passthrough, chunk,
                         max_payload_bytes, up, down)


def check_payload_size(n_chars: int, max_payload_bytes: int) -> None:
    """Reject base64 text too long for one Twilio payload before decoding it."""
    if n_chars > (max_payload_bytes + 2) // 3 * 4:
        raise AudioFormatError(
            f"Twilio payload of {n_chars} base64 characters exceeds the "
            f"{max_payload_bytes}-byte limit"
        )


def check_payload_size_decoded(n_bytes: int, max_payload_bytes: int) -> None:
    if n_bytes > max_payload_bytes:
        raise AudioFormatError(
            f"Twilio payload of {n_bytes} bytes exceeds the {max_payload_bytes}-byte limit"
        )


def check_b64_type(obj: object) -> None:
    if not isinstance(obj, (str, bytes, bytearray, memoryview)):
        raise AudioFormatError(f"base64 payload must be str or bytes, got {type(obj).__name__}")


def bad_base64(n_chars: int) -> AudioFormatError:
    return AudioFormatError(f"invalid base64 payload ({n_chars} characters)")


def odd_pcm(n_bytes: int) -> AudioFormatError:
    return AudioFormatError(f"PCM16 data must have an even length, got {n_bytes} bytes")
