"""Pure-Python/numpy twin of the native hot path (``agentic_fast._audio``).

Same API, same output bytes: integer FIR arithmetic (exact in any summation order) and the
shared tables of :mod:`agentic_fast._audiocore.tables`. Used when the extension is not built or
``AGENTIC_FAST_NO_EXT=1``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from agentic_fast._audiocore import tables
from agentic_fast._audiocore.buffers import byte_view
from agentic_fast._audiocore.spec import (
    TWILIO_FRAME_BYTES,
    bad_base64,
    check_b64_type,
    check_payload_size,
    check_payload_size_decoded,
    converter_spec,
    odd_pcm,
)
from agentic_fast._audiocore.tables import FIR_SHIFT, FirDesign
from agentic_fast.core.errors import AudioFormatError

IMPLEMENTATION: Final = "python"

_ROUND = 1 << (FIR_SHIFT - 1)
_B64_RE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_SILENCE_FRAME = bytes([tables.ULAW_SILENCE]) * TWILIO_FRAME_BYTES


# -- codecs --------------------------------------------------------------------------------

def _pcm_samples(pcm: object) -> np.ndarray:
    view = byte_view(pcm, pcm16=True)
    if len(view) & 1:
        raise odd_pcm(len(view))
    return np.frombuffer(view, dtype="<i2")


def ulaw_decode(data: object) -> bytes:
    """G.711 mu-law bytes -> PCM16 LE bytes (``audioop.ulaw2lin(data, 2)``)."""
    return tables.ULAW_DECODE[np.frombuffer(byte_view(data, pcm16=False), np.uint8)].tobytes()


def ulaw_encode(pcm: object) -> bytes:
    """PCM16 LE -> G.711 mu-law bytes (``audioop.lin2ulaw(pcm, 2)``)."""
    return tables.ULAW_ENCODE[_pcm_samples(pcm).view(np.uint16)].tobytes()


def alaw_decode(data: object) -> bytes:
    """G.711 A-law bytes -> PCM16 LE bytes (``audioop.alaw2lin(data, 2)``)."""
    return tables.ALAW_DECODE[np.frombuffer(byte_view(data, pcm16=False), np.uint8)].tobytes()


def alaw_encode(pcm: object) -> bytes:
    """PCM16 LE -> G.711 A-law bytes (``audioop.lin2alaw(pcm, 2)``)."""
    return tables.ALAW_ENCODE[_pcm_samples(pcm).view(np.uint16)].tobytes()


def b64decode_strict(text: str | bytes) -> bytes:
    """Strict base64: whole quads, standard alphabet, padding only at the end."""
    check_b64_type(text)
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if not raw or len(raw) & 3 or _B64_RE.fullmatch(raw) is None:
        raise bad_base64(len(raw))
    return binascii.a2b_base64(raw)


# -- streaming integer FIR resamplers -------------------------------------------------------

def _round_clip(acc: npt.NDArray[np.int64]) -> npt.NDArray[np.int16]:
    rounded: npt.NDArray[np.int64] = (acc + _ROUND) >> FIR_SHIFT
    return np.clip(rounded, -32768, 32767).astype(np.int16)


class FirUpsampler:
    """Polyphase interpolator by an integer factor; exact ``factor`` outputs per input."""

    def __init__(self, design: FirDesign) -> None:
        p = design.factor
        taps = design.taps.astype(np.int64)
        per_phase = -(-len(taps) // p)
        padded = np.zeros(p * per_phase, np.int64)
        padded[: len(taps)] = taps
        # column `phase` holds that phase's taps, reversed to run over a forward window
        self._coef = padded.reshape(per_phase, p)[::-1].copy()
        self._taps = per_phase
        self.factor = p
        self.design = design
        self._hist = np.zeros(per_phase - 1, np.int16)

    def process(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, np.int16)
        buf = np.concatenate((self._hist, x))
        windows = sliding_window_view(buf, self._taps)
        out = _round_clip(windows.astype(np.int64) @ self._coef).reshape(-1)
        self._hist = buf[len(buf) - (self._taps - 1):].copy()
        return out

    def reset(self) -> None:
        self._hist[:] = 0


class FirDecimator:
    """Low-pass then keep every ``factor``-th sample; keeps its phase across calls."""

    def __init__(self, design: FirDesign) -> None:
        self.factor = design.factor
        self._coef = design.taps[::-1].astype(np.int64)
        self._len = len(design.taps)
        self._hist = np.zeros(self._len - 1, np.int16)
        self._skip = 0
        self.design = design

    def process(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n == 0:
            return np.zeros(0, np.int16)
        buf = np.concatenate((self._hist, x))
        windows = sliding_window_view(buf, self._len)[self._skip::self.factor]
        out = _round_clip(windows.astype(np.int64) @ self._coef)
        self._skip = (self._skip - n) % self.factor
        self._hist = buf[len(buf) - (self._len - 1):].copy()
        return out

    def reset(self) -> None:
        self._hist[:] = 0
        self._skip = 0


class FirResampler:
    """Streaming PCM16 resampler for one integer-ratio rate pair (see ``tables.FIR_DESIGNS``)."""

    implementation = IMPLEMENTATION

    def __init__(self, design: FirDesign) -> None:
        self.design = design
        self._fir: FirUpsampler | FirDecimator = (
            FirUpsampler(design) if design.upsampling else FirDecimator(design)
        )

    def process(self, pcm: object) -> bytes:
        return self._fir.process(_pcm_samples(pcm)).tobytes()

    def flush(self) -> bytes:
        """Push the filter's delay out with zeros, then start afresh."""
        tail_in = self.design.delay_high if not self.design.upsampling else -(
            -self.design.delay_high // self.design.factor)
        out = self._fir.process(np.zeros(tail_in, np.int16)).tobytes()
        self._fir.reset()
        return out

    def reset(self) -> None:
        self._fir.reset()


# -- per-call converter ---------------------------------------------------------------------

class RingBuffer:
    """Fixed-capacity byte FIFO; overflow is an error, never silent growth or loss."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.zeros(capacity, np.uint8)
        self._cap = capacity
        self._head = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        n = len(data)
        if n > self._cap - self._size:
            raise AudioFormatError(f"ring buffer overflow: {n} bytes into {self._cap - self._size}")
        src = np.frombuffer(data, np.uint8)
        tail = (self._head + self._size) % self._cap
        first = min(n, self._cap - tail)
        self._buf[tail:tail + first] = src[:first]
        self._buf[: n - first] = src[first:]
        self._size += n

    def read(self, n: int) -> bytes:
        first = min(n, self._cap - self._head)
        out = self._buf[self._head:self._head + first].tobytes()
        if first < n:
            out += self._buf[: n - first].tobytes()
        self._head = (self._head + n) % self._cap
        self._size -= n
        return out

    def clear(self) -> None:
        self._head = self._size = 0


class AudioConverter:
    """One call's audio state in both directions (numpy twin; see ``agentic_fast.audio``)."""

    implementation = IMPLEMENTATION

    def __init__(self, provider: str, handoff_ms: int = 40,
                 max_payload_bytes: int = 4000) -> None:
        spec = converter_spec(provider, handoff_ms, max_payload_bytes)
        self.spec = spec
        self._up = FirUpsampler(spec.upsampler) if spec.upsampler else None
        self._down = FirDecimator(spec.downsampler) if spec.downsampler else None
        factor = spec.upsampler.factor if spec.upsampler else 1
        width = 1 if spec.passthrough else 2
        self._ring = RingBuffer(spec.chunk_bytes + max_payload_bytes * factor * width)
        self._pending = bytearray()  # outbound mu-law not yet a whole frame (< 160 bytes)
        self._carry = b""           # outbound odd PCM byte
        self._active = False        # outbound audio fed since the last flush/clear

    provider = property(lambda self: self.spec.provider)
    handoff_ms = property(lambda self: self.spec.handoff_ms)
    chunk_bytes = property(lambda self: self.spec.chunk_bytes)
    inbound_delay_ms = property(lambda self: self.spec.inbound_delay_ms)
    outbound_delay_ms = property(lambda self: self.spec.outbound_delay_ms)

    # inbound: Twilio -> provider
    def _inbound(self, payload_b64: str | bytes) -> None:
        check_b64_type(payload_b64)
        check_payload_size(len(payload_b64), self.spec.max_payload_bytes)
        ulaw = b64decode_strict(payload_b64)
        check_payload_size_decoded(len(ulaw), self.spec.max_payload_bytes)
        if self._up is None:
            self._ring.write(ulaw)
        else:
            pcm = tables.ULAW_DECODE[np.frombuffer(ulaw, np.uint8)]
            self._ring.write(self._up.process(pcm).tobytes())

    def feed_twilio(self, payload_b64: str | bytes) -> list[bytes]:
        self._inbound(payload_b64)
        n = self.spec.chunk_bytes
        return [self._ring.read(n) for _ in range(len(self._ring) // n)]

    def feed_twilio_b64(self, payload_b64: str | bytes) -> list[str]:
        return [base64.b64encode(c).decode("ascii") for c in self.feed_twilio(payload_b64)]

    # outbound: provider -> Twilio
    def _frames(self) -> list[str]:
        pending = self._pending
        whole = len(pending) // TWILIO_FRAME_BYTES * TWILIO_FRAME_BYTES
        frames = [base64.b64encode(pending[i:i + TWILIO_FRAME_BYTES]).decode("ascii")
                  for i in range(0, whole, TWILIO_FRAME_BYTES)]
        del pending[:whole]
        return frames

    def _encode_out(self, pcm: np.ndarray) -> None:
        assert self._down is not None
        self._pending += tables.ULAW_ENCODE[self._down.process(pcm).view(np.uint16)].tobytes()

    def feed_provider(self, audio: object) -> list[str]:
        view = byte_view(audio, pcm16=not self.spec.passthrough)
        self._active = self._active or len(view) > 0
        if self._down is None:
            self._pending += view
        else:
            data = self._carry + bytes(view)
            whole = len(data) & ~1
            self._carry = data[whole:]
            self._encode_out(np.frombuffer(data, "<i2", whole // 2))
        return self._frames()

    def feed_provider_b64(self, audio_b64: str | bytes) -> list[str]:
        return self.feed_provider(b64decode_strict(audio_b64))

    def flush_provider(self) -> list[str]:
        if not self._active:
            return []
        self._active = False
        if self._down is not None:
            self._encode_out(np.zeros(self._down.design.delay_high, np.int16))
            self._down.reset()
            self._carry = b""
        pad = -len(self._pending) % TWILIO_FRAME_BYTES
        self._pending += _SILENCE_FRAME[:pad]
        return self._frames()

    def clear_outbound(self) -> int:
        dropped = len(self._pending)
        self._active = False
        self._pending.clear()
        self._carry = b""
        if self._down is not None:
            self._down.reset()
        return dropped


def b64encode(data: object) -> str:
    """Standard padded base64 of a bytes-like object, as str."""
    return base64.b64encode(byte_view(data, pcm16=False)).decode("ascii")
