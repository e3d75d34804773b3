"""Structured logs: one event name per line, ``key=value`` fields, call ids bound once.

    log = get_logger("calls").bind(call_id=session.call_id, call_sid=session.call_sid)
    log.info("call.status", status="ringing")
    # -> ... INFO agentic_fast.calls call.status call_id=... call_sid=CA... status=ringing

Formatting happens only when the level is enabled (no f-strings on the hot path).
"""

from __future__ import annotations

import logging
from typing import Any

_ROOT = "agentic_fast"


def _fmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class _Event:
    """Lazy message: formatted only if a handler actually emits the record."""

    __slots__ = ("event", "fields")

    def __init__(self, event: str, fields: dict[str, Any]) -> None:
        self.event = event
        self.fields = fields

    def __str__(self) -> str:
        if not self.fields:
            return self.event
        parts = " ".join(f"{k}={_fmt_value(v)}" for k, v in self.fields.items())
        return f"{self.event} {parts}"


class BoundLogger:
    """A stdlib logger plus fields that are added to every line it writes."""

    __slots__ = ("_fields", "_logger")

    def __init__(self, logger: logging.Logger, fields: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._fields = fields or {}

    def bind(self, **fields: Any) -> BoundLogger:
        """A logger that also writes ``fields`` (e.g. ``call_id``) on every line."""
        return BoundLogger(self._logger, {**self._fields, **fields})

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: Any = None) -> None:
        if self._logger.isEnabledFor(level):
            merged = {**self._fields, **fields} if self._fields else fields
            self._logger.log(level, _Event(event, merged), exc_info=exc_info, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc_info=True)

    def is_enabled(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)


def get_logger(name: str, **fields: Any) -> BoundLogger:
    """The named logger ``agentic_fast.<name>``, with optional bound fields."""
    full = name if name.startswith(_ROOT) else f"{_ROOT}.{name}"
    return BoundLogger(logging.getLogger(full), fields)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Set up root logging once at process start (``fmt``: ``text`` or ``json``)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
    root = logging.getLogger(_ROOT)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import orjson

        msg = record.msg
        doc: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
        }
        if isinstance(msg, _Event):
            doc["event"] = msg.event
            doc.update({k: v if isinstance(v, (int, float, bool)) or v is None else str(v)
                        for k, v in msg.fields.items()})
        else:
            doc["event"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()
