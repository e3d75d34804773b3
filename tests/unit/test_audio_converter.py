"""AudioConverter: chunking, framing, flush/clear, bad input, both implementations."""

from __future__ import annotations

import base64
from types import ModuleType

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from agentic_fast.audio import FIR_DESIGNS
from agentic_fast.core.errors import AudioFormatError

RNG = np.random.default_rng(11)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _ulaw_frames(impl: ModuleType, pcm8k: np.ndarray) -> list[str]:
    ulaw = impl.ulaw_encode(pcm8k)
    return [_b64(ulaw[i:i + 160]) for i in range(0, len(ulaw), 160)]


def _tone(freq: float, rate: int, seconds: float, amp: float = 12000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@pytest.mark.parametrize(("provider", "handoff", "chunk"), [
    ("openai", 40, 1920), ("openai", 20, 960), ("openai", 100, 4800),
    ("gemini", 40, 1280), ("openai-pcmu", 40, 320), ("openai-pcmu", 60, 480),
])
def test_inbound_chunks_have_the_handoff_size(impl, provider, handoff, chunk) -> None:
    conv = impl.AudioConverter(provider, handoff_ms=handoff)
    assert conv.chunk_bytes == chunk
    frames = _ulaw_frames(impl, _tone(440, 8000, 1.0))
    chunks = [c for f in frames for c in conv.feed_twilio(f)]
    assert len(chunks) == 1000 // handoff
    assert {len(c) for c in chunks} == {chunk}


@pytest.mark.parametrize("bad", [10, 19, 101, "40", True, 40.0])
def test_handoff_out_of_range_is_rejected(impl, bad) -> None:
    with pytest.raises(ValueError, match="handoff_ms"):
        impl.AudioConverter("openai", handoff_ms=bad)


def test_unknown_provider_is_rejected(impl) -> None:
    with pytest.raises(ValueError, match="provider"):
        impl.AudioConverter("whisper")


@pytest.mark.parametrize(("provider", "rate"), [("openai", 24000), ("gemini", 16000)])
def test_inbound_is_decode_then_streaming_resample(impl, provider, rate) -> None:
    pcm = _tone(1000, 8000, 0.4)
    conv = impl.AudioConverter(provider)
    got = b"".join(c for f in _ulaw_frames(impl, pcm) for c in conv.feed_twilio(f))
    fir = impl.FirResampler(FIR_DESIGNS[(8000, rate)])
    expected = fir.process(impl.ulaw_decode(impl.ulaw_encode(pcm)))
    assert got == expected[: len(got)]
    assert len(got) == len(expected)  # 0.4 s is a whole number of 40 ms chunks


@pytest.mark.parametrize(("provider", "rate"), [("openai", 24000), ("gemini", 16000)])
def test_inbound_fidelity_against_soxr_hq(impl, provider, rate) -> None:
    """Tones through the whole inbound path equal soxr HQ of the decoded input (>= 60 dB)."""
    for freq in (300, 1000, 3400):
        conv = impl.AudioConverter(provider)
        pcm8 = np.frombuffer(impl.ulaw_decode(impl.ulaw_encode(_tone(freq, 8000, 0.48))), "<i2")
        got = np.frombuffer(b"".join(c for f in _ulaw_frames(impl, pcm8)
                                     for c in conv.feed_twilio(f)), "<i2")
        ref = soxr.resample(pcm8.astype(np.float64), 8000, rate, quality="HQ")
        d = round(conv.inbound_delay_ms * rate / 1000)
        n = len(got) - d - 2 * rate // 100
        err = got[d + rate // 100: d + rate // 100 + n] - ref[rate // 100: rate // 100 + n]
        snr = 10 * np.log10(np.sum(ref**2) / np.sum(err**2))
        assert snr >= 60, f"{provider} {freq} Hz: {snr:.1f} dB"


def test_passthrough_is_rechunking_only(impl) -> None:
    ulaw = RNG.integers(0, 256, 1600, dtype=np.uint8).tobytes()
    conv = impl.AudioConverter("openai-pcmu")
    chunks = [c for i in range(0, 1600, 160) for c in conv.feed_twilio(_b64(ulaw[i:i + 160]))]
    assert b"".join(chunks) == ulaw
    frames = conv.feed_provider(ulaw[:1000]) + conv.feed_provider(ulaw[1000:])
    assert b"".join(base64.b64decode(f) for f in frames) == ulaw
    assert conv.inbound_delay_ms == conv.outbound_delay_ms == 0.0


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_outbound_is_downsample_then_encode_in_whole_frames(impl, provider) -> None:
    pcm = _tone(700, 24000, 0.37)
    conv = impl.AudioConverter(provider)
    frames = []
    for a, b in [(0, 1001), (1001, 1002), (1002, 5000), (5000, len(pcm))]:
        frames += conv.feed_provider(pcm[a:b].tobytes())
    assert all(len(f) == 216 for f in frames)
    raw = b"".join(base64.b64decode(f) for f in frames)
    expected = impl.ulaw_encode(impl.FirResampler(FIR_DESIGNS[(24000, 8000)]).process(pcm))
    assert raw == expected[: len(raw)]
    assert len(expected) - len(raw) < 160  # only the partial frame is held back


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_split_of_provider_audio_gives_the_same_frames(data) -> None:
    from agentic_fast._audiocore import numpy_twin as numpy_twin
    from tests.conftest import _native

    audio = data.draw(st.binary(min_size=0, max_size=5000))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(audio)), max_size=8)))
    for mod in filter(None, (_native(), numpy_twin)):
        whole = mod.AudioConverter("openai")
        expected = whole.feed_provider(audio) + whole.flush_provider()
        split = mod.AudioConverter("openai")
        got = []
        for a, b in zip([0, *cuts], [*cuts, len(audio)], strict=True):
            got += split.feed_provider(audio[a:b])
        assert got + split.flush_provider() == expected


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 400), min_size=1, max_size=12),
       provider=st.sampled_from(["openai", "gemini", "openai-pcmu"]))
def test_any_split_of_twilio_audio_gives_the_same_chunks(sizes, provider) -> None:
    from agentic_fast._audiocore import numpy_twin as numpy_twin
    from tests.conftest import _native

    ulaw = RNG.integers(0, 256, sum(sizes), dtype=np.uint8).tobytes()
    for mod in filter(None, (_native(), numpy_twin)):
        whole = mod.AudioConverter(provider, max_payload_bytes=8000)
        expected = b"".join(whole.feed_twilio(_b64(ulaw)))
        split = mod.AudioConverter(provider, max_payload_bytes=8000)
        got, pos = [], 0
        for n in sizes:
            got += split.feed_twilio(_b64(ulaw[pos:pos + n]))
            pos += n
        assert b"".join(got) == expected


@pytest.mark.parametrize("provider", ["openai", "gemini", "openai-pcmu"])
def test_flush_pads_with_mulaw_silence_and_drains_the_filter(impl, provider) -> None:
    conv = impl.AudioConverter(provider)
    width = 1 if provider == "openai-pcmu" else 2
    audio = bytes([0x10]) * (width * 3 * 100) if width == 2 else bytes([0x10]) * 100
    assert conv.feed_provider(audio) == []
    frames = conv.flush_provider()
    assert len(frames) == 1
    raw = base64.b64decode(frames[0])
    held = 100 + (round(conv.outbound_delay_ms * 8) if width == 2 else 0)
    assert raw[held:] == b"\xff" * (160 - held)
    assert conv.flush_provider() == []  # nothing left


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_next_response_after_flush_or_clear_starts_fresh(impl, provider) -> None:
    first = _tone(500, 24000, 0.05).tobytes() + b"\x01"  # ends with an odd byte
    second = _tone(900, 24000, 0.2).tobytes()
    fresh = impl.AudioConverter(provider).feed_provider(second)
    conv = impl.AudioConverter(provider)
    conv.feed_provider(first)
    conv.flush_provider()
    assert conv.feed_provider(second) == fresh
    conv.feed_provider(first)
    assert conv.clear_outbound() > 0
    assert conv.feed_provider(second) == fresh


@pytest.mark.parametrize("bad", ["not base64!", "AAA", "AA=A" * 4, "é" * 4, b"\xff\xfe\xfd\xfc",
                                 12345, None])
def test_bad_inbound_payload_is_an_error_and_the_converter_stays_usable(impl, bad) -> None:
    good = _ulaw_frames(impl, _tone(300, 8000, 0.2))
    clean = impl.AudioConverter("openai")
    expected = [c for f in good for c in clean.feed_twilio(f)]
    conv = impl.AudioConverter("openai")
    got = []
    for i, f in enumerate(good):
        if i == 3:
            with pytest.raises(AudioFormatError):
                conv.feed_twilio(bad)
        got += conv.feed_twilio(f)
    assert got == expected


def test_oversize_payload_is_rejected(impl) -> None:
    conv = impl.AudioConverter("openai", max_payload_bytes=400)
    with pytest.raises(AudioFormatError, match="exceeds"):
        conv.feed_twilio(_b64(bytes(401)))
    assert len(b"".join(conv.feed_twilio(_b64(bytes(400))))) == 1920


@pytest.mark.parametrize("bad", [np.zeros(10, np.float32), [1, 2], "text", np.zeros(4, ">i2")])
def test_bad_provider_audio_is_an_error(impl, bad) -> None:
    conv = impl.AudioConverter("openai")
    with pytest.raises(AudioFormatError):
        conv.feed_provider(bad)
    assert len(conv.feed_provider(bytes(960))) == 1  # still usable


def test_provider_audio_as_numpy_and_base64(impl) -> None:
    pcm = _tone(1200, 24000, 0.1)
    a = impl.AudioConverter("gemini").feed_provider(pcm)
    b = impl.AudioConverter("gemini").feed_provider_b64(_b64(pcm.tobytes()))
    c = impl.AudioConverter("gemini").feed_provider(memoryview(pcm.tobytes()))
    assert a == b == c and len(a) == 5
    with pytest.raises(AudioFormatError):
        impl.AudioConverter("gemini").feed_provider_b64("%%%%")


def test_twilio_b64_variant_is_the_base64_of_the_chunks(impl) -> None:
    frames = _ulaw_frames(impl, _tone(300, 8000, 0.2))
    a, b = impl.AudioConverter("openai"), impl.AudioConverter("openai")
    for f in frames:
        assert b.feed_twilio_b64(f) == [_b64(c) for c in a.feed_twilio(f)]


def test_reported_delays(impl) -> None:
    assert impl.AudioConverter("openai").inbound_delay_ms == 2.5
    assert impl.AudioConverter("gemini").inbound_delay_ms == 3.0
    assert impl.AudioConverter("gemini").outbound_delay_ms == 2.5
    assert impl.AudioConverter("openai").provider == "openai"


def test_both_implementations_give_the_same_bytes(both_impls) -> None:
    native, python = both_impls
    rng = np.random.default_rng(5)
    for provider in ("openai", "gemini", "openai-pcmu"):
        a, b = native.AudioConverter(provider), python.AudioConverter(provider)
        for i in range(80):
            pay = _b64(rng.integers(0, 256, 160, dtype=np.uint8).tobytes())
            assert a.feed_twilio(pay) == b.feed_twilio(pay)
            assert a.feed_twilio_b64(pay) == b.feed_twilio_b64(pay)
            delta = rng.integers(0, 256, int(rng.integers(0, 3001)), dtype=np.uint8).tobytes()
            assert a.feed_provider(delta) == b.feed_provider(delta)
            if i % 9 == 0:
                assert a.flush_provider() == b.flush_provider()
            if i % 13 == 0:
                assert a.clear_outbound() == b.clear_outbound()
