"""Streaming PCM16 resampling: the low-delay FIR where we have one, soxr elsewhere."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
import soxr

from agentic_fast._audiocore import buffers as _buffers
from agentic_fast._audiocore.active import implementation_module
from agentic_fast._audiocore.api import FirResampler
from agentic_fast._audiocore.spec import odd_pcm
from agentic_fast._audiocore.tables import FIR_DESIGNS


class _SoxrStream(Protocol):
    """What we use of ``soxr.ResampleStream`` (soxr ships no type information)."""

    def resample_chunk(self, x: npt.NDArray[np.int16],
                       last: bool = False) -> npt.NDArray[np.int16]: ...
    def delay(self) -> float: ...
    def clear(self) -> None: ...


class Resampler:
    """One stream's PCM16 resampler, state kept across ``process`` calls.

    For the rate pairs of our call legs (``FIR_DESIGNS``: 8k<->24k, 8k<->16k) it is the
    integer polyphase FIR of the active implementation: output for every input frame,
    ``delay_ms`` of 2.5-3 ms. Any other pair uses ``soxr.ResampleStream`` at HQ, which
    releases audio in blocks and so adds tens of milliseconds (see bench/resampler_choice.py).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        design = FIR_DESIGNS.get((in_rate, out_rate))
        self._fir: FirResampler | None
        self._soxr: _SoxrStream | None
        if design is not None:
            self._fir = implementation_module().FirResampler(design)
            self._soxr = None
            self.delay_ms = design.delay_ms
        else:
            self._fir = None
            self._soxr = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ")
            self.delay_ms = 1000.0 * self._soxr.delay() / out_rate

    @property
    def low_delay(self) -> bool:
        """True when the low-delay FIR (not soxr's block-based stream) is in use."""
        return self._fir is not None

    def process(self, pcm: object) -> bytes:
        """Resample a chunk of PCM16 LE; returns whatever output is ready."""
        if self._fir is not None:
            return self._fir.process(pcm)
        view = _buffers.byte_view(pcm, pcm16=True)
        if len(view) & 1:
            raise odd_pcm(len(view))
        assert self._soxr is not None
        return self._soxr.resample_chunk(np.frombuffer(view, "<i2")).tobytes()

    def flush(self) -> bytes:
        """End of stream: return the audio still inside the filter and start afresh."""
        if self._fir is not None:
            return self._fir.flush()
        assert self._soxr is not None
        out = self._soxr.resample_chunk(np.zeros(0, np.int16), last=True).tobytes()
        self._soxr.clear()
        return out
