"""TwiML documents (protocols.md 1.2), parsed back with ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from agentic_fast.errors import LocalProtocolError
from agentic_fast.telephony.twiml import busy_twiml, connect_stream_twiml, say_hangup_twiml

URL = "wss://agent.example.com/twilio/media-stream"


def parse(doc: str) -> ET.Element:
    assert doc.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(doc)
    assert root.tag == "Response"
    return root


def test_connect_stream_structure() -> None:
    root = parse(connect_stream_twiml(
        URL, {"callerNumber": "+15551230000", "sessionToken": "7f3a9c"},
        status_callback="https://agent.example.com/stream-status", name="agent"))
    assert [child.tag for child in root] == ["Connect"]
    (stream,) = list(root.find("Connect"))
    assert stream.tag == "Stream"
    assert stream.attrib == {
        "url": URL, "name": "agent",
        "statusCallback": "https://agent.example.com/stream-status",
        "statusCallbackMethod": "POST",
    }
    params = [(p.tag, p.attrib) for p in stream]
    assert params == [
        ("Parameter", {"name": "callerNumber", "value": "+15551230000"}),
        ("Parameter", {"name": "sessionToken", "value": "7f3a9c"}),
    ]


def test_connect_stream_minimal_and_fallback() -> None:
    root = parse(connect_stream_twiml(URL, {}, fallback_say="Sorry, unavailable."))
    assert [child.tag for child in root] == ["Connect", "Say"]
    stream = root.find("Connect/Stream")
    assert stream is not None and stream.attrib == {"url": URL} and len(stream) == 0
    assert root.find("Say").text == "Sorry, unavailable."


def test_values_are_escaped() -> None:
    value = 'a&b<c>"d\'e'
    root = parse(connect_stream_twiml(URL, {"k": value}))
    assert root.find("Connect/Stream/Parameter").attrib["value"] == value


@pytest.mark.parametrize("url", [
    "https://agent.example.com/media",
    "ws://agent.example.com/media",
    "wss://agent.example.com/media?token=x",
    "wss://agent.example.com/media?",
    "wss://agent.example.com/media#frag",
    "wss:///media",
    "/media",
])
def test_stream_url_is_checked(url: str) -> None:
    with pytest.raises(LocalProtocolError):
        connect_stream_twiml(url, {})


def test_parameter_size_limit() -> None:
    connect_stream_twiml(URL, {"k": "v" * 498})  # 499 < 500
    with pytest.raises(LocalProtocolError, match="under 500"):
        connect_stream_twiml(URL, {"k": "v" * 499})
    with pytest.raises(LocalProtocolError):
        connect_stream_twiml(URL, {"": "v"})
    with pytest.raises(LocalProtocolError):
        connect_stream_twiml(URL, {"k": 5})  # type: ignore[dict-item]


def test_status_callback_must_be_http() -> None:
    with pytest.raises(LocalProtocolError):
        connect_stream_twiml(URL, {}, status_callback="wss://agent.example.com/s")


def test_say_hangup() -> None:
    root = parse(say_hangup_twiml("Goodbye & thanks"))
    assert [(c.tag, c.text) for c in root] == [("Say", "Goodbye & thanks"), ("Hangup", None)]
    with pytest.raises(LocalProtocolError):
        say_hangup_twiml("   ")


def test_busy() -> None:
    root = parse(busy_twiml())
    assert [(c.tag, c.attrib) for c in root] == [("Reject", {"reason": "busy"})]
    root = parse(busy_twiml("All lines are busy."))
    assert [c.tag for c in root] == ["Say", "Hangup"]
