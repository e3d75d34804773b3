"""Telnyx Media Streaming messages, sans-I/O (docs/telnyx-protocol.md, "Media Streaming").

Telnyx connects to our ``stream_url`` and sends JSON text frames::

    connected -> start -> (media | dtmf | mark | error)* -> stop

``sequence_number``, ``chunk`` and ``timestamp`` are decimal *strings*; ``media_format``
numbers are JSON numbers. :func:`parse_telnyx_message` validates one message;
:class:`TelnyxStreamState` adds the rules across messages (order, ``stream_id``, the codec
we asked for). Violations raise :class:`TelnyxProtocolError` with a short ``reason`` for
counters (``telnyx.media.rejected.<reason>``). The events subclass the carrier-neutral ones
(``carriers/base.py``), so the one stream handler dispatches them on ``kind``; Telnyx's
``error`` frames (it refused something we sent) are counted here
(``telnyx.media.error_frames.<code>``) and surface as a rejection (``error_frame``).

Our stream params (call id, stream token) travel in ``client_state``:
:func:`encode_client_state` / :func:`decode_client_state`. The one other ``client_state``
we send, :data:`HANGUP_AFTER_SPEAK` (on ``speak``: "hang up once this is spoken"), is not a
query string, so it never decodes as stream params, and stream params never equal it.

Outbound (bidirectional ``rtp`` mode): :class:`TelnyxOutbound` builds ``media`` (raw audio
in the negotiated codec, base64), ``mark`` and ``clear`` frames. The media path is the hot
one (50 messages/s per call): one ``orjson.loads``, a few type checks, the payload handed on
undecoded.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

from agentic_fast.carriers.base import (
    L16_16K,
    PCMU_8K,
    DtmfDigit,
    LegFormat,
    MediaChunk,
    PlayoutMark,
    StreamConnected,
    StreamEvent,
    StreamStart,
    StreamStop,
)
from agentic_fast.carriers.stream_state import (
    DTMF_DIGITS,
    MAX_NUM_DIGITS,
    JsonOutbound,
    MediaFormat,
    StreamState,
    check_base64,
    media_parser,
    message_parser,
)
from agentic_fast.core import metrics
from agentic_fast.core.errors import TelnyxProtocolError
from agentic_fast.core.jsonfields import JsonFields

__all__ = [
    "CODECS",
    "HANGUP_AFTER_SPEAK",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaFormat",
    "Start",
    "Stop",
    "StreamError",
    "TelnyxCodec",
    "TelnyxEvent",
    "TelnyxOutbound",
    "TelnyxStreamState",
    "decode_client_state",
    "encode_client_state",
    "is_hangup_after_speak",
    "parse_telnyx_message",
]

PEER = "telnyx"


@dataclass(frozen=True, slots=True)
class TelnyxCodec:
    """A phone-leg format we stream in both directions: the name Telnyx uses
    (``stream_codec`` / ``stream_bidirectional_codec``) and our :class:`LegFormat`."""

    name: str
    leg: LegFormat

    @property
    def sample_rate(self) -> int:
        return self.leg.sample_rate

    @property
    def frame_bytes(self) -> int:
        return self.leg.frame_bytes


#: The codecs the bridge handles: G.711 mu-law 8 kHz and L16 16 kHz (big-endian).
CODECS: dict[str, TelnyxCodec] = {
    "PCMU": TelnyxCodec("PCMU", PCMU_8K),
    "L16": TelnyxCodec("L16", L16_16K),
}
#: Longest ``client_state`` we send or take (base64 text).
MAX_CLIENT_STATE = 2048


def encode_client_state(params: Mapping[str, str]) -> str:
    """``client_state`` carrying our stream params: base64 of their URL encoding."""
    return base64.b64encode(urlencode(dict(params)).encode("utf-8")).decode("ascii")


def decode_client_state(state: str | None) -> Mapping[str, str]:
    """Our stream params from a ``client_state`` (empty when it is not one of ours)."""
    if not state or len(state) > MAX_CLIENT_STATE:
        return {}
    try:
        text = base64.b64decode(state, validate=True).decode("utf-8")
        return dict(parse_qsl(text, strict_parsing=True, max_num_fields=16))
    except (binascii.Error, ValueError):
        return {}


#: ``client_state`` of a ``speak`` after which the call is hung up (on ``call.speak.ended``,
#: by whichever worker gets that webhook). base64 of a text with no ``=``: never a query
#: string, so :func:`decode_client_state` gives ``{}`` for it.
HANGUP_AFTER_SPEAK = base64.b64encode(b"agentic-fast:hangup-after-speak").decode("ascii")


def is_hangup_after_speak(state: str | None) -> bool:
    """Whether ``state`` is :data:`HANGUP_AFTER_SPEAK`."""
    return state == HANGUP_AFTER_SPEAK


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Connected(StreamConnected):
    """First frame after the upgrade."""

    version: str


@dataclass(frozen=True, slots=True)
class Start(StreamStart):
    """Stream metadata; ``client_state`` is what our dial/answer set (base64 or None)."""

    sequence_number: int
    stream_id: str
    call_control_id: str
    call_session_id: str
    from_number: str
    to_number: str
    client_state: str | None
    custom_parameters: Mapping[str, str] = field(hash=False)
    media_format: MediaFormat

    @property
    def carrier_call_id(self) -> str:
        return self.call_control_id

    @property
    def params(self) -> Mapping[str, str]:
        """Our stream params, from ``client_state`` (see :func:`encode_client_state`)."""
        return decode_client_state(self.client_state)

    @property
    def leg(self) -> LegFormat:
        """The codec :class:`TelnyxStreamState` checked ``media_format`` against."""
        return L16_16K if self.media_format.encoding.upper() == "L16" else PCMU_8K


@dataclass(frozen=True, slots=True)
class Media(MediaChunk):
    """One audio chunk; ``payload`` is the base64 text as received (RTP payload, no header)."""

    sequence_number: int
    stream_id: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: str


@dataclass(frozen=True, slots=True)
class Dtmf(DtmfDigit):
    """The caller pressed a key."""

    sequence_number: int
    stream_id: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark(PlayoutMark):
    """A mark we sent has played (or was returned by ``clear``)."""

    sequence_number: int
    stream_id: str
    name: str


@dataclass(frozen=True, slots=True)
class StreamError(StreamEvent):
    """Telnyx rejected a frame we sent (``payload.code``/``title``/``detail``)."""

    sequence_number: int
    stream_id: str
    code: int
    title: str
    detail: str


@dataclass(frozen=True, slots=True)
class Stop(StreamStop):
    """The stream ended (hang-up, ``streaming_stop``)."""

    sequence_number: int
    stream_id: str
    call_control_id: str


TelnyxEvent = Connected | Start | Media | Dtmf | Mark | StreamError | Stop


# --------------------------------------------------------------------------- field access


_FIELDS = JsonFields(TelnyxProtocolError)
_fail = _FIELDS.fail
_obj = _FIELDS.get_obj
_str = _FIELDS.get_str
_int = _FIELDS.get_int
_opt_str = _FIELDS.get_opt_str


def _num_str(msg: dict[str, Any], key: str, where: str = "") -> int:
    """A non-negative integer sent as a decimal string (``"2"``); a JSON integer is taken too."""
    return _FIELDS.get_digits(msg, key, where, max_digits=MAX_NUM_DIGITS, or_int=True)


def _text(msg: dict[str, Any], key: str, where: str = "") -> str:
    """An optional string field; ``""`` when absent or null."""
    return _opt_str(msg, key, where) or ""


def _seq(msg: dict[str, Any]) -> int:
    return _num_str(msg, "sequence_number") if "sequence_number" in msg else 0


# --------------------------------------------------------------------------- parsers


def _connected(msg: dict[str, Any]) -> Connected:
    return Connected(_text(msg, "version"))


def _start(msg: dict[str, Any]) -> Start:
    body = _obj(msg, "start")
    w = "start."
    params = body.get("custom_parameters") or {}
    if type(params) is not dict or any(type(v) is not str for v in params.values()):
        _fail("bad_type", "start.custom_parameters must be an object of strings",
              "start.custom_parameters")
    state = body.get("client_state")
    if state is not None and type(state) is not str:
        _fail("bad_type", "start.client_state must be a string", "start.client_state")
    fmt = _obj(body, "media_format", w)
    fw = "start.media_format."
    media_format = MediaFormat(_str(fmt, "encoding", fw), _int(fmt, "sample_rate", fw),
                               _int(fmt, "channels", fw))
    return Start(_seq(msg), _str(msg, "stream_id"), _str(body, "call_control_id", w),
                 _text(body, "call_session_id", w), _text(body, "from", w),
                 _text(body, "to", w), state, MappingProxyType(params), media_format)


def _media_checked(msg: dict[str, Any]) -> Media:
    """Slow path of :data:`_media`: the same checks one by one, for a precise error."""
    body = _obj(msg, "media")
    payload = _str(body, "payload", "media.")
    track = _str(body, "track", "media.") if "track" in body else "inbound"
    chunk = _num_str(body, "chunk", "media.") if "chunk" in body else 0
    ts = _num_str(body, "timestamp", "media.") if "timestamp" in body else 0
    sid = _str(msg, "stream_id") if "stream_id" in msg else ""
    return Media(_seq(msg), sid, track, chunk, ts, payload)


#: Hot path: the shared fast parser, falling back to :func:`_media_checked` (which also
#: fills the fields Telnyx may leave out).
_media = media_parser(Media, "sequence_number", "stream_id", _media_checked)


def _sid(msg: dict[str, Any]) -> str:
    return _str(msg, "stream_id") if "stream_id" in msg else ""


def _dtmf(msg: dict[str, Any]) -> Dtmf:
    digit = _str(_obj(msg, "dtmf"), "digit", "dtmf.")
    if digit not in DTMF_DIGITS:
        _fail("bad_value", f"dtmf.digit must be one of 0-9 * # A-D, got {digit!r:.10}",
              "dtmf.digit")
    return Dtmf(_seq(msg), _sid(msg), digit)


def _mark(msg: dict[str, Any]) -> Mark:
    return Mark(_seq(msg), _sid(msg), _str(_obj(msg, "mark"), "name", "mark."))


def _error(msg: dict[str, Any]) -> StreamError:
    body = _obj(msg, "payload")
    code = body.get("code", 0)
    if type(code) is str and code.isascii() and code.isdigit() and len(code) <= 9:
        code = int(code)
    if type(code) is not int:
        _fail("bad_type", "payload.code must be an integer", "payload.code")
    title, detail = body.get("title", ""), body.get("detail", "")
    return StreamError(_seq(msg), _sid(msg), code, str(title)[:200], str(detail)[:500])


def _stop(msg: dict[str, Any]) -> Stop:
    body = msg.get("stop") or {}
    if type(body) is not dict:
        _fail("bad_type", "'stop' must be a JSON object", "stop")
    return Stop(_seq(msg), _sid(msg), _text(body, "call_control_id", "stop."))


_PARSERS: dict[str, Callable[[dict[str, Any]], TelnyxEvent]] = {
    "media": _media,  # first: the hot one
    "connected": _connected,
    "start": _start,
    "dtmf": _dtmf,
    "mark": _mark,
    "error": _error,
    "stop": _stop,
}


#: Parse one Media Streaming text frame; raises :class:`TelnyxProtocolError`.
parse_telnyx_message: Callable[[str | bytes], TelnyxEvent] = message_parser(_PARSERS, _FIELDS)


# --------------------------------------------------------------------------- stream state

class TelnyxStreamState(StreamState[TelnyxEvent, Start]):
    """Order rules of one stream, on the shared
    :class:`~agentic_fast.carriers.stream_state.StreamState`: ``connected`` (optional), then
    ``start`` (whose ``media_format`` must be ``codec``), then media/dtmf/mark/error carrying
    the start's ``stream_id`` (when they carry one), then ``stop``. The ``sequence_number``
    is counted, not enforced (gaps and regressions; absent counts as 0 and is skipped).

    Media of a track other than ``inbound`` (we ask for ``inbound_track`` only) is refused
    (``unexpected_track``), and an ``error`` frame is counted and refused (``error_frame``).
    """

    __slots__ = ("codec",)

    fields = _FIELDS
    media_type = Media
    stream_id_field = "stream_id"
    wrong_stream_id_reason = "wrong_stream_id"
    event_names: ClassVar[Mapping[type, str]] = {
        Connected: "connected", Start: "start", Media: "media", Dtmf: "dtmf", Mark: "mark",
        StreamError: "error", Stop: "stop"}
    connected_required = False
    stream_id_optional = True
    sequence_optional = True
    inbound_track = "inbound"

    def __init__(self, codec: TelnyxCodec) -> None:
        super().__init__(parse_telnyx_message)
        self.codec = codec

    def receive_binary(self, data: bytes) -> TelnyxEvent:
        _fail("binary_frame", f"binary frame of {len(data)} bytes (Telnyx sends text)")

    def outbound(self, start: StreamStart) -> TelnyxOutbound:
        return _OUTBOUND

    def _check_start(self, start: Start) -> None:
        fmt = start.media_format
        codec = self.codec
        if (fmt.encoding.upper(), fmt.sample_rate, fmt.channels) != (
                codec.name, codec.leg.sample_rate, 1):
            _fail("unsupported_media_format",
                  f"media format {fmt.encoding} {fmt.sample_rate} Hz {fmt.channels} ch "
                  f"(expected {codec.name} {codec.sample_rate} Hz mono)",
                  "start.media_format")

    def _other(self, event: TelnyxEvent) -> None:
        if type(event) is StreamError:
            metrics.incr(f"telnyx.media.error_frames.{event.code}")
            _fail("error_frame", f"Telnyx error {event.code} {event.title}: {event.detail}")


# --------------------------------------------------------------------------- builders


class TelnyxOutbound(JsonOutbound):
    """Builds the frames we send on a stream (bidirectional ``rtp`` mode): ``stream_id`` is
    optional on Telnyx's side and left out, so one builder serves every stream. Telnyx plays
    ``media`` (base64 audio in the negotiated codec), echoes a ``mark`` once the audio before
    it has played, and on ``clear`` stops playback (queued marks come back)."""

    __slots__ = ()

    peer = PEER


_OUTBOUND = TelnyxOutbound()


def media_message(payload_b64: str) -> str:
    """One-off ``media`` frame with the payload checked to be base64."""
    return _OUTBOUND.media(check_base64(payload_b64, PEER))
