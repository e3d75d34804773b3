# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native hot path of agentic_fast: G.711 codecs, base64, ring buffer and streaming
integer FIR resamplers, fused per 20 ms frame over reusable numpy buffers; and the
WebSocket client-frame masking of the providers' send path (``ws_mask``, ``ws_client_frame``,
pure twins in ``agentic_fast.ws.frames``).

The numpy twin is ``agentic_fast._audiocore.numpy_twin``; both take their tables from
``agentic_fast._audiocore.tables`` and must give the same bytes (the tests check it). All FIR
arithmetic is integer (Q14 taps, int32 accumulators proven not to overflow by the table
builder), so the result does not depend on summation order or vectorisation.
"""

from cpython.buffer cimport PyObject_CheckBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int16_t, int32_t, int8_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove, memset

import numpy as np

from agentic_fast._audiocore import tables as _tables
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
from agentic_fast.core.errors import AudioFormatError

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)

IMPLEMENTATION = "native"

cdef enum:
    FRAME = 160    # bytes of one 20 ms Twilio frame
    BLOCK = 4096   # samples per filter pass (bounds every work buffer)

cdef int SHIFT = _tables.FIR_SHIFT
cdef int32_t ROUND = 1 << (SHIFT - 1)

cdef int16_t ULAW_DEC[256]
cdef int16_t ALAW_DEC[256]
cdef uint8_t ULAW_ENC[65536]
cdef uint8_t ALAW_ENC[65536]
cdef int8_t B64_DEC[256]
cdef char* B64_ENC = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


cdef void _load_tables():
    cdef const int16_t[::1] d
    cdef const uint8_t[::1] e
    cdef int i
    d = _tables.ULAW_DECODE
    memcpy(ULAW_DEC, &d[0], 256 * sizeof(int16_t))
    d = _tables.ALAW_DECODE
    memcpy(ALAW_DEC, &d[0], 256 * sizeof(int16_t))
    e = _tables.ULAW_ENCODE
    memcpy(ULAW_ENC, &e[0], 65536)
    e = _tables.ALAW_ENCODE
    memcpy(ALAW_ENC, &e[0], 65536)
    for i in range(256):
        B64_DEC[i] = -1
    for i in range(64):
        B64_DEC[<uint8_t>B64_ENC[i]] = i


_load_tables()


# -- buffers in ----------------------------------------------------------------------------

cdef class _Bytes:
    """A borrowed (pointer, length) of a str (ASCII) / bytes / buffer, kept alive."""
    cdef const uint8_t* ptr
    cdef Py_ssize_t size
    cdef object owner
    cdef const uint8_t[::1] view


cdef inline _Bytes _borrow(object obj, bint pcm16):
    cdef _Bytes b = _Bytes.__new__(_Bytes)
    b.owner = obj
    if type(obj) is bytes:
        b.ptr = <const uint8_t*>PyBytes_AS_STRING(obj)
        b.size = PyBytes_GET_SIZE(obj)
    else:
        b.view = byte_view(obj, pcm16=pcm16)
        b.size = b.view.shape[0]
        b.ptr = &b.view[0] if b.size else <const uint8_t*>b""
    return b


cdef inline _Bytes _borrow_text(object obj):
    """Base64 text: a str is read in place when it is compact ASCII."""
    cdef _Bytes b
    if type(obj) is str:
        if not PyUnicode_IS_COMPACT_ASCII(obj):
            raise bad_base64(len(obj))
        b = _Bytes.__new__(_Bytes)
        b.owner = obj
        b.ptr = <const uint8_t*>PyUnicode_DATA(obj)
        b.size = PyUnicode_GET_LENGTH(obj)
        return b
    check_b64_type(obj)
    return _borrow(obj, False)


# -- base64 --------------------------------------------------------------------------------

cdef Py_ssize_t _b64_decode(const uint8_t* s, Py_ssize_t n, uint8_t* out) noexcept nogil:
    """Strict decode (same rules as the twin's); the decoded length, or -1 if invalid."""
    cdef Py_ssize_t i, o = 0, full, pad = 0
    cdef int32_t a, b, c, d, v
    if n == 0 or (n & 3):
        return -1
    if s[n - 1] == 61:  # '='
        pad = 2 if s[n - 2] == 61 else 1
    full = n - 4 if pad else n
    for i in range(0, full, 4):
        a = B64_DEC[s[i]]
        b = B64_DEC[s[i + 1]]
        c = B64_DEC[s[i + 2]]
        d = B64_DEC[s[i + 3]]
        if (a | b | c | d) < 0:
            return -1
        v = (a << 18) | (b << 12) | (c << 6) | d
        out[o] = <uint8_t>(v >> 16)
        out[o + 1] = <uint8_t>(v >> 8)
        out[o + 2] = <uint8_t>v
        o += 3
    if pad:
        a = B64_DEC[s[full]]
        b = B64_DEC[s[full + 1]]
        if (a | b) < 0:
            return -1
        v = (a << 18) | (b << 12)
        if pad == 1:
            c = B64_DEC[s[full + 2]]
            if c < 0:
                return -1
            v |= c << 6
            out[o + 1] = <uint8_t>(v >> 8)
        out[o] = <uint8_t>(v >> 16)
        o += 3 - pad
    return o


cdef object _b64_encode(const uint8_t* p, Py_ssize_t n):
    """Standard padded base64 of ``p[:n]`` written straight into a new ASCII str."""
    cdef Py_ssize_t i, o = 0, whole = n - n % 3
    cdef uint32_t v
    cdef object s = PyUnicode_New((n + 2) // 3 * 4, 127)
    cdef char* d = <char*>PyUnicode_DATA(s)
    for i in range(0, whole, 3):
        v = (<uint32_t>p[i] << 16) | (<uint32_t>p[i + 1] << 8) | p[i + 2]
        d[o] = B64_ENC[v >> 18]
        d[o + 1] = B64_ENC[(v >> 12) & 63]
        d[o + 2] = B64_ENC[(v >> 6) & 63]
        d[o + 3] = B64_ENC[v & 63]
        o += 4
    if n - whole == 1:
        v = <uint32_t>p[whole] << 16
        d[o] = B64_ENC[v >> 18]
        d[o + 1] = B64_ENC[(v >> 12) & 63]
        d[o + 2] = 61
        d[o + 3] = 61
    elif n - whole == 2:
        v = (<uint32_t>p[whole] << 16) | (<uint32_t>p[whole + 1] << 8)
        d[o] = B64_ENC[v >> 18]
        d[o + 1] = B64_ENC[(v >> 12) & 63]
        d[o + 2] = B64_ENC[(v >> 6) & 63]
        d[o + 3] = 61
    return s



def b64decode_strict(text):
    """Strict base64 decode (whole quads, padding only at the end) -> bytes."""
    cdef _Bytes b = _borrow_text(text)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, (b.size // 4) * 3 + 3)
    cdef Py_ssize_t n = _b64_decode(b.ptr, b.size, <uint8_t*>PyBytes_AS_STRING(out))
    if n < 0:
        raise bad_base64(b.size)
    return out[:n]


def b64encode(data):
    """Standard padded base64 of a bytes-like object, as str."""
    cdef _Bytes b = _borrow(data, False)
    return _b64_encode(b.ptr, b.size)


# -- WebSocket masking (RFC 6455 5.3) --------------------------------------------------------

cdef inline void _xor_mask(const uint8_t* src, Py_ssize_t n, const uint8_t* key,
                           uint8_t* dst) noexcept nogil:
    """``dst[i] = src[i] ^ key[i % 4]``, eight bytes a step (memcpy: unaligned-safe loads)."""
    cdef uint64_t k8, w
    cdef Py_ssize_t i = 0, words = n & ~(<Py_ssize_t>7)
    memcpy(&k8, key, 4)
    memcpy((<uint8_t*>&k8) + 4, key, 4)
    while i < words:
        memcpy(&w, src + i, 8)
        w ^= k8
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ key[i & 3]
        i += 1


cdef inline _Bytes _mask_key(object key):
    cdef _Bytes k = _borrow(key, False)
    if k.size != 4:
        raise ValueError(f"a WebSocket mask key is 4 bytes, got {k.size}")
    return k


def ws_mask(data, key):
    """``data`` XOR the repeating 4-byte ``key`` -> bytes (masking == unmasking).

    ``data`` is any C-contiguous buffer, read in place (no copy of the input); anything
    else is a TypeError, as in the pure twin.
    """
    cdef _Bytes k = _mask_key(key)
    if type(data) is not bytes and not PyObject_CheckBuffer(data):
        raise TypeError(f"a WebSocket payload is a bytes-like object, not {type(data).__name__}")
    cdef _Bytes b = _borrow(data, False)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, b.size)
    _xor_mask(b.ptr, b.size, k.ptr, <uint8_t*>PyBytes_AS_STRING(out))
    return out


def ws_client_frame(int opcode, payload, key):
    """One whole masked client frame (FIN, ``opcode``, length, ``key``, masked payload).

    ``payload`` is a str (sent as UTF-8; compact ASCII is read in place) or any
    C-contiguous buffer. Header, key and masked payload are written into one new bytes.
    """
    cdef _Bytes k = _mask_key(key)
    cdef _Bytes b
    if type(payload) is str and PyUnicode_IS_COMPACT_ASCII(payload):
        b = _Bytes.__new__(_Bytes)
        b.owner = payload
        b.ptr = <const uint8_t*>PyUnicode_DATA(payload)
        b.size = PyUnicode_GET_LENGTH(payload)
    elif type(payload) is str:
        b = _borrow(payload.encode(), False)
    elif PyObject_CheckBuffer(payload):
        b = _borrow(payload, False)
    else:
        raise TypeError(f"a WebSocket payload is str or bytes-like, not {type(payload).__name__}")
    if opcode < 0 or opcode > 15:
        raise ValueError(f"bad WebSocket opcode {opcode}")
    cdef Py_ssize_t n = b.size
    cdef Py_ssize_t head = 2 if n < 126 else (4 if n < 65536 else 10)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, head + 4 + n)
    cdef uint8_t* d = <uint8_t*>PyBytes_AS_STRING(out)
    cdef int i
    cdef uint64_t n64 = <uint64_t>n
    d[0] = 0x80 | opcode
    if head == 2:
        d[1] = 0x80 | <uint8_t>n
    elif head == 4:
        d[1] = 0x80 | 126
        d[2] = <uint8_t>(n >> 8)
        d[3] = <uint8_t>n
    else:
        d[1] = 0x80 | 127
        for i in range(8):
            d[2 + i] = <uint8_t>(n64 >> (56 - 8 * i))
    memcpy(d + head, k.ptr, 4)
    _xor_mask(b.ptr, n, k.ptr, d + head + 4)
    return out


# -- codecs --------------------------------------------------------------------------------

cdef inline void _decode(const int16_t* table, const uint8_t* src, Py_ssize_t n,
                         int16_t* dst) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = table[src[i]]


cdef inline void _encode(const uint8_t* table, const int16_t* src, Py_ssize_t n,
                         uint8_t* dst) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = table[<uint16_t>src[i]]


cdef bytes _decode_bytes(const int16_t* table, object data):
    cdef _Bytes b = _borrow(data, False)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, b.size * 2)
    _decode(table, b.ptr, b.size, <int16_t*>PyBytes_AS_STRING(out))
    return out


cdef bytes _encode_bytes(const uint8_t* table, object pcm):
    cdef _Bytes b = _borrow(pcm, True)
    if b.size & 1:
        raise odd_pcm(b.size)
    cdef Py_ssize_t n = b.size // 2
    cdef int16_t* tmp
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    # src may be unaligned (a bytes slice); int16 loads through memcpy-free cast are fine
    # on x86/arm64, but stay portable: read as little-endian byte pairs.
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = table[<uint16_t>(b.ptr[2 * i] | (b.ptr[2 * i + 1] << 8))]
    return out


def ulaw_decode(data):
    """G.711 mu-law bytes -> PCM16 LE bytes (``audioop.ulaw2lin(data, 2)``)."""
    return _decode_bytes(ULAW_DEC, data)


def ulaw_encode(pcm):
    """PCM16 LE -> G.711 mu-law bytes (``audioop.lin2ulaw(pcm, 2)``)."""
    return _encode_bytes(ULAW_ENC, pcm)


def alaw_decode(data):
    """G.711 A-law bytes -> PCM16 LE bytes (``audioop.alaw2lin(data, 2)``)."""
    return _decode_bytes(ALAW_DEC, data)


def alaw_encode(pcm):
    """PCM16 LE -> G.711 A-law bytes (``audioop.lin2alaw(pcm, 2)``)."""
    return _encode_bytes(ALAW_ENC, pcm)


# -- streaming integer FIR resamplers -------------------------------------------------------

cdef inline int16_t _round_clip(int32_t acc) noexcept nogil:
    acc = (acc + ROUND) >> SHIFT
    if acc > 32767:
        return 32767
    if acc < -32768:
        return -32768
    return <int16_t>acc


cdef class _FirUp:
    """Polyphase interpolator. Input goes to ``work[taps-1:]``; ``run`` filters it."""
    cdef int factor, taps
    cdef object _coef_arr, _work_arr
    cdef int16_t[:, ::1] coef   # (factor, taps): each phase's taps, reversed
    cdef int16_t[::1] work      # taps-1 samples of history, then up to BLOCK new ones
    cdef int16_t* inp

    def __init__(self, design):
        cdef int p = design.factor
        taps = np.asarray(design.taps, np.int16)
        per = (len(taps) + p - 1) // p
        padded = np.zeros(p * per, np.int16)
        padded[:len(taps)] = taps
        self._coef_arr = np.ascontiguousarray(padded.reshape(per, p)[::-1].T)
        self.coef = self._coef_arr
        self.factor = p
        self.taps = per
        self._work_arr = np.zeros(per - 1 + BLOCK, np.int16)
        self.work = self._work_arr
        self.inp = &self.work[per - 1]

    cdef void run(self, Py_ssize_t n, int16_t* out) noexcept nogil:
        cdef Py_ssize_t i, k
        cdef int p, taps = self.taps, factor = self.factor
        cdef int32_t acc
        cdef const int16_t* w
        cdef const int16_t* c
        for i in range(n):
            w = &self.work[i]
            for p in range(factor):
                c = &self.coef[p, 0]
                acc = 0
                for k in range(taps):
                    acc += <int32_t>c[k] * <int32_t>w[k]
                out[i * factor + p] = _round_clip(acc)
        memmove(&self.work[0], &self.work[n], (taps - 1) * sizeof(int16_t))

    cdef void reset(self) noexcept nogil:
        memset(&self.work[0], 0, (self.taps - 1) * sizeof(int16_t))


cdef class _FirDown:
    """Low-pass and keep every ``factor``-th sample; input goes to ``work[taps-1:]``."""
    cdef int factor, taps
    cdef readonly int design_delay
    cdef Py_ssize_t skip
    cdef object _coef_arr, _work_arr
    cdef int16_t[::1] coef
    cdef int16_t[::1] work
    cdef int16_t* inp

    def __init__(self, design):
        self.factor = design.factor
        self.design_delay = design.delay_high
        self._coef_arr = np.ascontiguousarray(np.asarray(design.taps, np.int16)[::-1])
        self.coef = self._coef_arr
        self.taps = len(self._coef_arr)
        self._work_arr = np.zeros(self.taps - 1 + BLOCK, np.int16)
        self.work = self._work_arr
        self.inp = &self.work[self.taps - 1]
        self.skip = 0

    cdef Py_ssize_t run(self, Py_ssize_t n, int16_t* out) noexcept nogil:
        cdef Py_ssize_t j = self.skip, m = 0, k
        cdef int taps = self.taps
        cdef int32_t acc
        cdef const int16_t* w
        cdef const int16_t* c = &self.coef[0]
        while j < n:
            w = &self.work[j]
            acc = 0
            for k in range(taps):
                acc += <int32_t>c[k] * <int32_t>w[k]
            out[m] = _round_clip(acc)
            m += 1
            j += self.factor
        self.skip = j - n
        memmove(&self.work[0], &self.work[n], (taps - 1) * sizeof(int16_t))
        return m

    cdef void reset(self) noexcept nogil:
        memset(&self.work[0], 0, (self.taps - 1) * sizeof(int16_t))
        self.skip = 0


cdef class FirResampler:
    """Streaming PCM16 resampler for one integer-ratio rate pair (``tables.FIR_DESIGNS``)."""
    cdef readonly object design
    cdef _FirUp up
    cdef _FirDown down
    cdef object _out_arr
    cdef int16_t[::1] out

    implementation = IMPLEMENTATION

    def __init__(self, design):
        self.design = design
        if design.upsampling:
            self.up = _FirUp(design)
            self._out_arr = np.zeros(BLOCK * design.factor, np.int16)
        else:
            self.down = _FirDown(design)
            self._out_arr = np.zeros(BLOCK // design.factor + 1, np.int16)
        self.out = self._out_arr

    cdef bytes _run(self, const uint8_t* src, Py_ssize_t n_samples):
        cdef list parts = []
        cdef Py_ssize_t take, m
        while n_samples > 0:
            take = min(n_samples, BLOCK)
            if self.up is not None:
                memcpy(self.up.inp, src, take * 2)
                self.up.run(take, &self.out[0])
                m = take * self.up.factor
            else:
                memcpy(self.down.inp, src, take * 2)
                m = self.down.run(take, &self.out[0])
            parts.append(PyBytes_FromStringAndSize(<char*>&self.out[0], m * 2))
            src += take * 2
            n_samples -= take
        return b"".join(parts)

    def process(self, pcm):
        cdef _Bytes b = _borrow(pcm, True)
        if b.size & 1:
            raise odd_pcm(b.size)
        return self._run(b.ptr, b.size // 2)

    def flush(self):
        """Push the filter's delay out with zeros, then start afresh."""
        d = self.design
        tail = d.delay_high if not d.upsampling else (d.delay_high + d.factor - 1) // d.factor
        out = self._run(<const uint8_t*>PyBytes_AS_STRING(bytes(2 * tail)), tail)
        self.reset()
        return out

    def reset(self):
        if self.up is not None:
            self.up.reset()
        else:
            self.down.reset()


# -- ring buffer ---------------------------------------------------------------------------

cdef class _Ring:
    """Fixed-capacity byte FIFO over a numpy buffer; overflow raises, never grows."""
    cdef object _arr
    cdef uint8_t* buf
    cdef Py_ssize_t cap, head, size

    def __init__(self, Py_ssize_t capacity):
        self._arr = np.zeros(capacity, np.uint8)
        cdef uint8_t[::1] v = self._arr
        self.buf = &v[0]
        self.cap = capacity
        self.head = 0
        self.size = 0

    cdef int write(self, const uint8_t* p, Py_ssize_t n) except -1:
        if n > self.cap - self.size:
            raise AudioFormatError(f"ring buffer overflow: {n} bytes into {self.cap - self.size}")
        cdef Py_ssize_t tail = (self.head + self.size) % self.cap
        cdef Py_ssize_t first = min(n, self.cap - tail)
        memcpy(self.buf + tail, p, first)
        memcpy(self.buf, p + first, n - first)
        self.size += n
        return 0

    cdef void read(self, uint8_t* dst, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t first = min(n, self.cap - self.head)
        memcpy(dst, self.buf + self.head, first)
        memcpy(dst + first, self.buf, n - first)
        self.head = (self.head + n) % self.cap
        self.size -= n

    cdef const uint8_t* peek(self, Py_ssize_t n) noexcept nogil:
        """Pointer to the next ``n`` bytes if they do not wrap, else NULL."""
        if self.head + n <= self.cap:
            return self.buf + self.head
        return NULL

    cdef void clear(self) noexcept nogil:
        self.head = 0
        self.size = 0


# -- per-call converter ---------------------------------------------------------------------

cdef class AudioConverter:
    """One call's audio state in both directions (native; see ``agentic_fast.audio``)."""
    cdef readonly object spec
    cdef bint passthrough
    cdef Py_ssize_t chunk, max_payload
    cdef _FirUp up
    cdef _FirDown down
    cdef _Ring ring
    cdef object _in_arr, _up_arr, _chunk_arr, _pend_arr, _enc_arr
    cdef uint8_t* in_buf     # decoded Twilio mu-law
    cdef int16_t* up_buf     # upsampled PCM before it enters the ring
    cdef uint8_t* chunk_buf  # one handoff chunk when the ring wraps
    cdef uint8_t* pend       # outbound mu-law, < 160 bytes kept between calls
    cdef int16_t* dec_buf    # decimated PCM of one block
    cdef Py_ssize_t pend_len
    cdef int carry           # outbound odd PCM byte, or -1
    cdef bint active         # outbound audio fed since the last flush/clear

    implementation = IMPLEMENTATION

    def __init__(self, provider, handoff_ms=40, max_payload_bytes=4000):
        spec = converter_spec(provider, handoff_ms, max_payload_bytes)
        self.spec = spec
        self.passthrough = spec.passthrough
        self.chunk = spec.chunk_bytes
        self.max_payload = max_payload_bytes
        cdef int factor = 1
        if spec.upsampler is not None:
            self.up = _FirUp(spec.upsampler)
            self.down = _FirDown(spec.downsampler)
            factor = spec.upsampler.factor
        width = 1 if self.passthrough else 2
        self.ring = _Ring(self.chunk + max_payload_bytes * factor * width)
        self._in_arr = np.zeros(max_payload_bytes + 3, np.uint8)
        self._up_arr = np.zeros(max(max_payload_bytes * factor, 1), np.int16)
        self._chunk_arr = np.zeros(self.chunk, np.uint8)
        self._pend_arr = np.zeros(FRAME + BLOCK, np.uint8)
        self._enc_arr = np.zeros(BLOCK, np.int16)
        self.in_buf = <uint8_t*><size_t>self._in_arr.ctypes.data
        self.up_buf = <int16_t*><size_t>self._up_arr.ctypes.data
        self.chunk_buf = <uint8_t*><size_t>self._chunk_arr.ctypes.data
        self.pend = <uint8_t*><size_t>self._pend_arr.ctypes.data
        self.dec_buf = <int16_t*><size_t>self._enc_arr.ctypes.data
        self.pend_len = 0
        self.carry = -1
        self.active = False

    @property
    def provider(self):
        return self.spec.provider

    @property
    def handoff_ms(self):
        return self.spec.handoff_ms

    @property
    def chunk_bytes(self):
        return self.spec.chunk_bytes

    @property
    def inbound_delay_ms(self):
        return self.spec.inbound_delay_ms

    @property
    def outbound_delay_ms(self):
        return self.spec.outbound_delay_ms

    # inbound: Twilio -> provider ---------------------------------------------------------

    cdef int _inbound(self, object payload) except -1:
        cdef _Bytes b = _borrow_text(payload)
        check_payload_size(b.size, self.max_payload)
        cdef Py_ssize_t n = _b64_decode(b.ptr, b.size, self.in_buf)
        if n < 0:
            raise bad_base64(b.size)
        check_payload_size_decoded(n, self.max_payload)
        if self.passthrough:
            self.ring.write(self.in_buf, n)
        else:
            _decode(ULAW_DEC, self.in_buf, n, self.up.inp)   # straight into the filter
            self.up.run(n, self.up_buf)
            self.ring.write(<uint8_t*>self.up_buf, n * self.up.factor * 2)
        return 0

    cdef const uint8_t* _next_chunk(self):
        cdef const uint8_t* p = self.ring.peek(self.chunk)
        if p != NULL:
            self.ring.head = (self.ring.head + self.chunk) % self.ring.cap
            self.ring.size -= self.chunk
            return p
        self.ring.read(self.chunk_buf, self.chunk)
        return self.chunk_buf

    def feed_twilio(self, payload_b64):
        """Twilio ``media.payload`` -> list of provider chunks (bytes) of the handoff size."""
        self._inbound(payload_b64)
        cdef list out = []
        while self.ring.size >= self.chunk:
            out.append(PyBytes_FromStringAndSize(<char*>self._next_chunk(), self.chunk))
        return out

    def feed_twilio_b64(self, payload_b64):
        """Like ``feed_twilio`` but each chunk already base64-encoded for the provider's JSON."""
        self._inbound(payload_b64)
        cdef list out = []
        while self.ring.size >= self.chunk:
            out.append(_b64_encode(self._next_chunk(), self.chunk))
        return out

    # outbound: provider -> Twilio --------------------------------------------------------

    cdef void _emit(self, list frames):
        cdef Py_ssize_t pos = 0
        while self.pend_len - pos >= FRAME:
            frames.append(_b64_encode(self.pend + pos, FRAME))
            pos += FRAME
        if pos:
            memmove(self.pend, self.pend + pos, self.pend_len - pos)
            self.pend_len -= pos

    cdef void _down_block(self, Py_ssize_t n, list frames):
        """Decimate ``n`` samples already in ``down.inp``, mu-law encode, cut frames."""
        cdef Py_ssize_t m = self.down.run(n, self.dec_buf)
        _encode(ULAW_ENC, self.dec_buf, m, self.pend + self.pend_len)
        self.pend_len += m
        self._emit(frames)

    cdef list _outbound(self, const uint8_t* p, Py_ssize_t nb):
        cdef list frames = []
        cdef Py_ssize_t take, k
        if nb:
            self.active = True
        if self.passthrough:
            while nb > 0:
                take = min(nb, BLOCK)
                memcpy(self.pend + self.pend_len, p, take)
                self.pend_len += take
                self._emit(frames)
                p += take
                nb -= take
            return frames
        while nb > 0:
            k = 0
            if self.carry >= 0:
                self.down.inp[0] = <int16_t>(<uint16_t>self.carry | (<uint16_t>p[0] << 8))
                self.carry = -1
                p += 1
                nb -= 1
                k = 1
            take = min(nb // 2, BLOCK - k)
            memcpy(self.down.inp + k, p, take * 2)
            p += take * 2
            nb -= take * 2
            k += take
            if nb == 1:
                self.carry = p[0]
                nb = 0
            if k:
                self._down_block(k, frames)
        return frames

    def feed_provider(self, audio):
        """Provider audio (PCM16 LE at its rate, or mu-law in passthrough), any size ->
        base64 payloads of whole 160-byte Twilio frames; the remainder is kept."""
        cdef _Bytes b = _borrow(audio, not self.passthrough)
        return self._outbound(b.ptr, b.size)

    def feed_provider_b64(self, audio_b64):
        """Like ``feed_provider`` for base64 text (an OpenAI delta, a Gemini inlineData)."""
        cdef _Bytes b = _borrow_text(audio_b64)
        cdef bytes raw = PyBytes_FromStringAndSize(NULL, (b.size // 4) * 3 + 3)
        cdef Py_ssize_t n = _b64_decode(b.ptr, b.size, <uint8_t*>PyBytes_AS_STRING(raw))
        if n < 0:
            raise bad_base64(b.size)
        return self._outbound(<const uint8_t*>PyBytes_AS_STRING(raw), n)

    def flush_provider(self):
        """End of a response: drain the filter delay, pad the last frame with 0xFF."""
        cdef list frames = []
        cdef Py_ssize_t tail
        if not self.active:
            return frames
        self.active = False
        if not self.passthrough:
            tail = self.down.design_delay
            memset(self.down.inp, 0, tail * sizeof(int16_t))
            self._down_block(tail, frames)
            self.down.reset()
            self.carry = -1
        if self.pend_len:
            memset(self.pend + self.pend_len, 0xFF, FRAME - self.pend_len)
            self.pend_len = FRAME
            self._emit(frames)
        return frames

    def clear_outbound(self):
        """Barge-in: drop outbound audio not yet framed; returns the mu-law bytes dropped."""
        cdef Py_ssize_t dropped = self.pend_len
        self.active = False
        self.pend_len = 0
        self.carry = -1
        if not self.passthrough:
            self.down.reset()
        return dropped
