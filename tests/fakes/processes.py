"""Stopping a process the tests started in a session of its own (its pid is its group's id):
only what we started is signalled, by that id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


async def stop_group(proc: asyncio.subprocess.Process, grace_s: float, *,
                     term_group: bool) -> None:
    """SIGTERM the leader (``term_group``: its whole group), wait ``grace_s``, then
    SIGKILL the group; nothing if it has already exited."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if term_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
