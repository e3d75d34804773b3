"""The HTTP/1.1 side of a WebSocket upgrade (RFC 6455 4.2): parse, check, answer."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from http import HTTPStatus

from agentic_fast.core.errors import BadRequestHead

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A parsed request head (header names lower-case, repeated headers joined by ", ")."""

    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    def tokens(self, name: str) -> set[str]:
        """Comma-separated values of a header, lower-cased (``Connection: keep-alive, Upgrade``)."""
        return {t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()}


def parse_head(head: bytes) -> UpgradeRequest:
    """The request line and headers of ``head`` (up to, not including, the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise BadRequestHead("undecodable head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequestHead("bad request line")
    method, target, version = parts
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequestHead("bad header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return UpgradeRequest(method, path, query, version, headers)


def is_websocket_upgrade(req: UpgradeRequest) -> bool:
    """The client asks for a WebSocket (``Upgrade: websocket``)."""
    return "websocket" in req.tokens("upgrade")


def handshake_problem(req: UpgradeRequest) -> tuple[int, str, dict[str, str]] | None:
    """Why this upgrade cannot be accepted: ``(status, text, headers)``; None when valid."""
    if req.method != "GET" or req.version != "HTTP/1.1":
        return 400, "WebSocket upgrade needs GET over HTTP/1.1", {}
    if "host" not in req.headers:
        return 400, "missing Host header", {}
    if "upgrade" not in req.tokens("connection"):
        return 400, "Connection header lacks Upgrade", {}
    if req.headers.get("sec-websocket-version", "").strip() != "13":
        return 426, "unsupported WebSocket version", {"Sec-WebSocket-Version": "13"}
    key = req.headers.get("sec-websocket-key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except (binascii.Error, ValueError):
        return 400, "invalid Sec-WebSocket-Key", {}
    return None


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip().encode() + _GUID).digest()).decode()


def switching_protocols(req: UpgradeRequest) -> bytes:
    """The 101 answer (no subprotocol, no extension: permessage-deflate is not offered)."""
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(req.headers['sec-websocket-key'])}\r\n\r\n"
            ).encode()


def http_error(status: int, text: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete plain-text response that closes the connection."""
    body = (text + "\n").encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
            ).encode() + body
