"""The active audio implementation, chosen once at import: the native extension
``agentic_fast._audio`` when it loads (see :mod:`.native` for the switches), else the numpy
twin. ``agentic_fast.audio`` and its resampler both read it from here (no import cycle).

mypy checks both modules against :class:`~.api.AudioImplementation` here, where one is chosen.
"""

from __future__ import annotations

from agentic_fast._audiocore.api import AudioImplementation
from agentic_fast._audiocore.native import load_native


def _select() -> AudioImplementation:
    native = load_native()
    if native is not None:
        return native
    from agentic_fast._audiocore import numpy_twin as _numpy_twin  # only without the extension

    return _numpy_twin


_impl = _select()


def implementation_module() -> AudioImplementation:
    """The module behind the public names (``agentic_fast._audio`` or the numpy twin)."""
    return _impl
