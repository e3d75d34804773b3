"""What the model providers last said about our credentials, for ``/readyz``.

A provider that refuses a session for its key (OpenAI: HTTP 401 or an ``invalid_api_key``
error instead of ``session.created``; Gemini: HTTP 401/403, or a close 1007/1008 whose reason
names the API key) is recorded here; the next session it accepts clears it. Every call would
fail the same way meanwhile, so the server is not ready.
"""

from __future__ import annotations

import time

#: OpenAI error codes that mean "your key is not accepted"
OPENAI_AUTH_CODES = frozenset({"invalid_api_key", "missing_api_key", "invalid_authentication",
                               "authentication_error", "unauthorized"})
#: HTTP statuses of a refused upgrade that mean the same
AUTH_STATUS = frozenset({401, 403})

_rejected: dict[str, tuple[str, float]] = {}


def auth_rejected(provider: str, detail: str) -> None:
    """``provider`` refused the last session for its credentials."""
    _rejected[provider] = (detail[:300], time.time())


def session_ok(provider: str) -> None:
    """``provider`` accepted a session: its credentials work."""
    _rejected.pop(provider, None)


def rejected() -> dict[str, str]:
    """Providers whose last session was refused for its credentials: the detail."""
    return {name: detail for name, (detail, _) in _rejected.items()}


def gemini_auth_refusal(code: int, reason: str) -> bool:
    """Gemini's answer to a bad or missing key: a close 1007/1008 whose reason names the API
    key ("API key not valid. Please pass a valid API key."), or an HTTP 401/403 upgrade."""
    if code in (1007, 1008):
        return "api key" in reason.lower()
    return reason in {f"HTTP {status}" for status in AUTH_STATUS}


def reset() -> None:
    """Forget everything (tests)."""
    _rejected.clear()
