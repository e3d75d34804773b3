"""Worker identity and stream URL prefixes (server/workers.py), the server.workers keys,
and the hand-over's refusal paths (ws/handover.py) with real sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.core.errors import ConfigError
from agentic_fast.server.workers import WorkerIdentity, parse_owner, prefixed_url
from agentic_fast.ws.handover import Handover, HandoverReceiver


def _identity(tmp_path: Path, worker: int = 0, count: int = 2) -> WorkerIdentity:
    return WorkerIdentity("host-a", worker, count, tmp_path)


def test_the_stream_url_names_the_worker(tmp_path: Path) -> None:
    me = _identity(tmp_path, 1)
    assert me.owner == "host-a-1" and me.prefix == "/w/host-a-1"
    assert prefixed_url("wss://agent.example/twilio/media-stream", me.prefix) == \
        "wss://agent.example/w/host-a-1/twilio/media-stream"
    assert parse_owner(b"/w/host-a-1/twilio/media-stream") == ("host-a-1",
                                                               b"/twilio/media-stream")
    assert parse_owner(b"/twilio/media-stream") is None
    assert parse_owner(b"/w/no_worker/x") is None


def test_siblings_are_other_workers_of_this_instance(tmp_path: Path) -> None:
    me = _identity(tmp_path, 0, 3)
    assert me.sibling("host-a-2") == 2
    assert me.sibling("host-a-0") is None  # itself
    assert me.sibling("host-a-3") is None  # no such worker
    assert me.sibling("host-b-1") is None  # another machine
    assert me.siblings() == [1, 2]


def test_server_worker_keys_are_validated() -> None:
    config = Config.from_text("server:\n  workers: 3\n  instance_id: edge-1\n")
    assert config.server.worker_count == 3 and config.server.instance_id == "edge-1"
    assert Config.from_text("server:\n  workers: 0\n").server.worker_count >= 1
    assert Config.from_text("").server.instance_id  # derived from the host name
    with pytest.raises(ConfigError, match=r"server\.instance_id"):
        Config.from_text("server:\n  instance_id: a/b\n")
    with pytest.raises(ConfigError, match=r"server\.workers"):
        Config.from_text("server:\n  workers: -1\n")


async def _connected_transport() -> tuple[asyncio.Transport, socket.socket]:
    """A real TCP connection on loopback: our transport and the peer's socket."""
    loop = asyncio.get_running_loop()
    server = socket.create_server(("127.0.0.1", 0))
    transport, _ = await loop.create_connection(asyncio.Protocol, *server.getsockname())
    peer, _ = server.accept()
    server.close()
    return transport, peer


async def test_a_stream_for_a_gone_worker_or_another_machine_stays_here(
        tmp_path: Path) -> None:
    handover = Handover(_identity(tmp_path, 0))
    transport, peer = await _connected_transport()
    orphan, foreign = (metrics.snapshot().get(k, 0)
                       for k in ("stream.handover.orphan", "stream.handover.foreign"))
    try:
        assert not handover.take("host-a-1", transport, b"GET / HTTP/1.1\r\n\r\n")  # gone
        assert not handover.take("host-b-0", transport, b"GET / HTTP/1.1\r\n\r\n")
        assert not transport.is_closing()
        assert metrics.snapshot()["stream.handover.orphan"] == orphan + 1
        assert metrics.snapshot()["stream.handover.foreign"] == foreign + 1
    finally:
        transport.close()
        peer.close()
        handover.close()


async def test_a_handed_over_connection_arrives_with_its_bytes(tmp_path: Path) -> None:
    got: asyncio.Future[tuple[socket.socket, bytes]] = \
        asyncio.get_running_loop().create_future()
    receiver = HandoverReceiver(_identity(tmp_path, 1).fd_path(1),
                                lambda sock, data: got.set_result((sock, data)))
    receiver.start()
    handover = Handover(_identity(tmp_path, 0))
    transport, peer = await _connected_transport()
    try:
        assert handover.take("host-a-1", transport, b"GET /w/host-a-1/x HTTP/1.1\r\n\r\n")
        sock, data = await asyncio.wait_for(got, 5)
        assert data.startswith(b"GET /w/host-a-1/x")
        with sock:
            sock.setblocking(True)
            sock.sendall(b"from the owner")  # the same connection, now the owner's
            assert peer.recv(100) == b"from the owner"
    finally:
        peer.close()
        receiver.close()
        handover.close()
