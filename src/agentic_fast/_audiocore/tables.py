"""Codec lookup tables and resampling filters, shared by the native and the numpy twin.

Both implementations take every table from here, so they are identical by construction:
G.711 tables follow ``protocols.md`` section 4 (bit-exact with CPython 3.11 ``audioop``,
width 2), and the FIR filters are integer (Q14) so any summation order gives the same sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Fixed-point scale of the FIR coefficients: taps are int16 holding ``h * 2**FIR_SHIFT``.
FIR_SHIFT = 14
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5


def _ulaw_decode_table() -> np.ndarray:
    v = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = (((v & 0x0F) << 3) + 132) << ((v & 0x70) >> 4)
    return np.where(v & 0x80, 132 - t, t - 132).astype(np.int16)


_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _all_pcm() -> np.ndarray:
    """Every int16 value, ordered by its uint16 bit pattern (the encode-table index)."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _ulaw_encode_table() -> np.ndarray:
    x = _all_pcm() >> 2  # 14-bit domain, floor division like audioop
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 33
    seg = np.searchsorted(_ULAW_SEG_END, mag, side="left")
    # mag reaches 8159 + 33 = 8192 > 0x1FFF: audioop maps segment 8 to full scale (0x7F^mask).
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F)) ^ mask
    return code.astype(np.uint8)


def _alaw_encode_table() -> np.ndarray:
    x = _all_pcm() >> 3  # 13-bit domain
    neg = x < 0
    mask = np.where(neg, 0x55, 0xD5)
    mag = np.where(neg, -x - 1, x)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << 4) | ((mag >> shift) & 0x0F)
    code = np.where(seg >= 8, 0x7F, aval) ^ mask
    return code.astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_DECODE: np.ndarray = _ulaw_decode_table()  # int16[256], code -> PCM16
ULAW_ENCODE: np.ndarray = _ulaw_encode_table()  # uint8[65536], uint16(PCM16) -> code
ALAW_DECODE: np.ndarray = _alaw_decode_table()
ALAW_ENCODE: np.ndarray = _alaw_encode_table()
for _table in (ULAW_DECODE, ULAW_ENCODE, ALAW_DECODE, ALAW_ENCODE):
    _table.setflags(write=False)


@dataclass(frozen=True, slots=True)
class FirDesign:
    """A linear-phase low-pass FIR for an integer-ratio rate change.

    ``taps`` (int16, Q14) has odd length ``2 * delay_in + 1`` at the *higher* rate, so the
    group delay is a whole number of samples at both rates.
    """

    in_rate: int
    out_rate: int
    taps: np.ndarray
    #: group delay in samples at the higher of the two rates
    delay_high: int

    @property
    def factor(self) -> int:
        hi, lo = max(self.in_rate, self.out_rate), min(self.in_rate, self.out_rate)
        return hi // lo

    @property
    def upsampling(self) -> bool:
        return self.out_rate > self.in_rate

    @property
    def delay_out(self) -> int:
        """Group delay in output samples."""
        return self.delay_high if self.upsampling else self.delay_high // self.factor

    @property
    def delay_ms(self) -> float:
        return 1000.0 * self.delay_high / max(self.in_rate, self.out_rate)


def _kaiser_lowpass(length: int, cutoff_hz: float, rate: int, beta: float,
                    gain: float) -> npt.NDArray[np.int16]:
    n = np.arange(length) - (length - 1) / 2
    h: npt.NDArray[np.float64] = ((2 * cutoff_hz / rate) * np.sinc(2 * cutoff_hz / rate * n)
                                  * np.kaiser(length, beta))
    h *= gain / h.sum()
    q = np.round(h * (1 << FIR_SHIFT))
    # Worst-case accumulator must fit int32 for the native (pmaddwd) inner loop.
    factor = round(gain)
    for phase in range(factor):
        assert np.abs(q[phase::factor]).sum() * 32768 + (1 << FIR_SHIFT) < 2**31
    return q.astype(np.int16)


def _design(in_rate: int, out_rate: int, length: int, beta: float) -> FirDesign:
    hi, lo = max(in_rate, out_rate), min(in_rate, out_rate)
    factor = hi // lo
    gain = float(factor) if out_rate > in_rate else 1.0
    # Cut-off at the telephone band's Nyquist (4 kHz): flat to 3.4 kHz, images/aliases of
    # in-band speech (>= 4.6 kHz) at least 70 dB down. Kaiser length/beta chosen by
    # measurement against soxr HQ (bench/resampler_choice.py): >= 72 dB SNR on tones.
    taps = _kaiser_lowpass(length, min(in_rate, out_rate) / 2, hi, beta, gain)
    taps.setflags(write=False)
    return FirDesign(in_rate, out_rate, taps, (length - 1) // 2)


#: The native low-delay filters for the rate pairs on our call legs.
FIR_DESIGNS: dict[tuple[int, int], FirDesign] = {
    (8000, 24000): _design(8000, 24000, 121, 8.0),   # Twilio -> OpenAI PCM16: 2.5 ms
    (8000, 16000): _design(8000, 16000, 97, 7.5),    # Twilio -> Gemini: 3.0 ms
    (24000, 8000): _design(24000, 8000, 121, 8.0),   # OpenAI/Gemini -> Twilio: 2.5 ms
    (16000, 8000): _design(16000, 8000, 97, 7.5),    # 16 kHz sources -> Twilio: 3.0 ms
}
