"""The providers' send path per client frame: build one masked text frame for the socket.

Baseline: what the providers did before (and what ``await ws.send()`` does minus its
``drain()``): python-websockets' sans-I/O ``Protocol.send_text(msg.encode())`` then
``data_to_send()``: a ``Frame`` object, a mask key from ``secrets.token_bytes(4)`` (one
``getrandom`` syscall per frame), ``Frame.serialize`` (``struct.pack`` header, the
``websockets.speedups`` C mask, concatenations). Against it: :class:`wsframe.ClientFramer`
(pooled ``os.urandom`` keys; one native call writes header + key + masked payload into one
bytes, reading an ASCII str in place) and its pure-Python twin (``AGENTIC_FAST_NO_EXT=1``).

Messages are real OpenAI ``input_audio_buffer.append`` events: 40 ms of PCM16 24 kHz
(2607 B, the OpenAI pcm16 hot frame) and 228 B of audio (351 B, ~28 ms of mu-law). Groups
are per size so each reads as a ratio against its own baseline.
"""

from __future__ import annotations

import base64
import os

import pytest
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from agentic_fast.providers.openai.commands import input_audio_append
from agentic_fast.ws import frames as wsframe
from agentic_fast.ws.frames import OP_TEXT, ClientFramer, client_frame_python

MESSAGES = {
    "2.5KB": input_audio_append(base64.b64encode(os.urandom(1920)).decode()),
    "350B": input_audio_append(base64.b64encode(os.urandom(228)).decode()),
}
GROUPS = {size: f"ws frame {size}" for size in MESSAGES}


def _websockets_protocol() -> ClientProtocol:
    proto = ClientProtocol(parse_uri("wss://api.openai.com/v1/realtime"))
    proto.state = State.OPEN  # past the handshake, as on a live ClientConnection
    return proto


def _check(frame: bytes, msg: str) -> None:
    at = 2 if len(msg) < 126 else 4
    key = frame[at:at + 4]
    assert frame[0] == 0x81 and wsframe.mask_python(frame[at + 4:], key) == msg.encode()


def _bench_baseline(benchmark, size: str) -> None:
    msg = MESSAGES[size]
    proto = _websockets_protocol()

    def send() -> list[bytes]:
        proto.send_text(msg.encode())
        return proto.data_to_send()

    [frame] = benchmark(send)
    _check(frame, msg)


def _bench_framer(benchmark, size: str, impl: str) -> None:
    msg = MESSAGES[size]
    if impl == "native":
        if wsframe.IMPLEMENTATION != "native":
            pytest.skip("native extension not built (or AGENTIC_FAST_NO_EXT=1)")
        frame = benchmark(ClientFramer().frame_text, msg)
    else:
        framer = ClientFramer()
        frame = benchmark(lambda: client_frame_python(OP_TEXT, msg, framer.key()))
    _check(frame, msg)


@pytest.mark.benchmark(group=GROUPS["2.5KB"])
def bench_ws_frame_2k5_baseline_websockets(benchmark) -> None:
    """websockets: Protocol.send_text(msg.encode()) + data_to_send(), ~2.6 KB append."""
    _bench_baseline(benchmark, "2.5KB")


@pytest.mark.benchmark(group=GROUPS["2.5KB"])
@pytest.mark.parametrize("impl", ["native", "python"])
def bench_ws_frame_2k5_framer(benchmark, impl: str) -> None:
    """ClientFramer.frame_text (native) / client_frame_python, ~2.6 KB append."""
    _bench_framer(benchmark, "2.5KB", impl)


@pytest.mark.benchmark(group=GROUPS["350B"])
def bench_ws_frame_350_baseline_websockets(benchmark) -> None:
    """websockets: Protocol.send_text(msg.encode()) + data_to_send(), ~350 B append."""
    _bench_baseline(benchmark, "350B")


@pytest.mark.benchmark(group=GROUPS["350B"])
@pytest.mark.parametrize("impl", ["native", "python"])
def bench_ws_frame_350_framer(benchmark, impl: str) -> None:
    """ClientFramer.frame_text (native) / client_frame_python, ~350 B append."""
    _bench_framer(benchmark, "350B", impl)
