"""TwiML documents the server answers webhooks with (protocols.md 1.2).

Rendered by the official helper (``twilio.twiml.voice_response``), which escapes text and
attributes; this module only adds the checks Twilio would otherwise report as call errors
(31920 query string in the stream URL, 31922 non-``wss`` scheme, ``<Parameter>`` size).
Invalid input raises :class:`LocalProtocolError` (it is our bug, not Twilio's).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.twiml.voice_response import Connect, Parameter, Stream, VoiceResponse

from agentic_fast.core.errors import LocalProtocolError

__all__ = [
    "MAX_PARAMETER_CHARS",
    "busy_twiml",
    "connect_stream_twiml",
    "reject_twiml",
    "say_hangup_twiml",
]

#: ``<Parameter>``: name + value must total *under* this many characters.
MAX_PARAMETER_CHARS = 500
#: Sanity cap on spoken text (Twilio's ``<Say>`` limit is a few thousand characters).
MAX_SAY_CHARS = 4000


def _error(message: str) -> LocalProtocolError:
    return LocalProtocolError(message, peer="twilio")


def _check_stream_url(url: str) -> None:
    if not isinstance(url, str):
        raise _error(f"stream url must be a string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme != "wss":
        raise _error(f"stream url must use wss:// (Twilio error 31922), got {url!r}")
    if not parts.hostname:
        raise _error(f"stream url has no host: {url!r}")
    if parts.query or "?" in url:
        raise _error(
            f"stream url must not carry a query string (Twilio error 31920), got {url!r}; "
            "pass data as <Parameter> instead")
    if parts.fragment:
        raise _error(f"stream url must not carry a fragment, got {url!r}")


def _check_http_url(url: str, what: str) -> None:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _error(f"{what} must be an absolute http(s) URL, got {url!r}")


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise _error(f"text to say must be a non-empty string, got {text!r}")
    if len(text) > MAX_SAY_CHARS:
        raise _error(f"text to say is {len(text)} characters, limit {MAX_SAY_CHARS}")


def connect_stream_twiml(
    stream_url: str,
    parameters: Mapping[str, str],
    status_callback: str | None = None,
    *,
    name: str | None = None,
    fallback_say: str | None = None,
) -> str:
    """``<Connect><Stream>`` for a bidirectional Media Stream.

    ``parameters`` become ``<Parameter>`` children (they arrive in
    ``start.customParameters``). ``status_callback`` receives stream events (1.8).
    ``fallback_say`` is spoken if the stream ends without the call being hung up first
    (e.g. the WebSocket could not be opened).
    """
    _check_stream_url(stream_url)
    if status_callback is not None:
        _check_http_url(status_callback, "status_callback")
    callback = {} if status_callback is None else {
        "status_callback": status_callback, "status_callback_method": "POST"}
    stream = Stream(url=stream_url, name=name, **callback)
    for key, value in parameters.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise _error(f"<Parameter> name and value must be strings (name non-empty), "
                         f"got {key!r}={value!r:.40}")
        if len(key) + len(value) >= MAX_PARAMETER_CHARS:
            raise _error(f"<Parameter> {key!r}: name+value is {len(key) + len(value)} "
                         f"characters, must be under {MAX_PARAMETER_CHARS}")
        stream.append(Parameter(name=key, value=value))
    connect = Connect()
    connect.append(stream)
    response = VoiceResponse()
    response.append(connect)
    if fallback_say is not None:
        _check_text(fallback_say)
        response.say(fallback_say)
    return str(response.to_xml())


def say_hangup_twiml(text: str) -> str:
    """Say ``text`` then hang up."""
    _check_text(text)
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response.to_xml())


def reject_twiml(reason: str = "rejected") -> str:
    """``<Reject>``: the call is not answered (no charge); ``reason`` is ``rejected`` (the
    caller hears "not in service") or ``busy`` (a busy tone)."""
    if reason not in ("rejected", "busy"):
        raise _error(f"<Reject reason> must be rejected or busy, got {reason!r}")
    response = VoiceResponse()
    response.reject(reason=reason)
    return str(response.to_xml())


def busy_twiml(text: str | None = None) -> str:
    """Refuse a call we have no capacity for.

    With ``text``: answer, say it, hang up. Without: ``<Reject reason="busy"/>``, which does
    not answer the call (no charge) and plays a busy tone to the caller.
    """
    if text is None:
        response = VoiceResponse()
        response.reject(reason="busy")
        return str(response.to_xml())
    return say_hangup_twiml(text)
