"""What a telephone carrier is to the bridge and the server.

A carrier (Twilio, Telnyx, ...) brings a phone call's audio to us over a WebSocket *media
stream* and lets us steer the call over a REST *call-control* API, reporting progress on
signed *webhooks*. Everything carrier-specific lives behind the interfaces below, one
subpackage per carrier (``carriers/twilio/``, ``carriers/telnyx/``), registered by name in
``carriers/registry.py``; the bridge (``call/bridge.py``), the carrier-neutral stream
handler (``call/stream_handler.py``) and the routes import only this module.

The pieces, in the order a call meets them:

- **Answering an inbound call** (:class:`InboundAnswer`): the carrier's voice webhook is
  answered with "connect this call to our media stream" — Twilio: TwiML
  ``<Connect><Stream>`` in the webhook reply; Telnyx: an ``answer`` REST action with
  ``stream_url``, the webhook reply being an empty 200. Either way the stream carries
  :class:`StreamTarget` ``params`` (our call id and one-time stream token) back to us.
- **The media stream** (:class:`MediaStreamProtocol`, sans-I/O, one per connection): text
  frames in, carrier-neutral events out (:class:`StreamConnected`, :class:`StreamStart`,
  :class:`MediaChunk`, :class:`DtmfDigit`, :class:`PlayoutMark`, :class:`StreamStop`);
  :class:`OutboundFrames` builds what we send (media, mark, clear), fixed to one stream.
- **The audio leg** (:class:`LegFormat`): codec, sample rate and bytes per 20 ms frame of
  the stream (Twilio: mu-law 8 kHz, 160 B; Telnyx: PCMU 8 kHz or L16 16 kHz, 640 B). The
  bridge's converter is built for the leg the ``start`` event announces.
- **Playout confirmation**: a ``mark`` we send after some audio is echoed back (as a
  :class:`PlayoutMark`) when the caller has heard everything before it; ``clear`` drops
  the audio still queued at the carrier and echoes the pending marks at once.
- **DTMF in**: :class:`DtmfDigit` events on the stream.
- **Webhook signatures** (:class:`WebhookVerifier`): ``verify(request)`` -> a verdict that
  is truthy when the request is the carrier's, else carries the refusal reason.
- **Call control** (:class:`CallControl`): place, hang up, redirect, record, and "say this,
  then hang up" (the graceful end when the model is gone or a time limit is reached).
- **Status mapping** (:meth:`Carrier.map_status`): the carrier's call statuses -> our one
  :class:`~agentic_fast.call.status.CallStatus`.

Hot path: a stream's events are dispatched on their class attribute ``kind`` (no per-frame
conversion: a carrier's own event classes subclass the neutral ones and add their wire
fields), and the outbound builder's methods are looked up once per call.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

from agentic_fast.call.status import CallStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from aiohttp import web

    from agentic_fast.call.manager import CallSession

__all__ = [
    "FRAME_MS",
    "L16_16K",
    "PARAM_CALL_ID",
    "PARAM_TOKEN",
    "PCMU_8K",
    "AudioCodec",
    "CallControl",
    "CallDesk",
    "Carrier",
    "DtmfDigit",
    "EventKind",
    "InboundAnswer",
    "InboundDecision",
    "LegFormat",
    "MediaChunk",
    "MediaStreamProtocol",
    "OutboundCall",
    "OutboundFrames",
    "PlayoutMark",
    "RefusalKind",
    "Route",
    "SignatureVerdict",
    "StatusChange",
    "StreamConnected",
    "StreamEvent",
    "StreamStart",
    "StreamStop",
    "StreamTarget",
    "WebhookReply",
    "WebhookRequest",
    "WebhookVerifier",
]

#: Every carrier frame is 20 ms of audio (the pacer's tick and the bridge's unit).
FRAME_MS = 20


# --------------------------------------------------------------------------- audio leg


class AudioCodec(StrEnum):
    """Codecs of a phone leg."""

    PCMU = "pcmu"  # G.711 mu-law, one byte per sample
    PCMA = "pcma"  # G.711 A-law, one byte per sample
    L16 = "l16"    # linear PCM, 16-bit signed; byte order is the carrier's (see its module)


@dataclass(frozen=True, slots=True)
class LegFormat:
    """The audio of one call's media stream, both ways.

    ``frame_bytes`` is one 20 ms frame: what the converter cuts outbound audio into and
    what the carrier sends per ``media`` message.
    """

    codec: AudioCodec
    sample_rate: int
    frame_bytes: int
    channels: int = 1

    def __post_init__(self) -> None:
        width = 2 if self.codec is AudioCodec.L16 else 1
        expected = self.sample_rate * FRAME_MS // 1000 * width * self.channels
        if self.frame_bytes != expected:
            raise ValueError(f"frame_bytes of {self.codec} {self.sample_rate} Hz must be "
                             f"{expected}, got {self.frame_bytes}")


#: Twilio's only format; Telnyx's PCMU.
PCMU_8K = LegFormat(AudioCodec.PCMU, 8000, 160)
#: Telnyx's L16 at 16 kHz (the Gemini leg's inbound rate: no resampling).
L16_16K = LegFormat(AudioCodec.L16, 16000, 640)


# --------------------------------------------------------------------------- stream events


class EventKind(IntEnum):
    """What a stream event is; the read loop dispatches on ``event.kind``."""

    CONNECTED = 0
    START = 1
    MEDIA = 2
    DTMF = 3
    MARK = 4
    STOP = 5


class StreamEvent:
    """Base of the carrier-neutral stream events.

    Each neutral event below declares, as read-only properties (for the type checker:
    nothing at run time), what the carrier-neutral code reads; a carrier's event classes
    subclass them (``@dataclass(frozen=True, slots=True)``) and provide those names as
    fields or as properties over their own wire fields.
    """

    __slots__ = ()
    kind: ClassVar[EventKind]


class StreamConnected(StreamEvent):
    """The stream is open; no call identity yet."""

    __slots__ = ()
    kind: ClassVar[EventKind] = EventKind.CONNECTED


class StreamStart(StreamEvent):
    """Stream metadata: whose call it is, our parameters, the audio format."""

    __slots__ = ()
    kind: ClassVar[EventKind] = EventKind.START

    if TYPE_CHECKING:  # declared for the type checker only: a dataclass field
        # of the same name must not inherit a property as its default
        @property
        @abstractmethod
        def carrier_call_id(self) -> str:
            """The carrier's id of the call (Twilio: the CallSid; Telnyx: call_control_id)."""

        @property
        @abstractmethod
        def stream_id(self) -> str:
            """The carrier's id of this stream (Twilio: streamSid; Telnyx: stream_id)."""

        @property
        @abstractmethod
        def params(self) -> Mapping[str, str]:
            """Our :class:`StreamTarget` params as the carrier gave them back (call id, token)."""

        @property
        @abstractmethod
        def leg(self) -> LegFormat:
            """The audio format of the stream (both ways)."""


class MediaChunk(StreamEvent):
    """One inbound audio chunk (the hot event: 50 a second per call)."""

    __slots__ = ()
    kind: ClassVar[EventKind] = EventKind.MEDIA

    if TYPE_CHECKING:  # declared for the type checker only: a dataclass field
        # of the same name must not inherit a property as its default
        @property
        @abstractmethod
        def payload(self) -> str:
            """Base64 audio in the leg's format, exactly as received (not decoded)."""

        @property
        @abstractmethod
        def timestamp_ms(self) -> int:
            """Milliseconds since the stream started, as the carrier counts them."""


class DtmfDigit(StreamEvent):
    """The caller pressed a key (``0-9 * #``, ``A-D`` from SIP callers)."""

    __slots__ = ()
    kind: ClassVar[EventKind] = EventKind.DTMF

    if TYPE_CHECKING:  # declared for the type checker only: a dataclass field
        # of the same name must not inherit a property as its default
        @property
        @abstractmethod
        def digit(self) -> str:
            """The key."""


class PlayoutMark(StreamEvent):
    """A mark we sent was reached in playout, or flushed by ``clear``."""

    __slots__ = ()
    kind: ClassVar[EventKind] = EventKind.MARK

    if TYPE_CHECKING:  # declared for the type checker only: a dataclass field
        # of the same name must not inherit a property as its default
        @property
        @abstractmethod
        def name(self) -> str:
            """The name we gave the mark."""


class StreamStop(StreamEvent):
    """The stream ended (hang-up, redirect, stream stopped)."""

    __slots__ = ()
    kind: ClassVar[EventKind] = EventKind.STOP


class MediaStreamProtocol(Protocol):
    """One media stream connection, sans-I/O: frames in, checked events out.

    Built by :meth:`Carrier.open_stream` for each WebSocket upgrade. ``receive`` parses one
    text frame and checks it against the connection's state (order, stream id, sequence);
    any violation raises :class:`~agentic_fast.core.errors.CarrierProtocolError` with a
    ``reason`` (the read loop counts it and goes on; before ``start`` it closes with 1008).
    """

    @property
    def started(self) -> bool:
        """``start`` arrived: the stream id is known and audio may be sent."""

    @property
    def media_count(self) -> int:
        """Media events received so far (for the closing log line)."""

    @property
    def seq_gaps(self) -> int:
        """Sequence numbers skipped so far (0 for a carrier without sequence numbers)."""

    def receive(self, data: str | bytes) -> StreamEvent:
        """Parse and check one text frame (``bytes``: its UTF-8 text)."""

    def receive_binary(self, data: bytes) -> StreamEvent:
        """A binary frame arrived; text-only carriers raise ``CarrierProtocolError``
        (reason ``binary_frame``)."""

    def outbound(self, start: StreamStart) -> OutboundFrames:
        """The builder of our frames on this stream, once ``start`` fixed its id."""


class OutboundFrames(Protocol):
    """Builds the text frames we send on one stream (its id escaped once).

    ``media`` is on the hot path: keep it a concatenation around cached text. Playout is
    confirmed by marks: the carrier echoes ``mark(name)`` as a :class:`PlayoutMark` once
    everything sent before it was played, and ``clear()`` drops what is queued at the
    carrier (echoing the pending marks).
    """

    def media(self, payload_b64: str) -> str:
        """One ``media`` frame for a base64 payload of whole frames of the leg's format."""

    def mark(self, name: str) -> str:
        """A playout mark named ``name`` (short, printable: it is echoed verbatim)."""

    def clear(self) -> str:
        """Drop queued audio at the carrier, flush pending marks (barge-in)."""


# --------------------------------------------------------------------------- webhooks


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A carrier's webhook as received: what a signature is computed over."""

    #: path and query exactly as received (``request.raw_path``)
    raw_path: str
    #: header names in any case; the verifier looks up its own
    headers: Mapping[str, str]
    body: bytes
    content_type: str
    #: the form fields when the body is a form, parsed once by the route
    fields: Mapping[str, list[str]] | None = None
    #: the remote address (for the refusal's log line)
    remote: str = ""


class SignatureVerdict(Protocol):
    """Truthy when the webhook is the carrier's; else ``reason`` says why not
    (``missing_signature``, ``bad_signature``, ``stale_timestamp``, ``replayed``...)."""

    @property
    def reason(self) -> str | None: ...

    def __bool__(self) -> bool: ...


class WebhookVerifier(Protocol):
    """A carrier's webhook signature scheme (Twilio: HMAC-SHA1 over URL and form, or a
    SharedKey; Telnyx: Ed25519 over ``timestamp|body`` with the timestamp's age checked)."""

    def verify(self, request: WebhookRequest) -> SignatureVerdict:
        """Check one webhook; never raises for a bad signature (the verdict says why)."""


# --------------------------------------------------------------------------- answering


#: The :class:`StreamTarget` params every stream carries back in ``start`` (Twilio: the
#: ``<Parameter>`` names; Telnyx: inside ``client_state``): our call id, the stream token.
PARAM_CALL_ID = "callId"
PARAM_TOKEN = "streamToken"


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """Where a call's media stream should connect, and what it must carry back to us
    (``params``: our call id and the one-time stream token, returned in ``start``)."""

    url: str
    params: Mapping[str, str] = field(default_factory=dict)
    #: our URL for the stream's status reports (Twilio's ``<Stream statusCallback>``)
    status_url: str | None = None
    #: what the carrier says if the stream cannot be opened ("" for nothing)
    fallback_say: str = ""


@dataclass(frozen=True, slots=True)
class WebhookReply:
    """What a webhook route answers the carrier: an HTTP status, body and content type."""

    body: str = ""
    content_type: str = "text/plain"
    status: int = 200


RefusalKind = Literal["busy", "rejected"]


class InboundAnswer(Protocol):
    """How an inbound call is answered, refused, or told something and hung up, from its
    voice webhook. Twilio answers in the reply (TwiML); Telnyx acts over REST and replies
    an empty 200, so these are coroutines."""

    async def connect_stream(self, carrier_call_id: str, target: StreamTarget
                             ) -> WebhookReply:
        """Answer the call and connect its audio to ``target``."""

    async def say_and_hang_up(self, carrier_call_id: str, text: str) -> WebhookReply:
        """Say ``text`` to the caller, then hang up (draining, replays, refusals)."""

    async def refuse(self, carrier_call_id: str, kind: RefusalKind,
                     text: str | None = None) -> WebhookReply:
        """Refuse without answering: ``busy`` or ``rejected``; ``text`` spoken first
        where the carrier can (a busy message), else ignored."""


# --------------------------------------------------------------------------- call control


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """An outbound call to place with its media stream."""

    to: str
    from_number: str
    stream: StreamTarget
    #: our URL for the call's status webhooks
    status_url: str
    #: seconds to ring before giving up
    ring_timeout_s: int


class CallControl(Protocol):
    """A carrier's call-control REST client. Every method raises
    :class:`~agentic_fast.core.errors.CarrierApiError` (peer named) when the carrier
    refuses or cannot be reached, within the client's bounded timeout."""

    async def place_call(self, call: OutboundCall) -> str:
        """Dial ``call.to``; returns the carrier's call id."""

    async def hang_up(self, carrier_call_id: str) -> None:
        """End a call in progress."""

    async def say_and_hang_up(self, carrier_call_id: str, text: str) -> None:
        """Replace what the call is doing (ends its media stream) with speaking ``text``,
        then hang up."""

    async def redirect(self, carrier_call_id: str, target: str) -> None:
        """Hand the call elsewhere (Twilio: new TwiML URL; Telnyx: transfer to a number)."""

    async def record(self, carrier_call_id: str) -> None:
        """Start recording the call."""

    async def close(self) -> None:
        """Release the HTTP session (idempotent)."""


# --------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A carrier status seen as ours; ``reason`` is set on terminal ones."""

    status: CallStatus
    reason: str | None
    terminal: bool


# --------------------------------------------------------------------------- the server side


@dataclass(frozen=True, slots=True)
class InboundDecision:
    """What the server decided for a new inbound call: connect it to ``target``, or say
    ``say`` and hang up, or ``refuse`` it (``say`` spoken first where the carrier can)."""

    target: StreamTarget | None = None
    say: str | None = None
    refuse: RefusalKind | None = None
    #: our call id when a call record was created
    call_id: str | None = None


class CallDesk(Protocol):
    """What the server offers a carrier's webhook routes: the carrier-neutral decisions
    (draining, replays, admission, call limits, stream tokens, pre-warm, status)."""

    async def incoming(self, carrier: str, carrier_call_id: str, caller: str, called: str
                       ) -> InboundDecision:
        """A new inbound call's voice webhook arrived (already signature-checked)."""

    def answered(self, call_id: str) -> None:
        """The carrier accepted our answer: open the model's socket now (pre-warm)."""

    def answer_failed(self, call_id: str, reason: str) -> None:
        """Answering failed after ``incoming`` created the call: free its slot."""

    def status(self, carrier_call_id: str, change: StatusChange,
               sequence: int | None = None, call_id: str | None = None, *,
               answered_by: str | None = None) -> bool:
        """A status webhook: apply it to the call (out of order and repeats tolerated);
        whether it changed anything. ``call_id``: ours, when the carrier echoes it (an
        outbound call's first events may overtake the answer that names its call id);
        ``answered_by``: who answered (answering machine detection), when the carrier says."""

    def find(self, carrier_call_id: str, call_id: str | None = None) -> CallSession | None:
        """The call a webhook is about, by the carrier's id (or ours, as for ``status``)."""

    def stream_failed(self, carrier_call_id: str, error: str, *, code: str | None = None,
                      stream_id: str | None = None) -> bool:
        """The carrier could not open (or lost) the call's media stream: record it on the
        call (fails it before its stream started); False for an unknown call."""

    def end_stream(self, carrier_call_id: str) -> None:
        """The call is over at the carrier: close its media stream now (if still open)."""

    def seen(self, carrier: str, key: str) -> bool:
        """Whether the webhook ``key`` (a CallSid, an event id...) was taken before;
        remembers it (the replay guard, which survives a restart with ``server.state_dir``)."""

    @property
    def draining(self) -> bool:
        """The server is draining: new calls are refused."""


#: A carrier's webhook route: (HTTP method, path, aiohttp handler).
Route = tuple[str, str, "Callable[[web.Request], Awaitable[web.StreamResponse]]"]


# --------------------------------------------------------------------------- the carrier


@runtime_checkable
class Carrier(Protocol):
    """One telephone carrier, as the server and the bridge see it.

    Built once per server from the config (see ``carriers/registry.py``). ``name`` prefixes
    its metrics (``<name>.media.*``, ``<name>.webhook.*``) and is the ``carrier:`` value
    in config.yaml; ``media_path`` is the route of its media stream WebSocket.
    """

    name: str
    media_path: str
    #: caller id of our outbound calls ("" when not configured)
    from_number: str

    def open_stream(self, query: Mapping[str, str]) -> MediaStreamProtocol:
        """A new stream connection's protocol state; ``query`` is the upgrade URL's query
        (a carrier that returns our params in the URL reads them from there)."""

    @property
    def verifier(self) -> WebhookVerifier | None:
        """The webhook signature check; None when not configured (its routes refuse:
        never fail open). ``verifier_problem`` then says why."""

    @property
    def verifier_problem(self) -> str | None:
        """Why ``verifier`` is None (a sentence naming the config key), else None."""

    @property
    def control(self) -> CallControl | None:
        """The REST client; None when its credentials are not configured."""

    @property
    def answer(self) -> InboundAnswer:
        """How its inbound calls are answered."""

    def stream_target(self, params: Mapping[str, str]) -> StreamTarget:
        """Where this carrier should open a call's media stream (our public URL of
        ``media_path``), carrying ``params`` back to us."""

    @property
    def status_url(self) -> str:
        """Our URL for an outbound call's status webhooks on this carrier."""

    def map_status(self, carrier_status: str) -> StatusChange:
        """One of the carrier's call statuses as ours; raises
        :class:`~agentic_fast.core.errors.CarrierProtocolError` for an unknown one."""

    def routes(self, desk: CallDesk) -> Sequence[Route]:
        """Its webhook routes (voice, status...), each verifying signatures first and never
        answering a 500 (a failure is logged, counted and answered politely)."""

    async def close(self) -> None:
        """Release what the carrier holds (its REST session)."""
