"""``X-Twilio-Signature`` checks for webhooks (protocols.md 1.4), around the official
``twilio.request_validator.RequestValidator``.

Twilio signs the URL *it* called, so behind a proxy or tunnel the URL is rebuilt from the
configured public base URL plus the raw path and query exactly as received (aiohttp:
``request.raw_path``), never from the ``Host`` the proxy forwards. The validator tries the
URL with and without the default port. A missing or wrong header makes ``validate_*`` return
``False``; they never raise on request data. Without an auth token there is nothing to check
against: constructing the validator raises :class:`SignatureNotConfiguredError`, so the
server refuses webhooks instead of accepting them unchecked.

Not handled: the shared-key variant (``X-Twilio-Webhooks-Signature-Settings`` with
HMAC-SHA256); such requests fail validation, they are never accepted unchecked.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import RequestValidator

from agentic_fast.errors import AgenticFastError

__all__ = [
    "SIGNATURE_HEADER",
    "FormParams",
    "SignatureNotConfiguredError",
    "TwilioSignatureValidator",
]

SIGNATURE_HEADER = "X-Twilio-Signature"

FormParams = Mapping[str, str] | Mapping[str, list[str]] | Iterable[tuple[str, str]] | Any
"""POST fields: a dict, a dict of lists (``parse_qs``), a multidict (``getall``) or pairs."""


class SignatureNotConfiguredError(AgenticFastError):
    """No Twilio auth token (or no public URL) is configured: webhooks must be refused."""


class _MultiParams:
    """Every value of every field, in the shape ``RequestValidator.get_values`` reads."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def __iter__(self) -> Any:
        return iter(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def getall(self, name: str) -> list[str]:
        return self._values[name]


def _normalise(params: FormParams | None) -> _MultiParams:
    values: dict[str, list[str]] = {}
    if params is None:
        return _MultiParams(values)
    getall = getattr(params, "getall", None)
    if getall is not None:  # aiohttp / multidict MultiDict(Proxy)
        for key in set(params):
            values[str(key)] = [str(v) for v in getall(key)]
        return _MultiParams(values)
    items = params.items() if isinstance(params, Mapping) else params
    for key, value in items:
        bucket = values.setdefault(str(key), [])
        if isinstance(value, list | tuple):
            bucket.extend(str(v) for v in value)
        else:
            bucket.append(str(value))
    return _MultiParams(values)


class TwilioSignatureValidator:
    """Validates webhook signatures for one auth token and one public base URL.

    ``public_url`` is the scheme, host (and port) Twilio is configured with, e.g.
    ``https://agent.example.com``; a path prefix is allowed and is put in front of the
    request path (for a proxy that strips it).
    """

    __slots__ = ("_base", "_validator")

    def __init__(self, auth_token: str | None, public_url: str | None) -> None:
        if not auth_token:
            raise SignatureNotConfiguredError(
                "no Twilio auth token configured: cannot validate X-Twilio-Signature, "
                "refusing webhooks")
        if not public_url:
            raise SignatureNotConfiguredError(
                "no public URL configured: cannot rebuild the URL Twilio signed")
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise SignatureNotConfiguredError(
                f"public URL must be http(s)://host[:port][/prefix] without a query, "
                f"got {public_url!r}")
        self._base = public_url.rstrip("/")
        self._validator = RequestValidator(auth_token)

    def url_for(self, raw_path: str, *, scheme: str | None = None) -> str:
        """The URL Twilio called: public base + raw path and query as received.

        ``scheme`` replaces the base's scheme (``"wss"`` for the Media Streams upgrade).
        """
        if not raw_path.startswith("/"):
            raw_path = "/" + raw_path
        base = self._base
        if scheme is not None:
            base = scheme + base[base.index("://"):]
        return base + raw_path

    def validate_url(self, url: str, params: FormParams | None, signature: str | None) -> bool:
        """Check ``signature`` for a full ``url`` and form fields (``None`` for GET)."""
        if not signature:
            return False
        try:
            return bool(self._validator.validate(url, _normalise(params), signature))
        except (ValueError, TypeError, UnicodeError):
            return False  # e.g. a non-numeric port in the URL

    def validate_form(self, raw_path: str, params: FormParams | None,
                      signature: str | None) -> bool:
        """Form-encoded webhook (the Voice default): URL + sorted fields."""
        return self.validate_url(self.url_for(raw_path), params, signature)

    def validate_json(self, raw_path: str, body: bytes | str, signature: str | None) -> bool:
        """JSON webhook: the URL carries ``bodySHA256``; checks the hash and the URL signature.

        A JSON body whose URL has no ``bodySHA256`` cannot be checked and fails.
        """
        if not signature:
            return False
        url = self.url_for(raw_path)
        hashes = parse_qs(urlsplit(url).query).get("bodySHA256")
        if not hashes:
            return False
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        body_ok = hmac.compare_digest(hashlib.sha256(raw).hexdigest(), hashes[0].lower())
        return self.validate_url(url, None, signature) and body_ok

    def validate_websocket(self, raw_path: str, signature: str | None) -> bool:
        """Media Streams upgrade: signed over the ``wss://`` URL of the TwiML, no fields."""
        return self.validate_url(self.url_for(raw_path, scheme="wss"), None, signature)
