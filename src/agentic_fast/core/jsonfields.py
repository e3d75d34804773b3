"""Typed field access for the sans-I/O JSON parsers (Twilio, OpenAI, Gemini, OpenClaw).

One :class:`JsonFields` per peer, bound to that peer's :class:`~.errors.MessageError`
subclass: every refusal raises it with a counter ``reason`` (``bad_type``, ``bad_value``)
and ``field`` naming the offending field (``where`` + key, e.g. ``"start.streamSid"``).
Types are checked with ``type(v) is T``: JSON ``true`` is no integer, and nothing but
``orjson`` output is expected. A missing key raises ``KeyError``; each parser turns that into
one ``missing_field`` error per message (a single ``try`` around the parse).

Parsers alias the bound methods once at import (``_str = _FIELDS.get_str``), so a call costs
what the per-module helper functions cost before. The hot paths (Twilio ``media``, OpenAI
audio delta, Gemini audio chunk) keep their inline checks and use these only to name the
field of a message that failed them.
"""

from __future__ import annotations

from typing import Any, NoReturn

from agentic_fast.core.errors import MessageError

__all__ = ["JsonFields", "JsonObject"]

JsonObject = dict[str, Any]


class JsonFields:
    """Typed accessors that raise ``error`` (one peer's :class:`MessageError`)."""

    __slots__ = ("error",)

    def __init__(self, error: type[MessageError]) -> None:
        self.error = error

    def fail(self, reason: str, message: str, field: str | None = None) -> NoReturn:
        """Raise the peer's error with ``reason`` and ``field``."""
        raise self.error(message, reason=reason, field=field)

    # -- by key ---------------------------------------------------------------------------------

    def get_str(self, msg: JsonObject, key: str, where: str = "") -> str:
        """``msg[key]``, a string."""
        value = msg[key]
        if type(value) is not str:
            self.fail("bad_type", f"{where}{key!r} must be a string, got {value!r:.40}",
                      where + key)
        return value

    def get_opt_str(self, msg: JsonObject, key: str, where: str = "") -> str | None:
        """``msg.get(key)``, a string or null/absent."""
        value = msg.get(key)
        if value is not None and type(value) is not str:
            self.fail("bad_type", f"{where}{key!r} must be a string or null, got {value!r:.40}",
                      where + key)
        return value

    def get_nonempty_str(self, msg: JsonObject, key: str, where: str = "") -> str:
        """``msg.get(key)``, a non-empty string (absent counts as ``missing_field``)."""
        value = msg.get(key)
        if type(value) is not str or not value:
            reason = "missing_field" if value is None else "bad_type"
            self.fail(reason, f"{where}{key!r} must be a non-empty string, got {value!r:.40}",
                      where + key)
        return value

    def get_int(self, msg: JsonObject, key: str, where: str = "") -> int:
        """``msg[key]``, a JSON integer."""
        value = msg[key]
        if type(value) is not int:
            self.fail("bad_type", f"{where}{key!r} must be an integer, got {value!r:.40}",
                      where + key)
        return value

    def get_opt_int(self, msg: JsonObject, key: str, where: str = "", *,
                    minimum: int | None = None) -> int | None:
        """``msg.get(key)``, an integer (at least ``minimum`` when given) or null/absent."""
        value = msg.get(key)
        if value is None:
            return None
        if type(value) is not int:
            self.fail("bad_type", f"{where}{key!r} must be an integer, got {value!r:.40}",
                      where + key)
        if minimum is not None and value < minimum:
            self.fail("bad_value", f"{where}{key!r} must be at least {minimum}, got {value}",
                      where + key)
        return value

    def get_digits(self, msg: JsonObject, key: str, where: str = "", *, max_digits: int = 18,
                   or_int: bool = False) -> int:
        """``msg[key]``, a non-negative integer sent as a JSON string of ASCII digits
        (``"160"``; a non-negative JSON integer too where ``or_int``). ``max_digits`` keeps
        ``int()`` away from its 4,300-digit limit (18 digits stay below 2**63)."""
        value = msg[key]
        if or_int and type(value) is int and value >= 0:
            return value
        if type(value) is not str or not value.isdigit() or not value.isascii():
            self.fail("bad_type", f"{where}{key!r} must be a string of digits, got {value!r:.40}",
                      where + key)
        if len(value) > max_digits:
            self.fail("bad_value", f"{where}{key!r} has {len(value)} digits (at most "
                      f"{max_digits})", where + key)
        return int(value)

    def get_obj(self, msg: JsonObject, key: str, where: str = "") -> JsonObject:
        """``msg[key]``, a JSON object."""
        value = msg[key]
        if type(value) is not dict:
            self.fail("bad_type",
                      f"{where}{key!r} must be a JSON object, got {type(value).__name__}",
                      where + key)
        return value

    # -- a value already in hand (``where`` is the field's full name) ---------------------------

    def check_str(self, value: Any, where: str) -> str:
        """``value``, a string."""
        if type(value) is not str:
            self.fail("bad_type", f"{where} must be a string, got {value!r:.40}", where)
        return value

    def check_obj(self, value: Any, where: str) -> JsonObject:
        """``value``, a JSON object."""
        if type(value) is not dict:
            self.fail("bad_type", f"{where} must be a JSON object, got {type(value).__name__}",
                      where)
        return value
