"""A fake "toy" speech-to-speech server: a minimal JSON-over-WebSocket protocol, defined here.

It exists to prove that a third provider needs nothing but its own module
(``tests/toy_provider.py``). Nothing here imports agentic_fast.

Protocol (text frames, one JSON object each, ``type`` first):

client -> server
  ``hello``        ``{"type": "hello", "token": str}``: must be first; a wrong token is
                   answered ``error`` ``unauthorized`` and close 1008.
  ``audio``        ``{"type": "audio", "data": base64 mu-law 8 kHz}``
  ``say``          ``{"type": "say", "text": str}``: speak this (a response follows)
  ``tool_result``  ``{"type": "tool_result", "call_id": str, "output": str}``
  ``cancel``       ``{"type": "cancel", "response": str}``: stop that response's audio
server -> client
  ``session``      ``{"type": "session", "id": str}``: the answer to ``hello``
  ``audio``        ``{"type": "audio", "response": str, "data": base64 mu-law 8 kHz}``
  ``audio_done``   ``{"type": "audio_done", "response": str}``
  ``speech_started`` ``{"type": "speech_started"}``: the caller started talking
  ``transcript``   ``{"type": "transcript", "role": "user"|"assistant", "text": str}``
  ``tool_call``    ``{"type": "tool_call", "call_id": str, "name": str, "arguments": str}``
  ``error``        ``{"type": "error", "reason": str}``; a malformed client frame (bad JSON,
                   unknown type, missing or mistyped field) is answered so, then close 1007.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

#: client message type -> its fields and their types
CLIENT_MESSAGES: dict[str, dict[str, type]] = {
    "hello": {"token": str},
    "audio": {"data": str},
    "say": {"text": str},
    "tool_result": {"call_id": str, "output": str},
    "cancel": {"response": str},
}


class ToySession:
    """One client connection: what it sent, and the means to script the model."""

    def __init__(self, ws: ServerConnection, session_id: str) -> None:
        self.ws = ws
        self.id = session_id
        self.received: list[dict[str, Any]] = []
        self.audio_in = bytearray()
        self.cancels: list[str] = []
        self.said: list[str] = []
        self.tool_results: list[tuple[str, str]] = []
        self._responses = itertools.count(1)
        self.cancelled: set[str] = set()

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def respond(self, audio: bytes, *, chunk: int = 800, text: str = "",
                      hold: asyncio.Event | None = None, hold_after: int = 0) -> str:
        """Speak ``audio`` (mu-law 8 kHz) as one response in ``chunk``-byte pieces; after
        ``hold_after`` chunks wait for ``hold``. Stops early once cancelled."""
        response = f"resp_{next(self._responses)}"
        for n, i in enumerate(range(0, len(audio), chunk)):
            if hold is not None and n == hold_after:
                await hold.wait()
            if response in self.cancelled:
                break
            await self.send({"type": "audio", "response": response,
                             "data": base64.b64encode(audio[i:i + chunk]).decode()})
        await self.send({"type": "audio_done", "response": response})
        if text:
            await self.send({"type": "transcript", "role": "assistant", "text": text})
        return response


class FakeToyS2S:
    """``async with FakeToyS2S() as fake``: ``fake.url``, ``fake.token``, ``fake.sessions``,
    ``fake.violations`` (malformed frames seen), ``await fake.wait_for(predicate)``."""

    def __init__(self, token: str = "toy-token") -> None:
        self.token = token
        self.sessions: list[ToySession] = []
        self.violations: list[str] = []
        self._server: Server | None = None
        self._changed = asyncio.Event()
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/toy"

    async def __aenter__(self) -> FakeToyS2S:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    async def _refuse(self, ws: ServerConnection, reason: str, code: int) -> None:
        self.violations.append(reason)
        self._notify()
        await ws.send(json.dumps({"type": "error", "reason": reason}))
        await ws.close(code, reason[:100])

    def _parse(self, raw: str | bytes) -> tuple[dict[str, Any] | None, str]:
        if not isinstance(raw, str):
            return None, "binary frame"
        try:
            msg = json.loads(raw)
        except ValueError:
            return None, "malformed json"
        if not isinstance(msg, dict):
            return None, "not an object"
        fields = CLIENT_MESSAGES.get(msg.get("type"))  # type: ignore[arg-type]
        if fields is None:
            return None, f"unknown type {msg.get('type')!r}"
        for name, kind in fields.items():
            if not isinstance(msg.get(name), kind):
                return None, f"{msg['type']}.{name} missing or not {kind.__name__}"
        extra = set(msg) - {"type", *fields}
        if extra:
            return None, f"{msg['type']}: unknown fields {sorted(extra)}"
        if msg["type"] == "audio":
            try:
                base64.b64decode(msg["data"], validate=True)
            except binascii.Error:
                return None, "audio.data is not base64"
        return msg, ""

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            hello, why = self._parse(await ws.recv())
            if hello is None or hello["type"] != "hello":
                await self._refuse(ws, why or "hello must come first", 1007)
                return
            if hello["token"] != self.token:
                await ws.send(json.dumps({"type": "error", "reason": "unauthorized"}))
                await ws.close(1008, "unauthorized")
                return
            session = ToySession(ws, f"toy_{next(self._ids)}")
            self.sessions.append(session)
            await session.send({"type": "session", "id": session.id})
            self._notify()
            async for raw in ws:
                msg, why = self._parse(raw)
                if msg is None or msg["type"] == "hello":
                    await self._refuse(ws, why or "hello twice", 1007)
                    return
                session.received.append(msg)
                kind = msg["type"]
                if kind == "audio":
                    session.audio_in += base64.b64decode(msg["data"])
                elif kind == "cancel":
                    session.cancels.append(msg["response"])
                    session.cancelled.add(msg["response"])
                elif kind == "say":
                    session.said.append(msg["text"])
                elif kind == "tool_result":
                    session.tool_results.append((msg["call_id"], msg["output"]))
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            self._notify()
