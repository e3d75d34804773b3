"""TwiML documents (protocols.md 1.2), parsed back with ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from agentic_fast.carriers.twilio.twiml import (
    busy_twiml,
    connect_stream_twiml,
    reject_twiml,
    say_hangup_twiml,
)
from agentic_fast.core.errors import LocalProtocolError
from tests.fakes.twilio_twiml import TwimlRejected, read_connect_stream, read_reject

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


# -- what fake Twilio accepts (tests/fakes/twilio_twiml.py, from Twilio's <Stream> docs) -------


def test_fake_twilio_reads_our_stream_twiml_with_its_status_callback() -> None:
    stream = read_connect_stream(connect_stream_twiml(
        URL, {"callId": "c1"}, "https://agent.example.com/twilio/stream-status",
        name="agent", fallback_say="Sorry."))
    assert stream.url == URL and stream.name == "agent"
    assert stream.status_callback == "https://agent.example.com/twilio/stream-status"
    assert stream.status_callback_method == "POST" and stream.parameters == {"callId": "c1"}


def _helper_twiml(**attrs: str) -> str:
    """A <Connect><Stream> rendered by Twilio's own helper, which knows more attributes
    than the <Stream> page documents."""
    connect = Connect()
    connect.append(Stream(url=URL, **attrs))
    response = VoiceResponse()
    response.append(connect)
    return response.to_xml()


@pytest.mark.parametrize("attrs", [
    {"status_callback": "https://a.example.com/s", "status_callback_method": "GET"},
    {"status_callback": "/relative/stream-status"},
    {"track": "inbound_track", "name": "n"},
])
def test_fake_twilio_accepts_the_documented_stream_attributes(attrs: dict[str, str]) -> None:
    read_connect_stream(_helper_twiml(**attrs))


@pytest.mark.parametrize(("attrs", "code"), [
    ({"status_callback": "https://a.example.com/s", "status_callback_method": "PUT"}, 12200),
    ({"status_callback": "ftp://a.example.com/s"}, 12200),
    ({"audio_format": "audio/x-mulaw"}, 12200),  # in the helper, not in the <Stream> docs
    ({"status_callback_event": "stream-error"}, 12200),  # a <Start>/<Dial> idea, not <Stream>
    ({"track": "all"}, 12200),
])
def test_fake_twilio_refuses_other_stream_attributes(attrs: dict[str, str], code: int) -> None:
    with pytest.raises(TwimlRejected) as info:
        read_connect_stream(_helper_twiml(**attrs))
    assert info.value.code == code


@pytest.mark.parametrize(("url", "code"), [
    ("wss://a.example.com/m?x=1", 31920), ("https://a.example.com/m", 31922)])
def test_fake_twilio_refuses_bad_stream_urls(url: str, code: int) -> None:
    doc = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
           f'<Stream url="{url}"/></Connect></Response>')
    with pytest.raises(TwimlRejected) as info:
        read_connect_stream(doc)
    assert info.value.code == code


@pytest.mark.parametrize("reason", ["rejected", "busy"])
def test_reject_is_read_by_twilio_with_its_reason(reason: str) -> None:
    assert read_reject(reject_twiml(reason)) == reason
    assert read_reject(busy_twiml()) == "busy"


def test_reject_refuses_a_reason_twilio_does_not_define() -> None:
    with pytest.raises(LocalProtocolError):
        reject_twiml("blocked")
    with pytest.raises(TwimlRejected) as info:  # what Twilio does with one
        read_reject('<Response><Reject reason="blocked"/></Response>')
    assert info.value.code == 12200
