"""Audio for the phone leg: G.711 codecs, per-call conversion, streaming resampling.

Public API (same behaviour and output bytes in both implementations):

* ``ulaw_decode(data) -> bytes`` / ``ulaw_encode(pcm) -> bytes`` and the A-law pair:
  bit-exact with CPython 3.11 ``audioop`` (width 2). Any buffer is accepted without a copy
  (bytes, bytearray, memoryview, numpy int16/uint8); odd-length PCM16 raises
  :class:`AudioFormatError` (a ``ValueError``) naming the length.
* :class:`AudioConverter` ``(provider, handoff_ms=40)``: one per call, both directions.
  ``provider`` is ``"openai"`` (PCM16 24 kHz both ways), ``"gemini"`` (16 kHz in, 24 kHz
  out) or ``"openai-pcmu"`` (mu-law passthrough). ``feed_twilio(payload_b64)`` ->
  provider chunks of ``handoff_ms``; ``feed_twilio_b64`` the same as base64 text;
  ``feed_provider(audio)`` / ``feed_provider_b64(text)`` -> base64 payloads of whole
  160-byte Twilio frames; ``flush_provider()`` ends a response (drains the filter, pads with
  0xFF); ``clear_outbound()`` drops pending audio on barge-in; ``inbound_delay_ms`` /
  ``outbound_delay_ms`` report the resampler delay.
* :class:`Resampler` ``(in_rate, out_rate)``: streaming PCM16 resampler. Low-delay integer
  FIR (2.5-3 ms) for the call legs' rate pairs, ``soxr.ResampleStream`` (HQ) for any other.
* ``IMPLEMENTATION``: ``"native"`` (Cython extension ``agentic_fast._audio``) or
  ``"python"`` (numpy twin). ``AGENTIC_FAST_NO_EXT=1`` forces the twin;
  ``AGENTIC_FAST_REQUIRE_EXT=1`` makes a missing extension an ImportError.
"""

from __future__ import annotations

from typing import Literal

from agentic_fast._audiocore.active import implementation_module
from agentic_fast._audiocore.spec import PROVIDER_FORMATS, TWILIO_FRAME_BYTES, TWILIO_RATE
from agentic_fast._audiocore.tables import FIR_DESIGNS
from agentic_fast.audio.resample import Resampler
from agentic_fast.core.errors import AudioFormatError

__all__ = [
    "FIR_DESIGNS",
    "IMPLEMENTATION",
    "PROVIDER_FORMATS",
    "TWILIO_FRAME_BYTES",
    "TWILIO_RATE",
    "AudioConverter",
    "AudioFormatError",
    "Resampler",
    "alaw_decode",
    "alaw_encode",
    "implementation_module",
    "ulaw_decode",
    "ulaw_encode",
]


_impl = implementation_module()
IMPLEMENTATION: Literal["native", "python"] = _impl.IMPLEMENTATION

ulaw_decode = _impl.ulaw_decode
ulaw_encode = _impl.ulaw_encode
alaw_decode = _impl.alaw_decode
alaw_encode = _impl.alaw_encode
AudioConverter = _impl.AudioConverter
