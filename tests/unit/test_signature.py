"""X-Twilio-Signature (protocols.md 1.4): our validator, and the fake's signer, both
cross-checked against twilio's own RequestValidator (Auth Token / HMAC-SHA1 and SharedKey /
HMAC-SHA256)."""

from __future__ import annotations

import hashlib
import random

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator, get_signature_algorithm

from agentic_fast.carriers.twilio.signature import (
    HMAC_SHA1,
    HMAC_SHA256,
    TwilioSignatureValidator,
    parse_signature_settings,
)
from agentic_fast.core.errors import SignatureNotConfiguredError
from tests.fakes.twilio_webhooks import (
    incoming_call_form,
    new_shared_key,
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


@pytest.mark.parametrize(("header", "reason"), [
    (None, "unsigned"), ("", "unsigned"), ("0/KCTR6DLpKmkAf8muzZqo1nDgQ", "bad_signature"),
    ("é", "bad_signature"), ("x" * 28, "bad_signature")])
def test_missing_or_wrong_header_is_false(validator: TwilioSignatureValidator,
                                          header: str | None, reason: str) -> None:
    check = validator.validate_form("/myapp.php?foo=1&bar=2", VECTOR_PARAMS, header)
    assert not check and check.reason == reason


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
    check = validator.validate_url("https://mycompany.com:notaport/x", {}, VECTOR_SIG)
    assert not check and check.reason == "bad_signature"


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


# --------------------------------------------------------------------------- SharedKey, SHA-256
#
# Twilio signs with a SharedKey's secret (not the Auth Token) when a Webhooks rule applies
# and says so in X-Twilio-Webhooks-Signature-Settings: key=<SharedKey id>,algorithm=...
# The official RequestValidator, constructed with that secret, is the reference.

KEY_ID = "webhooks_sharedkey_01hz0000000000000000000000"
KEY_SECRET = "shared-key-secret-0001"
OTHER_ID = "webhooks_sharedkey_01hz0000000000000000000001"
OTHER_SECRET = "shared-key-secret-0002"
SHA256_SETTINGS = f"key={KEY_ID},algorithm=HMAC_SHA256"


def _shared(public: str = "https://mycompany.com") -> TwilioSignatureValidator:
    return TwilioSignatureValidator(TOKEN, public, {KEY_ID: KEY_SECRET, OTHER_ID: OTHER_SECRET})


def _official(secret: str, url: str, params: object, algorithm: str = HMAC_SHA256) -> str:
    return RequestValidator(secret).compute_signature(url, params, algorithm)


@pytest.mark.parametrize("algorithm", [HMAC_SHA1, HMAC_SHA256])
@pytest.mark.parametrize(("signed", "public", "path"), [
    ("https://mycompany.com/myapp.php?foo=1&bar=2", "https://mycompany.com",
     "/myapp.php?foo=1&bar=2"),
    ("https://mycompany.com:443/voice", "https://mycompany.com", "/voice"),
    ("https://mycompany.com/voice", "https://mycompany.com:443", "/voice"),
    ("http://mycompany.com:80/x?a=%20b", "http://mycompany.com", "/x?a=%20b"),
    ("https://mycompany.com:8443/p/voice", "https://mycompany.com:8443/p", "/voice"),
])
def test_shared_key_form_agrees_with_the_official_validator(
        algorithm: str, signed: str, public: str, path: str) -> None:
    form = MultiDict(incoming_call_form())
    sig = _official(KEY_SECRET, signed, form, algorithm)
    settings = f"key={KEY_ID},algorithm={algorithm}"
    assert RequestValidator(KEY_SECRET).validate(signed, form, sig, algorithm)
    check = _shared(public).validate_form(path, form, sig, settings)
    assert check and check.key_id == KEY_ID and check.algorithm == algorithm
    # the same signature is worthless without the header, or naming the other key
    assert _shared(public).validate_form(path, form, sig).reason == "bad_signature"
    other = f"key={OTHER_ID},algorithm={algorithm}"
    assert _shared(public).validate_form(path, form, sig, other).reason == "bad_signature"
    # and a tampered field breaks it, for us as for the reference
    tampered = MultiDict(form)
    tampered["From"] = "+15550000000"
    assert not RequestValidator(KEY_SECRET).validate(signed, tampered, sig, algorithm)
    assert not _shared(public).validate_form(path, tampered, sig, settings)


def test_shared_key_json_body_agrees_with_the_official_validator() -> None:
    url = f"https://mycompany.com/myapp.php?bodySHA256={JSON_HASH}"
    sig = _official(KEY_SECRET, url, None)
    assert RequestValidator(KEY_SECRET).validate(url, JSON_BODY.decode(), sig, HMAC_SHA256)
    path = f"/myapp.php?bodySHA256={JSON_HASH}"
    assert _shared().validate_json(path, JSON_BODY, sig, SHA256_SETTINGS)
    assert not RequestValidator(KEY_SECRET).validate(url, JSON_BODY.decode() + " ", sig,
                                                     HMAC_SHA256)
    assert _shared().validate_json(path, JSON_BODY + b" ", sig,
                                   SHA256_SETTINGS).reason == "bad_signature"


def test_fake_shared_key_signer_agrees_with_the_official_validator() -> None:
    key = new_shared_key()
    url = "https://agent.example.com/twilio/status?x=1"
    form = incoming_call_form()
    sig = twilio_signature(key.secret, url, form, key.algorithm)
    assert sig == _official(key.secret, url, MultiDict(form))
    assert RequestValidator(key.secret).validate(
        url, MultiDict(form), sig, get_signature_algorithm(key.settings_header))
    signed_url, json_sig = sign_json_body(key.secret, url, JSON_BODY, HMAC_SHA256)
    assert RequestValidator(key.secret).validate(signed_url, JSON_BODY.decode(), json_sig,
                                                 HMAC_SHA256)


@pytest.mark.parametrize("header", [
    None, "", "key=k1,algorithm=HMAC_SHA256", "algorithm=HMAC_SHA256,key=k1",
    " key = k1 , algorithm = hmac_sha256 ", "key=k1", "algorithm=HMAC_SHA1", "key=k1,foo",
    "algorithm=", "algorithm=HMAC_SHA512,key=k1", "garbage",
])
def test_settings_header_is_read_as_the_sdk_reads_it(header: str | None) -> None:
    key_id, algorithm = parse_signature_settings(header)
    assert algorithm == get_signature_algorithm(header).upper()
    assert key_id == ("k1" if header and "k1" in header else None)


@pytest.mark.parametrize(("settings", "reason"), [
    ("key=webhooks_sharedkey_unknown,algorithm=HMAC_SHA256", "unknown_key"),
    (f"key={KEY_ID},algorithm=HMAC_SHA512", "unknown_algorithm"),
    (f"key={KEY_ID},algorithm=RSA", "unknown_algorithm"),
    ("algorithm=HMAC_SHA256", "bad_settings"),
    ("nonsense", "bad_settings"),
])
def test_unknown_key_or_algorithm_is_refused_with_its_reason(settings: str,
                                                             reason: str) -> None:
    url = "https://mycompany.com/voice"
    form = {"CallSid": "CA1"}
    # whatever secret the sender used, an unusable header is refused before any HMAC
    for secret, algorithm in ((KEY_SECRET, HMAC_SHA256), (TOKEN, HMAC_SHA1)):
        sig = _official(secret, url, form, algorithm)
        check = _shared().validate_form("/voice", form, sig, settings)
        assert not check and check.reason == reason


def test_without_configured_shared_keys_every_key_is_unknown() -> None:
    url = "https://mycompany.com/voice"
    sig = _official(KEY_SECRET, url, {"A": "1"})
    plain = TwilioSignatureValidator(TOKEN, "https://mycompany.com")
    assert plain.validate_form("/voice", {"A": "1"}, sig, SHA256_SETTINGS).reason == \
        "unknown_key"


def test_the_auth_token_does_not_sign_for_a_shared_key() -> None:
    """With the settings header the secret is the SharedKey's; the Auth Token is refused."""
    url = "https://mycompany.com/voice"
    sig = _official(TOKEN, url, {"A": "1"}, HMAC_SHA256)
    assert _shared().validate_form("/voice", {"A": "1"}, sig, SHA256_SETTINGS).reason == \
        "bad_signature"
    # and without the header only the Auth Token with HMAC-SHA1 is accepted
    assert not _shared().validate_form("/voice", {"A": "1"}, sig)
    assert _shared().validate_form("/voice", {"A": "1"}, _official(TOKEN, url, {"A": "1"},
                                                                   HMAC_SHA1))


def test_rotation_accepts_both_configured_keys() -> None:
    url = "https://mycompany.com/voice"
    for key_id, secret in ((KEY_ID, KEY_SECRET), (OTHER_ID, OTHER_SECRET)):
        sig = _official(secret, url, {"A": "1"})
        assert _shared().validate_form("/voice", {"A": "1"}, sig,
                                       f"key={key_id},algorithm=HMAC_SHA256")


def test_duplicate_values_are_signed_once_like_the_sdk() -> None:
    pairs = [("A", "1"), ("A", "1"), ("A", "0")]
    url = "https://mycompany.com/x"
    sig = RequestValidator(TOKEN).compute_signature(url, MultiDict(pairs))
    assert TwilioSignatureValidator(TOKEN, "https://mycompany.com").validate_form(
        "/x", pairs, sig)


@pytest.mark.parametrize("algorithm", [HMAC_SHA1, HMAC_SHA256])
def test_random_requests_agree_with_the_official_validator(algorithm: str) -> None:
    """Seeded random forms, URLs and ports: we accept exactly what the reference accepts."""
    rng = random.Random(1234)
    outcomes: set[bool] = set()
    alphabet = "aZ09 +&=%/é?ü_-"
    hosts = ["https://h.example.com", "https://h.example.com:443", "http://h.example.com",
             "https://h.example.com:8443"]
    for _ in range(150):
        public = rng.choice(hosts)
        path = "/" + "".join(rng.choice("abc/") for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.5:
            path += "?q=" + "".join(rng.choice("a1%20") for _ in range(3))
        pairs = [("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))),
                  "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5))))
                 for _ in range(rng.randint(0, 6))]
        signed = rng.choice([public, public.replace(":443", ""), public + ":443"]
                            if ":8443" not in public else [public])
        secret = KEY_SECRET if algorithm == HMAC_SHA256 else TOKEN
        settings = f"key={KEY_ID},algorithm={algorithm}" if algorithm == HMAC_SHA256 else None
        sig = _official(secret, signed + path, MultiDict(pairs), algorithm)
        if rng.random() < 0.3:  # a near miss: one character changed
            i = rng.randrange(len(sig) - 1)
            sig = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1:]
        want = RequestValidator(secret).validate(public + path, MultiDict(pairs), sig,
                                                 algorithm)
        got = _shared(public).validate_form(path, pairs, sig, settings)
        assert bool(got) == want, (public, signed, path, pairs)
        outcomes.add(want)
    assert outcomes == {True, False}
