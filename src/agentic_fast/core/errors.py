"""The one exception tree of agentic_fast.

Local errors are ours to fix (bad config, bad arguments, our own limits); remote errors are
a peer's fault (Twilio, OpenAI, Gemini, OpenClaw... sent something we cannot accept, or
could not be reached) and name that peer in ``peer`` (and as the message's prefix, while
``detail`` keeps the message without it). Modelled on python-websockets' ``exceptions.py``
and h11's Local/RemoteProtocolError::

    AgenticFastError
    ├── AudioFormatError (ValueError)           audio we cannot process (either side's)
    ├── StoreError                              the call store: a retry will not fix it
    │   ├── StoreUnavailable                    unreachable, locked or full (``backend``)
    │   └── InvalidCursor (ValueError)          a paging cursor the store did not hand out
    ├── SignatureError (ValueError)             a post-call webhook failed verification
    ├── LocalError                              ours to fix
    │   ├── OutboxFullError                     the post-call outbox is at max_pending
    │   ├── ConfigError                         names the key (file and line when known)
    │   │   └── SignatureNotConfiguredError     no Twilio auth token / public URL
    │   ├── CallRefusedError                    a new call refused (reason)
    │   │   ├── CallLimitError                  max_concurrent_calls reached
    │   │   └── DrainingError                   shutting down
    │   └── LocalProtocolError (ProtocolError)  we were about to send what the peer rejects
    │       └── GatewayPayloadTooLargeError     a frame above the gateway's maxPayload
    └── PeerError                               names ``peer``
        ├── ProtocolError                       a wire-protocol violation, either side
        │   ├── LocalProtocolError              (above)
        │   └── RemoteProtocolError             the peer broke its protocol (reason, field)
        │       ├── MessageError                one peer's JSON message refused (reason, field)
        │       │   ├── CarrierProtocolError    a carrier's media stream / webhook (peer named)
        │       │   │   └── TwilioProtocolError Media Streams / status callbacks (twilio)
        │       │   ├── WebhookBodyError        a webhook body (HTTP status 415/400)
        │       │   ├── OpenAIProtocolError     Realtime server events (openai)
        │       │   ├── GeminiProtocolError     Live server messages (gemini)
        │       │   └── GatewayProtocolError    OpenClaw frames (openclaw)
        │       ├── BadRequestHead (ValueError) an HTTP request head (http-client)
        │       └── WebSocketProtocolError      an RFC 6455 violation (close ``code``)
        └── RemoteError                         the peer's fault, not a protocol violation
            ├── StreamTokenError                a stream token refused (reason)
            └── PeerUnavailableError            unreachable, timed out, or answered an error
                ├── CarrierApiError             a carrier's call-control REST (code, status)
                │   └── TwilioApiError          Twilio's REST (twilio)
                ├── SetupRejected               Gemini closed instead of setupComplete
                ├── ProviderUnreachableError    the provider at stream start
                ├── ClassifierError             the intent classifier model
                │   └── InvalidClassificationError
                ├── GatewayError                an error ``res`` (code, details_code)
                ├── GatewayConnectionError      no usable gateway connection
                │   └── GatewayBusyError        a local bound hit: shed load
                └── GatewayTimeoutError (TimeoutError)

``RemoteProtocolError`` is both a ``ProtocolError`` and a ``RemoteError``; ``LocalProtocolError``
both a ``ProtocolError`` and a ``LocalError``. Branch on the class and on ``reason`` (a short
token also used in counter names), never on the message text.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AgenticFastError",
    "AudioFormatError",
    "BadRequestHead",
    "CallLimitError",
    "CallRefusedError",
    "CarrierApiError",
    "CarrierProtocolError",
    "ClassifierError",
    "ConfigError",
    "DrainingError",
    "GatewayBusyError",
    "GatewayConnectionError",
    "GatewayError",
    "GatewayPayloadTooLargeError",
    "GatewayProtocolError",
    "GatewayTimeoutError",
    "GeminiProtocolError",
    "InvalidClassificationError",
    "InvalidCursor",
    "LocalError",
    "LocalProtocolError",
    "MessageError",
    "OpenAIProtocolError",
    "OutboxFullError",
    "PeerError",
    "PeerUnavailableError",
    "ProtocolError",
    "ProviderUnreachableError",
    "RemoteError",
    "RemoteProtocolError",
    "SetupRejected",
    "SignatureError",
    "SignatureNotConfiguredError",
    "StoreError",
    "StoreUnavailable",
    "StreamTokenError",
    "TwilioApiError",
    "TwilioProtocolError",
    "WebSocketProtocolError",
    "WebhookBodyError",
]


class AgenticFastError(Exception):
    """Base class of every exception raised on purpose by agentic_fast."""


class AudioFormatError(AgenticFastError, ValueError):
    """Audio that cannot be processed: invalid base64, odd-length PCM16, wrong dtype, size.

    A ``ValueError`` so callers that only know the stdlib convention still catch it. The
    converter that raised it stays usable for the next frame.
    """


# --- local: ours to fix -----------------------------------------------------------------------


class LocalError(AgenticFastError):
    """Ours to fix: the configuration, an argument, or one of our own limits."""


class ConfigError(LocalError):
    """The configuration is invalid: names the key, and the file and line when known."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None,
                 line: int | None = None) -> None:
        self.key = key
        self.source = source
        self.line = line
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(f"{where}{message}")


class SignatureNotConfiguredError(ConfigError):
    """No Twilio auth token (or no public URL) is configured: webhooks must be refused."""


class CallRefusedError(LocalError):
    """A new call was refused; ``reason`` is ``"limit"`` or ``"draining"`` (the server
    answers 503 or busy TwiML: refusals are load shedding, not bugs)."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class CallLimitError(CallRefusedError):
    """``max_concurrent_calls`` calls are already active."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"call limit reached: max_concurrent_calls={limit}", reason="limit")


class DrainingError(CallRefusedError):
    """The server is draining (shutting down gracefully) and accepts no new calls."""

    def __init__(self) -> None:
        super().__init__("server is draining: no new calls", reason="draining")


# --- errors that name a peer --------------------------------------------------------------------


class PeerError(AgenticFastError):
    """An error about one peer: ``peer`` names it (``"twilio"``, ``"openai"``...), the
    message is prefixed with it and ``detail`` is the message without the prefix."""

    def __init__(self, message: str, *, peer: str) -> None:
        self.peer = peer
        self.detail = message
        super().__init__(f"{peer}: {message}")


class ProtocolError(PeerError):
    """A wire-protocol violation. ``peer`` names the other side."""


class LocalProtocolError(ProtocolError, LocalError):
    """We were about to send something the peer would reject (our bug)."""


class RemoteError(PeerError):
    """The peer's fault: it sent something we refuse, or could not be reached."""


class RemoteProtocolError(ProtocolError, RemoteError):
    """The peer sent something that does not follow its protocol.

    ``reason`` is a short token for counters (``malformed_json``, ``missing_field``,
    ``bad_type``, ``bad_value``...); ``field`` names the offending field when there is one.
    """

    def __init__(self, message: str, *, peer: str, reason: str | None = None,
                 field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(message, peer=peer)


class MessageError(RemoteProtocolError):
    """One JSON message of a peer refused; each subclass fixes ``PEER``.

    The error type :mod:`agentic_fast.core.jsonfields` raises: ``reason`` is always set.
    """

    PEER: ClassVar[str] = "peer"
    reason: str

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        super().__init__(message, peer=self.PEER, reason=reason, field=field)


class CarrierProtocolError(MessageError):
    """A carrier's media stream or webhook broke its protocol (``peer``: the carrier's name).

    ``reason`` is a short machine token for counters (``<carrier>.media.rejected.<reason>``):
    ``malformed_json``, ``binary_frame``, ``unknown_event``, ``missing_field``, ``bad_type``,
    ``bad_value``, ``out_of_order``, ``wrong_stream_id``, ``unsupported_media_format``...;
    ``field`` names the offending field when there is one. A carrier's own subclass fixes
    ``PEER``; the carrier-neutral code passes ``peer``.
    """

    PEER = "carrier"

    def __init__(self, message: str, *, reason: str, field: str | None = None,
                 peer: str | None = None) -> None:
        RemoteProtocolError.__init__(self, message, peer=peer or self.PEER, reason=reason,
                                     field=field)


class TwilioProtocolError(CarrierProtocolError):
    """Twilio sent something that breaks protocols.md 1.3 (Media Streams) or 1.7/1.8.

    ``reason``: ``malformed_json``, ``binary_frame``, ``not_object``, ``unknown_event``,
    ``missing_field``, ``bad_type``, ``bad_value``, ``out_of_order``, ``wrong_stream_sid``,
    ``unsupported_media_format`` (and, from the status module, ``unknown_call_status``,
    ``too_long``, ``out_of_range``).
    """

    PEER = "twilio"


class WebhookBodyError(MessageError):
    """A webhook body we refuse: answer ``status`` (415 or 400), count ``reason``."""

    PEER = "twilio"

    def __init__(self, message: str, *, status: int, reason: str,
                 field: str | None = None) -> None:
        self.status = status
        super().__init__(message, reason=reason, field=field)


class OpenAIProtocolError(MessageError):
    """OpenAI sent something that breaks protocols.md section 2.

    ``reason``: ``malformed_json``, ``not_object``, ``missing_field``, ``bad_type``,
    ``bad_value``.
    """

    PEER = "openai"


class GeminiProtocolError(MessageError):
    """Gemini sent something that breaks protocols.md 3.

    ``reason``: ``malformed_json``, ``not_object``, ``bad_type``, ``bad_value``,
    ``missing_field``.
    """

    PEER = "gemini"


class GatewayProtocolError(MessageError):
    """The OpenClaw gateway sent a frame that breaks protocols.md 5."""

    PEER = "openclaw"


class BadRequestHead(RemoteProtocolError, ValueError):
    """The request head is not valid HTTP/1.1 (``detail`` is the 400's text)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, peer="http-client", reason="bad_request_head")


class WebSocketProtocolError(RemoteProtocolError):
    """A WebSocket client broke RFC 6455; ``code`` is the close code we answer with and
    ``detail`` its reason text."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        super().__init__(reason, peer="websocket-client")


class StreamTokenError(RemoteError):
    """A media stream's token was refused. ``reason``: ``malformed``, ``bad_signature``,
    ``expired``, ``wrong_call``, ``replayed`` or ``replay_cache_full``."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message, peer="media-stream")


class PeerUnavailableError(RemoteError):
    """A peer could not be reached or answered with an error (network, timeout, 5xx)."""


class CarrierApiError(PeerUnavailableError):
    """A carrier's call-control REST API refused a request or could not be reached.

    ``code`` is the carrier's own error code when it sent one, ``status`` the HTTP status
    (None: network error or timeout).
    """

    def __init__(self, message: str, *, peer: str, code: int | str | None = None,
                 status: int | None = None) -> None:
        self.code = code
        self.status = status
        super().__init__(message, peer=peer)


class TwilioApiError(CarrierApiError):
    """Twilio could not be reached, timed out, or answered with an error.

    ``code`` is Twilio's error code (e.g. 21211 invalid ``To``, 20003 bad credentials,
    20404 unknown Call SID) and ``status`` the HTTP status; both ``None`` when Twilio never
    answered (network error, timeout).
    """

    code: int | None

    def __init__(self, message: str, *, code: int | None = None,
                 status: int | None = None) -> None:
        super().__init__(message, peer="twilio", code=code, status=status)


class SetupRejected(PeerUnavailableError):
    """The server closed the socket instead of answering ``setup`` with ``setupComplete``.

    ``code``/``reason`` are the close frame's (1006 and "" when there was none);
    ``fatal`` says a retry of the same setup is pointless (1007/1008, HTTP 4xx).
    """

    def __init__(self, message: str, *, code: int, reason: str, fatal: bool) -> None:
        self.code = code
        self.reason = reason
        self.fatal = fatal
        super().__init__(message, peer="gemini")


class ProviderUnreachableError(PeerUnavailableError):
    """The provider could not be reached when the call's stream started."""


class ClassifierError(PeerUnavailableError):
    """The classifier model could not give an answer (network, timeout, HTTP error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, peer="classifier")


class InvalidClassificationError(ClassifierError):
    """The classifier answered, but not with the strict JSON we asked for."""


# --- OpenClaw gateway (protocols.md section 5) ---------------------------------------------


class GatewayError(PeerUnavailableError):
    """The OpenClaw gateway answered a request with an error frame.

    Branch on ``code`` (``INVALID_REQUEST``, ``FORBIDDEN``, ``UNAVAILABLE``...) and
    ``details_code`` (``AUTH_TOKEN_MISMATCH``, ``MISSING_SCOPE``...), never on the text.
    """

    def __init__(self, message: str, *, code: str, details_code: str | None = None,
                 details: object = None, retryable: bool = False,
                 retry_after_ms: int | None = None, method: str | None = None) -> None:
        self.code = code
        self.details_code = details_code
        self.details = details
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.method = method
        super().__init__(message, peer="openclaw")


class GatewayConnectionError(PeerUnavailableError):
    """No usable gateway connection: unreachable, dropped mid-request, or the client closed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, peer="openclaw")


class GatewayBusyError(GatewayConnectionError):
    """A local bound was hit (pending requests, concurrent runs): shed load, do not wait."""


class GatewayTimeoutError(PeerUnavailableError, TimeoutError):
    """A handshake, request or run passed its deadline (``run_id`` set for runs, then aborted)."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message, peer="openclaw")


class GatewayPayloadTooLargeError(LocalProtocolError):
    """A frame we were about to send exceeds the gateway's ``policy.maxPayload``."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message, peer="openclaw")


class StoreError(AgenticFastError):
    """The call store failed in a way a retry will not fix (bad data, corrupt file, bug)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or cannot write right now (connection refused, timeout,
    database locked, disk full). ``backend`` names it. A retry later may succeed."""

    def __init__(self, message: str, *, backend: str) -> None:
        self.backend = backend
        super().__init__(f"{backend} store unavailable: {message}")


class InvalidCursor(StoreError, ValueError):
    """A paging cursor that this store did not hand out."""


class SignatureError(AgenticFastError, ValueError):
    """A post-call webhook failed verification (the message says why)."""


class OutboxFullError(LocalError):
    """``notify.max_pending`` deliveries are already waiting."""
