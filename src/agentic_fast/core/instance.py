"""This process's name in the shared call store: the owner of the live calls it serves.

Resolution order: :func:`set_instance_id` (the multi-worker runner names each worker, e.g.
``<instance>-w2``), then ``server.instance_id`` in the config, then ``<hostname>-<pid>``
(computed when asked, so a forked worker gets its own pid).
"""

from __future__ import annotations

import os
import socket

__all__ = ["instance_id", "set_instance_id"]

_explicit: str | None = None


def set_instance_id(value: str | None) -> None:
    """Name this process (None: back to the config / hostname-pid default)."""
    global _explicit
    if value is not None and not value.strip():
        raise ValueError("instance id must not be empty")
    _explicit = value


def instance_id(configured: str | None = None) -> str:
    """The explicit name, else ``configured`` (``server.instance_id``), else hostname-pid."""
    if _explicit is not None:
        return _explicit
    if configured:
        return configured
    return f"{socket.gethostname()}-{os.getpid()}"
