"""Webhook bodies, sans-I/O: the two body types Twilio sends, read once, bounded.

Twilio posts ``application/x-www-form-urlencoded`` (the Voice default) or, for some
webhooks, ``application/json`` (protocols.md 1.4). Anything else (``multipart/form-data``,
text, no type) is refused with 415 before the body is parsed. The bytes handed here are
the whole body, read once (aiohttp bounds its size); this module parses them, bounds the
field count, every name and every value, and checks that the SID fields are SIDs.

Every violation is a :class:`WebhookBodyError` carrying the HTTP status to answer
(415 or 400), a short ``reason`` for counters and the offending ``field``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import orjson

from agentic_fast.carriers.twilio.status import SID_PATTERNS
from agentic_fast.core.errors import WebhookBodyError

__all__ = [
    "FORM_TYPE",
    "JSON_TYPE",
    "MAX_FIELDS",
    "MAX_NAME_CHARS",
    "MAX_VALUE_CHARS",
    "check_content_type",
    "parse_webhook_body",
]

FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"
#: Fields one webhook may carry (an incoming-call webhook has about 30).
MAX_FIELDS = 100
MAX_NAME_CHARS = 64
#: Characters of one value; the fields below get tighter bounds.
MAX_VALUE_CHARS = 4096
FIELD_MAX_CHARS: dict[str, int] = {
    "From": 256, "To": 256, "Caller": 256, "Called": 256, "CallStatus": 32,
    "Direction": 32, "SequenceNumber": 32, "CallDuration": 32, "Timestamp": 64,
}
#: Fields that, when present and not empty, must be a SID with this prefix.
SID_FIELDS: dict[str, str] = {
    "CallSid": "CA", "ParentCallSid": "CA", "AccountSid": "AC", "StreamSid": "MZ",
}


def check_content_type(content_type: str, charset: str | None) -> None:
    """Refuse (415) every body type Twilio does not send, and any charset but UTF-8."""
    if content_type not in (FORM_TYPE, JSON_TYPE):
        raise WebhookBodyError(
            f"unsupported Content-Type {content_type[:60]!r}: Twilio webhooks are "
            f"{FORM_TYPE} or {JSON_TYPE}", status=415, reason="content_type")
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise WebhookBodyError(f"unsupported charset {charset[:40]!r} (UTF-8 only)",
                               status=415, reason="charset")


def _bad(message: str, reason: str, field: str | None = None) -> WebhookBodyError:
    return WebhookBodyError(message, status=400, reason=reason, field=field)


def _check_field(name: str, value: str) -> None:
    if len(name) > MAX_NAME_CHARS:
        raise _bad(f"field name of {len(name)} characters (at most {MAX_NAME_CHARS})",
                   "too_long")
    limit = FIELD_MAX_CHARS.get(name, MAX_VALUE_CHARS)
    if len(value) > limit:
        raise _bad(f"{name} is {len(value)} characters long (at most {limit})", "too_long",
                   name)
    prefix = SID_FIELDS.get(name)
    if prefix is not None and value and SID_PATTERNS[prefix].fullmatch(value) is None:
        raise _bad(f"{name} is not a {prefix} SID: {value[:40]!r}", "bad_sid", name)


def _form_fields(body: bytes) -> dict[str, list[str]]:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text.rstrip(), keep_blank_values=True, encoding="utf-8",
                          errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError as exc:
        raise _bad("form body is not UTF-8", "bad_encoding") from exc
    except ValueError as exc:  # more than max_num_fields
        raise _bad(f"form has more than {MAX_FIELDS} fields", "too_many_fields") from exc
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        _check_field(name, value)
        fields.setdefault(name, []).append(value)
    return fields


def _json_fields(body: bytes) -> dict[str, list[str]]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad("body is not valid JSON", "bad_body") from exc
    if not isinstance(doc, dict):
        raise _bad("JSON body must be an object", "bad_body")
    if len(doc) > MAX_FIELDS:
        raise _bad(f"JSON body has more than {MAX_FIELDS} fields", "too_many_fields")
    fields: dict[str, list[str]] = {}
    for name, value in doc.items():
        if isinstance(value, dict | list):
            raise _bad(f"{name[:MAX_NAME_CHARS]} must be a scalar", "bad_body", name)
        text = "" if value is None else str(value)
        _check_field(name, text)
        fields[name] = [text]
    return fields


def parse_webhook_body(body: bytes, content_type: str) -> dict[str, list[str]]:
    """The fields of a webhook body of ``content_type`` (already checked), bounded."""
    if content_type == JSON_TYPE:
        return _json_fields(body)
    return _form_fields(body)
