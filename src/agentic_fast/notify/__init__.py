"""Delivered when a call ends: a signed webhook and Telegram, from a persisted outbox.

See ``notifier`` (outbox, retries), ``webhook`` (signature; how receivers verify),
``telegram`` (Bot API ``sendMessage``) and ``summary`` (chat model or plain extract).
"""

from agentic_fast.notify.notifier import Notifier, build_notifier, outbox_path

__all__ = ["Notifier", "build_notifier", "outbox_path"]
