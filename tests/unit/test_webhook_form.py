"""Webhook bodies (telephony/form.py): only Twilio's two body types, parsed once, bounded."""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
import pytest

from agentic_fast.carriers.twilio.form import (
    FORM_TYPE,
    JSON_TYPE,
    MAX_FIELDS,
    check_content_type,
    parse_webhook_body,
)
from agentic_fast.core.errors import WebhookBodyError
from tests.fakes.twilio_webhooks import incoming_call_form


@pytest.mark.parametrize("content_type", ["multipart/form-data", "text/plain", "",
                                          "application/octet-stream", "application/xml"])
def test_body_types_twilio_does_not_send_are_415(content_type: str) -> None:
    with pytest.raises(WebhookBodyError) as err:
        check_content_type(content_type, None)
    assert (err.value.status, err.value.reason) == (415, "content_type")


def test_only_utf8_charset() -> None:
    check_content_type(FORM_TYPE, "UTF-8")
    check_content_type(JSON_TYPE, "utf8")
    with pytest.raises(WebhookBodyError) as err:
        check_content_type(FORM_TYPE, "iso-8859-1")
    assert (err.value.status, err.value.reason) == (415, "charset")


def test_a_real_incoming_call_form_parses() -> None:
    form = incoming_call_form()
    fields = parse_webhook_body(urlencode(form).encode(), FORM_TYPE)
    assert fields == {k: [v] for k, v in form.items()}


def test_repeated_fields_are_kept() -> None:
    assert parse_webhook_body(b"a=1&a=2&b=", FORM_TYPE) == {"a": ["1", "2"], "b": [""]}


@pytest.mark.parametrize(("body", "reason", "field"), [
    (urlencode({"CallSid": "CA" + "a" * 298}).encode(), "bad_sid", "CallSid"),
    (urlencode({"CallSid": "CA" + "z" * 32}).encode(), "bad_sid", "CallSid"),
    (urlencode({"AccountSid": "AC123"}).encode(), "bad_sid", "AccountSid"),
    (urlencode({"StreamSid": "CA" + "0" * 32}).encode(), "bad_sid", "StreamSid"),
    (urlencode({"SequenceNumber": "9" * 5000}).encode(), "too_long", "SequenceNumber"),
    (urlencode({"From": "+1" * 200}).encode(), "too_long", "From"),
    (urlencode({"Other": "x" * 5000}).encode(), "too_long", "Other"),
    (urlencode({"N" * 100: "x"}).encode(), "too_long", None),
    ("&".join(f"f{i}=1" for i in range(MAX_FIELDS + 1)).encode(), "too_many_fields", None),
    (b"CallSid=\xff\xfe", "bad_encoding", None),
    (b"CallSid=%ff%fe", "bad_encoding", None),
])
def test_form_out_of_bounds_is_400(body: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(WebhookBodyError) as err:
        parse_webhook_body(body, FORM_TYPE)
    assert (err.value.status, err.value.reason, err.value.field) == (400, reason, field)


@pytest.mark.parametrize(("body", "reason"), [
    (b"nope", "bad_body"),
    (b"[1]", "bad_body"),
    (b'{"CallSid": {"a": 1}}', "bad_body"),
    (b'{"a": ' + b"9" * 5000 + b"}", "bad_body"),
    (b'{"a":' * 300 + b"1" + b"}" * 300, "bad_body"),
    (orjson.dumps({"SequenceNumber": "9" * 40}), "too_long"),
    (orjson.dumps({f"f{i}": 1 for i in range(MAX_FIELDS + 1)}), "too_many_fields"),
])
def test_json_out_of_bounds_is_400(body: bytes, reason: str) -> None:
    with pytest.raises(WebhookBodyError) as err:
        parse_webhook_body(body, JSON_TYPE)
    assert (err.value.status, err.value.reason) == (400, reason)


def test_json_scalars_become_strings() -> None:
    fields = parse_webhook_body(b'{"CallStatus": "ringing", "SequenceNumber": 3, "X": null}',
                                JSON_TYPE)
    assert fields == {"CallStatus": ["ringing"], "SequenceNumber": ["3"], "X": [""]}
