"""A short summary of an ended call: a small chat model, or a plain extract.

:class:`ChatSummarizer` asks any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI,
Gemini's OpenAI-compatible endpoint; ``notify.summary.*``, configured like the brain's
classifier) through the official ``openai`` SDK, one attempt bounded by ``timeout_s``
(no SDK retries: the outbox retries deliveries, not summaries). Without an API key, or
when the model fails or answers nothing, the summary is :func:`plain_extract`: the
caller's first request, the agent commands, the last lines. Summarising never raises and
never blocks a delivery for longer than ``timeout_s``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

import openai

from agentic_fast.core import metrics
from agentic_fast.core.config import NotifySummaryConfig
from agentic_fast.core.log import get_logger

log = get_logger("notify.summary")

#: Characters of a model summary kept (a runaway answer is cut).
MAX_SUMMARY_CHARS: Final = 1500
#: Characters of each transcript line given to the model, and lines at most (the latest).
_LINE_CHARS: Final = 500
_MODEL_LINES: Final = 200
_EXTRACT_LINE_CHARS: Final = 200

SYSTEM_PROMPT: Final = (
    "You summarise a finished phone call between a caller and a voice assistant for the "
    "assistant's owner. Write two to four plain sentences: who called and why, what was "
    "done or asked of the agent and with what result, and anything the owner must follow "
    "up. No markdown, no preamble.")


class Summarizer(Protocol):
    """Turns a call record (see ``record.call_record``) into a short text."""

    async def summarize(self, record: dict[str, Any]) -> str: ...

    async def close(self) -> None: ...


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _describe_call(call: dict[str, Any]) -> str:
    who = f"{call.get('direction', 'unknown')} call from {call.get('from') or 'unknown'} " \
          f"to {call.get('to') or 'unknown'}"
    how = str(call.get("status"))
    if call.get("reason"):
        how += f" ({call['reason']})"
    return f"{who.capitalize()}, {how}, {round(float(call.get('duration_s') or 0))} s."


def plain_extract(record: dict[str, Any]) -> str:
    """The summary without a model: the call, the caller's first request, the agent
    commands, the last two lines."""
    call, transcript = record.get("call", {}), record.get("transcript", [])
    parts = [_describe_call(call)]
    first = next((e["text"] for e in transcript if e.get("role") == "caller"
                  and str(e.get("text", "")).strip()), None)
    if first:
        parts.append(f'Caller: "{_cut(first, _EXTRACT_LINE_CHARS)}"')
    commands = [c for c in record.get("commands", []) if c.get("command")]
    if commands:
        listed = "; ".join(f"{_cut(c['command'], 120)} ({c.get('status') or 'unknown'})"
                           for c in commands[:5])
        more = f" and {len(commands) - 5} more" if len(commands) > 5 else ""
        parts.append(f"Agent commands: {listed}{more}.")
    else:
        parts.append("No agent commands.")
    last = [e for e in transcript[-2:] if str(e.get("text", "")).strip()]
    if last and len(transcript) > 1:
        lines = " / ".join(f"{e.get('role')}: {_cut(e['text'], _EXTRACT_LINE_CHARS)}"
                           for e in last)
        parts.append(f"Last: {lines}")
    if not transcript:
        parts.append("Nothing was said.")
    return " ".join(parts)


def model_prompt(record: dict[str, Any]) -> str:
    """The user message given to the model: the call, the commands, the transcript."""
    call = record.get("call", {})
    lines = [_describe_call(call)]
    for c in record.get("commands", []):
        answer = c.get("answer") or c.get("error") or ""
        lines.append(f"Agent command: {_cut(str(c.get('command')), _LINE_CHARS)} -> "
                     f"{c.get('status')}: {_cut(str(answer), _LINE_CHARS)}")
    lines.append("Transcript:")
    for e in record.get("transcript", [])[-_MODEL_LINES:]:
        lines.append(f"{e.get('role')}: {_cut(str(e.get('text', '')), _LINE_CHARS)}")
    return "\n".join(lines)


class PlainSummarizer:
    """No model: always :func:`plain_extract`."""

    async def summarize(self, record: dict[str, Any]) -> str:
        metrics.incr("notify.summary.extract")
        return plain_extract(record)

    async def close(self) -> None:
        return None


class ChatSummarizer:
    """One chat completion per call, bounded by ``timeout_s``; falls back to the extract."""

    def __init__(self, *, model: str, base_url: str, api_key: str, timeout_s: float) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url,
                                          timeout=timeout_s, max_retries=0)

    async def summarize(self, record: dict[str, Any]) -> str:
        call_id = record.get("call", {}).get("call_id")
        try:
            response = await asyncio.wait_for(self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": SYSTEM_PROMPT},
                          {"role": "user", "content": model_prompt(record)}]),
                self.timeout_s)
            text = (response.choices[0].message.content or "").strip() \
                if response.choices else ""
            if not text:
                raise ValueError("the model answered no text")
        except (openai.OpenAIError, TimeoutError, ValueError, IndexError) as exc:
            kind = type(exc).__name__
            metrics.incr("notify.summary.error")
            log.warning("notify.summary.error", call_id=call_id, error=kind,
                        detail=str(exc)[:200], fallback="extract")
            return plain_extract(record)
        metrics.incr("notify.summary.model")
        return text[:MAX_SUMMARY_CHARS]

    async def close(self) -> None:
        await self._client.close()


def build_summarizer(config: NotifySummaryConfig) -> Summarizer:
    """A model summarizer when ``notify.summary.api_key`` is set, else the plain extract."""
    if not config.api_key:
        return PlainSummarizer()
    return ChatSummarizer(model=config.model, base_url=config.base_url,
                          api_key=config.api_key, timeout_s=config.timeout_s)
