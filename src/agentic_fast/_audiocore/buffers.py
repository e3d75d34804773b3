"""Zero-copy views of the audio buffers callers hand us, with clear errors for the rest."""

from __future__ import annotations

import sys

import numpy as np

from agentic_fast.core.errors import AudioFormatError

if sys.byteorder != "little":  # pragma: no cover - every leg is little-endian PCM16
    raise ImportError("agentic_fast.audio supports little-endian machines only")


def byte_view(obj: object, *, pcm16: bool) -> memoryview:
    """A flat, read-only-safe ``'B'`` memoryview over ``obj`` without copying it.

    Accepts bytes, bytearray, memoryview and any C-contiguous buffer; numpy arrays of
    int16 (``pcm16=True``), or uint8/int8 (raw bytes, either kind). A non-contiguous numpy
    array is copied once into contiguous memory. Anything else is an ``AudioFormatError``.
    """
    if type(obj) is bytes:
        return memoryview(obj)
    if isinstance(obj, np.ndarray):
        dt = obj.dtype
        if dt.itemsize == 1 and dt.kind in "iu":
            pass
        elif pcm16 and dt.kind == "i" and dt.itemsize == 2:
            if dt.byteorder == ">":
                raise AudioFormatError("PCM16 arrays must be little-endian, got dtype >i2")
        else:
            want = "int16 (or uint8 bytes)" if pcm16 else "uint8"
            raise AudioFormatError(f"expected a {want} array, got dtype {dt}")
        if not obj.flags.c_contiguous:
            obj = np.ascontiguousarray(obj)
        return obj.reshape(-1).view(np.uint8).data
    try:
        # obj is any object here: memoryview() raising TypeError is the check
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        raise AudioFormatError(
            f"expected a bytes-like buffer or numpy array, got {type(obj).__name__}"
        ) from None
    if not view.c_contiguous:
        raise AudioFormatError("audio buffer must be C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view
