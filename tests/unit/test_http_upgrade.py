"""http_upgrade: the HTTP/1.1 side of the WebSocket upgrade (RFC 6455 4.2.1 / 4.2.2)."""

from __future__ import annotations

import base64
import http.client
import io

import pytest
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.protocol import State
from websockets.uri import parse_uri

from agentic_fast.core.errors import BadRequestHead
from agentic_fast.ws.upgrade import (
    UpgradeRequest,
    accept_key,
    handshake_problem,
    http_error,
    is_websocket_upgrade,
    parse_head,
    switching_protocols,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3


def _head(*lines: str, request_line: str = "GET /twilio/media-stream HTTP/1.1") -> bytes:
    return "\r\n".join([request_line, *lines]).encode("latin-1")


GOOD = ("Host: agent.example.test", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13")


def _good(**replace: str | None) -> UpgradeRequest:
    """The valid handshake, with headers replaced (value) or dropped (None) by lower name."""
    lines = []
    for line in GOOD:
        name = line.split(":", 1)[0].lower().replace("-", "_")
        if name in replace:
            value = replace.pop(name)
            if value is not None:
                lines.append(f"{line.split(':', 1)[0]}: {value}")
        else:
            lines.append(line)
    assert not replace, f"unknown header(s) {replace}"
    return parse_head(_head(*lines))


# -- parse_head ------------------------------------------------------------------------------

def test_parse_head_request_line_path_and_query() -> None:
    req = parse_head(_head("Host: x", request_line="GET /a/b?x=1&y=2?z HTTP/1.1"))
    assert (req.method, req.path, req.query, req.version) == ("GET", "/a/b", "x=1&y=2?z",
                                                               "HTTP/1.1")
    assert parse_head(_head("Host: x", request_line="GET /p HTTP/1.1")).query == ""
    assert parse_head(_head(request_line="GET /p? HTTP/1.0")).query == ""


def test_parse_head_header_names_are_case_insensitive_and_values_stripped() -> None:
    req = parse_head(_head("HOST:   example.test  ", "sec-WebSocket-KEY:abc", "X-Empty:"))
    assert req.headers == {"host": "example.test", "sec-websocket-key": "abc", "x-empty": ""}


def test_parse_head_repeated_headers_are_joined_in_order() -> None:
    req = parse_head(_head("Connection: keep-alive", "X-A: 1", "connection: Upgrade",
                           "CONNECTION: close"))
    assert req.headers["connection"] == "keep-alive, Upgrade, close"
    assert req.tokens("connection") == {"keep-alive", "upgrade", "close"}
    assert req.headers["x-a"] == "1"


def test_tokens_split_commas_lower_case_and_skip_empty() -> None:
    req = parse_head(_head("Connection: Keep-Alive ,, UPGRADE ,"))
    assert req.tokens("connection") == {"keep-alive", "upgrade"}
    assert req.tokens("missing") == set()


def test_parse_head_ignores_a_trailing_empty_line() -> None:
    req = parse_head(_head("Host: x", ""))
    assert req.headers == {"host": "x"}


def test_parse_head_values_keep_colons() -> None:
    req = parse_head(_head("Host: 127.0.0.1:8080"))
    assert req.headers["host"] == "127.0.0.1:8080"


@pytest.mark.parametrize("request_line", [
    "GET /", "GET", "", "GET / HTTP/1.1 extra", "GET  / HTTP/1.1", "GET / FTP/1.1",
    "GET / http/1.1",
])
def test_parse_head_bad_request_line(request_line: str) -> None:
    with pytest.raises(BadRequestHead):
        parse_head(_head("Host: x", request_line=request_line))


@pytest.mark.parametrize("line", [
    "NoColonHere", ": empty-name", "Host : space-before-colon", " Host: leading-space",
    "\tFolded: tab",
])
def test_parse_head_bad_header_line(line: str) -> None:
    with pytest.raises(BadRequestHead):
        parse_head(_head("Host: x", line))


def test_bad_request_head_is_a_value_error() -> None:
    assert issubclass(BadRequestHead, ValueError)


# -- is_websocket_upgrade ------------------------------------------------------------------

@pytest.mark.parametrize(("upgrade", "expected"), [
    ("websocket", True), ("WebSocket", True), ("h2c, websocket", True), ("h2c", False),
    (None, False), ("websockets", False),
])
def test_is_websocket_upgrade(upgrade: str | None, expected: bool) -> None:
    assert is_websocket_upgrade(_good(upgrade=upgrade)) is expected


# -- handshake_problem ---------------------------------------------------------------------

def test_valid_handshake_has_no_problem() -> None:
    assert handshake_problem(_good()) is None
    # Connection may carry other tokens; the version may be padded
    assert handshake_problem(_good(connection="keep-alive, Upgrade")) is None
    assert handshake_problem(_good(sec_websocket_version=" 13 ")) is None
    assert handshake_problem(_good(sec_websocket_key=f"  {KEY} ")) is None


@pytest.mark.parametrize("request_line", ["POST /twilio/media-stream HTTP/1.1",
                                          "GET /twilio/media-stream HTTP/1.0",
                                          "get /twilio/media-stream HTTP/1.1",
                                          "GET /twilio/media-stream HTTP/2.0"])
def test_handshake_needs_get_over_http11(request_line: str) -> None:
    req = parse_head(_head(*GOOD, request_line=request_line))
    status, text, headers = handshake_problem(req)
    assert status == 400 and "GET" in text and headers == {}


def test_handshake_needs_host() -> None:
    status, text, headers = handshake_problem(_good(host=None))
    assert (status, headers) == (400, {}) and "Host" in text


@pytest.mark.parametrize("connection", [None, "keep-alive", "close", "upgrade-insecure"])
def test_handshake_needs_connection_upgrade(connection: str | None) -> None:
    status, text, headers = handshake_problem(_good(connection=connection))
    assert (status, headers) == (400, {}) and "Connection" in text


@pytest.mark.parametrize("version", [None, "", "8", "12", "14", "13, 8", "thirteen"])
def test_handshake_other_version_is_426_naming_13(version: str | None) -> None:
    status, _, headers = handshake_problem(_good(sec_websocket_version=version))
    assert status == 426
    assert headers == {"Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize("key", [
    None, "", "not base64!!", base64.b64encode(b"x" * 15).decode(),
    base64.b64encode(b"x" * 17).decode(), base64.b64encode(b"x" * 16).decode()[:-2],
    "dGhlIHNhbXBsZSBub25jZQ",  # the RFC key without its padding
])
def test_handshake_bad_key_is_400(key: str | None) -> None:
    status, text, headers = handshake_problem(_good(sec_websocket_key=key))
    assert (status, headers) == (400, {}) and "Sec-WebSocket-Key" in text


def test_handshake_checks_run_in_order_method_first() -> None:
    # everything wrong at once: the method is reported
    req = parse_head(_head("Upgrade: websocket", request_line="PUT / HTTP/1.1"))
    assert handshake_problem(req)[0] == 400 and "GET" in handshake_problem(req)[1]


# -- accept_key / switching_protocols -----------------------------------------------------

def test_accept_key_matches_the_rfc_example() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key(f" {KEY} ") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_switching_protocols_is_accepted_by_a_websockets_client() -> None:
    client = ClientProtocol(parse_uri("ws://agent.example.test/twilio/media-stream"))
    wire: Request = client.connect()
    client.send_request(wire)
    head = client.data_to_send()[0].split(b"\r\n\r\n")[0]
    req = parse_head(head)
    assert is_websocket_upgrade(req) and handshake_problem(req) is None

    client.receive_data(switching_protocols(req))
    assert client.handshake_exc is None
    assert client.state is State.OPEN
    [response] = client.events_received()
    assert response.status_code == 101
    # no extension and no subprotocol were agreed
    assert "Sec-WebSocket-Extensions" not in response.headers
    assert "Sec-WebSocket-Protocol" not in response.headers
    assert client.extensions == [] and client.subprotocol is None


def test_switching_protocols_bytes() -> None:
    data = switching_protocols(_good())
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1
    headers = Headers()
    for line in data.split(b"\r\n")[1:-2]:
        name, _, value = line.decode().partition(": ")
        headers[name] = value
    assert headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["Upgrade"].lower() == "websocket"
    assert headers["Connection"].lower() == "upgrade"


# -- http_error ------------------------------------------------------------------------------

class _Unclosable(io.BytesIO):
    def close(self) -> None:  # HTTPResponse closes its file after the body: keep the rest
        pass


class _Sock:
    def __init__(self, data: bytes) -> None:
        self.file = _Unclosable(data)

    def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
        return self.file


def _parse_response(data: bytes) -> tuple[http.client.HTTPResponse, bytes, bytes]:
    sock = _Sock(data)
    resp = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    resp.begin()
    body = resp.read()
    return resp, body, sock.file.read()


@pytest.mark.parametrize(("status", "text", "headers"), [
    (400, "missing Host header", None),
    (426, "unsupported WebSocket version", {"Sec-WebSocket-Version": "13"}),
    (431, "request head too large", {}),
    (503, "too many media stream connections", None),
    (400, "caf\u00e9 \u2603", None),  # the length is in bytes, not characters
])
def test_http_error_is_a_complete_parseable_response(
        status: int, text: str, headers: dict[str, str] | None) -> None:
    data = http_error(status, text, headers)
    resp, body, rest = _parse_response(data)
    assert resp.status == status and resp.version == 11
    assert resp.reason == http.HTTPStatus(status).phrase
    assert body == (text + "\n").encode()
    assert int(resp.getheader("Content-Length")) == len(body)
    assert rest == b""  # nothing after the body: Content-Length is exact
    assert resp.getheader("Connection") == "close"
    assert resp.getheader("Content-Type", "").startswith("text/plain")
    for name, value in (headers or {}).items():
        assert resp.getheader(name) == value


def test_http_error_rejects_an_unknown_status() -> None:
    with pytest.raises(ValueError):
        http_error(599, "nope")
