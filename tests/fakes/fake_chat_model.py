"""A fake OpenAI-compatible chat model (aiohttp), written from protocols.md 5.5.

Serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain JSON, or with
``stream: true`` server-sent events: ``chat.completion.chunk`` deltas, a last chunk with
``finish_reason: "stop"`` and ``usage``, then ``data: [DONE]``). Replies are scripted:
queued texts first, then ``responder(request)`` if given, else ``default_reply``.

Used as the real OpenClaw gateway's model in tests/integration/test_openclaw_real.py and
as the brain's classifier model. It must not import agentic_fast.

    async with FakeChatModel(default_reply="The lights are on.") as model:
        model.base_url   # http://127.0.0.1:<port>/v1

Run standalone: ``python tests/fakes/fake_chat_model.py --port 8001 --reply "hi"``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["FakeChatModel"]


class FakeChatModel:
    """Scripted OpenAI-compatible chat completions on 127.0.0.1 (random port by default)."""

    def __init__(self, *, model: str = "fake-model", default_reply: str = "OK.",
                 api_key: str | None = None, port: int = 0,
                 responder: Callable[[dict[str, Any]], str] | None = None,
                 chunk_words: int = 2, reply_delay_s: float = 0.0) -> None:
        self.model = model
        self.default_reply = default_reply
        self.api_key = api_key
        self.responder = responder
        self.chunk_words = max(1, chunk_words)
        self.reply_delay_s = reply_delay_s  # wait before answering (a slow model)
        self.replies: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []  # bodies of chat completion requests
        self._port = port
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def queue_reply(self, *texts: str) -> None:
        """Replies for the next requests, in order (then responder / default_reply)."""
        self.replies.extend(texts)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeChatModel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or \
            request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _reply_for(self, body: dict[str, Any]) -> str:
        if self.replies:
            return self.replies.popleft()
        if self.responder is not None:
            return self.responder(body)
        return self.default_reply

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid api key")
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(401, "invalid api key")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "messages is required")
        self.requests.append(body)
        reply = self._reply_for(body)
        if self.reply_delay_s > 0:
            await asyncio.sleep(self.reply_delay_s)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body.get("model") or self.model
        prompt_tokens = sum(len(str(m.get("content", "")).split())
                            for m in body["messages"] if isinstance(m, dict))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(reply.split()),
                 "total_tokens": prompt_tokens + len(reply.split())}
        if not body.get("stream"):
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": reply}}],
                "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def chunk(delta: dict[str, Any], finish: str | None = None,
                        with_usage: bool = False) -> None:
            doc: dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": None}]}
            if with_usage:
                doc["usage"] = usage
            await response.write(f"data: {json.dumps(doc)}\n\n".encode())

        await chunk({"role": "assistant", "content": ""})
        words = reply.split(" ")
        for i in range(0, len(words), self.chunk_words):
            piece = " ".join(words[i:i + self.chunk_words])
            await chunk({"content": piece if i == 0 else " " + piece})
        await chunk({}, finish="stop", with_usage=True)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "code": None}}, status=status)


def _main() -> None:  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--reply", default="OK.")
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args()

    async def serve() -> None:
        async with FakeChatModel(model=args.model, default_reply=args.reply,
                                 port=args.port) as fake:
            print(f"fake chat model at {fake.base_url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":  # pragma: no cover
    _main()
