"""The fake OpenAI Realtime server, driven by a plain ``websockets`` client (protocols.md 2).

No sleeps as synchronisation: every wait is on a received frame or a fake record, with a
timeout. Every event the fake sends is also checked against the SDK's server-event models
(``validate_outgoing``), and the ``fake`` fixture fails the test if one was rejected.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from agentic_fast.providers.openai import commands as oc
from agentic_fast.providers.openai import events as oe
from tests.fakes.openai_realtime import FakeOpenAIRealtime, ResponseScript, tone

TIMEOUT = 5.0
ULAW_20MS = base64.b64encode(b"\xff" * 160).decode()


class Client:
    """A thin test client: JSON in and out, waits with timeouts."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.ws.send(event if isinstance(event, str) else json.dumps(event))

    async def recv(self) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        self.events.append(event)
        return event

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Events received up to and including the first of type ``kind``."""
        got: list[dict[str, Any]] = []
        while True:
            event = await self.recv()
            got.append(event)
            if event["type"] == kind:
                return got


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIRealtime]:
    async with FakeOpenAIRealtime() as server:
        yield server


async def open_client(fake: FakeOpenAIRealtime, **session: Any) -> Client:
    """Connect, read ``session.created``, and apply ``session`` (GA) if given."""
    ws = await connect(fake.url, additional_headers=fake.auth_headers())
    client = Client(ws)
    assert (await client.recv())["type"] == "session.created"
    if session:
        await client.send(oc.session_update(**session))
        assert (await client.recv())["type"] == "session.updated"
    return client


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# --------------------------------------------------------------------------- handshake


async def test_missing_or_wrong_key_is_401(fake: FakeOpenAIRealtime) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        with pytest.raises(InvalidStatus) as info:
            await connect(fake.url, additional_headers=headers)
        assert info.value.response.status_code == 401
    assert fake.connection_count == 0
    assert [h["status"] for h in fake.handshakes] == [401, 401]


async def test_beta_header_is_closed_4000(fake: FakeOpenAIRealtime) -> None:
    headers = {**fake.auth_headers(), "OpenAI-Beta": "realtime=v1"}
    async with connect(fake.url, additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "beta_api_shape_disabled")
    session = await fake.wait_session()
    assert session.headers["openai-beta"] == "realtime=v1"
    assert session.sent == []


async def test_reject_next_then_accept(fake: FakeOpenAIRealtime) -> None:
    fake.reject_next(503)
    with pytest.raises(InvalidStatus) as info:
        await connect(fake.url, additional_headers=fake.auth_headers())
    assert info.value.response.status_code == 503
    client = await open_client(fake)
    assert fake.connection_count == 1
    session = await fake.wait_session()
    assert session.headers["authorization"] == f"Bearer {fake.api_key}"
    assert session.query["model"] == "gpt-realtime"
    await client.ws.close()


# --------------------------------------------------------------------------- session


async def test_session_created_then_update_echoes_effective_session(
        fake: FakeOpenAIRealtime) -> None:
    async with connect(fake.url, additional_headers=fake.auth_headers()) as ws:
        client = Client(ws)
        created = await client.recv()
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "realtime"
        assert created["session"]["id"].startswith("sess_")
        await client.send(oc.session_update(
            instructions="Be brief.", voice="marin", audio_format="pcmu", vad=None,
            input_transcription_model="gpt-4o-mini-transcribe", event_id="evt_s1"))
        updated = await client.recv()
    assert updated["type"] == "session.updated"
    session = updated["session"]
    assert session["instructions"] == "Be brief."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["output"]["speed"] == 1.0  # kept: partial update
    fake_session = await fake.wait_session()
    assert fake_session.received_types() == ["session.update"]
    assert fake_session.config["audio"]["input"]["transcription"]["model"] == (
        "gpt-4o-mini-transcribe")


@pytest.mark.parametrize(("event", "code", "param"), [
    ({"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}},
     "unknown_parameter", "session.modalities"),
    ({"type": "session.update", "session": {"instructions": "x"}},
     "missing_required_parameter", "session.type"),
    ({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0},
     "missing_required_parameter", "audio_end_ms"),
    ({"type": "response.explode"}, "invalid_value", "type"),
    ({"type": "input_audio_buffer.append", "audio": 5}, "invalid_type", "audio"),
    ({"type": "input_audio_buffer.append", "audio": "***"}, "invalid_value", "audio"),
    ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
    ({"type": "response.cancel"}, "response_cancel_not_active", None),
    # strict types: no coercion of strings, booleans or floats into numbers
    ({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0,
      "audio_end_ms": "100"}, "invalid_type", "audio_end_ms"),
    ({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": True,
      "audio_end_ms": 100}, "invalid_type", "content_index"),
    ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "threshold": "0.5"}}}}},
     "invalid_type", "session.audio.input.turn_detection.threshold"),
    ({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": "5"}},
     "invalid_type", "session.max_output_tokens"),
    # null only where the API allows it
    ({"type": "session.update", "session": {"type": "realtime", "instructions": None}},
     "invalid_type", "session.instructions"),
    ({"type": "session.update", "session": {"type": "realtime", "tools": None}},
     "invalid_type", "session.tools"),
    # unknown keys at any depth, and GA's single output modality
    ({"type": "session.update", "session": {"type": "realtime", "tools": [
        {"type": "function", "name": "f", "strict": True}]}},
     "unknown_parameter", "session.tools[0].strict"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "system",
      "content": [{"type": "input_text", "text": "x", "lang": "en"}]}},
     "unknown_parameter", "item.content[0].lang"),
    ({"type": "response.create", "response": {"output_modalities": ["audio", "text"]}},
     "invalid_value", "response.output_modalities"),
])
async def test_invalid_event_answered_with_error(fake: FakeOpenAIRealtime, event: dict[str, Any],
                                                 code: str, param: str | None) -> None:
    client = await open_client(fake)
    await client.send({**event, "event_id": "evt_bad"})
    error = await client.recv()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == code
    assert error["error"]["param"] == param
    assert error["error"]["event_id"] == "evt_bad"
    parsed = oe.parse_server_event(json.dumps(error))
    assert isinstance(parsed, oe.ErrorEvent) and parsed.client_event_id == "evt_bad"
    session = await fake.wait_session()
    assert session.rejected[0][0]["event_id"] == "evt_bad"
    assert session.received == []
    await client.ws.close()


async def test_documented_nulls_are_accepted(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake)
    await client.send({"type": "session.update", "event_id": "evt_1", "session": {
        "type": "realtime", "audio": {"input": {
            "transcription": None, "turn_detection": None, "noise_reduction": None}}}})
    assert (await client.recv())["type"] == "session.updated"
    await client.ws.close()


async def test_malformed_json_and_binary_frames_are_errors(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake)
    await client.send("{not json")
    assert (await client.recv())["error"]["code"] == "invalid_json"
    await client.ws.send(b"\x00\x01")
    assert (await client.recv())["type"] == "error"
    session = await fake.wait_session()
    assert len(session.rejected) == 2
    await client.ws.close()


# --------------------------------------------------------------------------- audio in


async def test_audio_append_accepted_and_counted(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, audio_format="pcmu", vad=None)
    for _ in range(10):
        await client.send(oc.input_audio_append(ULAW_20MS))
    session = await fake.wait_session()
    await session.wait_received("input_audio_buffer.append", count=10)
    assert session.audio_bytes == {"audio/pcmu": 1600}
    assert session.received_types() == ["session.update"] + ["input_audio_buffer.append"] * 10
    await client.send(oc.input_audio_commit(event_id="evt_c"))
    events = await client.until("conversation.item.done")
    assert types(events) == ["input_audio_buffer.committed", "conversation.item.added",
                             "conversation.item.done"]
    item = events[-1]["item"]
    assert (item["role"], item["content"][0]["type"]) == ("user", "input_audio")
    await client.send(oc.input_audio_append(ULAW_20MS))
    await client.send(oc.input_audio_clear())
    assert (await client.recv())["type"] == "input_audio_buffer.cleared"
    await client.ws.close()


async def test_pcm16_odd_length_is_rejected(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, audio_format="pcm16", vad=None)
    await client.send(oc.input_audio_append(base64.b64encode(b"\x00" * 960).decode()))
    await client.send(oc.input_audio_append(base64.b64encode(b"\x00" * 3).decode(),
                                            event_id="evt_odd"))
    error = await client.recv()
    assert (error["error"]["param"], error["error"]["event_id"]) == ("audio", "evt_odd")
    session = await fake.wait_session()
    assert session.audio_bytes == {"audio/pcm": 960}
    await client.ws.close()


async def test_auto_vad_turn_transcribes_and_answers() -> None:
    async with FakeOpenAIRealtime(auto_turn_ms=200, user_transcript="Book me in.",
                                  default_response=ResponseScript(transcript="Okay.")) as fake:
        client = await open_client(fake, audio_format="pcmu", vad=oc.server_vad(),
                                   input_transcription_model="gpt-4o-mini-transcribe")
        for _ in range(10):  # 200 ms
            await client.send(oc.input_audio_append(ULAW_20MS))
        events = await client.until("response.done")
    kinds = types(events)
    assert kinds[:3] == ["input_audio_buffer.speech_started",
                         "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    done = next(e for e in events
                if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == "Book me in."
    assert done["item_id"] == events[0]["item_id"]
    assert "response.created" in kinds and events[-1]["response"]["status"] == "completed"
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "Okay."


# --------------------------------------------------------------------------- responses


async def test_response_streams_ga_sequence_with_the_given_audio(
        fake: FakeOpenAIRealtime) -> None:
    audio = tone("audio/pcmu", 500)
    client = await open_client(fake, audio_format="pcmu", vad=None)
    session = await fake.wait_session()
    session.script_response(audio=audio, transcript="Sure, one moment.", chunk_ms=100)
    await client.send(oc.response_create())
    events = await client.until("response.done")
    kinds = types(events)
    assert [k for k in kinds if not k.endswith(".delta")] == [
        "response.created", "response.output_item.added", "conversation.item.added",
        "response.content_part.added", "response.output_audio.done",
        "response.output_audio_transcript.done", "response.content_part.done",
        "response.output_item.done", "conversation.item.done", "response.done"]
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert len(deltas) == 5
    assert b"".join(base64.b64decode(d["delta"]) for d in deltas) == audio
    transcript = "".join(e["delta"] for e in events
                         if e["type"] == "response.output_audio_transcript.delta")
    assert transcript == "Sure, one moment."
    done = oe.parse_server_event(json.dumps(events[-1]))
    assert isinstance(done, oe.ResponseDone) and done.status == "completed"
    assert done.output[0]["content"][0]["transcript"] == "Sure, one moment."
    for event in events:  # our parser reads every event the fake sends
        assert not isinstance(oe.parse_server_event(json.dumps(event)), oe.UnknownServerEvent)
    await client.ws.close()


async def test_text_modality_and_real_time_pace(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, audio_format="pcm16", vad=None)
    session = await fake.wait_session()
    session.script_response(audio_ms=100, chunk_ms=50, pace=1.0, transcript="Two words")
    await client.send(oc.response_create())
    events = await client.until("response.done")
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert sum(len(base64.b64decode(d["delta"])) for d in deltas) == 4800  # 100 ms pcm16
    await client.send(oc.response_create(output_modalities=["text"]))
    events = await client.until("response.done")
    assert "".join(e["delta"] for e in events
                   if e["type"] == "response.output_text.delta") == "Hello, this is the fake " \
        "assistant."
    assert "response.output_audio.delta" not in types(events)
    await client.ws.close()


async def test_cancel_held_response_and_second_create_conflict(
        fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, audio_format="pcmu", vad=None)
    session = await fake.wait_session()
    session.script_response(audio_ms=1000, chunk_ms=100, hold_after_chunks=3)
    await client.send(oc.response_create())
    created = (await client.until("response.created"))[-1]
    await session.wait_until(lambda: session.sent_types().count(
        "response.output_audio.delta") == 3, what="3 deltas")
    await client.send(oc.response_create(event_id="evt_dup"))
    error = (await client.until("error"))[-1]["error"]
    assert (error["code"], error["event_id"]) == (
        "conversation_already_has_active_response", "evt_dup")
    await client.send(oc.response_cancel(event_id="evt_cancel"))
    events = await client.until("response.done")
    response = events[-1]["response"]
    assert response["id"] == created["response"]["id"]
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert response["output"][0]["status"] == "incomplete"
    assert "response.output_audio.done" in types(events)
    assert [c["event_id"] for c in session.cancels] == ["evt_cancel"]
    assert session.active is None
    await client.send(oc.response_cancel(event_id="evt_late"))
    assert (await client.until("error"))[-1]["error"]["code"] == "response_cancel_not_active"
    await client.ws.close()


async def test_truncate_is_validated_against_audio_sent(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, audio_format="pcmu", vad=None)
    session = await fake.wait_session()
    session.script_response(audio_ms=1000, chunk_ms=100, hold_after_chunks=4)
    await client.send(oc.response_create())
    state = oe.RealtimeState("pcmu")
    while state.audio_ms < 400:
        state.receive(await asyncio.wait_for(client.ws.recv(), TIMEOUT))
    item_id = state.audio_item_id
    assert item_id is not None
    await client.send(oc.response_cancel())
    await client.until("response.done")

    await client.send(oc.conversation_item_truncate("item_nope", 0, 100, event_id="t1"))
    error = (await client.until("error"))[-1]["error"]
    assert (error["param"], error["event_id"]) == ("item_id", "t1")
    await client.send(oc.conversation_item_truncate(item_id, 0, 401, event_id="t2"))
    error = (await client.until("error"))[-1]["error"]
    assert error["param"] == "audio_end_ms"
    assert error["message"] == "Audio content of 400ms is already shorter than 401ms"
    user_item = await client_user_item(client)
    await client.send(oc.conversation_item_truncate(user_item, 0, 10, event_id="t3"))
    assert (await client.until("error"))[-1]["error"]["event_id"] == "t3"

    await client.send(oc.truncate_at(state, 1840) or "")  # clamped to the 400 ms that arrived
    truncated = (await client.until("conversation.item.truncated"))[-1]
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, 400)
    await client.send(oc.conversation_item_truncate(item_id, 0, 250))
    assert (await client.until("conversation.item.truncated"))[-1]["audio_end_ms"] == 250
    assert [t["audio_end_ms"] for t in session.truncates] == [400, 250]
    await client.send(oc.conversation_item_truncate(item_id, 0, 300))  # now only 250 ms
    assert (await client.until("error"))[-1]["error"]["param"] == "audio_end_ms"
    await client.ws.close()


async def client_user_item(client: Client) -> str:
    await client.send(oc.conversation_item_create_user_text("The caller pressed 5."))
    events = await client.until("conversation.item.done")
    return str(events[-1]["item"]["id"])


async def test_function_call_round_trip(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, audio_format="pcmu", vad=None,
                               tools=[oc.function_tool("end_call", "Hang up.")])
    session = await fake.wait_session()
    session.script_response(function_call=("end_call", '{"reason":"done"}'))
    await client.send(oc.response_create())
    events = await client.until("response.done")
    args = "".join(e["delta"] for e in events
                   if e["type"] == "response.function_call_arguments.delta")
    assert args == '{"reason":"done"}'
    done = oe.parse_server_event(json.dumps(events[-1]))
    assert isinstance(done, oe.ResponseDone)
    (call,) = done.function_calls
    assert (call.name, call.arguments) == ("end_call", '{"reason":"done"}')
    fn_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert fn_done["call_id"] == call.call_id
    await client.send(oc.conversation_item_create_function_output(call.call_id, {"ok": True}))
    added = (await client.until("conversation.item.done"))[-1]["item"]
    assert added["type"] == "function_call_output" and added["call_id"] == call.call_id
    assert session.function_outputs[0]["output"] == '{"ok":true}'
    await client.send(oc.response_create())
    assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
    await client.ws.close()


# --------------------------------------------------------------------------- faults


async def test_barge_in_injection_cancels_with_turn_detected(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, audio_format="pcmu", vad=oc.server_vad())
    session = await fake.wait_session()
    session.script_response(audio_ms=1000, hold_after_chunks=2)
    await client.send(oc.response_create())
    await session.wait_until(lambda: session.sent_types().count(
        "response.output_audio.delta") == 2, what="2 deltas")
    item_id = await session.speech_started()
    events = await client.until("response.done")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    assert started["item_id"] == item_id
    assert types(events).index("input_audio_buffer.speech_started") < len(events) - 1
    assert events[-1]["response"]["status_details"]["reason"] == "turn_detected"
    assert sum(1 for e in events if e["type"] == "response.output_audio.delta") <= 2
    await client.ws.close()


async def test_failed_response_has_no_output_and_an_error(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, vad=None)
    session = await fake.wait_session()
    session.script_response(ResponseScript.failed(
        "insufficient_quota", "You exceeded your current quota.",
        error_type="insufficient_quota"))
    await client.send(oc.response_create())
    events = await client.until("response.done")
    assert [k for k in types(events) if k != "rate_limits.updated"] == [
        "response.created", "response.done"]
    response = events[-1]["response"]
    assert response["status"] == "failed" and response["output"] == []
    assert response["status_details"] == {"type": "failed", "error": {
        "type": "insufficient_quota", "code": "insufficient_quota",
        "message": "You exceeded your current quota."}}
    assert session.statuses == ["failed"]
    await client.send(oc.response_create())  # the session goes on
    done = (await client.until("response.done"))[-1]
    assert done["response"]["status"] == "completed"
    await client.ws.close()


async def test_incomplete_response_streams_then_ends_incomplete(
        fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, vad=None)
    session = await fake.wait_session()
    session.script_response(ResponseScript.incomplete("content_filter", audio_ms=200))
    await client.send(oc.response_create())
    events = await client.until("response.done")
    assert "response.output_audio.delta" in types(events)
    response = events[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["status_details"] == {"type": "incomplete", "reason": "content_filter"}
    assert response["output"][0]["status"] == "incomplete"
    await client.ws.close()


async def test_refused_open_sends_an_error_first_and_closes(fake: FakeOpenAIRealtime) -> None:
    fake.refuse_next("model_not_found", "The model 'gpt-realtime-0' does not exist.")
    async with connect(fake.url, additional_headers=fake.auth_headers()) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert first["type"] == "error"
    assert first["error"]["code"] == "model_not_found"
    assert first["error"]["type"] == "invalid_request_error"
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    client = await open_client(fake)  # only the next one
    await client.ws.close()


async def test_error_injection_keeps_session_open(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake)
    session = await fake.wait_session()
    await session.send_error("server_error", "The server had an error.",
                             error_type="server_error")
    error = oe.parse_server_event(json.dumps(await client.recv()))
    assert isinstance(error, oe.ErrorEvent) and error.code == "server_error"
    await client.send(oc.session_update(instructions="still here"))
    assert (await client.recv())["type"] == "session.updated"
    await client.ws.close()


async def test_abrupt_close_has_no_close_frame(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake)
    session = await fake.wait_session()
    await session.abort()
    with pytest.raises(ConnectionClosedError) as info:
        await asyncio.wait_for(client.ws.recv(), TIMEOUT)
    assert info.value.rcvd is None  # 1006: no close frame
    await session.wait_closed()


async def test_close_1011(fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake)
    session = await fake.wait_session()
    await session.close(1011, "internal error")
    with pytest.raises(ConnectionClosedError) as info:
        await asyncio.wait_for(client.ws.recv(), TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    await session.wait_closed()
    assert session.close_code == 1011


async def test_session_max_duration_expires() -> None:
    async with FakeOpenAIRealtime(max_session_s=0.05) as fake:
        client = await open_client(fake)
        error = await client.recv()
        assert error["type"] == "error" and error["error"]["code"] == "session_expired"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.ws.recv(), TIMEOUT)
        session = await fake.wait_session()
        await session.wait_closed()


async def test_reconnect_gets_a_fresh_session(fake: FakeOpenAIRealtime) -> None:
    first = await open_client(fake)
    (await fake.wait_session(0)).ws.transport.abort()  # type: ignore[union-attr]
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(first.ws.recv(), TIMEOUT)
    second = await open_client(fake, instructions="again")
    assert fake.connection_count == 2
    s0, s1 = fake.sessions
    assert s0.config["id"] != s1.config["id"]
    await second.ws.close()


async def test_speech_without_interrupt_response_lets_the_response_finish(
        fake: FakeOpenAIRealtime) -> None:
    client = await open_client(fake, audio_format="pcmu",
                               vad=oc.server_vad(interrupt_response=False))
    session = await fake.wait_session()
    session.script_response(audio_ms=300, hold_after_chunks=1)
    await client.send(oc.response_create())
    await session.wait_sent("response.output_audio.delta")
    await session.speech_started()
    session.release()
    events = await client.until("response.done")
    assert "input_audio_buffer.speech_started" in types(events)
    assert events[-1]["response"]["status"] == "completed"
    await client.ws.close()
