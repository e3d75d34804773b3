"""Demo stand-in for an OpenClaw agent: a tiny Gateway (protocol v4) on loopback.

Enough of the protocol for :class:`agentic_fast.gateway.GatewayClient`: ``connect.challenge``,
the ``connect`` request (protocol range and shared token checked; a wrong token is refused
with ``AUTH_TOKEN_MISMATCH`` and close 1008), ``hello-ok`` with its ``policy``, then
``chat.send`` answered ``{runId, status: "started"}`` and followed by streamed ``chat``
events (``status``, ``delta``s, ``final``); ``chat.abort`` and ``health`` are accepted. The
answer is canned (:data:`ANSWER`). It is a demo stand-in, not a test fake: it checks little.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agentic_fast.demo.timeline import Timeline

PROTOCOL = 4
ANSWER = "Tomorrow in Paris it will be sunny, around 24 degrees, with a light breeze."


class DemoAgent:
    """The stand-in gateway on 127.0.0.1 (any free port); ``url`` once started."""

    def __init__(self, timeline: Timeline, token: str, answer: str = ANSWER) -> None:
        self.timeline = timeline
        self.token = token
        self.answer = answer
        self.url = ""
        self._server: Server | None = None

    async def start(self) -> str:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None,
                                   ping_interval=None)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        seq = 0

        async def event(name: str, payload: dict[str, Any]) -> None:
            nonlocal seq
            seq += 1
            await ws.send(json.dumps({"type": "event", "event": name, "payload": payload,
                                      "seq": seq}))

        with contextlib.suppress(ConnectionClosed):
            await event("connect.challenge", {"nonce": str(uuid.uuid4()),
                                              "ts": int(time.time() * 1000)})
            if not await self._handshake(ws):
                return
            async for raw in ws:
                frame = json.loads(raw)
                rid, method = frame.get("id"), frame.get("method")
                params = frame.get("params") or {}
                if method == "chat.send":
                    await self._chat(ws, rid, params, event)
                elif method in ("chat.abort", "health"):
                    await _res(ws, rid, {"ok": True})
                else:
                    await _res(ws, rid, error={"code": "INVALID_REQUEST",
                                               "message": f"unknown method {method!r}"})

    async def _handshake(self, ws: ServerConnection) -> bool:
        frame = json.loads(await ws.recv())
        if frame.get("type") != "req" or frame.get("method") != "connect":
            await ws.close(1008, "invalid handshake: first frame must be connect")
            return False
        params = frame.get("params") or {}
        rid = frame.get("id")
        if not params.get("minProtocol", 0) <= PROTOCOL <= params.get("maxProtocol", 0):
            await _res(ws, rid, error={"code": "INVALID_REQUEST", "message": "protocol mismatch"})
            await ws.close(1008, "connect failed")
            return False
        if (params.get("auth") or {}).get("token") != self.token:
            await _res(ws, rid, error={"code": "INVALID_REQUEST",
                                       "message": "unauthorized: gateway token mismatch",
                                       "details": {"code": "AUTH_TOKEN_MISMATCH"}})
            await ws.close(1008, "connect failed")
            return False
        await _res(ws, rid, {
            "type": "hello-ok", "protocol": PROTOCOL,
            "server": {"version": "demo", "connId": "demo-1"},
            "features": {"methods": ["chat.send", "chat.abort", "health"],
                         "events": ["chat", "tick"]},
            "snapshot": {},
            "auth": {"method": "token", "role": "operator",
                     "scopes": list(params.get("scopes") or [])},
            "policy": {"maxPayload": 1 << 20, "maxBufferedBytes": 2 << 20,
                       "tickIntervalMs": 30_000}})
        return True

    async def _chat(self, ws: ServerConnection, rid: str, params: dict[str, Any],
                    event: Any) -> None:
        message, key = params.get("message"), params.get("sessionKey")
        if not isinstance(message, str) or not key or not params.get("idempotencyKey"):
            await _res(ws, rid, error={"code": "INVALID_REQUEST",
                                       "message": "invalid chat.send params"})
            return
        self.timeline.mark("command", f'the agent gets chat.send: "{message}"')
        run_id = str(uuid.uuid4())
        await _res(ws, rid, {"runId": run_id, "status": "started"})
        n = 0

        async def chat(state: str, **fields: Any) -> None:
            nonlocal n
            n += 1
            await event("chat", {"runId": run_id, "sessionKey": key, "seq": n,
                                 "state": state, **fields})

        await chat("status", phase="starting_model")
        words = self.answer.split(" ")
        text = ""
        for i in range(0, len(words), 5):  # streamed, five words at a time
            chunk = " ".join(words[i:i + 5]) + (" " if i + 5 < len(words) else "")
            text += chunk
            await chat("delta", deltaText=chunk, message=_assistant(text))
        await chat("final", message=_assistant(self.answer), stopReason="stop")
        self.timeline.mark("agent_answer", f'the agent answers: "{self.answer}"')


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


async def _res(ws: ServerConnection, rid: Any, payload: dict[str, Any] | None = None, *,
               error: dict[str, Any] | None = None) -> None:
    frame: dict[str, Any] = {"type": "res", "id": rid, "ok": error is None}
    frame["payload" if error is None else "error"] = payload if error is None else error
    await ws.send(json.dumps(frame))
