"""``X-Twilio-Signature`` checks for webhooks (protocols.md 1.4).

Our own implementation of the rule the official ``twilio.request_validator`` applies (the
unit tests hold the two against each other): the signed string is the URL Twilio called
followed by every POST field name+value (names sorted, each name's distinct values sorted);
the signature is base64 of its HMAC. Which key and hash:

- no ``X-Twilio-Webhooks-Signature-Settings`` header: HMAC-SHA1 with the account Auth Token;
- with the header (``key=<SharedKey id>,algorithm=HMAC_SHA256``, set when a Webhooks rule
  applies): the named SharedKey's *secret* (``twilio.webhook_shared_keys`` maps ids to
  secrets, several during a rotation) with the named algorithm (``HMAC_SHA1`` when absent).
  An unknown algorithm or key id, or a header without ``key=``, is refused, never guessed.

Twilio signs the URL *it* called, so behind a proxy or tunnel the URL is rebuilt from the
configured public base URL plus the raw path and query exactly as received (aiohttp:
``request.raw_path``), never from the ``Host`` the proxy forwards. The URL is tried with and
without its port (Twilio is inconsistent about ``:443``). ``validate_*`` never raise on request
data: they return a :class:`SignatureCheck`, false with a ``reason`` when refused. Without an
auth token there is nothing to check against: constructing the validator raises
:class:`SignatureNotConfiguredError`, so the server refuses webhooks instead of accepting them
unchecked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agentic_fast.core.errors import SignatureNotConfiguredError

__all__ = [
    "HMAC_SHA1",
    "HMAC_SHA256",
    "SETTINGS_HEADER",
    "SIGNATURE_HEADER",
    "FormParams",
    "SignatureCheck",
    "TwilioSignatureValidator",
    "parse_signature_settings",
]

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
HMAC_SHA1 = "HMAC_SHA1"
HMAC_SHA256 = "HMAC_SHA256"
_HASHES: dict[str, Callable[..., Any]] = {HMAC_SHA1: hashlib.sha1, HMAC_SHA256: hashlib.sha256}
_DEFAULT_PORTS = {"https": 443, "http": 80, "wss": 443, "ws": 80}

FormParams = Mapping[str, str] | Mapping[str, list[str]] | Iterable[tuple[str, str]] | Any
"""POST fields: a dict, a dict of lists (``parse_qs``), a multidict (``getall``) or pairs."""


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """Outcome of one check; truthy when valid.

    ``reason`` (when refused): ``unsigned``, ``bad_signature``, ``unknown_algorithm``,
    ``unknown_key`` (a SharedKey id not configured) or ``bad_settings`` (settings header
    without ``key=``). ``key_id`` is the SharedKey id the request named (``None``: the auth
    token); ``algorithm`` the one it named.
    """

    reason: str | None
    algorithm: str = HMAC_SHA1
    key_id: str | None = None

    def __bool__(self) -> bool:
        return self.reason is None


def parse_signature_settings(header: str | None) -> tuple[str | None, str]:
    """``(key id, ALGORITHM)`` of a settings header, as the official SDK reads it.

    Parts are ``name=value`` separated by commas; other parts are ignored. A missing or
    empty header is ``(None, HMAC_SHA1)`` (the Auth Token scheme); a header without
    ``algorithm=`` means ``HMAC_SHA1``; the algorithm is upper-cased.
    """
    key_id: str | None = None
    algorithm = HMAC_SHA1
    for part in (header or "").split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            continue
        if name == "algorithm":
            algorithm = value.upper()
        elif name == "key":
            key_id = value
    return key_id, algorithm


def _form_values(params: FormParams | None) -> dict[str, set[str]]:
    """Every distinct value of every field (the SDK signs ``sorted(set(values))``)."""
    values: dict[str, set[str]] = {}
    if params is None:
        return values
    getall = getattr(params, "getall", None)
    if getall is not None:  # aiohttp / multidict MultiDict(Proxy)
        for key in set(params):
            values[str(key)] = {str(v) for v in getall(key)}
        return values
    items = params.items() if isinstance(params, Mapping) else params
    for key, value in items:
        bucket = values.setdefault(str(key), set())
        if isinstance(value, list | tuple):
            bucket.update(str(v) for v in value)
        else:
            bucket.add(str(value))
    return values


def _fields_string(params: FormParams | None) -> str:
    values = _form_values(params)
    return "".join(name + value for name in sorted(values) for value in sorted(values[name]))


def _url_variants(url: str) -> tuple[str, str]:
    """``url`` without its port and with it (the default port added when there is none).

    As the official validator does (it adds ``:443`` for https, ``:80`` otherwise; we add
    ``:443`` for wss too). Raises ``ValueError`` on a URL whose port is not a number.
    """
    parts = urlsplit(url)
    if parts.port:
        bare = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])
        return bare.geturl(), parts.geturl()
    default = _DEFAULT_PORTS.get(parts.scheme, 80)
    return parts.geturl(), parts._replace(netloc=f"{parts.netloc}:{default}").geturl()


class TwilioSignatureValidator:
    """Validates webhook signatures for one auth token, its SharedKeys and one public URL.

    ``public_url`` is the scheme, host (and port) Twilio is configured with, e.g.
    ``https://agent.example.com``; a path prefix is allowed and is put in front of the
    request path (for a proxy that strips it). ``shared_keys`` maps SharedKey ids
    (``key=`` of the settings header) to their secrets.
    """

    __slots__ = ("_base", "_keys", "_token")

    def __init__(self, auth_token: str | None, public_url: str | None,
                 shared_keys: Mapping[str, str] | None = None) -> None:
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
        self._token = auth_token.encode("utf-8")
        self._keys = {key_id: secret.encode("utf-8")
                      for key_id, secret in (shared_keys or {}).items()}

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

    def _secret(self, settings: str | None, key_id: str | None,
                algorithm: str) -> tuple[bytes, Callable[..., Any]] | SignatureCheck:
        """The key and hash a request's settings header names, or the refusal."""
        digest = _HASHES.get(algorithm)
        if digest is None:
            return SignatureCheck("unknown_algorithm", algorithm, key_id)
        if not (settings or "").strip():
            return self._token, digest
        if key_id is None:
            return SignatureCheck("bad_settings", algorithm, None)
        secret = self._keys.get(key_id)
        if secret is None:
            return SignatureCheck("unknown_key", algorithm, key_id)
        return secret, digest

    def validate_url(self, url: str, params: FormParams | None, signature: str | None,
                     settings: str | None = None) -> SignatureCheck:
        """Check ``signature`` for a full ``url`` and form fields (``None`` for GET).

        ``settings`` is the ``X-Twilio-Webhooks-Signature-Settings`` header, if any.
        """
        key_id, algorithm = parse_signature_settings(settings)
        if not signature:
            return SignatureCheck("unsigned", algorithm, key_id)
        secret = self._secret(settings, key_id, algorithm)
        if isinstance(secret, SignatureCheck):
            return secret
        key, digest = secret
        try:
            variants = _url_variants(url)
        except ValueError:  # e.g. a non-numeric port in the URL
            return SignatureCheck("bad_signature", algorithm, key_id)
        given = signature.encode("utf-8", "replace")
        fields = _fields_string(params).encode("utf-8")
        for variant in variants:
            mac = hmac.new(key, variant.encode("utf-8") + fields, digest)
            if hmac.compare_digest(base64.b64encode(mac.digest()), given):
                return SignatureCheck(None, algorithm, key_id)
        return SignatureCheck("bad_signature", algorithm, key_id)

    def validate_form(self, raw_path: str, params: FormParams | None,
                      signature: str | None, settings: str | None = None) -> SignatureCheck:
        """Form-encoded webhook (the Voice default): URL + sorted fields."""
        return self.validate_url(self.url_for(raw_path), params, signature, settings)

    def validate_json(self, raw_path: str, body: bytes | str, signature: str | None,
                      settings: str | None = None) -> SignatureCheck:
        """JSON webhook: the URL carries ``bodySHA256``; checks the hash and the URL signature.

        A JSON body whose URL has no ``bodySHA256`` cannot be checked and fails.
        """
        url = self.url_for(raw_path)
        check = self.validate_url(url, None, signature, settings)
        if not check:
            return check
        hashes = parse_qs(urlsplit(url).query).get("bodySHA256")
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if not hashes or not hmac.compare_digest(hashlib.sha256(raw).hexdigest().encode(),
                                                 hashes[0].lower().encode("utf-8")):
            return SignatureCheck("bad_signature", check.algorithm, check.key_id)
        return check

    def validate_websocket(self, raw_path: str, signature: str | None,
                           settings: str | None = None) -> SignatureCheck:
        """Media Streams upgrade: signed over the ``wss://`` URL of the TwiML, no fields."""
        return self.validate_url(self.url_for(raw_path, scheme="wss"), None, signature,
                                 settings)
