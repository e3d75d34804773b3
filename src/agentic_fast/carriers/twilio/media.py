"""Twilio Media Streams messages, sans-I/O (protocols.md 1.3).

Text in, typed events out; typed calls in, text out. No sockets here: the server's WebSocket
route feeds frames to :class:`TwilioStreamState` and writes what :class:`TwilioOutbound`
builds (the shape of python-websockets' ``protocol.py``, the events of h11's ``_events.py``).

Inbound, Twilio -> server::

    connected -> start -> (media | dtmf | mark)* -> stop

Every message is one JSON text frame with a string ``event``; numeric-looking fields
(``sequenceNumber``, ``chunk``, ``timestamp``) are JSON *strings*, ``mediaFormat`` numbers are
JSON numbers. :func:`parse_twilio_message` validates each message on its own;
:class:`TwilioStreamState` adds the rules that span messages (order, ``streamSid``,
``sequenceNumber``). Violations raise :class:`TwilioProtocolError` whose short ``reason`` is
meant for counters (``twilio.media.rejected.<reason>``).

The media path is the hot one (50 messages/s per call): one ``orjson.loads`` and a few dict
lookups, and the base64 ``payload`` is handed on undecoded (the audio layer decodes it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn

import orjson

from agentic_fast.carriers.base import (
    PCMU_8K,
    DtmfDigit,
    LegFormat,
    MediaChunk,
    PlayoutMark,
    StreamConnected,
    StreamStart,
    StreamStop,
)
from agentic_fast.carriers.stream_state import (
    DTMF_DIGITS,
    JsonOutbound,
    MediaFormat,
    StreamState,
    alias_slot,
    check_base64,
    media_parser,
    message_parser,
)
from agentic_fast.core.errors import LocalProtocolError, TwilioProtocolError
from agentic_fast.core.jsonfields import JsonFields

__all__ = [
    "DTMF_DIGITS",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaFormat",
    "Start",
    "Stop",
    "TwilioEvent",
    "TwilioOutbound",
    "TwilioStreamState",
    "clear_message",
    "mark_message",
    "media_message",
    "parse_twilio_message",
]

PEER = "twilio"

#: The only media format the bridge handles (``start.mediaFormat``).
MULAW_8K = ("audio/x-mulaw", 8000, 1)

_SID_RE = {prefix: re.compile(prefix + r"[0-9a-fA-F]{32}") for prefix in ("AC", "CA", "MZ")}


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Connected(StreamConnected):
    """First frame after the upgrade; carries no ``streamSid``."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start(StreamStart):
    """Stream metadata; ``custom_parameters`` are the TwiML ``<Parameter>`` values."""

    sequence_number: int
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str] = field(hash=False)
    media_format: MediaFormat

    @property
    def carrier_call_id(self) -> str:
        return self.call_sid

    @property
    def stream_id(self) -> str:
        return self.stream_sid

    @property
    def params(self) -> Mapping[str, str]:
        return self.custom_parameters

    @property
    def leg(self) -> LegFormat:
        """Always mu-law 8 kHz: :class:`TwilioStreamState` refuses any other format."""
        return PCMU_8K


@dataclass(frozen=True, slots=True)
class Media(MediaChunk):
    """One audio chunk; ``payload`` is the base64 text exactly as received (not decoded)."""

    sequence_number: int
    stream_sid: str
    chunk: int
    timestamp_ms: int
    track: str
    payload: str


@dataclass(frozen=True, slots=True)
class Dtmf(DtmfDigit):
    """The caller pressed a key."""

    sequence_number: int
    stream_sid: str
    digit: str
    track: str


@dataclass(frozen=True, slots=True)
class Mark(PlayoutMark):
    """A mark we sent was reached in playback, or flushed by ``clear``."""

    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop(StreamStop):
    """The stream ended (hang-up, redirect, stream stopped)."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop

# Twilio's events carry ``streamSid``: the shared machine reads it as ``stream_id``.
for _cls in (Media, Dtmf, Mark, Stop):
    alias_slot(_cls, "stream_id", "stream_sid")


# --------------------------------------------------------------------------- field access


_FIELDS = JsonFields(TwilioProtocolError)
_fail = _FIELDS.fail
_obj = _FIELDS.get_obj
_str = _FIELDS.get_str
_int = _FIELDS.get_int


#: A non-negative integer sent as a JSON string of ASCII digits (``"160"``).
_num_str = _FIELDS.get_digits


def _sid(msg: dict[str, Any], key: str, prefix: str, where: str = "") -> str:
    value = _str(msg, key, where)
    if _SID_RE[prefix].fullmatch(value) is None:
        _fail("bad_value", f"{where}{key!r} is not a {prefix} SID: {value!r:.40}", where + key)
    return value


# --------------------------------------------------------------------------- parsers


def _connected(msg: dict[str, Any]) -> Connected:
    return Connected(_str(msg, "protocol"), _str(msg, "version"))


def _start(msg: dict[str, Any]) -> Start:
    seq = _num_str(msg, "sequenceNumber")
    stream_sid = _sid(msg, "streamSid", "MZ")
    body = _obj(msg, "start")
    if _sid(body, "streamSid", "MZ", "start.") != stream_sid:
        _fail("bad_value", "start.streamSid differs from the top-level streamSid",
              "start.streamSid")
    call_sid = _sid(body, "callSid", "CA", "start.")
    account_sid = _sid(body, "accountSid", "AC", "start.")
    tracks = body["tracks"]
    if type(tracks) is not list or not tracks or any(type(t) is not str for t in tracks):
        _fail("bad_type", f"start.tracks must be a non-empty list of strings, got {tracks!r:.60}",
              "start.tracks")
    params = body.get("customParameters", {})
    if type(params) is not dict or any(type(v) is not str for v in params.values()):
        _fail("bad_type", "start.customParameters must be an object of strings",
              "start.customParameters")
    fmt = _obj(body, "mediaFormat", "start.")
    w = "start.mediaFormat."
    media_format = MediaFormat(_str(fmt, "encoding", w), _int(fmt, "sampleRate", w),
                               _int(fmt, "channels", w))
    return Start(seq, stream_sid, call_sid, account_sid, tuple(tracks),
                 MappingProxyType(params), media_format)


def _media_checked(msg: dict[str, Any]) -> Media:
    """Slow path of :data:`_media`: the same checks, one by one, for a precise error."""
    body = _obj(msg, "media")
    payload = _str(body, "payload", "media.")
    track = _str(body, "track", "media.")
    return Media(_num_str(msg, "sequenceNumber"), _str(msg, "streamSid"),
                 _num_str(body, "chunk", "media."), _num_str(body, "timestamp", "media."),
                 track, payload)


#: Hot path: the shared fast parser, falling back to :func:`_media_checked`.
_media = media_parser(Media, "sequenceNumber", "streamSid", _media_checked)


def _dtmf(msg: dict[str, Any]) -> Dtmf:
    body = _obj(msg, "dtmf")
    digit = _str(body, "digit", "dtmf.")
    if digit not in DTMF_DIGITS:
        _fail("bad_value", f"dtmf.digit must be one of 0-9 * # A-D, got {digit!r:.10}",
              "dtmf.digit")
    track = body.get("track", "inbound_track")
    if type(track) is not str:
        _fail("bad_type", "dtmf.track must be a string", "dtmf.track")
    return Dtmf(_num_str(msg, "sequenceNumber"), _str(msg, "streamSid"), digit, track)


def _mark(msg: dict[str, Any]) -> Mark:
    body = _obj(msg, "mark")
    return Mark(_num_str(msg, "sequenceNumber"), _str(msg, "streamSid"),
                _str(body, "name", "mark."))


def _stop(msg: dict[str, Any]) -> Stop:
    body = _obj(msg, "stop")
    return Stop(_num_str(msg, "sequenceNumber"), _str(msg, "streamSid"),
                _sid(body, "accountSid", "AC", "stop."), _sid(body, "callSid", "CA", "stop."))


_PARSERS: dict[str, Callable[[dict[str, Any]], TwilioEvent]] = {
    "media": _media,  # first: the hot one
    "connected": _connected,
    "start": _start,
    "dtmf": _dtmf,
    "mark": _mark,
    "stop": _stop,
}


#: Parse one Media Streams text frame into an event. ``bytes`` are accepted as the UTF-8
#: text of a text frame (some drivers hand those over); a *binary* WebSocket frame is a
#: protocol error (:func:`binary_frame_error`). Raises :class:`TwilioProtocolError` with a
#: ``reason`` on any violation.
parse_twilio_message: Callable[[str | bytes], TwilioEvent] = message_parser(_PARSERS, _FIELDS)


def binary_frame_error(size: int) -> TwilioProtocolError:
    """The error for a binary WebSocket frame (Media Streams messages are text only)."""
    return TwilioProtocolError(f"binary frame of {size} bytes (Media Streams uses text frames)",
                               reason="binary_frame")


# --------------------------------------------------------------------------- stream state

class TwilioStreamState(StreamState[TwilioEvent, Start]):
    """Ordering rules of one Media Streams connection (protocols.md 1.3.1), on the shared
    :class:`~agentic_fast.carriers.stream_state.StreamState`: ``connected`` first, then
    ``start`` (mu-law 8 kHz mono only), then ``media``/``dtmf``/``mark`` carrying the start's
    ``streamSid``, then ``stop``; ``sequenceNumber`` counted, not enforced."""

    __slots__ = ()

    fields = _FIELDS
    media_type = Media
    stream_id_field = "streamSid"
    wrong_stream_id_reason = "wrong_stream_sid"
    event_names: ClassVar[Mapping[type, str]] = {
        Connected: "connected", Start: "start", Media: "media", Dtmf: "dtmf",
        Mark: "mark", Stop: "stop"}

    def __init__(self) -> None:
        super().__init__(parse_twilio_message)

    @property
    def stream_sid(self) -> str | None:
        """The ``streamSid`` of ``start`` (None before it)."""
        return self.stream_id

    def receive_binary(self, data: bytes) -> NoReturn:
        """A binary frame arrived: always a protocol error."""
        raise binary_frame_error(len(data))

    def outbound(self, start: StreamStart) -> TwilioOutbound:
        """The builder of our frames on this stream."""
        return TwilioOutbound(start.stream_id)

    def _check_start(self, start: Start) -> None:
        fmt = start.media_format
        if (fmt.encoding, fmt.sample_rate, fmt.channels) != MULAW_8K:
            _fail("unsupported_media_format",
                  f"unsupported media format {fmt.encoding} {fmt.sample_rate} Hz "
                  f"{fmt.channels} ch (expected audio/x-mulaw 8000 Hz mono)",
                  "start.mediaFormat")


# --------------------------------------------------------------------------- builders


def _check_stream_sid(stream_sid: str) -> str:
    if type(stream_sid) is not str or not stream_sid:
        raise LocalProtocolError(f"stream_sid must be a non-empty string, got {stream_sid!r}",
                                 peer=PEER)
    return orjson.dumps(stream_sid).decode()


class TwilioOutbound(JsonOutbound):
    """Builds the frames we send on one stream; the ``streamSid`` is escaped once."""

    __slots__ = ("stream_sid",)

    peer = PEER

    def __init__(self, stream_sid: str) -> None:
        super().__init__(',"streamSid":' + _check_stream_sid(stream_sid))
        self.stream_sid = stream_sid


def media_message(stream_sid: str, payload_b64: str) -> str:
    """One-off ``media`` frame; checks the payload is base64. Per call use TwilioOutbound."""
    return TwilioOutbound(stream_sid).media(check_base64(payload_b64, PEER))


def mark_message(stream_sid: str, name: str) -> str:
    """One-off ``mark`` frame."""
    return TwilioOutbound(stream_sid).mark(name)


def clear_message(stream_sid: str) -> str:
    """One-off ``clear`` frame."""
    return TwilioOutbound(stream_sid).clear()
