"""Demo stand-in for the voice model: a small OpenAI Realtime (GA) server on loopback.

Enough of the protocol for :class:`~agentic_fast.providers.openai.provider.OpenAIRealtimeProvider`
with ``audio.provider: openai-pcmu``: the Bearer key is checked at the upgrade (401 without
it); ``session.created``, then ``session.update`` -> ``session.updated``; caller audio
(``input_audio_buffer.append``) goes through an energy detector standing in for server VAD:
``speech_started`` (cancelling a response in progress, reason ``turn_detected``),
``speech_stopped`` after ``silence_duration_ms``, the commit and the user item, its
transcription, then a response. Responses are a ``run_command`` function call when the
caller asked for something, else speech: ``output_audio.delta``s (synthesised, see
:mod:`agentic_fast.demo.voice`) with their transcript, ``response.done``.
``conversation.item.create`` (system text, tool output) + ``response.create`` make it say
the text or the tool's result; ``conversation.item.truncate`` is checked against the audio
sent and answered ``conversation.item.truncated``. Anything else gets an ``error`` event.

It does not recognise speech: the transcripts are the script's (``transcripts``, in
order), which is what the recording the demo caller plays says. A demo stand-in, not a test
fake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import secrets
from collections import deque
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agentic_fast.demo import voice
from agentic_fast.demo.timeline import Timeline

__all__ = ["COMMAND", "DemoModel"]

RUN_COMMAND = "run_command"
#: What the model asks the agent when the caller wants something.
COMMAND = "What will the weather be in Paris tomorrow?"
_SPEECH_START_MS = 100  # voiced audio before speech_started
_CHUNK_BYTES = 800  # 100 ms of mu-law per audio delta


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class DemoModel:
    """The stand-in server on 127.0.0.1 (any free port); ``url`` once started."""

    def __init__(self, timeline: Timeline, api_key: str, transcripts: Sequence[str]) -> None:
        self.timeline = timeline
        self.api_key = api_key
        self.transcripts: deque[str] = deque(transcripts)
        self.url = ""
        self._server: Server | None = None

    async def start(self) -> str:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None,
                                   process_request=self._check_upgrade, max_size=4 << 20)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/realtime"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _check_upgrade(self, conn: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/v1/realtime":
            return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return conn.respond(HTTPStatus.UNAUTHORIZED, json.dumps({"error": {
                "type": "invalid_request_error", "code": "invalid_api_key",
                "message": "Incorrect API key provided.", "param": None}}))
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        session = _Session(self, ws)
        with contextlib.suppress(ConnectionClosed):
            await session.send({"type": "session.created", "session": session.config})
            async for raw in ws:
                await session.receive(raw)
        session.stop_response()


class _Session:
    """One connection: its session config, conversation, detector and response."""

    def __init__(self, model: DemoModel, ws: ServerConnection) -> None:
        self.model = model
        self.ws = ws
        self.config: dict[str, Any] = {
            "type": "realtime", "object": "realtime.session", "id": _id("sess"),
            "model": "demo", "output_modalities": ["audio"], "instructions": "",
            "tools": [], "tool_choice": "auto",
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "transcription": None,
                                "turn_detection": {"type": "server_vad",
                                                   "silence_duration_ms": 500,
                                                   "create_response": True,
                                                   "interrupt_response": True}},
                      "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}}
        self.items: dict[str, dict[str, Any]] = {}
        self.audio_sent: dict[str, int] = {}  # assistant item id -> mu-law bytes sent
        self.to_say: str | None = None  # what the next response.create says
        self.active: str | None = None  # response id
        self.task: asyncio.Task[None] | None = None
        self.heard_ms = 0  # input audio received
        self.voiced_ms = 0
        self.quiet_ms = 0
        self.speech_item: str | None = None

    # -- sending -----------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", _id("event"))
        await self.ws.send(json.dumps(event))

    async def error(self, code: str, message: str, param: str | None = None,
                    event_id: str | None = None) -> None:
        await self.send({"type": "error", "error": {
            "type": "invalid_request_error", "code": code, "message": message,
            "param": param, "event_id": event_id}})

    # -- client events -----------------------------------------------------------------------

    async def receive(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
            kind = event["type"]
        except (ValueError, TypeError, KeyError):
            await self.error("invalid_json", "We could not parse the JSON body of your request.")
            return
        handler = getattr(self, "on_" + str(kind).replace(".", "_"), None)
        if handler is None:
            await self.error("invalid_value", f"Unsupported event type {kind!r:.60} "
                             "(demo stand-in).", "type", event.get("event_id"))
            return
        await handler(event)

    async def on_session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session") or {}
        fmt = update.get("audio", {}).get("input", {}).get("format", {}).get("type")
        if update.get("type") != "realtime" or fmt not in (None, "audio/pcmu"):
            await self.error("invalid_value", "The demo model speaks realtime sessions with "
                             "audio/pcmu only.", "session", event.get("event_id"))
            return
        for key, value in update.items():
            if key == "audio":
                for side in ("input", "output"):
                    self.config["audio"][side].update(value.get(side, {}))
            else:
                self.config[key] = value
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.config)})

    async def on_input_audio_buffer_append(self, event: dict[str, Any]) -> None:
        data = base64.b64decode(event.get("audio", ""))
        for i in range(0, len(data), voice.FRAME_BYTES):
            await self._hear(data[i:i + voice.FRAME_BYTES])

    async def on_input_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_conversation_item_create(self, event: dict[str, Any]) -> None:
        item = {**event["item"], "object": "realtime.item", "status": "completed"}
        item.setdefault("id", _id("item"))
        if item.get("type") == "function_call_output":
            try:
                self.to_say = str(json.loads(item["output"]).get("result") or "Done.")
            except (ValueError, AttributeError):
                self.to_say = str(item.get("output"))
        elif item.get("type") == "message":
            text = "".join(c.get("text", "") for c in item.get("content", []))
            for lead in ("The call has connected. ", "Tell the caller: ",
                         "Say exactly this to them: "):
                if lead in text:
                    text = text.split(lead, 1)[1]
            self.to_say = text
        await self._add_item(item)

    async def on_response_create(self, event: dict[str, Any]) -> None:
        if self.active is not None:
            await self.error("conversation_already_has_active_response",
                             f"Conversation already has an active response in progress: "
                             f"{self.active}.", None, event.get("event_id"))
            return
        text, self.to_say = self.to_say or "Okay.", None
        self._respond(speak=text)

    async def on_response_cancel(self, event: dict[str, Any]) -> None:
        if self.active is None:
            await self.error("response_cancel_not_active",
                             "Cancellation failed: no active response found", None,
                             event.get("event_id"))
            return
        await self._cancel("client_cancelled")

    async def on_conversation_item_truncate(self, event: dict[str, Any]) -> None:
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        sent = self.audio_sent.get(str(item_id))
        if sent is None or not isinstance(end_ms, int) or not 0 <= end_ms <= sent // 8:
            await self.error("invalid_value", f"Cannot truncate item {item_id!r:.40} at "
                             f"{end_ms!r:.20} ms.", "audio_end_ms", event.get("event_id"))
            return
        self.audio_sent[str(item_id)] = end_ms * 8
        self.model.timeline.mark(
            "truncate", f"the model gets conversation.item.truncate: audio_end_ms={end_ms} "
            f"of {sent // 8} ms (what the caller heard)")
        await self.send({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": 0, "audio_end_ms": end_ms})

    # -- the detector (stands in for server VAD) -----------------------------------------------

    async def _hear(self, frame: bytes) -> None:
        self.heard_ms += voice.FRAME_MS
        vad = self.config["audio"]["input"].get("turn_detection")
        if not vad:
            return
        if voice.voiced(frame):
            self.voiced_ms += voice.FRAME_MS
            self.quiet_ms = 0
            if self.speech_item is None and self.voiced_ms >= _SPEECH_START_MS:
                await self._speech_started(vad)
        else:
            self.voiced_ms = 0
            self.quiet_ms += voice.FRAME_MS
            if self.speech_item is not None and \
                    self.quiet_ms >= vad.get("silence_duration_ms", 500):
                await self._speech_stopped(vad)

    async def _speech_started(self, vad: dict[str, Any]) -> None:
        self.speech_item = _id("item")
        await self.send({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": self.heard_ms - _SPEECH_START_MS,
                         "item_id": self.speech_item})
        if self.active is not None and vad.get("interrupt_response", True):
            await self._cancel("turn_detected")

    async def _speech_stopped(self, vad: dict[str, Any]) -> None:
        item_id, self.speech_item = self.speech_item, None
        await self.send({"type": "input_audio_buffer.speech_stopped",
                         "audio_end_ms": self.heard_ms - self.quiet_ms, "item_id": item_id})
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                         "previous_item_id": None})
        await self._add_item({"id": item_id, "type": "message", "object": "realtime.item",
                              "status": "completed", "role": "user",
                              "content": [{"type": "input_audio", "transcript": None}]})
        said = self.model.transcripts.popleft() if self.model.transcripts else ""
        if self.config["audio"]["input"].get("transcription"):
            await self.send({"type": "conversation.item.input_audio_transcription.completed",
                             "item_id": item_id, "content_index": 0, "transcript": said,
                             "usage": {"type": "duration", "seconds": 1.0}})
            self.model.timeline.mark("transcript", f'the model transcribes: "{said}"')
        if vad.get("create_response", True) and self.active is None:
            asks = "weather" in said.lower() and any(
                t.get("name") == RUN_COMMAND for t in self.config.get("tools") or [])
            if asks:
                self._respond(call=(RUN_COMMAND, json.dumps({"command": COMMAND})))
            else:
                self._respond(speak="Sorry, go ahead.")

    # -- responses -----------------------------------------------------------------------------

    def _respond(self, *, speak: str | None = None, call: tuple[str, str] | None = None) -> None:
        rid = _id("resp")
        self.active = rid
        self.task = asyncio.create_task(self._stream(rid, speak, call))

    def _response(self, rid: str, status: str, output: list[dict[str, Any]],
                  details: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"object": "realtime.response", "id": rid, "status": status,
                "status_details": details, "output": copy.deepcopy(output),
                "conversation_id": "conv_demo", "output_modalities": ["audio"],
                "usage": None, "metadata": None}

    async def _stream(self, rid: str, speak: str | None, call: tuple[str, str] | None) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.send({"type": "response.created",
                             "response": self._response(rid, "in_progress", [])})
            item = await (self._function_call(rid, *call) if call is not None
                          else self._speak(rid, speak or ""))
            self.active = None
            await self.send({"type": "response.done",
                             "response": self._response(rid, "completed", [item])})

    async def _speak(self, rid: str, text: str) -> dict[str, Any]:
        item: dict[str, Any] = {"id": _id("item"), "type": "message", "object": "realtime.item",
                                "status": "in_progress", "role": "assistant", "content": []}
        ids = {"response_id": rid, "item_id": item["id"], "output_index": 0,
               "content_index": 0}
        await self.send({"type": "response.output_item.added", "response_id": rid,
                         "output_index": 0, "item": copy.deepcopy(item)})
        await self._add_item(item)
        await self.send({"type": "response.content_part.added", **ids,
                         "part": {"type": "audio", "transcript": ""}})
        audio = voice.synthesize(text)
        self.audio_sent[item["id"]] = 0
        for i in range(0, len(audio), _CHUNK_BYTES):  # faster than real time, as OpenAI is
            chunk = audio[i:i + _CHUNK_BYTES]
            await self.send({"type": "response.output_audio.delta", **ids,
                             "delta": base64.b64encode(chunk).decode()})
            self.audio_sent[item["id"]] += len(chunk)
        await self.send({"type": "response.output_audio_transcript.delta", **ids,
                         "delta": text})
        await self.send({"type": "response.output_audio.done", **ids})
        await self.send({"type": "response.output_audio_transcript.done", **ids,
                         "transcript": text})
        part = {"type": "audio", "transcript": text}
        await self.send({"type": "response.content_part.done", **ids, "part": part})
        item.update(status="completed", content=[{"type": "output_audio", "transcript": text}])
        await self._item_done(rid, item)
        return item

    async def _function_call(self, rid: str, name: str, arguments: str) -> dict[str, Any]:
        call_id = _id("call")
        item: dict[str, Any] = {"id": _id("item"), "type": "function_call",
                                "object": "realtime.item", "status": "in_progress",
                                "call_id": call_id, "name": name, "arguments": ""}
        await self.send({"type": "response.output_item.added", "response_id": rid,
                         "output_index": 0, "item": copy.deepcopy(item)})
        await self._add_item(item)
        ids = {"response_id": rid, "item_id": item["id"], "output_index": 0,
               "call_id": call_id}
        await self.send({"type": "response.function_call_arguments.delta", **ids,
                         "delta": arguments})
        await self.send({"type": "response.function_call_arguments.done", **ids,
                         "name": name, "arguments": arguments})
        self.model.timeline.mark("tool_call", f"the model calls {name}({arguments})")
        item.update(status="completed", arguments=arguments)
        await self._item_done(rid, item)
        return item

    async def _item_done(self, rid: str, item: dict[str, Any]) -> None:
        await self.send({"type": "response.output_item.done", "response_id": rid,
                         "output_index": 0, "item": copy.deepcopy(item)})
        await self.send({"type": "conversation.item.done", "previous_item_id": None,
                         "item": copy.deepcopy(item)})

    async def _add_item(self, item: dict[str, Any]) -> None:
        previous = next(reversed(self.items), None) if self.items else None
        self.items[item["id"]] = item
        await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": copy.deepcopy(item)})

    async def _cancel(self, reason: str) -> None:
        rid = self.active
        if rid is None:
            return
        self.stop_response()
        await self.send({"type": "response.done", "response": self._response(
            rid, "cancelled", [], {"type": "cancelled", "reason": reason})})

    def stop_response(self) -> None:
        task, self.task, self.active = self.task, None, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

