"""wsframe: masking and frame building, native and pure, checked against python-websockets."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.streams import StreamReader
from websockets.uri import parse_uri
from websockets.utils import apply_mask

from agentic_fast.ws import frames as wsframe
from agentic_fast.ws.frames import (
    OP_BINARY,
    OP_PONG,
    OP_TEXT,
    ClientFramer,
    client_frame_python,
    frame_header,
    mask,
    mask_python,
    server_frame,
)

try:
    from agentic_fast import _audio as native
except ImportError:  # pragma: no cover - the extension is built in CI
    native = None

needs_native = pytest.mark.skipif(native is None or not hasattr(native, "ws_mask"),
                                  reason="native extension not built")

LENGTHS = [*range(71), 125, 126, 127, 1000, 2607, 65535, 65536, 65537, 200_003]
MASKS = [pytest.param(mask_python, id="python"), pytest.param(mask, id="selected")]
if native is not None and hasattr(native, "ws_mask"):
    MASKS.append(pytest.param(native.ws_mask, id="native"))
FRAMES = [pytest.param(client_frame_python, id="python"),
          pytest.param(wsframe.client_frame, id="selected")]
if native is not None and hasattr(native, "ws_client_frame"):
    FRAMES.append(pytest.param(native.ws_client_frame, id="native"))


def _parse(data: bytes, *, masked: bool) -> Frame:
    """One frame through websockets' own parser (what the providers' servers run)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=masked, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:  # pragma: no cover - a short frame would leave the parser waiting
        raise AssertionError("incomplete frame")
    assert not reader.buffer, "bytes left after the frame"
    return frame


def test_selected_implementation() -> None:
    expected = "native" if native is not None and hasattr(native, "ws_mask") else "python"
    if os.environ.get("AGENTIC_FAST_NO_EXT") == "1":
        expected = "python"
    assert expected == wsframe.IMPLEMENTATION
    if expected == "native":
        assert mask is native.ws_mask
        assert wsframe.client_frame is native.ws_client_frame


@pytest.mark.parametrize("fn", MASKS)
def test_mask_matches_websockets(fn) -> None:
    rng = random.Random(6455)
    for n in LENGTHS:
        data = rng.randbytes(n)
        key = rng.randbytes(4)
        want = apply_mask(data, key)
        assert fn(data, key) == want, n
        assert fn(bytearray(data), key) == want, n
        assert fn(memoryview(data), key) == want, n
        assert fn(data, bytearray(key)) == want, n
        assert fn(want, key) == data, n  # unmasking is masking


@pytest.mark.parametrize("fn", MASKS)
def test_mask_of_unaligned_slices(fn) -> None:
    """The media socket unmasks memoryview slices of its receive buffer at any offset."""
    rng = random.Random(1)
    buf = bytearray(rng.randbytes(4096))
    key = b"\x01\xfe\x7f\x80"
    for start in range(9):
        for n in (0, 1, 7, 8, 9, 160, 333, 2000):
            view = memoryview(buf)[start:start + n]
            assert fn(view, key) == apply_mask(bytes(view), key)
            assert fn(view, memoryview(buf)[start:start + 4]) == apply_mask(
                bytes(view), bytes(buf[start:start + 4]))


@pytest.mark.parametrize("fn", MASKS)
def test_mask_returns_bytes_and_rejects_bad_keys(fn) -> None:
    assert type(fn(bytearray(b"abc"), b"1234")) is bytes
    assert fn(b"", b"1234") == b""
    for key in (b"", b"123", b"12345"):
        with pytest.raises(ValueError):
            fn(b"abcdef", key)


@pytest.mark.parametrize("fn", MASKS)
def test_mask_rejects_what_is_not_a_buffer_with_type_error(fn) -> None:
    for bad in ("text", 5, None, [1, 2]):
        with pytest.raises(TypeError):
            fn(bad, b"1234")


@pytest.mark.parametrize("fn", FRAMES)
def test_client_frame_rejects_what_is_not_str_or_a_buffer_with_type_error(fn) -> None:
    for bad in (5, None, [1, 2]):
        with pytest.raises(TypeError):
            fn(OP_TEXT, bad, b"1234")


@needs_native
def test_native_and_pure_identical() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randrange(0, 3000)
        data, key = rng.randbytes(n), rng.randbytes(4)
        assert native.ws_mask(data, key) == mask_python(data, key)
        for opcode in (OP_TEXT, OP_BINARY):
            assert (native.ws_client_frame(opcode, data, key)
                    == client_frame_python(opcode, data, key))
        text = data.hex()[:n]
        assert native.ws_client_frame(OP_TEXT, text, key) == client_frame_python(
            OP_TEXT, text, key)


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_frame_header_boundaries_parse_back(length: int, opcode: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    head = frame_header(opcode, length)
    assert len(head) == (2 if length < 126 else 4 if length < 65536 else 10)
    frame = _parse(head + payload, masked=False)
    assert (frame.opcode, frame.fin, frame.data) == (opcode, True, payload)
    assert server_frame(opcode, payload) == head + payload
    key = b"\x12\x34\x56\x78"
    masked = frame_header(opcode, length, 0x80) + key + mask(payload, key)
    frame = _parse(masked, masked=True)
    assert (frame.opcode, frame.fin, frame.data) == (opcode, True, payload)


@pytest.mark.parametrize("fn", FRAMES)
@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_client_frames_parse_back(fn, length: int) -> None:
    payload = os.urandom(length)
    key = os.urandom(4)
    data = fn(OP_BINARY, payload, key)
    assert data[2 if length < 126 else 4 if length < 65536 else 10:][:4] == key
    frame = _parse(data, masked=True)
    assert (frame.opcode, frame.fin, frame.data) == (OP_BINARY, True, payload)


@pytest.mark.parametrize("fn", FRAMES)
def test_client_text_frames_from_str(fn) -> None:
    for text in ("", "hi", '{"type":"input_audio_buffer.append","audio":"AAAA"}' * 50,
                 "héllo wörld ☎" * 20, "x" * 65536):
        frame = _parse(fn(OP_TEXT, text, b"abcd"), masked=True)
        assert frame.opcode == OP_TEXT
        assert frame.data.decode() == text
        assert fn(OP_TEXT, text, b"abcd") == fn(OP_TEXT, text.encode(), b"abcd")


@pytest.mark.parametrize("fn", FRAMES)
def test_client_frame_matches_websockets_serialize(fn) -> None:
    """Byte for byte what websockets writes for the same key."""
    for n in (0, 5, 125, 126, 2607, 65536):
        payload = os.urandom(n)
        key = os.urandom(4)
        ours = fn(OP_TEXT, payload, key)
        theirs = Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])
        # websockets draws its own key: compare with that key substituted
        at = 2 if n < 126 else 4 if n < 65536 else 10
        their_key = theirs[at:at + 4]
        assert fn(OP_TEXT, payload, their_key) == theirs
        assert ours[:at] == theirs[:at]


def test_framer_keys_differ_and_pool_refills(monkeypatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(wsframe.os, "urandom", counting)
    framer = ClientFramer(pool_bytes=64)  # 16 keys a pool
    keys = []
    for i in range(40):
        data = framer.frame_text(f"message {i}") if i % 2 else framer.frame(OP_TEXT, b"m")
        keys.append(data[2:6])
        assert _parse(data, masked=True).opcode == OP_TEXT
    assert calls == [64, 64, 64]  # one syscall per 16 frames, refilled when empty
    assert len(set(keys)) > 35  # fresh entropy per frame (a repeat is a 2**-32 event)
    assert keys[:16] != keys[16:32]
    assert all(len(k) == 4 for k in keys)
    assert len(set(framer.key() for _ in range(100))) > 95


def test_framer_frames_parse_back() -> None:
    framer = ClientFramer()
    text = '{"type":"input_audio_buffer.append","audio":"' + "A" * 2560 + '"}'
    frame = _parse(framer.frame_text(text), masked=True)
    assert (frame.opcode, frame.data) == (OP_TEXT, text.encode())
    frame = _parse(framer.frame(OP_BINARY, bytearray(b"\x00\x01")), masked=True)
    assert (frame.opcode, frame.data) == (OP_BINARY, b"\x00\x01")


def test_websockets_pending_writes_contract() -> None:
    """The providers flush ``protocol.writes`` (through ``send_data``) before writing a frame
    of their own: the attribute must exist and be what ``data_to_send`` drains."""
    proto = ClientProtocol(parse_uri("ws://example.invalid/"))
    proto.state = State.OPEN
    assert proto.writes == []
    proto.send_pong(b"x")
    assert proto.writes
    pending = proto.data_to_send()
    assert pending and proto.writes == []
    assert _parse(pending[0], masked=True).opcode == OP_PONG


def test_pure_fallback_under_no_ext() -> None:
    code = ("from agentic_fast.ws import frames as w; import os;"
            "assert w.IMPLEMENTATION == 'python', w.IMPLEMENTATION;"
            "assert w.mask in (w.mask_python, w._websockets_mask);"
            "k = os.urandom(4); d = os.urandom(1000);"
            "assert w.mask(w.mask(d, k), k) == d;"
            "print('ok')")
    env = {**os.environ, "AGENTIC_FAST_NO_EXT": "1"}
    env.pop("AGENTIC_FAST_REQUIRE_EXT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == "ok"


# -- the providers' send path on a real socket ----------------------------------------------


class _Spy:
    """Records what goes to a transport, in order (then writes it)."""

    def __init__(self, ws) -> None:
        self.frames: list[bytes] = []
        self._write = ws.transport.write
        ws.transport.write = self.write

    def write(self, data) -> None:
        self.frames.append(bytes(data))
        self._write(data)

    def opcodes(self) -> list[int]:
        return [_parse(f, masked=True).opcode for f in self.frames]


async def test_openai_send_path_writes_websockets_pending_frames_first() -> None:
    from agentic_fast.core.config import OpenAIRealtimeConfig
    from agentic_fast.providers.openai.provider import OpenAIRealtimeProvider
    from tests.fakes.openai_realtime import FakeOpenAIRealtime

    async with FakeOpenAIRealtime() as fake:
        config = OpenAIRealtimeConfig(api_key=fake.api_key, model=fake.model,
                                      url=f"ws://127.0.0.1:{fake.port}/v1/realtime")
        provider = OpenAIRealtimeProvider(config, call_id="t", connect_timeout_s=5.0,
                                          ping_interval_s=None)
        try:
            await provider.connect()
            session = await fake.wait_session(0)
            conn = provider._link
            assert conn is not None
            spy = _Spy(conn.ws)
            conn.ws.protocol.send_ping(b"queued")  # a websockets frame not written yet
            provider.send_audio("AAAA" * 640)
            provider.send_audio("AAAA" * 640)
            provider.say("hello")
            assert not conn.ws.protocol.writes
            assert spy.opcodes()[:3] == [Opcode.PING, OP_TEXT, OP_TEXT]
            await session.wait_received("input_audio_buffer.append", 2)
            await session.wait_received("conversation.item.create")
            assert conn.open
            keys = {f[4:8] for f in spy.frames[1:3]}  # 126 <= length < 65536: 4-byte header
            assert len(keys) == 2
        finally:
            await provider.close()


async def test_gemini_send_path_writes_websockets_pending_frames_first() -> None:
    from agentic_fast.core.config import GeminiConfig
    from agentic_fast.providers.gemini.provider import GeminiLiveProvider
    from tests.fakes.gemini_live import FakeGeminiLive

    async with FakeGeminiLive() as fake:
        config = GeminiConfig(api_key=fake.api_key, url=fake.url,
                              model="gemini-2.5-flash-native-audio-preview-09-2025")
        provider = GeminiLiveProvider(config, call_id="t", connect_timeout_s=5.0,
                                      ping_interval_s=None)
        try:
            await provider.connect()
            link = provider._link
            assert link is not None
            spy = _Spy(link.ws)
            link.ws.protocol.send_ping(b"queued")
            provider.send_audio("AAAA" * 160)
            provider.send_audio("AAAA" * 160)
            assert not link.ws.protocol.writes
            assert spy.opcodes() == [Opcode.PING, OP_TEXT, OP_TEXT]
            await fake.wait_for(lambda: fake.samples_received == 2 * 240)
            assert link.open and not fake.violations
        finally:
            await provider.close()
