"""Fake Twilio webhook sender: signs and POSTs forms like Twilio does (protocols.md 1.4-1.8).

Independent of ``agentic_fast.carriers.twilio``: the signature is computed here from the algorithm
in protocols.md 1.4 (a unit test cross-checks it against twilio's ``RequestValidator``).
By default Twilio signs with the Auth Token and HMAC-SHA1; when a Webhooks rule applies it
signs with a SharedKey's secret and the Setting's algorithm and names both in the
``X-Twilio-Webhooks-Signature-Settings`` header (``key=<SharedKey id>,algorithm=...``):
pass a :class:`SharedKey` to sign that way.

Usage in an integration test::

    hooks = TwilioWebhookSender(session, auth_token="tok", base_url=server_url,
                                public_url="https://agent.example.com")
    form = incoming_call_form()
    resp = await hooks.post("/twilio/voice", form)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
API_VERSION = "2010-04-01"
HMAC_SHA1 = "HMAC_SHA1"
HMAC_SHA256 = "HMAC_SHA256"
_HASHES = {HMAC_SHA1: hashlib.sha1, HMAC_SHA256: hashlib.sha256}

Form = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


def new_sid(prefix: str) -> str:
    """A random SID: two-letter prefix + 32 lowercase hex (``CA...``, ``AC...``, ``MZ...``)."""
    return prefix + secrets.token_hex(16)


def form_pairs(form: Form | None) -> list[tuple[str, str]]:
    """A form as ``(name, value)`` pairs; sequence values become repeated fields."""
    if form is None:
        return []
    items = form.items() if isinstance(form, Mapping) else form
    pairs: list[tuple[str, str]] = []
    for name, value in items:
        if isinstance(value, str):
            pairs.append((name, value))
        else:
            pairs.extend((name, v) for v in value)
    return pairs


def signing_string(url: str, form: Form | None = None) -> str:
    """URL, then for each name in code-point order name+value, values sorted (1.4 step 2)."""
    by_name: dict[str, list[str]] = {}
    for name, value in form_pairs(form):
        by_name.setdefault(name, []).append(value)
    parts = [url]
    for name in sorted(by_name):
        for value in sorted(by_name[name]):
            parts.append(name + value)
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class SharedKey:
    """A Webhooks SharedKey: its id (``webhooks_sharedkey_...``), its secret, and the
    algorithm of the Webhook Setting that names it."""

    key_id: str
    secret: str
    algorithm: str = HMAC_SHA256

    @property
    def settings_header(self) -> str:
        """The ``X-Twilio-Webhooks-Signature-Settings`` value Twilio adds."""
        return f"key={self.key_id},algorithm={self.algorithm}"


def new_shared_key(algorithm: str = HMAC_SHA256) -> SharedKey:
    """A fresh SharedKey, as the Webhooks API would create one."""
    return SharedKey("webhooks_sharedkey_" + secrets.token_hex(13), secrets.token_urlsafe(32),
                     algorithm)


def twilio_signature(secret: str, url: str, form: Form | None = None,
                     algorithm: str = HMAC_SHA1) -> str:
    """``X-Twilio-Signature``: base64(HMAC(secret, signing string)); the Auth Token and
    HMAC-SHA1 by default, a SharedKey secret with the Setting's algorithm otherwise."""
    mac = hmac.new(secret.encode("utf-8"), signing_string(url, form).encode("utf-8"),
                   _HASHES[algorithm])
    return base64.b64encode(mac.digest()).decode("ascii")


def sign_json_body(auth_token: str, url: str, body: bytes,
                   algorithm: str = HMAC_SHA1) -> tuple[str, str]:
    """JSON webhooks: ``(url with bodySHA256 added, signature over that URL alone)``."""
    sep = "&" if "?" in url else "?"
    signed_url = f"{url}{sep}bodySHA256={hashlib.sha256(body).hexdigest()}"
    return signed_url, twilio_signature(auth_token, signed_url, algorithm=algorithm)


def _rfc2822_now() -> str:
    return format_datetime(datetime.now(UTC).replace(microsecond=0), usegmt=False)


def incoming_call_form(*, call_sid: str | None = None, account_sid: str | None = None,
                       from_number: str = "+15551230000", to_number: str = "+15557654321",
                       call_status: str = "ringing", direction: str = "inbound",
                       **extra: str) -> dict[str, str]:
    """The Voice URL request of an inbound call (1.5), with the legacy and geo fields."""
    form = {
        "AccountSid": account_sid or new_sid("AC"),
        "ApiVersion": API_VERSION,
        "CallSid": call_sid or new_sid("CA"),
        "CallStatus": call_status,
        "CallToken": "%7B%22parentCallInfoToken%22%3A%22fake%22%7D",
        "Called": to_number,
        "CalledCity": "", "CalledCountry": "US", "CalledState": "CA", "CalledZip": "",
        "Caller": from_number,
        "CallerCity": "", "CallerCountry": "US", "CallerState": "NY", "CallerZip": "",
        "Direction": direction,
        "From": from_number,
        "FromCity": "", "FromCountry": "US", "FromState": "NY", "FromZip": "",
        "StirVerstat": "TN-Validation-Passed-A",
        "To": to_number,
        "ToCity": "", "ToCountry": "US", "ToState": "CA", "ToZip": "",
    }
    form.update(extra)
    return form


def outbound_answer_form(*, call_sid: str, account_sid: str, from_number: str,
                         to_number: str, answered_by: str | None = None,
                         **extra: str) -> dict[str, str]:
    """The ``Url`` request of an answered REST-created call (``outbound-api``)."""
    form = incoming_call_form(call_sid=call_sid, account_sid=account_sid,
                              from_number=from_number, to_number=to_number,
                              call_status="in-progress", direction="outbound-api", **extra)
    if answered_by is not None:
        form["AnsweredBy"] = answered_by
    return form


def status_callback_form(*, call_sid: str, call_status: str, sequence_number: int,
                         account_sid: str | None = None, from_number: str = "+15551230000",
                         to_number: str = "+15557654321", direction: str = "outbound-api",
                         call_duration: int | None = None, answered_by: str | None = None,
                         timestamp: str | None = None, **extra: str) -> dict[str, str]:
    """A call status callback (1.7). ``CallDuration`` belongs on the terminal one."""
    form = {
        "AccountSid": account_sid or new_sid("AC"),
        "ApiVersion": API_VERSION,
        "CallSid": call_sid,
        "CallStatus": call_status,
        "CallbackSource": "call-progress-events",
        "Called": to_number,
        "Caller": from_number,
        "Direction": direction,
        "From": from_number,
        "SequenceNumber": str(sequence_number),
        "Timestamp": timestamp or _rfc2822_now(),
        "To": to_number,
    }
    if call_duration is not None:
        form["CallDuration"] = str(call_duration)
    if answered_by is not None:
        form["AnsweredBy"] = answered_by
    form.update(extra)
    return form


STREAM_EVENTS = ("stream-started", "stream-stopped", "stream-error")


def stream_status_form(*, call_sid: str, stream_sid: str, stream_event: str,
                       account_sid: str | None = None, stream_name: str = "",
                       stream_error: str | None = None) -> dict[str, str]:
    """A ``<Stream statusCallback>`` request (1.8); ``StreamError`` only on ``stream-error``."""
    if stream_event not in STREAM_EVENTS:
        raise ValueError(f"Twilio sends no StreamEvent {stream_event!r}")
    if (stream_error is not None) != (stream_event == "stream-error"):
        raise ValueError("StreamError comes with stream-error, and only with it")
    form = {
        "AccountSid": account_sid or new_sid("AC"),
        "CallSid": call_sid,
        "StreamSid": stream_sid,
        "StreamName": stream_name or stream_sid,
        "StreamEvent": stream_event,
        "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    if stream_error is not None:
        form["StreamError"] = stream_error
    return form


async def post_signed(session: aiohttp.ClientSession, url: str, form: Form, *,
                      auth_token: str, signed_url: str | None = None,
                      signature: str | None = None, shared_key: SharedKey | None = None,
                      headers: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
    """POST ``form`` url-encoded to ``url`` with the header(s) Twilio would add.

    ``signed_url`` is the public URL Twilio was configured with (defaults to ``url``); pass
    ``signature`` to send a specific (e.g. wrong) value, ``shared_key`` to sign as a Webhooks
    rule with that SharedKey does. The body is read before returning, so
    ``await resp.text()`` works after the connection is released.
    """
    pairs = form_pairs(form)
    if signature is not None:
        sig = signature
    elif shared_key is not None:
        sig = twilio_signature(shared_key.secret, signed_url or url, pairs,
                               shared_key.algorithm)
    else:
        sig = twilio_signature(auth_token, signed_url or url, pairs)
    all_headers = {SIGNATURE_HEADER: sig, "User-Agent": "TwilioProxy/1.1",
                   "I-Twilio-Idempotency-Token": secrets.token_hex(16)}
    if shared_key is not None:
        all_headers[SETTINGS_HEADER] = shared_key.settings_header
    if headers:
        all_headers.update(headers)
    async with session.post(url, data=pairs, headers=all_headers) as resp:
        await resp.read()
        return resp


class TwilioWebhookSender:
    """Sends signed webhooks to a server that Twilio knows as ``public_url``.

    With ``shared_key`` every webhook is signed as a Webhooks rule naming that key would.
    """

    def __init__(self, session: aiohttp.ClientSession, *, auth_token: str, base_url: str,
                 public_url: str, shared_key: SharedKey | None = None) -> None:
        self.session = session
        self.auth_token = auth_token
        self.base_url = base_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.shared_key = shared_key

    async def post(self, path_qs: str, form: Form, *, signature: str | None = None,
                   headers: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """POST to ``base_url + path_qs``, signed for ``public_url + path_qs``."""
        return await post_signed(self.session, self.base_url + path_qs, form,
                                 auth_token=self.auth_token,
                                 signed_url=self.public_url + path_qs, signature=signature,
                                 shared_key=self.shared_key, headers=headers)
