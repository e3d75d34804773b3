"""Post-call messages to a Telegram chat through the Bot API's ``sendMessage``.

The message is plain text (no ``parse_mode``, so nothing needs escaping): a header, the
summary, the agent commands, then the transcript. Telegram takes 1-4096 characters per
message; a longer text is SPLIT on line boundaries into at most
``notify.telegram.max_messages`` messages (numbered ``[2/3]``...), and what does not fit in
those is TRUNCATED with a note (the full transcript is in the webhook and ``GET /calls``).
Lengths are counted in UTF-16 code units, which is never less than Telegram's count.

Messages already sent are remembered across retries (the outbox's ``progress``), so a
429 in the middle of a split does not send the first part twice. Answers (Bot API
``{"ok": false, "error_code", "description", "parameters"}``): 429 waits
``parameters.retry_after`` seconds (every Telegram delivery waits, flood control is per
bot); 5xx and network errors are retried with backoff; 400 (``chat not found``...), 401
(bad token), 403 (bot blocked) and 404 are dead-lettered with the description.
"""

from __future__ import annotations

import re
from typing import Any, Final

import aiohttp

from agentic_fast.notify.base import Delivery, Outcome

#: Telegram's limit on one message's text.
MESSAGE_LIMIT: Final = 4096
_PART_PREFIX_RESERVE: Final = 12  # "[12/50] "
_MAX_RETRY_AFTER_S: Final = 3600.0
_TRUNCATED: Final = "\n… (truncated; the full transcript is in the webhook and GET /calls/{})"
_ROLE_NAMES: Final = {"caller": "Caller", "agent": "Assistant", "assistant": "Assistant"}


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (what Telegram's limits count, at most)."""
    return len(text.encode("utf-16-le")) // 2


def _cut_utf16(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` UTF-16 units."""
    if utf16_len(text) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        size = 2 if ord(ch) > 0xFFFF else 1
        if used + size > limit:
            break
        out.append(ch)
        used += size
    return "".join(out)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def format_text(record: dict[str, Any], summary: str) -> str:
    """The whole message: header, summary, commands, transcript."""
    call = record.get("call", {})
    status = str(call.get("status"))
    if call.get("reason"):
        status += f" ({call['reason']})"
    lines = [f"Call ended: {call.get('direction')} {call.get('from') or '?'} -> "
             f"{call.get('to') or '?'}",
             f"{status}, {_duration(float(call.get('duration_s') or 0))}",
             f"Call id: {call.get('call_id')}", "", "Summary:", summary.strip() or "-"]
    commands = record.get("commands", [])
    if commands:
        lines += ["", "Agent commands:"]
        for c in commands:
            result = c.get("answer") or c.get("error") or ""
            lines.append(f"- {c.get('command')} [{c.get('status')}]"
                         + (f": {result}" if result else ""))
    transcript = record.get("transcript", [])
    lines += ["", "Transcript:" if transcript else "Transcript: (nothing was said)"]
    for entry in transcript:
        role = _ROLE_NAMES.get(str(entry.get("role")), str(entry.get("role")))
        lines.append(f"{role}: {entry.get('text', '')}")
    return "\n".join(lines)


def split_text(text: str, *, max_messages: int, call_id: str = "",
               limit: int = MESSAGE_LIMIT) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-16 units (a prefix ``[i/n]`` included),
    split at line ends where possible; beyond ``max_messages`` parts, truncated."""
    body_limit = limit - _PART_PREFIX_RESERVE if utf16_len(text) > limit else limit
    parts: list[str] = []
    current = ""
    for line in text.split("\n"):
        while utf16_len(line) > body_limit:  # a line longer than a message: hard cut
            room = body_limit - utf16_len(current) - (1 if current else 0)
            if room < body_limit // 4:  # little room left: start a new part
                parts.append(current)
                current, room = "", body_limit
            head = _cut_utf16(line, room)
            current = f"{current}\n{head}" if current else head
            parts.append(current)
            current, line = "", line[len(head):]
        candidate = f"{current}\n{line}" if current else line
        if utf16_len(candidate) <= body_limit:
            current = candidate
        else:
            parts.append(current)
            current = line
    parts.append(current)
    parts = [p for p in parts if p.strip()] or ["(empty)"]
    if len(parts) > max_messages:
        parts = parts[:max_messages]
        note = _TRUNCATED.format(call_id)
        parts[-1] = _cut_utf16(parts[-1], body_limit - utf16_len(note)).rstrip() + note
    if len(parts) > 1:
        parts = [f"[{i}/{len(parts)}] {p}" for i, p in enumerate(parts, 1)]
    return parts


def _chat_id(value: str) -> int | str:
    return int(value) if re.fullmatch(r"-?[0-9]+", value) else value


class TelegramDestination:
    """``sendMessage`` to ``chat_id`` with the bot ``bot_token``."""

    name: Final = "telegram"

    def __init__(self, *, bot_token: str, chat_id: str, api_base_url: str,
                 timeout_s: float, max_messages: int) -> None:
        if not bot_token or not chat_id:
            raise ValueError("a bot token and a chat id are required")
        self._token = bot_token
        self.chat_id = _chat_id(chat_id)
        self.api_base_url = api_base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_messages = max_messages

    def _clean(self, text: str) -> str:
        """``text`` without the bot token (aiohttp errors quote the URL)."""
        return text.replace(self._token, "<bot_token>")

    def messages(self, delivery: Delivery) -> list[str]:
        return split_text(format_text(delivery.record, delivery.summary),
                          max_messages=self.max_messages, call_id=delivery.call_id)

    async def deliver(self, delivery: Delivery, http: aiohttp.ClientSession) -> Outcome:
        url = f"{self.api_base_url}/bot{self._token}/sendMessage"
        parts = self.messages(delivery)
        for index in range(delivery.progress, len(parts)):
            payload = {"chat_id": self.chat_id, "text": parts[index],
                       "link_preview_options": {"is_disabled": True}}
            outcome = await self._send(http, url, payload, index)
            if outcome is not None:
                return outcome
        return Outcome(True, progress=len(parts))

    async def _send(self, http: aiohttp.ClientSession, url: str, payload: dict[str, Any],
                    index: int) -> Outcome | None:
        try:
            async with http.post(url, json=payload, timeout=self.timeout,
                                 allow_redirects=False) as response:
                status = response.status
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
        except TimeoutError:
            return Outcome(False, "timeout", progress=index)
        except aiohttp.ClientError as exc:
            return Outcome(False, self._clean(f"{type(exc).__name__}: {exc}")[:300],
                           progress=index)
        if not isinstance(answer, dict):
            return Outcome(False, f"HTTP {status}: not a Bot API answer", progress=index,
                           permanent=status in (400, 401, 403, 404))
        if answer.get("ok") is True:
            return None
        code = answer.get("error_code", status)
        description = self._clean(str(answer.get("description", "")))[:300]
        error = f"{code} {description}".strip()
        raw = answer.get("parameters")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if code == 429:
            retry_after = params.get("retry_after")
            seconds = (min(max(0.0, float(retry_after)), _MAX_RETRY_AFTER_S)
                       if isinstance(retry_after, int | float) else None)
            return Outcome(False, error, retry_after=seconds, progress=index)
        if code == 401:
            error += " (notify.telegram.bot_token is wrong or revoked)"
        elif code == 400 and "chat not found" in description:
            error += " (check notify.telegram.chat_id, and that the chat started the bot)"
        elif "migrate_to_chat_id" in params:
            error += f" (the group is now chat {params['migrate_to_chat_id']}: set " \
                     "notify.telegram.chat_id)"
        permanent = isinstance(code, int) and 400 <= code < 500 and code not in (408, 409)
        return Outcome(False, error, permanent=permanent, progress=index)
