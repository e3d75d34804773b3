"""Make an agent's answer fit for the phone: a few short sentences, nothing to "see".

Agents answer in chat style: markdown, links, bullet lists, tables, code, emoji, and at
length. :func:`speakable` keeps what a listener can use: link labels instead of markup,
a site's name instead of its URL, a list read as one sentence ("a, b, and c"), and at most
``max_sentences`` sentences / ``max_chars`` characters. The canned lines the brain speaks
itself (filler, apologies, PIN prompts) are in :class:`Phrases`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

from agentic_fast.core import metrics
from agentic_fast.core.log import BoundLogger

__all__ = ["Phrases", "say", "send_tool_output", "speakable", "tool_output"]

MAX_SENTENCES: Final = 3
MAX_CHARS: Final = 320

_CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.S)
_INLINE_CODE = re.compile(r"`([^`]*)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()\[\]]+", re.I)
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+(.*)$")
_QUOTE = re.compile(r"^\s*>+\s?")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_HR = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_SENTENCE = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)]))\s+(?=[\"'“‘(]?[A-Z0-9])")
_SPACES = re.compile(r"[ \t]+")
_END = ".!?…"


def _site(url: str) -> str:
    """``https://www.example.com/a?b`` -> ``example.com`` (what a person would say)."""
    if url.lower().startswith("mailto:"):
        return url[7:]
    if not url.lower().startswith(("http://", "https://")):
        url = "http://" + url
    try:
        host = urlsplit(url.rstrip(".,;:!?")).hostname or ""
    except ValueError:
        host = ""
    host = host.removeprefix("www.")
    return host or "a link"


def _link(match: re.Match[str]) -> str:
    label = match[1].strip()
    return _site(label) if _URL.fullmatch(label) else label


def _inline(text: str) -> str:
    """Markup inside one line: images, links, URLs, code spans, emphasis, HTML tags."""
    text = _IMAGE.sub(lambda m: m[1], text)
    text = _LINK.sub(_link, text)
    text = _AUTOLINK.sub(lambda m: _site(m[1]), text)
    text = _URL.sub(lambda m: _site(m[0]), text)
    text = _INLINE_CODE.sub(lambda m: m[1], text)
    text = _HTML_TAG.sub("", text)
    for _ in range(2):  # nested **_x_**
        text = _EMPHASIS.sub(lambda m: m[2], text)
    return text


def _no_symbols(text: str) -> str:
    """Drop emoji and other pictographs (Unicode ``So``/``Cs``/``Co``) and joiners."""
    return "".join(c for c in text
                   if unicodedata.category(c) not in ("So", "Cs", "Co", "Cf"))


def _end(text: str) -> str:
    text = text.rstrip(" ,;:-")
    return text if not text or text[-1] in _END else text + "."


def _spoken_list(items: list[str]) -> str:
    items = [i.rstrip(" .;,") for i in items if i.strip(" .;,")]
    if len(items) <= 1:
        return items[0] if items else ""
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def _blocks(text: str) -> list[str]:
    """Lines -> speakable pieces; consecutive list items / table rows become one sentence."""
    out: list[str] = []
    items: list[str] = []

    def close_list() -> None:
        if items:
            spoken = _spoken_list(items)
            if out and out[-1].endswith(":"):
                out[-1] = _end(out[-1][:-1] + ": " + spoken)
            elif spoken:
                out.append(_end(spoken))
            items.clear()

    for raw in text.splitlines():
        line = _QUOTE.sub("", raw)
        if _TABLE_RULE.match(line) and "|" in line:
            if items:
                items.pop()  # the row above the rule was the table's header
            continue
        if not line.strip() or _HR.match(line):
            close_list()
            continue
        bullet = _BULLET.match(line)
        if bullet:
            items.append(bullet[1].strip())
            continue
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            items.append(", ".join(c for c in cells if c))
            continue
        close_list()
        heading = _HEADING.match(line)
        if heading:
            out.append(_end(heading[1]))
            continue
        out.append(line.strip())
    close_list()
    return out


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return _end(cut.rstrip(" ,;:-"))


def speakable(text: str, *, max_sentences: int = MAX_SENTENCES,
              max_chars: int = MAX_CHARS) -> str:
    """``text`` as 1 to ``max_sentences`` short spoken sentences (empty if nothing is left).

    Code blocks are dropped, markdown links become their labels, bare URLs the site's
    name, list items and table rows one sentence ("a, b, and c"), emphasis/headings/HTML
    plain text, emoji removed; the result ends with punctuation and is at most
    ``max_chars`` long (cut at a word).
    """
    text = _CODE_BLOCK.sub(" ", text.replace("\r\n", "\n"))
    text = _no_symbols(text)
    pieces = [_inline(p) for p in _blocks(text)]
    joined = " ".join(_end(p) if not p.endswith(":") else p for p in pieces if p.strip())
    joined = _SPACES.sub(" ", joined.replace("\n", " ")).strip()
    joined = re.sub(r"\s+([,.;:!?])", r"\1", joined)
    sentences = _sentences(joined)[:max(1, max_sentences)]
    return _clip(" ".join(sentences), max_chars)


@dataclass(frozen=True, slots=True)
class Phrases:
    """What the brain itself says (short, speakable; override per deployment)."""

    filler: str = "One moment, I'm working on it."
    done: str = "Done."
    unavailable: str = ("Sorry, I can't reach the assistant right now. "
                        "Please try again in a moment.")
    timeout: str = "Sorry, that is taking too long, so I stopped it. Please try again later."
    failed: str = "Sorry, the assistant couldn't do that."
    cancelled: str = "That request was cancelled."
    pin_prompt: str = "To do that, please enter your PIN on the keypad, then press pound."
    pin_ok: str = "Thank you, you're verified."
    pin_wrong: str = "That PIN didn't match. Please try again."
    pin_locked: str = "Too many wrong PIN attempts. I can't run commands on this call."


# -- speaking through the call's provider (``session.bridge.provider``) -------------------

class _Voice(Protocol):
    """What the brain uses of a call's provider (``RealtimeProvider``)."""

    def say(self, text: str) -> None: ...
    def send_tool_result(self, call_id: str, output: str) -> None: ...


def _provider(bridge: object, log: BoundLogger, what: str) -> _Voice | None:
    provider: _Voice | None = getattr(bridge, "provider", None)
    if provider is None:
        metrics.incr("brain.speak.no_bridge")
        log.warning("brain.speak.no_bridge", what=what)
    return provider


def say(bridge: object, text: str, log: BoundLogger, what: str) -> bool:
    """Have the call's model speak ``text`` (``provider.say``); errors logged and counted."""
    provider = _provider(bridge, log, what)
    if provider is None or not text:
        return False
    try:
        provider.say(text)
    except Exception:
        metrics.incr("brain.speak.error")
        log.exception("brain.speak.error", what=what)
        return False
    log.info("brain.say", what=what, chars=len(text))
    return True


def tool_output(*, result: str | None = None, error: str | None = None) -> str:
    """A tool's output: ``{"result": ...}`` or ``{"error": ...}`` as JSON text (the shape
    Gemini's ``functionResponses[].response`` wants; OpenAI takes the text as it is)."""
    body = {"result": result or ""} if error is None else {"error": error}
    return json.dumps(body, ensure_ascii=False)


def send_tool_output(bridge: object, call_id: str, log: BoundLogger, *,
                     result: str | None = None, error: str | None = None) -> bool:
    """Answer tool call ``call_id`` (``provider.send_tool_result``); errors logged, counted."""
    provider = _provider(bridge, log, "tool_result")
    if provider is None:
        return False
    try:
        provider.send_tool_result(call_id, tool_output(result=result, error=error))
    except Exception:
        metrics.incr("brain.speak.error")
        log.exception("brain.speak.error", what="tool_result")
        return False
    log.info("brain.tool_result", tool_call_id=call_id, ok=error is None)
    return True
