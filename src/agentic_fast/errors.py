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
