"""Model ids that their vendor has deprecated, shut down or superseded (for config warnings).

The OpenAI tables copy the "Deprecated values" markers of the installed ``openai`` SDK
(``OPENAI_SDK_VERSION``). The SDK keeps them only in attribute docstrings, which Python does
not retain at run time, so they are not machine-readable: ``tests/unit/test_model_status.py``
parses the installed SDK's source and fails when a table here disagrees with it.

``google-genai`` marks no model as deprecated; the Gemini table comes from Google's
"Gemini deprecations" page (ai.google.dev/gemini-api/docs/deprecations) and the Live API
model pages, as read on 2026-12-05.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

OPENAI_SDK_VERSION = "3.63.0"
"""The ``openai`` release whose deprecation markers the OpenAI tables copy."""

Kind = Literal["openai_realtime", "openai_transcription", "openai_chat", "gemini"]


@dataclass(frozen=True, slots=True)
class ModelNotice:
    """What the vendor says about one model id."""

    status: Literal["deprecated", "unsupported", "superseded"]
    shutdown: date | None = None  # announced shutdown date (deprecated models)
    source: str = ""

    def describe(self, model: str, today: date) -> str:
        """One clause for a warning, e.g. ``gpt-x was shut down on 2026-01-01 (...)``."""
        if self.status == "unsupported":
            return f"{model} is not a supported model id ({self.source})"
        if self.status == "superseded":
            return (f"{model} is a superseded preview that may be shut down at short notice "
                    f"({self.source})")
        assert self.shutdown is not None
        if today >= self.shutdown:
            return (f"{model} was shut down on {self.shutdown.isoformat()}: calls with it "
                    f"fail ({self.source})")
        return (f"{model} is deprecated and shuts down on {self.shutdown.isoformat()} "
                f"({self.source})")


_UNDATED: dict[str, Literal["unsupported", "superseded"]] = {
    "unsupported": "unsupported", "superseded": "superseded"}


def _table(source: str, groups: dict[str, tuple[str, ...]]) -> dict[str, ModelNotice]:
    """``{shutdown date or status: model ids}`` -> ``{model id: notice}``."""
    out: dict[str, ModelNotice] = {}
    for key, models in groups.items():
        status = _UNDATED.get(key)
        if status is not None:
            notice = ModelNotice(status, None, source)
        else:
            notice = ModelNotice("deprecated", date.fromisoformat(key), source)
        out.update(dict.fromkeys(models, notice))
    return out


_OPENAI = f"openai SDK {OPENAI_SDK_VERSION}"

# openai.types.realtime.RealtimeSessionCreateRequest.model
OPENAI_REALTIME = _table(_OPENAI, {
    "2027-01-20": ("gpt-realtime", "gpt-realtime-2025-08-28", "gpt-realtime-mini",
                   "gpt-realtime-mini-2025-12-15", "gpt-audio-mini",
                   "gpt-audio-mini-2025-12-15"),
})

# openai.types.realtime.AudioTranscription.model
OPENAI_TRANSCRIPTION = _table(_OPENAI, {
    "2027-02-26": ("whisper-1", "gpt-4o-mini-transcribe", "gpt-4o-mini-transcribe-2025-12-15",
                   "gpt-4o-transcribe", "gpt-4o-transcribe-diarize"),
})

# openai.types.shared.ChatModel (the classifier speaks chat completions)
OPENAI_CHAT = _table(_OPENAI, {
    "2027-04-01": ("gpt-5.4-nano", "gpt-5.4-nano-2026-03-17", "gpt-5.1", "gpt-5.1-2025-11-13"),
    "2026-08-10": ("gpt-5.3-chat-latest", "gpt-5.2-chat-latest"),
    "2026-07-23": ("gpt-5.1-codex", "gpt-5.1-chat-latest", "gpt-5-chat-latest",
                   "gpt-4o-search-preview", "gpt-4o-mini-search-preview",
                   "gpt-4o-search-preview-2025-03-11", "gpt-4o-mini-search-preview-2025-03-11"),
    "unsupported": ("gpt-5.1-mini",),
    "2026-12-11": ("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5-2025-08-07",
                   "gpt-5-mini-2025-08-07", "gpt-5-nano-2025-08-07", "o3", "o3-2025-04-16"),
    "2027-01-14": ("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-2025-04-14", "gpt-4.1-mini-2025-04-14",
                   "gpt-4o", "gpt-4o-2024-11-20", "gpt-4o-2024-08-06", "gpt-4o-mini",
                   "gpt-4o-mini-2024-07-18"),
    "2026-10-23": ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14", "o4-mini", "o4-mini-2025-04-16",
                   "o3-mini", "o3-mini-2025-01-31", "o1", "o1-2024-12-17", "gpt-4o-2024-05-13",
                   "gpt-4-turbo", "gpt-4-turbo-2024-04-09", "gpt-4-1106-preview", "gpt-4",
                   "gpt-4-0613", "gpt-3.5-turbo", "gpt-3.5-turbo-0125"),
    "2025-07-28": ("o1-preview", "o1-preview-2024-09-12"),
    "2025-10-27": ("o1-mini", "o1-mini-2024-09-12"),
    "2027-01-20": ("gpt-audio-mini", "gpt-audio-mini-2025-12-15"),
    "2026-05-07": ("gpt-4o-audio-preview", "gpt-4o-audio-preview-2024-12-17",
                   "gpt-4o-audio-preview-2025-06-03", "gpt-4o-mini-audio-preview",
                   "gpt-4o-mini-audio-preview-2024-12-17"),
    "2025-10-10": ("gpt-4o-audio-preview-2024-10-01",),
    "2026-02-17": ("chatgpt-4o-latest",),
    "2026-02-12": ("codex-mini-latest",),
    "2026-03-26": ("gpt-4-0125-preview", "gpt-4-turbo-preview", "gpt-4-0314"),
    "2024-12-06": ("gpt-4-vision-preview",),
    "2025-06-06": ("gpt-4-32k", "gpt-4-32k-0314", "gpt-4-32k-0613"),
    "2024-09-13": ("gpt-3.5-turbo-16k", "gpt-3.5-turbo-0301", "gpt-3.5-turbo-0613",
                   "gpt-3.5-turbo-16k-0613"),
    "2026-09-28": ("gpt-3.5-turbo-1106",),
})

# Gemini Live models (gemini.model) and chat models (brain.classifier with provider gemini).
GEMINI = _table("Gemini API deprecations page", {
    "2025-12-09": ("gemini-2.0-flash-live-001", "gemini-live-2.5-flash-preview"),
    "2026-03-09": ("gemini-3-pro-preview",),
    "2026-06-01": ("gemini-2.0-flash", "gemini-2.0-flash-001", "gemini-2.0-flash-lite",
                   "gemini-2.0-flash-lite-001"),
    "2026-06-17": ("gemini-2.5-flash", "gemini-2.5-pro"),
    "2026-07-22": ("gemini-2.5-flash-lite",),
}) | _table("Gemini Live API model pages", {
    "superseded": ("gemini-2.5-flash-native-audio-preview-09-2025",
                   "gemini-2.5-flash-native-audio-preview-12-2025",
                   "gemini-3.1-flash-live-preview"),
})

_TABLES: dict[Kind, dict[str, ModelNotice]] = {
    "openai_realtime": OPENAI_REALTIME, "openai_transcription": OPENAI_TRANSCRIPTION,
    "openai_chat": OPENAI_CHAT, "gemini": GEMINI,
}


def model_notice(kind: Kind, model: str) -> ModelNotice | None:
    """The vendor's notice about ``model`` (``models/`` prefix ignored), or None if current."""
    return _TABLES[kind].get(model.strip().removeprefix("models/"))
