"""RFC 6455 frame building and (un)masking: the pieces our hot WebSocket paths share.

The media-stream server (``media_socket``) and the providers' send path write whole frames
straight to their transports, so one 20 ms frame costs one ``transport.write`` and no
coroutine. Client frames must be masked with an unpredictable key (RFC 6455 5.3): keys are
drawn from a pooled ``os.urandom`` buffer (one syscall per 1024 frames, not one per frame).

Masking and whole client frames run in the native extension (``agentic_fast._audio``:
``ws_mask``, ``ws_client_frame``, eight bytes a step, header + key + masked payload written
into one bytes) when it is loaded; :func:`mask_python` / :func:`client_frame_python` are the
pure twins and give the same bytes. Without the extension, masking uses websockets' own C
``apply_mask`` when it is installed (same bytes, same errors; 2.6x faster than the pure
twin on a 2.5 KB append), else the pure twin. The choice follows :mod:`agentic_fast.audio`:
``AGENTIC_FAST_NO_EXT=1`` forces the pure code, ``AGENTIC_FAST_REQUIRE_EXT=1`` makes a
missing (or stale) extension an ImportError. ``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Literal

from agentic_fast._audiocore.native import load_native

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


Buffer = bytes | bytearray | memoryview


def mask_python(payload: Buffer, key: bytes) -> bytes:
    """``payload`` XOR the repeating 4-byte ``key`` (masking and unmasking are the same)."""
    if len(key) != 4:
        raise ValueError(f"a WebSocket mask key is 4 bytes, got {len(key)}")
    n = memoryview(payload).nbytes
    if n == 0:
        return b""
    reps = bytes(key) * ((n >> 2) + 1)
    return (int.from_bytes(payload, "little")
            ^ int.from_bytes(reps[:n], "little")).to_bytes(n, "little")


def frame_header(opcode: int, length: int, mask_bit: int = 0) -> bytes:
    """FIN + ``opcode`` and the payload length (with the mask bit when ``mask_bit``)."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length | mask_bit))
    if length < 65536:
        return _LEN16.pack(first, 126 | mask_bit, length)
    return _LEN64.pack(first, 127 | mask_bit, length)


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked frame (server -> client)."""
    return frame_header(opcode, len(payload)) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """Body of a close frame: the status code, then at most 123 bytes of UTF-8 reason."""
    return struct.pack("!H", code) + reason.encode()[:123]


def client_frame_python(opcode: int, payload: str | Buffer, key: bytes) -> bytes:
    """One whole masked client frame: header (mask bit set), ``key``, masked payload.

    A str ``payload`` is sent as UTF-8.
    """
    if isinstance(payload, str):
        payload = payload.encode()
    if not 0 <= opcode <= 15:
        raise ValueError(f"bad WebSocket opcode {opcode}")
    masked = _fallback_mask(payload, key)
    return frame_header(opcode, len(masked), 0x80) + key + masked


_websockets_mask: Callable[[Buffer, bytes], bytes] | None
try:  # websockets' C masking: the fallback's speed-up when our extension is not loaded
    from websockets.speedups import apply_mask as _websockets_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    _websockets_mask = None
_fallback_mask: Callable[[Buffer, bytes], bytes] = _websockets_mask or mask_python

_ext = load_native(needs="ws_client_frame")
IMPLEMENTATION: Literal["native", "python"] = "python" if _ext is None else "native"
#: ``payload`` XOR the repeating 4-byte ``key`` -> bytes (any contiguous buffer, no copy).
mask: Callable[[Buffer, bytes], bytes] = _fallback_mask if _ext is None else _ext.ws_mask
#: ``(opcode, payload, key)`` -> one whole masked client frame; str payloads go as UTF-8.
client_frame: Callable[[int, str | Buffer, bytes], bytes] = (
    client_frame_python if _ext is None else _ext.ws_client_frame)


class ClientFramer:
    """Builds masked client -> server frames with keys from pooled OS entropy.

    One per connection. ``frame_text`` is the providers' hot call: one native call builds
    the whole frame from the JSON str (read in place when ASCII).
    """

    __slots__ = ("_pool", "_pool_bytes", "_pos")

    def __init__(self, pool_bytes: int = 4096) -> None:
        self._pool_bytes = pool_bytes
        self._pool = b""
        self._pos = 0

    def key(self) -> bytes:
        """Four fresh bytes of ``os.urandom`` (refilled a pool at a time)."""
        pos = self._pos
        if pos + 4 > len(self._pool):
            self._pool, pos = os.urandom(self._pool_bytes), 0
        self._pos = pos + 4
        return self._pool[pos:pos + 4]

    def frame(self, opcode: int, payload: str | Buffer) -> bytes:
        """One masked frame of ``payload`` (a str is sent as UTF-8)."""
        return client_frame(opcode, payload, self.key())

    def frame_text(self, text: str | Buffer) -> bytes:
        """One masked text frame (``text`` as str, or already UTF-8 encoded)."""
        pos = self._pos
        if pos + 4 > len(self._pool):
            self._pool, pos = os.urandom(self._pool_bytes), 0
        self._pos = pos + 4
        return client_frame(OP_TEXT, text, self._pool[pos:pos + 4])
