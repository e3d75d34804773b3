"""Hot path per 20 ms frame: inbound (Twilio payload -> provider chunk) and outbound
(24 kHz provider delta -> Twilio payloads), native vs numpy twin vs the naive baseline.

The naive baseline is how the hot path is commonly written: stdlib ``base64`` + ``audioop``
+ a one-shot ``soxr.resample(..., quality="HQ")`` per chunk (which also clicks at every
chunk boundary). Inputs are real-looking audio (a voiced chirp), prepared outside the timed
part; converters are streaming, so each iteration is the next frame of one call.
"""

from __future__ import annotations

import base64
import itertools
import warnings
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
import soxr

from agentic_fast._audiocore import numpy_twin as numpy_twin

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

try:
    from agentic_fast import _audio as native
except ImportError:  # pragma: no cover - measured only where the extension is built
    native = None

IMPLS: dict[str, ModuleType | None] = {"native": native, "python": numpy_twin}


def _speech_like(rate: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    sig = sum(np.sin(k * phase) / k for k in range(1, 25) if k * 150 < rate / 2)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return np.round(9000 * env * sig / 2.5).astype(np.int16)


TWILIO_PAYLOADS = [
    base64.b64encode(audioop.lin2ulaw(chunk.tobytes(), 2)).decode()
    for chunk in _speech_like(8000).reshape(-1, 160)
]
OPENAI_DELTAS = [base64.b64encode(c.tobytes()).decode()
                 for c in _speech_like(24000).reshape(-1, 480)]


class NaiveConverter:
    """The common way: stdlib base64 + audioop + one-shot soxr HQ per chunk."""

    def __init__(self, rate: int = 24000, handoff_bytes: int = 1920) -> None:
        self.rate = rate
        self.handoff = handoff_bytes
        self.inbound = bytearray()
        self.outbound = bytearray()

    def feed_twilio(self, payload: str) -> list[str]:
        pcm = audioop.ulaw2lin(base64.b64decode(payload), 2)
        up = soxr.resample(np.frombuffer(pcm, np.int16), 8000, self.rate, quality="HQ")
        self.inbound += up.tobytes()
        out = []
        while len(self.inbound) >= self.handoff:
            out.append(base64.b64encode(self.inbound[: self.handoff]).decode())
            del self.inbound[: self.handoff]
        return out

    def feed_provider(self, delta_b64: str) -> list[str]:
        pcm = np.frombuffer(base64.b64decode(delta_b64), np.int16)
        down = soxr.resample(pcm, self.rate, 8000, quality="HQ")
        self.outbound += audioop.lin2ulaw(down.tobytes(), 2)
        out = []
        while len(self.outbound) >= 160:
            out.append(base64.b64encode(self.outbound[:160]).decode())
            del self.outbound[:160]
        return out


def _cycle(fn: Callable[[str], list[str]], inputs: list[str]) -> Callable[[], list[str]]:
    it = itertools.cycle(inputs)
    return lambda: fn(next(it))


def _impl(name: str) -> ModuleType:
    mod = IMPLS[name]
    if mod is None:
        pytest.skip("native extension not built")
    return mod


@pytest.mark.benchmark(group="inbound-frame-openai")
def bench_inbound_baseline_naive(benchmark) -> None:
    """Naive: b64decode + audioop.ulaw2lin + one-shot soxr HQ 8k->24k + b64encode."""
    conv = NaiveConverter()
    out = benchmark(_cycle(conv.feed_twilio, TWILIO_PAYLOADS))
    assert isinstance(out, list)


@pytest.mark.benchmark(group="inbound-frame-openai")
@pytest.mark.parametrize("impl", ["native", "python"])
def bench_inbound(benchmark, impl: str) -> None:
    """Fused: base64 -> mu-law -> FIR 8k->24k -> ring -> base64 chunk for the provider."""
    conv = _impl(impl).AudioConverter("openai")
    out = benchmark(_cycle(conv.feed_twilio_b64, TWILIO_PAYLOADS))
    assert isinstance(out, list)


@pytest.mark.benchmark(group="outbound-frame-openai")
def bench_outbound_baseline_naive(benchmark) -> None:
    """Naive: b64decode + one-shot soxr HQ 24k->8k + audioop.lin2ulaw + b64encode."""
    conv = NaiveConverter()
    frames = benchmark(_cycle(conv.feed_provider, OPENAI_DELTAS))
    assert len(frames) == 1


@pytest.mark.benchmark(group="outbound-frame-openai")
@pytest.mark.parametrize("impl", ["native", "python"])
def bench_outbound(benchmark, impl: str) -> None:
    """Fused: base64 delta -> FIR 24k->8k -> mu-law -> 160-byte frames -> base64."""
    conv = _impl(impl).AudioConverter("openai")
    frames = benchmark(_cycle(conv.feed_provider_b64, OPENAI_DELTAS))
    assert len(frames) == 1


@pytest.mark.benchmark(group="inbound-frame-gemini")
def bench_inbound_gemini_baseline_naive(benchmark) -> None:
    """Naive: as above with 8k->16k."""
    conv = NaiveConverter(rate=16000, handoff_bytes=1280)
    benchmark(_cycle(conv.feed_twilio, TWILIO_PAYLOADS))


@pytest.mark.benchmark(group="inbound-frame-gemini")
@pytest.mark.parametrize("impl", ["native", "python"])
def bench_inbound_gemini(benchmark, impl: str) -> None:
    """Fused 8k->16k inbound for Gemini."""
    conv = _impl(impl).AudioConverter("gemini")
    benchmark(_cycle(conv.feed_twilio_b64, TWILIO_PAYLOADS))


@pytest.mark.benchmark(group="passthrough-frame-pcmu")
def bench_passthrough_baseline_naive(benchmark) -> None:
    """Naive passthrough: b64decode, accumulate, b64encode 40 ms chunks."""
    buf = bytearray()

    def feed(payload: str) -> list[str]:
        buf.extend(base64.b64decode(payload))
        out = []
        while len(buf) >= 320:
            out.append(base64.b64encode(buf[:320]).decode())
            del buf[:320]
        return out

    benchmark(_cycle(feed, TWILIO_PAYLOADS))


@pytest.mark.benchmark(group="passthrough-frame-pcmu")
@pytest.mark.parametrize("impl", ["native", "python"])
def bench_passthrough(benchmark, impl: str) -> None:
    """mu-law passthrough: re-chunking only."""
    conv = _impl(impl).AudioConverter("openai-pcmu")
    benchmark(_cycle(conv.feed_twilio_b64, TWILIO_PAYLOADS))
