"""Fake Twilio's reading of a ``<Connect><Stream>`` TwiML answer (protocols.md 1.2), and
of a ``<Reject>`` answer (``read_reject``).

Built from Twilio's "TwiML Voice: <Stream>" page, independent of ``agentic_fast``: a
``<Stream>`` may carry ``url`` (required, ``wss`` only, no query string: 31920/31922),
``name``, ``track``, ``statusCallback`` (a relative or absolute URL) and
``statusCallbackMethod`` (``GET`` or ``POST``, default ``POST``), and ``<Parameter name
value>`` children whose name+value stay under 500 characters. Anything else is refused the
way Twilio reports it: a :class:`TwimlRejected` with the error code Twilio would log (12200
schema validation, 12100 parse failure, or the Media Streams code).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit

STREAM_ATTRIBUTES = frozenset({"url", "name", "track", "statusCallback",
                               "statusCallbackMethod"})
TRACKS = frozenset({"inbound_track", "outbound_track", "both_tracks"})
PARAMETER_MAX_CHARS = 500


class TwimlRejected(ValueError):
    """Twilio would not run this TwiML; ``code`` is the error Twilio would log."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class ConnectStream:
    """What Twilio would do with a valid ``<Connect><Stream>``."""

    url: str
    name: str | None
    status_callback: str | None
    status_callback_method: str
    parameters: dict[str, str] = field(default_factory=dict)


def _check_url(url: str | None) -> str:
    if not url:
        raise TwimlRejected(12200, "<Stream> needs a url")
    parts = urlsplit(url)
    if parts.scheme and parts.scheme != "wss":
        raise TwimlRejected(31922, f"stream url scheme must be wss, got {url!r}")
    if parts.query or "?" in url:
        raise TwimlRejected(31920, f"stream url must not carry a query string: {url!r}")
    return url


def _check_callback(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise TwimlRejected(12200, f"statusCallback must be an http(s) URL, got {url!r}")
    if not url.strip():
        raise TwimlRejected(12200, "statusCallback is empty")
    return url


REJECT_REASONS = frozenset({"rejected", "busy"})


def _response(twiml: str) -> ET.Element:
    """The document's ``<Response>`` root, or the error Twilio reports for it."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise TwimlRejected(12100, f"document parse failure: {exc}") from None
    if root.tag != "Response":
        raise TwimlRejected(12200, f"root must be <Response>, got <{root.tag}>")
    return root


def read_reject(twiml: str) -> str:
    """The ``reason`` of a ``<Response><Reject/></Response>`` answer, checked as Twilio's
    "TwiML Voice: <Reject>" page describes it: ``reason`` is ``rejected`` (the default) or
    ``busy``; ``<Reject>`` has no children and nothing may follow it in the document."""
    root = _response(twiml)
    verbs = [child.tag for child in root]
    if verbs != ["Reject"]:
        raise TwimlRejected(12200, f"expected a lone <Reject>, got {verbs}")
    reject = root[0]
    if len(reject) or (reject.text or "").strip() or set(reject.attrib) - {"reason"}:
        raise TwimlRejected(12200, "<Reject> takes only the reason attribute")
    reason = reject.get("reason", "rejected")
    if reason not in REJECT_REASONS:
        raise TwimlRejected(12200, f"<Reject reason> must be rejected or busy, got {reason!r}")
    return reason


def read_connect_stream(twiml: str) -> ConnectStream:
    """Parse and check a ``<Response><Connect><Stream>`` document as Twilio would."""
    root = _response(twiml)
    stream = root.find("./Connect/Stream")
    if stream is None:
        raise TwimlRejected(12200, "no <Connect><Stream>")
    unknown = set(stream.attrib) - STREAM_ATTRIBUTES
    if unknown:
        raise TwimlRejected(12200, f"<Stream> has attributes Twilio does not define: "
                                   f"{sorted(unknown)}")
    track = stream.get("track")
    if track is not None and track not in TRACKS:
        raise TwimlRejected(12200, f"<Stream track> must be one of {sorted(TRACKS)}")
    method = stream.get("statusCallbackMethod", "POST")
    if method not in ("GET", "POST"):
        raise TwimlRejected(12200, f"statusCallbackMethod must be GET or POST, got {method!r}")
    parameters: dict[str, str] = {}
    for child in stream:
        if child.tag != "Parameter":
            raise TwimlRejected(12200, f"<Stream> may only contain <Parameter>, "
                                       f"got <{child.tag}>")
        name, value = child.get("name", ""), child.get("value", "")
        if not name or len(name) + len(value) >= PARAMETER_MAX_CHARS:
            raise TwimlRejected(12200, f"<Parameter> {name!r}: name required and "
                                       f"name+value under {PARAMETER_MAX_CHARS} characters")
        parameters[name] = value
    return ConnectStream(url=_check_url(stream.get("url")), name=stream.get("name"),
                         status_callback=_check_callback(stream.get("statusCallback")),
                         status_callback_method=method, parameters=parameters)
