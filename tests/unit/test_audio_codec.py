"""G.711 codecs and strict base64: bit-exact with audioop / the stdlib, both implementations."""

from __future__ import annotations

import base64
import tracemalloc
import warnings
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentic_fast.core.errors import AudioFormatError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # stdlib up to 3.12
    except ImportError:  # pragma: no cover - 3.13+: the audioop-lts package
        import audioop  # type: ignore[no-redef]

ALL_PCM = np.arange(65536, dtype=np.uint16).view(np.int16)
ALL_CODES = bytes(range(256))


def test_ulaw_encode_matches_audioop_on_every_pcm_value(impl: ModuleType) -> None:
    pcm = ALL_PCM.tobytes()
    assert impl.ulaw_encode(pcm) == audioop.lin2ulaw(pcm, 2)


def test_alaw_encode_matches_audioop_on_every_pcm_value(impl: ModuleType) -> None:
    pcm = ALL_PCM.tobytes()
    assert impl.alaw_encode(pcm) == audioop.lin2alaw(pcm, 2)


def test_decoders_match_audioop_on_every_code(impl: ModuleType) -> None:
    assert impl.ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
    assert impl.alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


@pytest.mark.parametrize(
    ("pcm", "code"),
    [(0, 0xFF), (3, 0xFF), (4, 0xFE), (-1, 0x7E), (-8, 0x7E), (100, 0xF2), (-100, 0x72),
     (1000, 0xCE), (-1000, 0x4E), (4096, 0xAF), (-4096, 0x2F), (8159, 0x9F), (32124, 0x80),
     (32767, 0x80), (-32767, 0x00), (-32768, 0x00)],
)
def test_ulaw_reference_vectors(impl: ModuleType, pcm: int, code: int) -> None:
    # protocols.md section 4.6
    assert impl.ulaw_encode(np.array([pcm], np.int16)) == bytes([code])


@pytest.mark.parametrize(("code", "pcm"), [(0x00, -32124), (0x55, -716), (0x7F, 0), (0x80, 32124),
                                           (0xD5, 716), (0xFE, 8), (0xFF, 0)])
def test_ulaw_decode_vectors(impl: ModuleType, code: int, pcm: int) -> None:
    assert np.frombuffer(impl.ulaw_decode(bytes([code])), "<i2")[0] == pcm


def test_every_code_round_trips_except_negative_zero(impl: ModuleType) -> None:
    back = impl.ulaw_encode(impl.ulaw_decode(ALL_CODES))
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF
    assert back == bytes(expected)


@pytest.mark.parametrize(
    "make",
    [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.int16),
     lambda b: np.frombuffer(b, np.uint8), lambda b: memoryview(np.frombuffer(b, np.int16))],
    ids=["bytes", "bytearray", "memoryview", "np-int16", "np-uint8", "memoryview-h"],
)
def test_any_buffer_type_is_accepted(impl: ModuleType, make) -> None:
    pcm = np.arange(-2000, 2000, 7, dtype=np.int16).tobytes()
    assert impl.ulaw_encode(make(pcm)) == audioop.lin2ulaw(pcm, 2)
    assert impl.alaw_encode(make(pcm)) == audioop.lin2alaw(pcm, 2)


def test_non_contiguous_array_gives_the_same_bytes(impl: ModuleType) -> None:
    pcm = np.arange(-3000, 3000, 3, dtype=np.int16)
    strided = np.repeat(pcm, 2)[::2]
    assert not strided.flags.c_contiguous
    assert impl.ulaw_encode(strided) == impl.ulaw_encode(pcm)


def test_encode_does_not_copy_its_input(impl: ModuleType) -> None:
    pcm = (np.arange(1_000_000) % 20000 - 10000).astype(np.int16)  # 2 MB
    impl.ulaw_encode(pcm[:10])  # warm up lazy allocations
    tracemalloc.start()
    try:
        impl.ulaw_encode(pcm)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the output alone is 1 MB (the twin builds it twice); a copy of the input adds 2 MB
    assert peak < 2.5 * 1_000_000


@pytest.mark.parametrize("fn", ["ulaw_encode", "alaw_encode"])
def test_odd_length_pcm_is_a_value_error_naming_the_length(impl: ModuleType, fn: str) -> None:
    with pytest.raises(ValueError, match="321") as info:
        getattr(impl, fn)(bytes(321))
    assert isinstance(info.value, AudioFormatError)


@pytest.mark.parametrize(
    "bad",
    [np.zeros(4, np.float32), np.zeros(4, np.int32), np.zeros(4, ">i2"), [1, 2, 3], "abcd", 12],
    ids=["float32", "int32", "big-endian", "list", "str", "int"],
)
def test_wrong_types_are_audio_format_errors(impl: ModuleType, bad: object) -> None:
    with pytest.raises(AudioFormatError):
        impl.ulaw_encode(bad)


def test_decode_rejects_int16_arrays(impl: ModuleType) -> None:
    with pytest.raises(AudioFormatError, match="uint8"):
        impl.ulaw_decode(np.zeros(4, np.int16))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_codecs_agree_with_audioop_on_any_bytes(data: bytes) -> None:
    from agentic_fast._audiocore import numpy_twin as numpy_twin
    from tests.conftest import _native

    pcm = data[: len(data) & ~1]
    for mod in filter(None, (_native(), numpy_twin)):
        assert mod.ulaw_encode(pcm) == audioop.lin2ulaw(pcm, 2)
        assert mod.ulaw_decode(data) == audioop.ulaw2lin(data, 2)
        assert mod.alaw_decode(data) == audioop.alaw2lin(data, 2)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ABCXYZabcxyz0189+/=-_ \n\u00e9", max_size=24))
def test_strict_base64_is_the_same_in_both_implementations(text: str) -> None:
    from agentic_fast._audiocore import numpy_twin as numpy_twin
    from tests.conftest import _native

    native = _native()
    results = []
    for mod in filter(None, (native, numpy_twin)):
        try:
            results.append(("ok", mod.b64decode_strict(text)))
        except AudioFormatError:
            results.append(("error", None))
    assert len({r[0] for r in results}) == 1, (text, results)
    assert len({r[1] for r in results}) == 1, (text, results)
    if results[0][0] == "ok":
        assert results[0][1] == base64.b64decode(text, validate=True)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_base64_round_trip(data: bytes) -> None:
    from agentic_fast._audiocore import numpy_twin as numpy_twin
    from tests.conftest import _native

    text = base64.b64encode(data).decode()
    for mod in filter(None, (_native(), numpy_twin)):
        if data:
            assert mod.b64decode_strict(text) == data
        assert mod.b64encode(data) == text


@pytest.mark.parametrize("bad", ["", "A", "AB=", "A===", "AB=C", "AAAA=AAA", "AA AA", "AA\nA",
                                 "AAA\u00e9", "AA-_"])
def test_invalid_base64_is_rejected(impl: ModuleType, bad: str) -> None:
    with pytest.raises(AudioFormatError, match="invalid base64"):
        impl.b64decode_strict(bad)
