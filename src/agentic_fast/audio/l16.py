"""L16 (16-bit linear PCM, network byte order) phone legs: Telnyx's ``L16`` media codec.

:class:`L16Converter` has the :class:`~agentic_fast.audio.AudioConverter` interface the
bridge drives (``feed_twilio_b64``, ``feed_provider_b64``, ``flush_provider``,
``clear_outbound``) for a 16 kHz big-endian leg instead of 8 kHz mu-law:

* to a provider taking 16 kHz (Gemini) inbound audio is only byte-swapped: no resampling;
* other rates go through the native integer FIR filters (the active implementation's
  ``FirResampler``), via 48 kHz where no direct integer ratio exists (16k <-> 24k for
  OpenAI: x3 then /2, 2.25 ms of delay), so no block-based resampler adds latency;
* outbound frames are whole 20 ms frames (640 bytes at 16 kHz), big-endian; the last
  frame of a response is padded with silence (zeros).

Per frame: one base64 decode, one numpy byte swap and at most two native filter calls.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from agentic_fast._audiocore.spec import DEFAULT_MAX_PAYLOAD_BYTES, PROVIDER_FORMATS
from agentic_fast._audiocore.tables import FIR_DESIGNS, FirDesign, _design
from agentic_fast.audio import implementation_module
from agentic_fast.core.errors import AudioFormatError

__all__ = ["L16_FRAME_BYTES", "L16_RATE", "L16Converter"]

L16_RATE = 16000
#: One 20 ms frame of 16 kHz L16.
L16_FRAME_BYTES = L16_RATE * 20 // 1000 * 2
_SILENCE = bytes(L16_FRAME_BYTES)
_VIA = 48000
#: (length, Kaiser beta) per integer factor: the same normalised designs as the 8 kHz legs'
_SHAPE = {2: (97, 7.5), 3: (121, 8.0)}
_designs: dict[tuple[int, int], FirDesign] = {}


def _stage(in_rate: int, out_rate: int) -> FirDesign:
    design = FIR_DESIGNS.get((in_rate, out_rate)) or _designs.get((in_rate, out_rate))
    if design is None:
        length, beta = _SHAPE[max(in_rate, out_rate) // min(in_rate, out_rate)]
        design = _designs[(in_rate, out_rate)] = _design(in_rate, out_rate, length, beta)
    return design


def _chain(in_rate: int, out_rate: int) -> list[Any]:
    """Native resamplers taking ``in_rate`` to ``out_rate`` (none when equal)."""
    if in_rate == out_rate:
        return []
    fir = implementation_module().FirResampler
    hi, lo = max(in_rate, out_rate), min(in_rate, out_rate)
    if hi % lo == 0 and hi // lo in _SHAPE:
        return [fir(_stage(in_rate, out_rate))]
    return [fir(_stage(in_rate, _VIA)), fir(_stage(_VIA, out_rate))]


def _b64(payload: str | bytes, what: str) -> bytes:
    if not isinstance(payload, str | bytes):
        raise AudioFormatError(f"{what} must be base64 text, got {type(payload).__name__}")
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise AudioFormatError(f"invalid base64 {what} ({len(payload)} characters)") from None


class L16Converter:
    """One call's audio both ways between a 16 kHz L16 phone leg and ``provider``."""

    __slots__ = ("_active", "_carry", "_down", "_max_payload", "_pending", "_ring", "_up",
                 "chunk_bytes", "handoff_ms", "provider")

    def __init__(self, provider: str, handoff_ms: int = 20,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        fmt = PROVIDER_FORMATS.get(provider)
        if fmt is None or fmt[2]:
            raise ValueError(f"an L16 leg needs a PCM16 provider format (openai or gemini), "
                             f"got {provider!r}")
        if not 20 <= handoff_ms <= 100:
            raise ValueError(f"handoff_ms must be from 20 to 100, got {handoff_ms!r}")
        in_rate, out_rate, _ = fmt
        self.provider = provider
        self.handoff_ms = handoff_ms
        self.chunk_bytes = in_rate * handoff_ms // 1000 * 2
        self._max_payload = max_payload_bytes * 4  # L16 16 kHz: 4x the bytes of mu-law
        self._up = _chain(L16_RATE, in_rate)
        self._down = _chain(out_rate, L16_RATE)
        self._ring = bytearray()     # inbound provider audio not yet a whole chunk
        self._pending = bytearray()  # outbound big-endian audio not yet a whole frame
        self._carry = b""            # outbound odd PCM byte
        self._active = False

    @property
    def resamples_inbound(self) -> bool:
        """False when the provider takes the leg's 16 kHz as it is (byte swap only)."""
        return bool(self._up)

    # -- inbound: Telnyx -> provider --------------------------------------------------------

    def feed_twilio_b64(self, payload_b64: str | bytes) -> list[str]:
        """One inbound L16 payload (base64, big-endian) -> provider chunks (base64, LE)."""
        if len(payload_b64) > self._max_payload:
            raise AudioFormatError(f"L16 payload of {len(payload_b64)} base64 characters "
                                   f"exceeds the limit of {self._max_payload}")
        raw = _b64(payload_b64, "L16 payload")
        if len(raw) & 1:
            raise AudioFormatError(f"L16 payload must have an even length, got {len(raw)} "
                                   "bytes")
        pcm = np.frombuffer(raw, ">i2").astype("<i2").tobytes()
        for stage in self._up:
            pcm = stage.process(pcm)
        ring = self._ring
        ring += pcm
        n = self.chunk_bytes
        whole = len(ring) // n * n
        if not whole:
            return []
        out = [base64.b64encode(ring[i:i + n]).decode("ascii") for i in range(0, whole, n)]
        del ring[:whole]
        return out

    feed_carrier_b64 = feed_twilio_b64

    # -- outbound: provider -> Telnyx -------------------------------------------------------

    def _frames(self) -> list[str]:
        pending = self._pending
        n = L16_FRAME_BYTES
        whole = len(pending) // n * n
        frames = [base64.b64encode(pending[i:i + n]).decode("ascii")
                  for i in range(0, whole, n)]
        del pending[:whole]
        return frames

    def _out(self, pcm: bytes) -> None:
        for stage in self._down:
            pcm = stage.process(pcm)
        self._pending += np.frombuffer(pcm, "<i2").astype(">i2").tobytes()

    def feed_provider(self, audio: bytes) -> list[str]:
        """PCM16 LE at the provider's output rate -> whole 20 ms L16 frames (base64)."""
        if audio:
            self._active = True
        data = self._carry + bytes(audio)
        whole = len(data) & ~1
        self._carry = data[whole:]
        self._out(data[:whole])
        return self._frames()

    def feed_provider_b64(self, audio_b64: str | bytes) -> list[str]:
        return self.feed_provider(_b64(audio_b64, "provider audio"))

    def flush_provider(self) -> list[str]:
        """End of a response: drain the filters, pad the last frame with silence."""
        if not self._active:
            return []
        self._active = False
        self._carry = b""
        tail = b""
        for stage in self._down:
            tail = stage.process(tail) + stage.flush() if tail else stage.flush()
        if tail:
            self._pending += np.frombuffer(tail, "<i2").astype(">i2").tobytes()
        self._pending += _SILENCE[:-len(self._pending) % L16_FRAME_BYTES]
        return self._frames()

    def clear_outbound(self) -> int:
        """Barge-in: drop outbound audio not yet framed; returns the bytes dropped."""
        dropped = len(self._pending)
        self._active = False
        self._pending.clear()
        self._carry = b""
        for stage in self._down:
            stage.reset()
        return dropped
