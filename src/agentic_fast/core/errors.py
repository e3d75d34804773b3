"""The one exception tree of agentic_fast.

Local errors are ours to fix (bad config, bad arguments); remote errors are a peer's fault
(Twilio, OpenAI, Gemini, OpenClaw sent something we cannot accept) and name that peer.
Modelled on python-websockets' ``exceptions.py`` and h11's Local/RemoteProtocolError.
"""

from __future__ import annotations


class AgenticFastError(Exception):
    """Base class of every exception raised on purpose by agentic_fast."""


class ConfigError(AgenticFastError):
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


class AudioFormatError(AgenticFastError, ValueError):
    """Audio that cannot be processed: invalid base64, odd-length PCM16, wrong dtype, size.

    A ``ValueError`` so callers that only know the stdlib convention still catch it. The
    converter that raised it stays usable for the next frame.
    """


class ProtocolError(AgenticFastError):
    """A wire-protocol violation. ``peer`` names the other side (``"twilio"``, ``"openai"``...)."""

    def __init__(self, message: str, *, peer: str) -> None:
        self.peer = peer
        super().__init__(f"{peer}: {message}")


class LocalProtocolError(ProtocolError):
    """We were about to send something the peer would reject (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that does not follow its protocol."""


class PeerUnavailableError(AgenticFastError):
    """A peer could not be reached or answered with an error (network, timeout, 5xx)."""

    def __init__(self, message: str, *, peer: str) -> None:
        self.peer = peer
        super().__init__(f"{peer}: {message}")


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


# --- telephone carriers (carriers/base.py) -------------------------------------------------


class CarrierProtocolError(RemoteProtocolError):
    """A carrier's media stream or webhook broke its protocol.

    ``reason`` is a short machine token for counters (``<carrier>.media.rejected.<reason>``):
    ``malformed_json``, ``binary_frame``, ``unknown_event``, ``missing_field``, ``bad_type``,
    ``bad_value``, ``out_of_order``, ``wrong_stream_id``, ``unsupported_media_format``...;
    ``field`` names the offending field when there is one.
    """

    def __init__(self, message: str, *, peer: str, reason: str,
                 field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(message, peer=peer)


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
