"""X-Twilio-Signature (protocols.md 1.4): our validator, and the fake's signer cross-checked
against twilio's own RequestValidator."""

from __future__ import annotations

import hashlib

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from agentic_fast.telephony.signature import SignatureNotConfiguredError, TwilioSignatureValidator
from tests.fakes.twilio_webhooks import (
    incoming_call_form,
    sign_json_body,
    signing_string,
    twilio_signature,
)

TOKEN = "12345"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
VECTOR_SIG = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
JSON_BODY = b'{"property": "value", "boolean": true}'
JSON_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
JSON_SIG = "y77kIzt2vzLz71DgmJGsen2scGs="


@pytest.fixture
def validator() -> TwilioSignatureValidator:
    return TwilioSignatureValidator(TOKEN, "https://mycompany.com")


# --------------------------------------------------------------------------- vectors


def test_form_vector(validator: TwilioSignatureValidator) -> None:
    assert validator.url_for("/myapp.php?foo=1&bar=2") == \
        "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert validator.validate_form("/myapp.php?foo=1&bar=2", VECTOR_PARAMS, VECTOR_SIG)


def test_form_vector_in_every_params_shape(validator: TwilioSignatureValidator) -> None:
    path = "/myapp.php?foo=1&bar=2"
    assert validator.validate_form(path, list(VECTOR_PARAMS.items()), VECTOR_SIG)
    assert validator.validate_form(path, MultiDict(VECTOR_PARAMS), VECTOR_SIG)
    assert validator.validate_form(path, {k: [v] for k, v in VECTOR_PARAMS.items()},
                                   VECTOR_SIG)


def test_json_vector(validator: TwilioSignatureValidator) -> None:
    assert hashlib.sha256(JSON_BODY).hexdigest() == JSON_HASH
    path = f"/myapp.php?bodySHA256={JSON_HASH}"
    assert validator.validate_json(path, JSON_BODY, JSON_SIG)
    assert validator.validate_json(path, JSON_BODY.decode(), JSON_SIG)


def test_json_body_tampered_or_unhashed(validator: TwilioSignatureValidator) -> None:
    path = f"/myapp.php?bodySHA256={JSON_HASH}"
    assert not validator.validate_json(path, JSON_BODY + b" ", JSON_SIG)
    assert not validator.validate_json("/myapp.php", JSON_BODY, JSON_SIG)


def test_websocket_upgrade_vector() -> None:
    validator = TwilioSignatureValidator(TOKEN, "https://example.com")
    assert validator.url_for("/media", scheme="wss") == "wss://example.com/media"
    assert validator.validate_websocket("/media", "7PR3qMkpDyEJtMrVOY/LDyNq8J8=")
    assert not validator.validate_form("/media", None, "7PR3qMkpDyEJtMrVOY/LDyNq8J8=")


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("header", [None, "", "0/KCTR6DLpKmkAf8muzZqo1nDgQ", "é", "x" * 28])
def test_missing_or_wrong_header_is_false(validator: TwilioSignatureValidator,
                                          header: str | None) -> None:
    assert validator.validate_form("/myapp.php?foo=1&bar=2", VECTOR_PARAMS, header) is False


def test_any_change_breaks_the_signature(validator: TwilioSignatureValidator) -> None:
    assert not validator.validate_form("/myapp.php?foo=1&bar=3", VECTOR_PARAMS, VECTOR_SIG)
    assert not validator.validate_form("/myapp.php?bar=2&foo=1", VECTOR_PARAMS, VECTOR_SIG)
    assert not validator.validate_form("/myapp.php?foo=1&bar=2",
                                       {**VECTOR_PARAMS, "Digits": "1235"}, VECTOR_SIG)
    assert not validator.validate_form("/myapp.php?foo=1&bar=2",
                                       {**VECTOR_PARAMS, "Extra": ""}, VECTOR_SIG)
    other = TwilioSignatureValidator("54321", "https://mycompany.com")
    assert not other.validate_form("/myapp.php?foo=1&bar=2", VECTOR_PARAMS, VECTOR_SIG)
    proxied = TwilioSignatureValidator(TOKEN, "http://mycompany.com")
    assert not proxied.validate_form("/myapp.php?foo=1&bar=2", VECTOR_PARAMS, VECTOR_SIG)


def test_garbage_url_does_not_raise() -> None:
    validator = TwilioSignatureValidator(TOKEN, "https://mycompany.com")
    assert validator.validate_url("https://mycompany.com:notaport/x", {}, VECTOR_SIG) is False


@pytest.mark.parametrize(("token", "url"), [
    (None, "https://a.example.com"), ("", "https://a.example.com"),
    (TOKEN, None), (TOKEN, ""), (TOKEN, "ftp://a.example.com"), (TOKEN, "a.example.com"),
    (TOKEN, "https://a.example.com/?q=1"),
])
def test_not_configured_refuses(token: str | None, url: str | None) -> None:
    with pytest.raises(SignatureNotConfiguredError):
        TwilioSignatureValidator(token, url)


# --------------------------------------------------------------------------- proxies, ports


def test_public_url_behind_a_tunnel() -> None:
    """The server sees http://127.0.0.1:8080/voice; Twilio signed the public https URL."""
    form = incoming_call_form()
    sig = twilio_signature("tok", "https://abc.ngrok.app/twilio/voice?x=%20y", form)
    validator = TwilioSignatureValidator("tok", "https://abc.ngrok.app/")
    assert validator.validate_form("/twilio/voice?x=%20y", form, sig)
    # The raw query must be kept as received: a decoded query does not match.
    assert not validator.validate_form("/twilio/voice?x= y", form, sig)


def test_public_url_with_path_prefix() -> None:
    sig = twilio_signature("tok", "https://example.com/agent/voice", {"A": "1"})
    validator = TwilioSignatureValidator("tok", "https://example.com/agent")
    assert validator.validate_form("/voice", {"A": "1"}, sig)


@pytest.mark.parametrize(("signed", "public"), [
    ("https://example.com:443/voice", "https://example.com"),
    ("https://example.com/voice", "https://example.com:443"),
    ("http://example.com:80/voice", "http://example.com"),
])
def test_default_port_either_way(signed: str, public: str) -> None:
    sig = twilio_signature("tok", signed, {"A": "1"})
    assert TwilioSignatureValidator("tok", public).validate_form("/voice", {"A": "1"}, sig)


def test_multi_valued_fields() -> None:
    pairs = [("StatusCallbackEvent", "ringing"), ("StatusCallbackEvent", "answered"),
             ("A", "1")]
    url = "https://example.com/x"
    sig = twilio_signature("tok", url, pairs)
    validator = TwilioSignatureValidator("tok", "https://example.com")
    assert validator.validate_form("/x", pairs, sig)
    assert validator.validate_form("/x", MultiDict(pairs), sig)
    assert validator.validate_form("/x", {"A": "1",
                                          "StatusCallbackEvent": ["answered", "ringing"]}, sig)
    assert not validator.validate_form("/x", pairs[1:], sig)


# --------------------------------------------------------------------------- the fake signer


def test_fake_signer_reproduces_the_vectors() -> None:
    assert signing_string("https://mycompany.com/myapp.php?foo=1&bar=2", VECTOR_PARAMS) == (
        "https://mycompany.com/myapp.php?foo=1&bar=2CallSidCA1234567890ABCDECaller+12349013030"
        "Digits1234From+12349013030To+18005551212")
    assert twilio_signature(TOKEN, "https://mycompany.com/myapp.php?foo=1&bar=2",
                            VECTOR_PARAMS) == VECTOR_SIG
    url, sig = sign_json_body(TOKEN, "https://mycompany.com/myapp.php", JSON_BODY)
    assert url == f"https://mycompany.com/myapp.php?bodySHA256={JSON_HASH}"
    assert sig == JSON_SIG
    assert twilio_signature(TOKEN, "wss://example.com/media") == "7PR3qMkpDyEJtMrVOY/LDyNq8J8="


@pytest.mark.parametrize("form", [
    incoming_call_form(),
    {"b": "2", "B": "1", "a": "", "Z": "é ü+&="},
    [("k", "b"), ("k", "a"), ("K", "c"), ("k", "")],
])
def test_fake_signer_agrees_with_twilio_request_validator(form: object) -> None:
    url = "https://agent.example.com/twilio/voice?a=1&b=%2F"
    ours = twilio_signature("s3cret", url, form)  # type: ignore[arg-type]
    params = MultiDict(form)  # type: ignore[arg-type]
    assert RequestValidator("s3cret").compute_signature(url, params) == ours
    assert RequestValidator("s3cret").validate(url, params, ours)
