"""Is a caller's turn a command for the agent (``action``) or conversation (``chat``)?

Two layers:

- :func:`rule_intent`, instant and free: greetings, fillers, thanks, goodbyes and yes/no
  acknowledgements are ``chat``. A bare yes/no right after the assistant asked a question is
  left to the model (it may confirm an action).
- :class:`ChatModelClassifier`: one OpenAI-compatible ``/chat/completions`` request
  (OpenAI, or Gemini's OpenAI-compatible endpoint: same wire format) with
  ``response_format: json_object``, validated strictly by :func:`parse_classification`:
  exactly ``{"intent": "action"|"chat", "command": "..."}``. The command is a self-contained
  instruction built from the turn and the context ("text Sam that I'm late", not "yes do it").

The classifier speaks HTTP with aiohttp directly: the server already runs aiohttp on this
loop (one connection pool, no second HTTP stack), the request is one small JSON POST, and
we want exactly one attempt bounded by ``timeout_s`` (an SDK's automatic retries would
spend the caller's waiting time). Any failure raises :class:`ClassifierError`; the brain
then falls back to "action with the raw turn" (deduplicated).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp

from agentic_fast.brain.turns import ASSISTANT, MemoryTurn
from agentic_fast.core.errors import (
    ClassifierError,
    InvalidClassificationError,
)

if TYPE_CHECKING:
    from agentic_fast.core.config import ClassifierConfig

__all__ = ["ACTION", "CHAT", "RUN_COMMAND", "ChatModelClassifier", "Intent",
           "IntentClassifier", "build_messages",
           "parse_classification", "parse_tool_arguments", "rule_intent",
           "run_command_declaration"]

ACTION: Final = "action"
CHAT: Final = "chat"
PEER: Final = "classifier"
MAX_COMMAND_CHARS: Final = 1000
_MAX_RULE_WORDS: Final = 8



@dataclass(frozen=True, slots=True)
class Intent:
    """What a turn is: ``kind`` (``action``/``chat``), the ``command`` to send for an action,
    and who decided (``rules``, ``model``, ``fallback``)."""

    kind: str
    command: str = ""
    source: str = "model"

    @property
    def is_action(self) -> bool:
        return self.kind == ACTION


class IntentClassifier(Protocol):
    """What the brain needs of a classifier (:class:`ChatModelClassifier` is one)."""

    async def classify(self, turn: str, context: Sequence[MemoryTurn]) -> Intent: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


# -- rule layer ---------------------------------------------------------------------------

_GREETINGS = frozenset({
    "hi", "hello", "hey", "hiya", "howdy", "yo", "good", "morning", "afternoon", "evening",
    "day", "there", "everyone", "folks", "how", "are", "doing", "whats", "up"})
_THANKS = frozenset({
    "thanks", "thank", "you", "thx", "cheers", "ta", "appreciate", "it", "much", "very", "so",
    "a", "lot", "lots", "great", "wonderful", "lovely"})
_BYE = frozenset({"bye", "goodbye", "byebye", "see", "later", "take", "care", "talk", "soon",
                  "have", "nice"})
_FILLERS = frozenset({
    "um", "umm", "uh", "uhh", "uhm", "erm", "er", "hmm", "hm", "mm", "mmm", "mhm", "uhhuh",
    "ah", "oh", "ooh", "well", "so", "like", "i", "see", "just", "anyway", "actually"})
_YES_NO = frozenset({
    "yes", "yeah", "yep", "yup", "ya", "yah", "no", "nope", "nah", "sure", "ok", "okay",
    "alright", "right", "correct", "exactly", "absolutely", "definitely", "please", "fine"})
_ACKS = frozenset({
    "cool", "great", "perfect", "nice", "awesome", "got", "it", "sounds", "good", "understood",
    "indeed", "true", "fair", "enough", "makes", "sense", "that", "is", "thats", "all"})
_SMALL_TALK = _GREETINGS | _THANKS | _BYE | _FILLERS | _YES_NO | _ACKS
_WORD = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("'", "").replace("’", "").replace("-", ""))


def rule_intent(text: str, last_assistant: str | None = None) -> Intent | None:
    """``chat`` for small talk (every word in the small-talk vocabulary, a few words at
    most); None when the model must decide. A yes/no answer to an assistant question is
    left to the model."""
    words = _words(text)
    if not words:
        return Intent(CHAT, source="rules")
    if len(words) > _MAX_RULE_WORDS or not all(w in _SMALL_TALK for w in words):
        return None
    asked = last_assistant is not None and last_assistant.rstrip().endswith("?")
    if asked and any(w in _YES_NO for w in words):
        return None
    return Intent(CHAT, source="rules")


# -- model classifier ---------------------------------------------------------------------

SYSTEM_PROMPT: Final = """\
You route the turns of a phone call. The caller talks to a voice assistant that can hand \
tasks to the owner's personal agent: send messages and emails, calendar and reminders, \
smart home, notes, files, look-ups and questions that need the agent's tools or knowledge.

Decide whether the caller's LATEST turn asks the agent to do or find out something \
("action") or is conversation ("chat": greetings, small talk, thanks, acknowledgements, \
answers that do not ask for anything, talk about the call itself).

For "action", write "command": one self-contained instruction in the caller's own voice, \
with every detail it needs resolved from the conversation (names, times, message text), \
so it makes sense without the conversation. Example: the assistant asked "Should I tell \
Sam you're running late?" and the caller said "yes do it" -> \
{"intent": "action", "command": "Text Sam that I'm running late."}
For "chat", "command" is "".

Answer with one JSON object and nothing else: {"intent": "action" | "chat", "command": "..."}"""


def build_messages(turn: str, context: Sequence[MemoryTurn]) -> list[dict[str, str]]:
    """The chat messages of one classification request."""
    lines = [f"{'assistant' if t.role == ASSISTANT else 'caller'}: {t.text}" for t in context]
    history = "\n".join(lines) if lines else "(nothing yet)"
    user = (f"Conversation so far, oldest first:\n{history}\n\n"
            f"Latest caller turn:\n{json.dumps(turn, ensure_ascii=False)}")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _invalid(message: str) -> InvalidClassificationError:
    return InvalidClassificationError(f"invalid classification: {message}")


def parse_classification(content: str) -> Intent:
    """Validate the model's JSON text strictly; raises :class:`InvalidClassificationError`.

    Exactly the keys ``intent`` and ``command`` (``command`` may be left out for chat);
    ``intent`` is ``action`` or ``chat``; an action's command is a non-empty string of at
    most ``MAX_COMMAND_CHARS`` characters.
    """
    try:
        doc = json.loads(content)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"not JSON ({content!r:.80})") from exc
    if not isinstance(doc, dict):
        raise _invalid(f"not a JSON object ({content!r:.80})")
    extra = sorted(set(doc) - {"intent", "command"})
    if extra:
        raise _invalid(f"unexpected key {extra[0]!r:.40}")
    kind = doc.get("intent")
    if kind not in (ACTION, CHAT):
        raise _invalid(f"intent must be 'action' or 'chat', got {kind!r:.40}")
    command = doc.get("command", "")
    if not isinstance(command, str):
        raise _invalid(f"command must be a string, got {type(command).__name__}")
    command = " ".join(command.split())
    if kind == CHAT:
        return Intent(CHAT, source="model")
    if not command:
        raise _invalid("an action needs a non-empty command")
    if len(command) > MAX_COMMAND_CHARS:
        raise _invalid(f"command longer than {MAX_COMMAND_CHARS} characters")
    return Intent(ACTION, command, source="model")


def _content_of(body: Any) -> str:
    """``choices[0].message.content`` of a chat completion, checked."""
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise _invalid("response has no choices[0].message.content") from exc
    if choice.get("finish_reason") == "length":
        raise _invalid("the answer was cut off (finish_reason length)")
    if not isinstance(content, str):
        raise _invalid("message content is not text")
    return content


class ChatModelClassifier:
    """Classifies turns with an OpenAI-compatible chat model (one request per turn).

    ``start()`` opens the HTTP session (lazily done by ``classify`` too); ``close()``.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str = "",
                 timeout_s: float = 5.0, max_tokens: int = 300,
                 reasoning_effort: str | None = None,
                 max_tokens_field: str = "max_tokens") -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.reasoning_effort = reasoning_effort
        self.max_tokens_field = max_tokens_field
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, config: ClassifierConfig) -> ChatModelClassifier:
        """From a ``ClassifierConfig`` (provider, base_url, model, api_key, timeout_s).

        OpenAI's current chat models reason: they refuse ``max_tokens`` (it is
        ``max_completion_tokens``) and, unless reasoning is off, a ``temperature``; reasoning
        off (``reasoning_effort: none``) also answers a one-line verdict fastest."""
        openai = config.provider == "openai"
        return cls(config.base_url, config.model, api_key=config.api_key,
                   timeout_s=config.timeout_s, reasoning_effort="none" if openai else None,
                   max_tokens_field="max_completion_tokens" if openai else "max_tokens")

    async def start(self) -> None:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300))

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def request_body(self, turn: str, context: Sequence[MemoryTurn]) -> dict[str, Any]:
        body = {"model": self.model, "messages": build_messages(turn, context),
                "response_format": {"type": "json_object"}, "temperature": 0,
                self.max_tokens_field: self.max_tokens, "stream": False}
        if self.reasoning_effort is not None:
            body["reasoning_effort"] = self.reasoning_effort
        return body

    async def classify(self, turn: str, context: Sequence[MemoryTurn] = ()) -> Intent:
        """The model's verdict on ``turn``; raises :class:`ClassifierError` on any failure."""
        await self.start()
        assert self._http is not None
        body = self.request_body(turn, context)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._http.post(self.url, json=body,
                                           headers=self._headers) as res:
                    raw = await res.read()
                    status = res.status
        except TimeoutError as exc:
            raise ClassifierError(f"no answer within {self.timeout_s:g} s") from exc
        except aiohttp.ClientError as exc:
            raise ClassifierError(f"request failed: {exc!r:.200}") from exc
        if status != 200:
            raise ClassifierError(f"HTTP {status}: {raw[:200].decode(errors='replace')}")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise _invalid("response body is not JSON") from exc
        return parse_classification(_content_of(doc))


# -- the tool path: the realtime model delegates the command itself ------------------------

RUN_COMMAND: Final = "run_command"
_TOOL_DESCRIPTION: Final = (
    "Hand a task to the owner's personal agent: send messages or emails, calendar and "
    "reminders, smart home, notes, look-ups. Pass one self-contained instruction with every "
    "detail from the conversation (names, times, the message text). Returns the agent's "
    "answer, to tell the caller.")


def run_command_declaration() -> dict[str, Any]:
    """``run_command(command: string)``: name, description, parameters (a JSON Schema that
    is also a valid Gemini function declaration; OpenAI adds ``type: function``)."""
    return {"name": RUN_COMMAND, "description": _TOOL_DESCRIPTION,
            "parameters": {"type": "object", "properties": {"command": {
                "type": "string",
                "description": "The instruction for the agent, self-contained."}},
                "required": ["command"]}}


def parse_tool_arguments(arguments: str) -> str | None:
    """The ``command`` of a ``run_command`` call's JSON arguments, or None if invalid."""
    try:
        doc = json.loads(arguments)
    except (TypeError, ValueError):
        return None
    command = doc.get("command") if isinstance(doc, dict) else None
    if not isinstance(command, str) or not command.strip():
        return None
    return " ".join(command.split())[:MAX_COMMAND_CHARS]
