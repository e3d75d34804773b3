"""The media-stream state machine every carrier shares, sans-I/O.

A carrier's stream (Twilio Media Streams, Telnyx Media Streaming) is one JSON text frame per
message, in the order::

    connected -> start -> (media | dtmf | mark | ...)* -> stop

:class:`StreamState` holds the rules that span messages: the order (a four-phase machine),
the stream id fixed by ``start`` that every later message must carry, and the sequence
number, counted (gaps, regressions) but not enforced. A carrier subclasses it with its
message parser, its event classes and the few rules that differ (class attributes below),
and :func:`message_parser` builds that parser's dispatch from a table of per-event parsers.

The per-frame path is one parse and a handful of attribute reads and compares: no extra
call layer per ``media`` frame (the sequence step is inlined, the carrier hook is a class
attribute check).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

import orjson

from agentic_fast.carriers.base import (
    MediaChunk,
    StreamConnected,
    StreamEvent,
    StreamStart,
    StreamStop,
)
from agentic_fast.core.errors import LocalProtocolError
from agentic_fast.core.jsonfields import JsonFields

__all__ = ["AWAIT_CONNECTED", "AWAIT_START", "DTMF_DIGITS", "MAX_MARK_NAME", "MAX_NUM_DIGITS",
           "STOPPED", "STREAMING", "JsonOutbound", "MediaFormat", "StreamState", "alias_slot",
           "check_base64", "mark_name_json", "media_parser", "message_parser"]

#: ``dtmf.digit`` values accepted (A-D tolerated for SIP callers).
DTMF_DIGITS = frozenset("0123456789*#ABCD")
#: Mark names are ours; keep them short and printable (they are echoed back verbatim).
MAX_MARK_NAME = 256
#: Most digits a numeric string field may have (sequence number, chunk, timestamp): 18
#: digits stay below 2**63, far above any real stream (a day of audio is 4.3 million
#: chunks, 86.4 million ms), and keep ``int()`` away from its 4,300-digit limit.
MAX_NUM_DIGITS = 18
_B64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")

AWAIT_CONNECTED, AWAIT_START, STREAMING, STOPPED = range(4)
_PHASE_NAMES = ("awaiting connected", "awaiting start", "streaming", "stopped")


E = TypeVar("E", bound=StreamEvent)
S = TypeVar("S", bound=StreamStart)
M = TypeVar("M", bound=MediaChunk)


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """The ``start`` message's media format (``mediaFormat`` / ``media_format``)."""

    encoding: str
    sample_rate: int
    channels: int


def alias_slot(cls: type, alias: str, name: str) -> None:
    """Give slot field ``name`` of ``cls`` a second name, read at slot speed.

    A slot's member descriptor is an ordinary data descriptor: stored under ``alias`` in
    the class it reads the same slot, with no property call (Twilio's ``stream_sid`` is the
    neutral ``stream_id`` this machine reads on every frame).
    """
    setattr(cls, alias, cls.__dict__[name])


def message_parser(parsers: dict[str, Callable[[dict[str, Any]], E]],
                   fields: JsonFields) -> Callable[[str | bytes], E]:
    """The parser of one carrier's text frames: JSON object, string ``event``, dispatch.

    Each refusal raises ``fields``' error: ``malformed_json``, ``not_object``,
    ``missing_field``/``bad_type`` (``event``), ``unknown_event``, and ``missing_field`` for
    a ``KeyError`` out of the event's parser (the field it named).
    """
    error = fields.error
    fail = fields.fail
    get = parsers.get

    def parse(text: str | bytes) -> E:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise error(f"malformed JSON: {exc}", reason="malformed_json") from exc
        if type(msg) is not dict:
            fail("not_object", f"message must be a JSON object, got {type(msg).__name__}")
        event = msg.get("event")
        parser = get(event) if type(event) is str else None
        if parser is None:
            if event is None:
                fail("missing_field", "message has no 'event' field", "event")
            if type(event) is not str:
                fail("bad_type", f"'event' must be a string, got {event!r:.40}", "event")
            fail("unknown_event", f"unknown event {event!r:.40}", "event")
        try:
            return parser(msg)
        except KeyError as exc:
            key = exc.args[0] if exc.args else "?"
            raise error(f"{event} message is missing field {key!r}",
                        reason="missing_field", field=str(key)) from None

    return parse


def media_parser(cls: type[M], seq_key: str, sid_key: str,
                 checked: Callable[[dict[str, Any]], M]) -> Callable[[dict[str, Any]], M]:
    """The hot ``media`` parser: one pass of type checks, the fields set without
    ``__init__``; any message it does not take whole goes to ``checked`` (the same rules
    one by one, for a precise error, or a carrier's defaults for absent fields).

    ``cls`` has slot fields ``sequence_number``, ``stream_id``, ``chunk``, ``timestamp_ms``,
    ``track`` and ``payload``; the message carries ``seq_key`` and ``sid_key`` at the top and
    ``media.{payload,track,chunk,timestamp}`` (numbers as strings of digits).
    """
    new = object.__new__
    # Slot descriptors of the frozen class: setting them directly skips the frozen
    # __init__'s per-field object.__setattr__ name lookups (half the cost of the event).
    set_seq, set_sid, set_chunk, set_ts, set_track, set_payload = (
        getattr(cls, name).__set__ for name in
        ("sequence_number", "stream_id", "chunk", "timestamp_ms", "track", "payload"))

    def parse_media(msg: dict[str, Any]) -> M:
        body = msg["media"]
        if type(body) is dict:
            try:
                payload = body["payload"]
                track = body["track"]
                chunk = body["chunk"]
                ts = body["timestamp"]
                seq = msg[seq_key]
                sid = msg[sid_key]
            except KeyError:
                return checked(msg)
            if (type(payload) is str and type(track) is str and type(sid) is str
                    and type(seq) is str and type(chunk) is str and type(ts) is str
                    and seq.isdigit() and chunk.isdigit() and ts.isdigit()
                    and len(seq) <= MAX_NUM_DIGITS and len(chunk) <= MAX_NUM_DIGITS
                    and len(ts) <= MAX_NUM_DIGITS and (seq + chunk + ts).isascii()):
                event = new(cls)
                set_seq(event, int(seq))
                set_sid(event, sid)
                set_chunk(event, int(chunk))
                set_ts(event, int(ts))
                set_track(event, track)
                set_payload(event, payload)
                return event
        return checked(msg)

    return parse_media


def mark_name_json(name: str, peer: str) -> str:
    """A mark name we send, as JSON text (:class:`LocalProtocolError` if unfit)."""
    if type(name) is not str or not name or len(name) > MAX_MARK_NAME:
        raise LocalProtocolError(
            f"mark name must be a non-empty string of at most {MAX_MARK_NAME} characters, "
            f"got {name!r:.60}", peer=peer)
    return orjson.dumps(name).decode()


def check_base64(payload_b64: str, peer: str) -> str:
    """``payload_b64`` if it is base64 text (for one-off frames; per call, trusted)."""
    if type(payload_b64) is not str or _B64_RE.fullmatch(payload_b64) is None:
        raise LocalProtocolError(f"media payload is not base64 text: {payload_b64!r:.40}",
                                 peer=peer)
    return payload_b64


class JsonOutbound:
    """Builds the frames we send on one stream: ``media``, ``mark``, ``clear``, each
    ``{"event": ...}`` with ``head`` (the carrier's stream id member, JSON, or ``""``)
    after the event name. The prefixes are built once.

    ``media()`` is string concatenation around the cached prefix: the payload must be base64
    text (what the audio layer produces), which never needs JSON escaping.
    """

    __slots__ = ("_clear", "_mark_prefix", "_media_prefix")

    #: The carrier's name, for errors about what we were about to send.
    peer: ClassVar[str]

    def __init__(self, head: str = "") -> None:
        self._media_prefix = '{"event":"media"' + head + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark"' + head + ',"mark":{"name":'
        self._clear = '{"event":"clear"' + head + "}"

    def media(self, payload_b64: str) -> str:
        """``media`` frame for one base64 payload in the leg's codec (trusted base64)."""
        return self._media_prefix + payload_b64 + '"}}'

    def mark(self, name: str) -> str:
        """``mark`` frame; the carrier echoes ``name`` when playout reaches it (or on
        clear)."""
        return self._mark_prefix + mark_name_json(name, self.peer) + "}}"

    def clear(self) -> str:
        """``clear`` frame: drop the audio queued at the carrier, flush pending marks."""
        return self._clear


class StreamState(Generic[E, S]):
    """Ordering rules of one media stream connection (one per WebSocket upgrade).

    ``connected`` moves *awaiting connected* -> *awaiting start* (where
    :attr:`connected_required` is false the stream starts *awaiting start*, and
    ``connected`` is accepted there); ``start`` -> *streaming*, after
    :meth:`_check_start`, and fixes :attr:`stream_id`; ``stop`` -> *stopped*. Every other
    event is legal only while streaming and must carry the start's stream id (an empty one
    is accepted where :attr:`stream_id_optional`). ``sequence_number`` is counted, not
    enforced: a jump forward adds the missing count to ``seq_gaps``, a repeat or a step back
    adds one to ``seq_regressions`` (0 means "absent" where :attr:`sequence_optional`).

    A subclass sets the class attributes and passes its parser to ``__init__``.
    """

    __slots__ = ("_parse", "_phase", "last_sequence", "media_count", "seq_gaps",
                 "seq_regressions", "start", "stream_id")

    #: The carrier's field helper: its ``fail`` raises the carrier's protocol error.
    fields: ClassVar[JsonFields]
    #: The carrier's media event class (the hot path compares ``type(event)`` with it).
    media_type: ClassVar[type]
    #: Wire name of the stream id, for errors; and the reason of a mismatch.
    stream_id_field: ClassVar[str]
    wrong_stream_id_reason: ClassVar[str]
    #: Event names for ``out_of_order`` messages, by event class.
    event_names: ClassVar[Mapping[type, str]]
    connected_required: ClassVar[bool] = True
    stream_id_optional: ClassVar[bool] = False
    sequence_optional: ClassVar[bool] = False
    #: The only media track accepted (``unexpected_track`` otherwise); None: any.
    inbound_track: ClassVar[str | None] = None

    def __init__(self, parse: Callable[[str | bytes], E]) -> None:
        self._parse = parse
        self._phase = AWAIT_CONNECTED if self.connected_required else AWAIT_START
        self.start: S | None = None
        self.stream_id: str | None = None
        self.last_sequence = 0
        self.media_count = 0
        self.seq_gaps = 0
        self.seq_regressions = 0

    @property
    def started(self) -> bool:
        """``start`` arrived: the stream id is known and audio may be sent."""
        return self._phase == STREAMING

    @property
    def stopped(self) -> bool:
        return self._phase == STOPPED

    def receive(self, text: str | bytes) -> E:
        """Parse a text frame and check it against the connection's state."""
        event = self._parse(text)
        if type(event) is self.media_type and self._phase == STREAMING:  # fast path
            ev: Any = event
            sid = ev.stream_id
            if sid != self.stream_id and (sid or not self.stream_id_optional):
                self._wrong_stream_id(sid)
            seq = ev.sequence_number
            if seq == self.last_sequence + 1:
                self.last_sequence = seq
            else:
                self._sequence(seq)
            self.media_count += 1
            if self.inbound_track is not None and ev.track != self.inbound_track:
                self._unexpected_track(ev.track)
            return event
        return self._check(event)

    def _check(self, event: E) -> E:
        phase = self._phase
        if isinstance(event, StreamConnected):
            if phase == AWAIT_CONNECTED:
                self._phase = AWAIT_START
            elif phase != AWAIT_START or self.connected_required:
                self._out_of_order(event)
            return event
        if isinstance(event, StreamStart):
            if phase != AWAIT_START and (phase != AWAIT_CONNECTED or self.connected_required):
                self._out_of_order(event)
            start: Any = event
            self._check_start(start)
            self.start = start
            self.stream_id = start.stream_id
            self.last_sequence = start.sequence_number
            self._phase = STREAMING
            return event
        if phase != STREAMING:
            self._out_of_order(event)
        ev: Any = event
        sid = ev.stream_id
        if sid != self.stream_id and (sid or not self.stream_id_optional):
            self._wrong_stream_id(sid)
        self._sequence(ev.sequence_number)
        if type(event) is self.media_type:
            self.media_count += 1
            if self.inbound_track is not None and ev.track != self.inbound_track:
                self._unexpected_track(ev.track)
        elif isinstance(event, StreamStop):
            self._phase = STOPPED
        else:
            self._other(event)
        return event

    # -- the carrier's rules ----------------------------------------------------------------

    def _check_start(self, start: S) -> None:
        """Refuse a ``start`` this carrier cannot stream (its media format)."""

    def _other(self, event: E) -> None:
        """Any other event while streaming (``dtmf``, ``mark``, a carrier's own)."""

    # -- counting and refusals ---------------------------------------------------------------

    def _sequence(self, seq: int) -> None:
        if not seq and self.sequence_optional:
            return
        expected = self.last_sequence + 1
        if seq != expected:
            if seq > expected:
                self.seq_gaps += seq - expected
            else:
                self.seq_regressions += 1
                return
        self.last_sequence = seq

    def _out_of_order(self, event: E) -> NoReturn:
        self.fields.fail("out_of_order", f"{self.event_names[type(event)]!r} message while "
                         f"{_PHASE_NAMES[self._phase]}")

    def _wrong_stream_id(self, sid: str) -> NoReturn:
        name = self.stream_id_field
        self.fields.fail(self.wrong_stream_id_reason, f"{name} {sid!r:.40} differs from the "
                         f"stream's {self.stream_id!r}", name)

    def _unexpected_track(self, track: str) -> NoReturn:
        self.fields.fail("unexpected_track", f"media of track {track!r:.20} (we asked for "
                         f"{self.inbound_track}_track only)", "media.track")
