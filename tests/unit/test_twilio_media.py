"""Media Streams messages: parsing (protocols.md 1.3.1), ordering, outbound builders (1.3.2)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from agentic_fast.carriers.twilio.media import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    Start,
    Stop,
    TwilioOutbound,
    TwilioStreamState,
    clear_message,
    mark_message,
    media_message,
    parse_twilio_message,
)
from agentic_fast.core.errors import LocalProtocolError, RemoteProtocolError, TwilioProtocolError

AC = "AC00000000000000000000000000000001"
MZ = "MZ00000000000000000000000000000001"
CA = "CA00000000000000000000000000000001"
PAYLOAD = base64.b64encode(b"\xff" * 160).decode()

# The examples of protocols.md 1.3.1, verbatim (payload completed to a real 160-byte frame).
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = """{
  "event": "start",
  "sequenceNumber": "1",
  "start": {
    "accountSid": "AC00000000000000000000000000000001",
    "streamSid": "MZ00000000000000000000000000000001",
    "callSid": "CA00000000000000000000000000000001",
    "tracks": ["inbound"],
    "customParameters": {"callerNumber": "+15551230000", "sessionToken": "7f3a9c"},
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
  },
  "streamSid": "MZ00000000000000000000000000000001"
}"""
MEDIA = (
    '{"event": "media", "sequenceNumber": "2", "media": {"track": "inbound", "chunk": "1",'
    f' "timestamp": "5", "payload": "{PAYLOAD}"}}, "streamSid": "{MZ}"}}'
)
DTMF = ('{"event":"dtmf","sequenceNumber":"57","streamSid":"MZ00000000000000000000000000000001",'
        '"dtmf":{"track":"inbound_track","digit":"5"}}')
MARK = ('{"event":"mark","sequenceNumber":"58","streamSid":"MZ00000000000000000000000000000001",'
        '"mark":{"name":"resp_1:chunk_12"}}')
STOP = """{
  "event": "stop",
  "sequenceNumber": "812",
  "streamSid": "MZ00000000000000000000000000000001",
  "stop": {"accountSid": "AC00000000000000000000000000000001",
           "callSid": "CA00000000000000000000000000000001"}
}"""


def media(seq: int, sid: str = MZ, chunk: int | None = None) -> str:
    chunk = seq - 1 if chunk is None else chunk
    return orjson.dumps({
        "event": "media", "sequenceNumber": str(seq), "streamSid": sid,
        "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                  "payload": PAYLOAD},
    }).decode()


def mutate(text: str, path: tuple[str, ...], value: Any = ..., delete: bool = False) -> str:
    doc = copy.deepcopy(orjson.loads(text))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return orjson.dumps(doc).decode()


def reason_of(text: str | bytes) -> str:
    with pytest.raises(TwilioProtocolError) as info:
        parse_twilio_message(text)
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.peer == "twilio"
    return info.value.reason


# --------------------------------------------------------------------------- parsing


def test_parse_connected() -> None:
    assert parse_twilio_message(CONNECTED) == Connected("Call", "1.0.0")


def test_parse_start() -> None:
    event = parse_twilio_message(START)
    assert isinstance(event, Start)
    assert event.sequence_number == 1
    assert (event.stream_sid, event.call_sid, event.account_sid) == (MZ, CA, AC)
    assert event.tracks == ("inbound",)
    assert dict(event.custom_parameters) == {"callerNumber": "+15551230000",
                                             "sessionToken": "7f3a9c"}
    assert event.media_format == MediaFormat("audio/x-mulaw", 8000, 1)


def test_start_custom_parameters_are_read_only_and_optional() -> None:
    event = parse_twilio_message(START)
    assert isinstance(event, Start)
    with pytest.raises(TypeError):
        event.custom_parameters["x"] = "y"  # type: ignore[index]
    bare = parse_twilio_message(mutate(START, ("start", "customParameters"), delete=True))
    assert isinstance(bare, Start) and dict(bare.custom_parameters) == {}


def test_parse_media_keeps_payload_as_text() -> None:
    event = parse_twilio_message(MEDIA)
    assert event == Media(sequence_number=2, stream_sid=MZ, chunk=1, timestamp_ms=5,
                          track="inbound", payload=PAYLOAD)
    assert isinstance(event, Media) and isinstance(event.payload, str)


def test_parse_accepts_utf8_bytes_of_a_text_frame() -> None:
    assert parse_twilio_message(MEDIA.encode()) == parse_twilio_message(MEDIA)


def test_parse_dtmf_mark_stop() -> None:
    assert parse_twilio_message(DTMF) == Dtmf(57, MZ, "5", "inbound_track")
    assert parse_twilio_message(MARK) == Mark(58, MZ, "resp_1:chunk_12")
    assert parse_twilio_message(STOP) == Stop(812, MZ, AC, CA)


@pytest.mark.parametrize("digit", list("0123456789*#"))
def test_every_pstn_digit(digit: str) -> None:
    event = parse_twilio_message(mutate(DTMF, ("dtmf", "digit"), digit))
    assert isinstance(event, Dtmf) and event.digit == digit


def test_events_are_frozen() -> None:
    event = parse_twilio_message(MARK)
    with pytest.raises(AttributeError):
        event.name = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(("text", "reason"), [
    ("{not json", "malformed_json"),
    ("", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    ("[1, 2]", "not_object"),
    ('"media"', "not_object"),
    ('{"sequenceNumber": "1"}', "missing_field"),
    ('{"event": 5}', "bad_type"),
    ('{"event": "hello"}', "unknown_event"),
    ('{"event": "clear", "streamSid": "MZ00000000000000000000000000000001"}', "unknown_event"),
])
def test_envelope_errors(text: str | bytes, reason: str) -> None:
    assert reason_of(text) == reason


@pytest.mark.parametrize(("base", "path"), [
    (CONNECTED, ("protocol",)),
    (START, ("sequenceNumber",)),
    (START, ("streamSid",)),
    (START, ("start",)),
    (START, ("start", "callSid")),
    (START, ("start", "accountSid")),
    (START, ("start", "tracks")),
    (START, ("start", "mediaFormat")),
    (START, ("start", "mediaFormat", "sampleRate")),
    (MEDIA, ("sequenceNumber",)),
    (MEDIA, ("streamSid",)),
    (MEDIA, ("media",)),
    (MEDIA, ("media", "payload")),
    (MEDIA, ("media", "chunk")),
    (MEDIA, ("media", "timestamp")),
    (MEDIA, ("media", "track")),
    (DTMF, ("dtmf", "digit")),
    (MARK, ("mark", "name")),
    (STOP, ("stop", "callSid")),
])
def test_missing_field(base: str, path: tuple[str, ...]) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_twilio_message(mutate(base, path, delete=True))
    assert info.value.reason == "missing_field"
    assert path[-1] in str(info.value)


@pytest.mark.parametrize(("base", "path", "value"), [
    (MEDIA, ("sequenceNumber",), 2),            # numbers are JSON strings on this protocol
    (MEDIA, ("media", "chunk"), 1),
    (MEDIA, ("media", "timestamp"), "5.0"),
    (MEDIA, ("media", "timestamp"), "-5"),
    (MEDIA, ("media", "timestamp"), " 5"),
    (MEDIA, ("media", "timestamp"), "٥"),       # a non-ASCII digit
    (MEDIA, ("media", "payload"), None),
    (MEDIA, ("media", "payload"), 12),
    (MEDIA, ("media",), [PAYLOAD]),
    (MEDIA, ("media", "track"), 1),
    (MEDIA, ("streamSid",), None),
    (START, ("start", "mediaFormat", "sampleRate"), "8000"),  # ...except these two
    (START, ("start", "mediaFormat", "channels"), True),
    (START, ("start", "tracks"), "inbound"),
    (START, ("start", "tracks"), []),
    (START, ("start", "customParameters"), {"n": 1}),
    (START, ("start", "customParameters"), ["x"]),
    (START, ("start",), "x"),
    (DTMF, ("dtmf",), "5"),
    (DTMF, ("dtmf", "digit"), 5),
    (MARK, ("mark", "name"), None),
    (STOP, ("stop",), None),
])
def test_bad_type(base: str, path: tuple[str, ...], value: Any) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_twilio_message(mutate(base, path, value))
    assert info.value.reason == "bad_type"
    assert info.value.field is not None


@pytest.mark.parametrize(("base", "path", "value"), [
    (DTMF, ("dtmf", "digit"), "55"),
    (DTMF, ("dtmf", "digit"), "x"),
    (DTMF, ("dtmf", "digit"), ""),
    (START, ("start", "callSid"), "CA123"),
    (START, ("start", "callSid"), "MZ00000000000000000000000000000001"),
    (START, ("start", "accountSid"), "AC0000000000000000000000000000000g"),
    (START, ("start", "streamSid"), "MZ00000000000000000000000000000002"),  # != top level
    (STOP, ("stop", "callSid"), "nope"),
])
def test_bad_value(base: str, path: tuple[str, ...], value: Any) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_twilio_message(mutate(base, path, value))
    assert info.value.reason == "bad_value"


# --------------------------------------------------------------------------- state


def started_state() -> TwilioStreamState:
    state = TwilioStreamState()
    state.receive(CONNECTED)
    state.receive(START)
    return state


def state_reason(state: TwilioStreamState, text: str) -> str:
    with pytest.raises(TwilioProtocolError) as info:
        state.receive(text)
    return info.value.reason


def test_state_happy_path() -> None:
    state = TwilioStreamState()
    assert isinstance(state.receive(CONNECTED), Connected)
    assert not state.started and state.stream_sid is None
    start = state.receive(START)
    assert state.started and state.stream_sid == MZ and state.start == start
    for seq in range(2, 10):
        assert isinstance(state.receive(media(seq)), Media)
    state.receive(mutate(DTMF, ("sequenceNumber",), "10"))
    state.receive(mutate(MARK, ("sequenceNumber",), "11"))
    assert isinstance(state.receive(mutate(STOP, ("sequenceNumber",), "12")), Stop)
    assert state.stopped
    assert (state.media_count, state.seq_gaps, state.seq_regressions) == (8, 0, 0)
    assert state.last_sequence == 12


def test_media_before_start_is_out_of_order() -> None:
    state = TwilioStreamState()
    assert state_reason(state, media(2)) == "out_of_order"
    state.receive(CONNECTED)
    assert state_reason(state, media(2)) == "out_of_order"
    assert state_reason(state, MARK) == "out_of_order"


def test_start_needs_connected_and_comes_once() -> None:
    assert state_reason(TwilioStreamState(), START) == "out_of_order"
    state = started_state()
    assert state_reason(state, START) == "out_of_order"
    assert state_reason(state, CONNECTED) == "out_of_order"


def test_nothing_after_stop() -> None:
    state = started_state()
    state.receive(mutate(STOP, ("sequenceNumber",), "2"))
    assert state_reason(state, media(3)) == "out_of_order"


def test_wrong_stream_sid() -> None:
    state = started_state()
    other = "MZ00000000000000000000000000000002"
    assert state_reason(state, media(2, sid=other)) == "wrong_stream_sid"
    assert state_reason(state, mutate(MARK, ("streamSid",), other)) == "wrong_stream_sid"


def test_unsupported_media_format() -> None:
    state = TwilioStreamState()
    state.receive(CONNECTED)
    alaw = mutate(START, ("start", "mediaFormat", "encoding"), "audio/x-alaw")
    assert state_reason(state, alaw) == "unsupported_media_format"


def test_sequence_gaps_and_regressions_are_counted_not_fatal() -> None:
    state = started_state()
    state.receive(media(2))
    state.receive(media(5))  # 3 and 4 lost
    state.receive(media(5))  # repeated
    state.receive(media(4))  # late
    state.receive(media(6))
    assert state.seq_gaps == 2
    assert state.seq_regressions == 2
    assert state.last_sequence == 6
    assert state.media_count == 5


def test_binary_frame() -> None:
    with pytest.raises(TwilioProtocolError) as info:
        started_state().receive_binary(b"\x00\x01")
    assert info.value.reason == "binary_frame"


# --------------------------------------------------------------------------- builders


def test_builders_match_protocols_shapes() -> None:
    assert orjson.loads(media_message(MZ, "fn5+fn5+")) == {
        "event": "media", "streamSid": MZ, "media": {"payload": "fn5+fn5+"}}
    assert orjson.loads(mark_message(MZ, "resp_1:chunk_12")) == {
        "event": "mark", "streamSid": MZ, "mark": {"name": "resp_1:chunk_12"}}
    assert orjson.loads(clear_message(MZ)) == {"event": "clear", "streamSid": MZ}


def test_outbound_helper_equals_one_off_builders() -> None:
    out = TwilioOutbound(MZ)
    assert out.stream_sid == MZ
    assert out.media(PAYLOAD) == media_message(MZ, PAYLOAD)
    assert out.mark("m1") == mark_message(MZ, "m1")
    assert out.clear() == clear_message(MZ)


def test_hostile_names_are_escaped_into_valid_json() -> None:
    sid = 'MZ"},"event":"x\\\n\u2028'
    name = 'a"b\\c\n\td\u0000é'
    out = TwilioOutbound(sid)
    assert orjson.loads(out.mark(name)) == {"event": "mark", "streamSid": sid,
                                            "mark": {"name": name}}
    assert orjson.loads(out.media(PAYLOAD))["streamSid"] == sid
    assert orjson.loads(out.clear())["streamSid"] == sid


def test_media_round_trips_through_the_parser_shape() -> None:
    frame = TwilioOutbound(MZ).media(PAYLOAD)
    assert base64.b64decode(orjson.loads(frame)["media"]["payload"]) == b"\xff" * 160


@pytest.mark.parametrize("sid", ["", None, 5])
def test_bad_stream_sid_is_a_local_error(sid: Any) -> None:
    with pytest.raises(LocalProtocolError):
        TwilioOutbound(sid)


@pytest.mark.parametrize("name", ["", None, "x" * 257])
def test_bad_mark_name_is_a_local_error(name: Any) -> None:
    with pytest.raises(LocalProtocolError):
        mark_message(MZ, name)


@pytest.mark.parametrize("payload", ['ab"cd', "ab\\cd", "not base64!", b"AAAA"])
def test_one_off_media_builder_checks_the_payload(payload: Any) -> None:
    with pytest.raises(LocalProtocolError):
        media_message(MZ, payload)


# -- numbers bounded (issue 12: a 5,000-digit number escaped as a ValueError) ---------------


def _streaming() -> TwilioStreamState:
    state = TwilioStreamState()
    state.receive(CONNECTED)
    state.receive(START)
    return state


@pytest.mark.parametrize("where", ["sequenceNumber", "media.chunk", "media.timestamp"])
@pytest.mark.parametrize("digits", [19, 5000])
def test_media_number_with_too_many_digits_is_a_protocol_error(where: str,
                                                               digits: int) -> None:
    msg = orjson.loads(MEDIA)
    outer, _, inner = where.rpartition(".")
    (msg[outer] if outer else msg)[inner] = "9" * digits
    with pytest.raises(TwilioProtocolError) as err:
        _streaming().receive(orjson.dumps(msg))
    assert err.value.reason == "bad_value" and err.value.field == where


def test_media_numbers_of_a_long_call_stay_on_the_fast_path() -> None:
    msg = orjson.loads(MEDIA)
    msg["media"]["timestamp"] = "9" * 18
    event = _streaming().receive(orjson.dumps(msg))
    assert isinstance(event, Media) and event.timestamp_ms == int("9" * 18)


@pytest.mark.parametrize("text", [START, DTMF, MARK])
def test_huge_sequence_number_of_other_events_is_a_protocol_error(text: str) -> None:
    msg = orjson.loads(text)
    msg["sequenceNumber"] = "1" * 5000
    with pytest.raises(TwilioProtocolError) as err:
        parse_twilio_message(orjson.dumps(msg))
    assert err.value.reason == "bad_value" and err.value.field == "sequenceNumber"
