"""A third provider, for the toy protocol of ``tests/fakes/toy_s2s.py``: only this module.

``install(url, token)`` registers it as ``audio.provider: toy``; the shared connection
layer (:class:`ModelConnection`) does the rest: connect, write path, reader, loss,
reconnect with backoff, backlog, close.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

from agentic_fast.core.config import Config
from agentic_fast.core.errors import PeerUnavailableError, RemoteProtocolError
from agentic_fast.core.log import get_logger
from agentic_fast.providers.connection import Link, LinkOptions, ModelConnection, open_socket
from agentic_fast.providers.registry import ProviderContext, register


class ToyEvent(dict[str, Any]):
    """A server message; its class (below) picks the handler."""


_EVENTS = {name: type(name, (ToyEvent,), {}) for name in
           ("audio", "audio_done", "speech_started", "transcript", "tool_call", "error")}


def parse(frame: bytes) -> ToyEvent:
    try:
        msg = json.loads(frame)
        return _EVENTS[msg["type"]](msg)
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteProtocolError(f"bad frame: {exc!r:.80}", peer="toy") from None


class ToyProvider(ModelConnection):
    peer: ClassVar[str] = "toy"
    converter_format = "openai-pcmu"  # mu-law 8 kHz both ways
    _audio_frame = staticmethod(lambda b64: '{"type":"audio","data":"' + b64 + '"}')

    def __init__(self, url: str, token: str, *, call_id: str, connect_timeout_s: float,
                 stall_timeout_s: float | None) -> None:
        super().__init__(call_id=call_id, log=get_logger("providers.toy").bind(call_id=call_id),
                         backoff=None, backlog_chars=3000 * 8 * 4 // 3,
                         stall_timeout_s=stall_timeout_s, stats=("reconnects",))
        self._options = LinkOptions(url, {}, timeout_s=connect_timeout_s)
        self._token = token
        self._response: str | None = None  # the response whose audio is playing
        self._cancelled: str | None = None
        listener = lambda: self._listener  # noqa: E731 (attach may replace it)
        self._handlers.update({
            _EVENTS["audio"]: self._on_audio,
            _EVENTS["audio_done"]: lambda k, e: self._done(e["response"]),
            _EVENTS["speech_started"]: lambda k, e: listener().on_speech_started(),
            _EVENTS["transcript"]: lambda k, e: listener().on_transcript(e["role"], e["text"],
                                                                         True),
            _EVENTS["tool_call"]: lambda k, e: listener().on_tool_call(
                e["call_id"], e["name"], e["arguments"]),
        })

    @property
    def response_active(self) -> bool:
        return self._response is not None

    def _on_audio(self, link: Link, event: ToyEvent) -> None:
        response = event["response"]
        if response != self._cancelled:
            self._response = response
            self._listener.on_audio(event["data"], response)

    def _done(self, response: str) -> None:
        if response == self._response:
            self._response = None
        self._listener.on_audio_done(response)

    def begin(self, *, speak_first: str | None) -> None:
        if speak_first:
            self._send_item({"type": "say", "text": speak_first})

    def say(self, text: str) -> None:
        self._send_item({"type": "say", "text": text})

    def send_tool_result(self, call_id: str, output: str) -> None:
        self._send_item({"type": "tool_result", "call_id": call_id, "output": output})

    def interrupt(self, item_id: str | None, audio_end_ms: int | None) -> None:
        if self._response is not None:
            self._cancelled = self._response
            self._send_item({"type": "cancel", "response": self._response})

    def _render(self, item: Any) -> str:
        return json.dumps(item)

    def _parser(self, link: Link) -> Callable[[bytes], Any]:
        return parse

    async def _open(self) -> Link:
        self._seq += 1
        try:
            async with asyncio.timeout(self._options.timeout_s):
                ws = await open_socket(self._options)
                await ws.send(json.dumps({"type": "hello", "token": self._token}))
                first = json.loads(await ws.recv())
        except Exception as exc:
            raise PeerUnavailableError(f"connect failed: {exc!r:.200}", peer="toy") from exc
        if first.get("type") != "session":
            ws.transport.abort()
            raise PeerUnavailableError(f"refused: {first}", peer="toy")
        return Link(ws, self._seq, first["id"])

    async def _switch(self, reason: str, proactive: bool) -> None:
        run = self._backoff.start()
        new, last = await self._open_with_backoff(run, reason)
        if new is None:
            self._fail(f"reconnect failed: {last}")
            return
        self._install(new)
        self._switched(new, "reconnects", reason, run)


def install(url: str, token: str) -> None:
    """Register the toy provider (``audio.provider: toy``) for the server at ``url``."""

    def build(config: Config, context: ProviderContext) -> Callable[[Any], ToyProvider]:
        return lambda session: ToyProvider(url, token, call_id=session.call_id,
                                           connect_timeout_s=context.connect_timeout_s,
                                           stall_timeout_s=context.stall_timeout_s)

    register("toy", build, replace=True)
