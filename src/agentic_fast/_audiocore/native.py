"""Loading the native extension, honouring the two import-time switches.

``AGENTIC_FAST_NO_EXT=1`` forces the pure implementations; ``AGENTIC_FAST_REQUIRE_EXT=1``
(set in CI) makes a missing or outdated extension an ImportError. Like
``AIOHTTP_NO_EXTENSIONS`` they act at import time, before any config exists: the only
environment reads outside ``config.py``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentic_fast._audiocore.api import NativeModule


def load_native(needs: str | None = None) -> NativeModule | None:
    """``agentic_fast._audio``, or None when it is switched off, missing, or lacks the
    attribute ``needs`` (an extension built from an older ``ext/_audio.pyx``)."""
    if os.environ.get("AGENTIC_FAST_NO_EXT") == "1":
        return None
    required = os.environ.get("AGENTIC_FAST_REQUIRE_EXT") == "1"
    try:
        from agentic_fast import _audio
    except ImportError as exc:
        if required:
            raise ImportError(
                "AGENTIC_FAST_REQUIRE_EXT=1 but the native extension agentic_fast._audio "
                f"cannot be imported: {exc}"
            ) from exc
        return None
    if needs is not None and not hasattr(_audio, needs):
        if required:
            raise ImportError(f"agentic_fast._audio has no {needs}: rebuild the extension")
        return None
    return _audio
