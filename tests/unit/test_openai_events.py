"""OpenAI Realtime server events, sans-I/O: the parser and RealtimeState against server
events shaped like protocols.md section 2."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from agentic_fast.core import metrics
from agentic_fast.core.errors import OpenAIProtocolError, RemoteProtocolError
from agentic_fast.providers.openai import events as oe
from agentic_fast.providers.openai.commands import truncate_at
from tests.fakes.openai_realtime import SERVER_MODELS

# --------------------------------------------------------------------------- parser

IDS = {"response_id": "resp_R1", "item_id": "item_A1", "output_index": 0, "content_index": 0}
SESSION = {"type": "realtime", "object": "realtime.session", "id": "sess_S1",
           "model": "gpt-realtime", "output_modalities": ["audio"], "instructions": "Hi",
           "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                     "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}}
ITEM_A1 = {"id": "item_A1", "type": "message", "object": "realtime.item",
           "status": "completed", "role": "assistant",
           "content": [{"type": "output_audio", "transcript": "Sure, one moment."}]}
FN_ITEM = {"id": "item_F1", "type": "function_call", "object": "realtime.item",
           "status": "completed", "call_id": "call_8xA", "name": "end_call",
           "arguments": '{"reason":"done"}'}
RESPONSE_DONE = {
    "object": "realtime.response", "id": "resp_R1", "status": "completed",
    "status_details": None, "conversation_id": "conv_C1", "output_modalities": ["audio"],
    "max_output_tokens": "inf", "output": [ITEM_A1, FN_ITEM],
    "usage": {"total_tokens": 912, "input_tokens": 760, "output_tokens": 152}, "metadata": None}

# (event as the server sends it, expected type, expected attributes)
SERVER_EVENTS: list[tuple[dict[str, Any], type, dict[str, Any]]] = [
    ({"type": "session.created", "session": SESSION}, oe.SessionCreated,
     {"session_id": "sess_S1", "output_format": "pcmu"}),
    ({"type": "session.updated", "session": SESSION}, oe.SessionUpdated,
     {"output_format": "pcmu"}),
    ({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000,
      "item_id": "item_U1"}, oe.SpeechStarted, {"audio_start_ms": 1000, "item_id": "item_U1"}),
    ({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2400,
      "item_id": "item_U1"}, oe.SpeechStopped, {"audio_end_ms": 2400}),
    ({"type": "input_audio_buffer.committed", "item_id": "item_U1", "previous_item_id": None},
     oe.InputAudioCommitted, {"item_id": "item_U1", "previous_item_id": None}),
    ({"type": "input_audio_buffer.cleared"}, oe.InputAudioCleared, {}),
    ({"type": "conversation.item.input_audio_transcription.delta", "item_id": "item_U1",
      "content_index": 0, "delta": "I need"}, oe.InputTranscriptionDelta, {"delta": "I need"}),
    ({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_U1",
      "content_index": 0, "transcript": "I need a dentist.",
      "usage": {"type": "duration", "seconds": 1.2}},
     oe.InputTranscriptionCompleted, {"item_id": "item_U1", "transcript": "I need a dentist."}),
    ({"type": "conversation.item.input_audio_transcription.failed", "item_id": "item_U1",
      "content_index": 0, "error": {"type": "transcription_error", "code": "audio_unintelligible",
                                    "message": "bad audio", "param": None}},
     oe.InputTranscriptionFailed, {"code": "audio_unintelligible", "message": "bad audio"}),
    ({"type": "conversation.item.added", "item": ITEM_A1, "previous_item_id": "item_U1"},
     oe.ConversationItemAdded, {"item_id": "item_A1", "previous_item_id": "item_U1"}),
    ({"type": "conversation.item.done", "item": ITEM_A1, "previous_item_id": None},
     oe.ConversationItemDone, {"item_id": "item_A1"}),
    ({"type": "conversation.item.truncated", "item_id": "item_A1", "content_index": 0,
      "audio_end_ms": 1840}, oe.ConversationItemTruncated, {"audio_end_ms": 1840}),
    ({"type": "response.created", "response": {**RESPONSE_DONE, "status": "in_progress",
                                               "output": [], "usage": None}},
     oe.ResponseCreated, {"response_id": "resp_R1", "status": "in_progress"}),
    ({"type": "response.output_item.added", "response_id": "resp_R1", "output_index": 0,
      "item": {**ITEM_A1, "status": "in_progress", "content": []}},
     oe.ResponseOutputItemAdded, {"item_id": "item_A1", "output_index": 0}),
    ({"type": "response.output_item.done", "response_id": "resp_R1", "output_index": 0,
      "item": ITEM_A1}, oe.ResponseOutputItemDone, {"item_id": "item_A1"}),
    ({"type": "response.content_part.added", **IDS, "part": {"type": "audio", "transcript": ""}},
     oe.ResponseContentPartAdded, {"content_index": 0}),
    ({"type": "response.content_part.done", **IDS,
      "part": {"type": "audio", "transcript": "Sure."}}, oe.ResponseContentPartDone, {}),
    ({"type": "response.output_audio.delta", **IDS, "delta": "//9/fw=="}, oe.OutputAudioDelta,
     {"response_id": "resp_R1", "item_id": "item_A1", "delta": "//9/fw=="}),
    ({"type": "response.output_audio.done", **IDS}, oe.OutputAudioDone, {"item_id": "item_A1"}),
    ({"type": "response.output_audio_transcript.delta", **IDS, "delta": "Sure"},
     oe.OutputAudioTranscriptDelta, {"delta": "Sure"}),
    ({"type": "response.output_audio_transcript.done", **IDS, "transcript": "Sure."},
     oe.OutputAudioTranscriptDone, {"transcript": "Sure."}),
    ({"type": "response.output_text.delta", **IDS, "delta": "Hi"}, oe.OutputTextDelta,
     {"delta": "Hi"}),
    ({"type": "response.output_text.done", **IDS, "text": "Hi."}, oe.OutputTextDone,
     {"text": "Hi."}),
    ({"type": "response.function_call_arguments.delta", "response_id": "resp_R1",
      "item_id": "item_F1", "output_index": 1, "call_id": "call_8xA", "delta": '{"rea'},
     oe.FunctionCallArgumentsDelta, {"call_id": "call_8xA", "delta": '{"rea'}),
    ({"type": "response.function_call_arguments.done", "response_id": "resp_R1",
      "item_id": "item_F1", "output_index": 1, "call_id": "call_8xA", "name": "end_call",
      "arguments": '{"reason":"done"}'}, oe.FunctionCallArgumentsDone,
     {"call_id": "call_8xA", "name": "end_call", "arguments": '{"reason":"done"}'}),
    ({"type": "response.done", "response": RESPONSE_DONE}, oe.ResponseDone,
     {"response_id": "resp_R1", "status": "completed", "reason": None}),
    ({"type": "error", "error": {
        "type": "invalid_request_error", "code": "conversation_already_has_active_response",
        "message": "Conversation already has an active response in progress: resp_R1.",
        "param": None, "event_id": "evt_4"}}, oe.ErrorEvent,
     {"error_type": "invalid_request_error", "code": "conversation_already_has_active_response",
      "param": None, "client_event_id": "evt_4"}),
    ({"type": "rate_limits.updated", "rate_limits": [
        {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 1.5}]},
     oe.RateLimitsUpdated, {}),
]


@pytest.mark.parametrize(("event", "cls", "attrs"), SERVER_EVENTS,
                         ids=[e[0]["type"] for e in SERVER_EVENTS])
def test_parse_server_event(event: dict[str, Any], cls: type, attrs: dict[str, Any]) -> None:
    event = {**event, "event_id": "event_X1"}
    model = SERVER_MODELS[event["type"]]
    model.model_validate(event)  # the example itself is a valid GA server event
    text = orjson.dumps(event)
    for wire in (text, text.decode()):
        parsed = oe.parse_server_event(wire)
        assert type(parsed) is cls
        assert parsed.event_id == "event_X1"
        for key, value in attrs.items():
            assert getattr(parsed, key) == value, key


def test_response_done_details_and_function_calls() -> None:
    done = oe.parse_server_event(orjson.dumps({"type": "response.done", "response": {
        **RESPONSE_DONE, "status": "cancelled",
        "status_details": {"type": "cancelled", "reason": "turn_detected"}}}))
    assert isinstance(done, oe.ResponseDone)
    assert done.status == "cancelled" and done.reason == "turn_detected"
    assert done.function_calls == (
        oe.FunctionCall("call_8xA", "end_call", '{"reason":"done"}', "item_F1"),)
    assert done.usage is not None and done.usage["total_tokens"] == 912


@pytest.mark.parametrize(("status", "details", "failed", "described"), [
    ("completed", None, False, "completed"),
    ("cancelled", {"type": "cancelled", "reason": "turn_detected"}, False,
     "cancelled turn_detected"),
    ("incomplete", {"type": "incomplete", "reason": "turn_detected"}, False,
     "incomplete turn_detected"),
    ("incomplete", {"type": "incomplete", "reason": "client_cancelled"}, False,
     "incomplete client_cancelled"),
    ("incomplete", {"type": "incomplete", "reason": "max_output_tokens"}, True,
     "incomplete max_output_tokens"),
    ("incomplete", {"type": "incomplete", "reason": "content_filter"}, True,
     "incomplete content_filter"),
    ("failed", {"type": "failed", "error": {"type": "insufficient_quota",
                                             "code": "insufficient_quota",
                                             "message": "You exceeded your current quota."}},
     True, "failed insufficient_quota: You exceeded your current quota."),
    ("failed", {"type": "failed", "error": {"type": "server_error", "code": None,
                                             "message": "The server had an error."}},
     True, "failed server_error: The server had an error."),
    ("failed", None, True, "failed"),
])
def test_response_done_failure(status: str, details: dict[str, Any] | None, failed: bool,
                               described: str) -> None:
    done = oe.parse_server_event(orjson.dumps({"type": "response.done", "response": {
        **RESPONSE_DONE, "status": status, "status_details": details}}))
    assert isinstance(done, oe.ResponseDone)
    assert done.failed is failed
    assert done.describe() == described
    assert done.error == (details or {}).get("error")


def test_rate_limits_values() -> None:
    ev = oe.parse_server_event(orjson.dumps(SERVER_EVENTS[-1][0]))
    assert isinstance(ev, oe.RateLimitsUpdated)
    assert ev.rate_limits == (oe.RateLimit("requests", 1000, 999, 1.5),)


@pytest.mark.parametrize(("beta", "cls"), [
    ("response.audio.delta", oe.OutputAudioDelta),
    ("response.audio.done", oe.OutputAudioDone),
    ("response.audio_transcript.delta", oe.OutputAudioTranscriptDelta),
    ("response.text.delta", oe.OutputTextDelta),
])
def test_beta_delta_names_map_to_the_same_events(beta: str, cls: type) -> None:
    event = {"type": beta, **IDS, "delta": "AAAA", "transcript": "x", "text": "x"}
    assert type(oe.parse_server_event(orjson.dumps(event))) is cls


def test_unknown_event_type_is_counted_not_an_error() -> None:
    before = metrics.get("openai.events.unknown")
    event = {"type": "output_audio_buffer.started", "event_id": "event_9", "response_id": "r"}
    parsed = oe.parse_server_event(orjson.dumps(event))
    assert isinstance(parsed, oe.UnknownServerEvent)
    assert parsed.type == "output_audio_buffer.started" and parsed.raw["response_id"] == "r"
    assert metrics.get("openai.events.unknown") == before + 1


@pytest.mark.parametrize(("text", "reason", "fld"), [
    (b"{not json", "malformed_json", None),
    (b"", "malformed_json", None),
    (b'["a"]', "not_object", None),
    (b'{"event_id":"e"}', "missing_field", "type"),
    (b'{"type":5}', "bad_type", "type"),
    (b'{"type":"response.output_audio.delta","response_id":"r","item_id":"i",'
     b'"output_index":0,"content_index":0}', "missing_field", "delta"),
    (b'{"type":"response.output_audio.delta","response_id":"r","item_id":7,'
     b'"output_index":0,"content_index":0,"delta":"AA=="}', "bad_type", "item_id"),
    (b'{"type":"response.output_audio.delta","response_id":"r","item_id":"i",'
     b'"output_index":"0","content_index":0,"delta":"AA=="}', "bad_type", "output_index"),
    (b'{"type":"response.output_audio.delta","response_id":"r","item_id":"i",'
     b'"output_index":0,"content_index":0,"delta":null}', "bad_type", "delta"),
    (b'{"type":"input_audio_buffer.speech_started","item_id":"i"}', "missing_field",
     "audio_start_ms"),
    (b'{"type":"input_audio_buffer.speech_started","item_id":"i","audio_start_ms":"5"}',
     "bad_type", "audio_start_ms"),
    (b'{"type":"response.done"}', "missing_field", "response"),
    (b'{"type":"response.done","response":{"id":"r"}}', "missing_field", "status"),
    (b'{"type":"response.done","response":{"id":"r","status":"completed","output":{}}}',
     "bad_type", "response.output"),
    (b'{"type":"error","error":{"type":"x"}}', "missing_field", "message"),
    (b'{"type":"error","error":"boom"}', "bad_type", "error"),
    (b'{"type":"session.created","session":[]}', "bad_type", "session"),
    (b'{"type":"conversation.item.added","item":{"type":"message"}}', "missing_field", "id"),
    (b'{"type":"response.function_call_arguments.done","response_id":"r","item_id":"i",'
     b'"output_index":0,"call_id":"c","name":"f"}', "missing_field", "arguments"),
])
def test_malformed_input_is_remote_protocol_error(text: bytes, reason: str,
                                                  fld: str | None) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        oe.parse_server_event(text)
    err = info.value
    assert isinstance(err, OpenAIProtocolError)
    assert err.peer == "openai" and err.reason == reason
    if fld is not None:
        assert err.field is not None and err.field.endswith(fld)


# --------------------------------------------------------------------------- state


def _delta(item_id: str, nbytes: int, response_id: str = "resp_R1") -> bytes:
    return orjson.dumps({"type": "response.output_audio.delta", "response_id": response_id,
                         "item_id": item_id, "output_index": 0, "content_index": 0,
                         "delta": base64.b64encode(b"\xff" * nbytes).decode()})


def test_state_tracks_response_and_audio_for_truncate() -> None:
    state = oe.RealtimeState()
    assert truncate_at(state, 100) is None
    state.receive(orjson.dumps({"type": "session.created", "session": SESSION}))
    assert state.output_format == "pcmu"
    state.receive(orjson.dumps({"type": "response.created", "response": {
        "id": "resp_R1", "status": "in_progress", "output": []}}))
    assert state.response_active and state.active_response_id == "resp_R1"
    for n in (800, 801, 799):  # odd sizes exercise base64 padding
        state.receive(_delta("item_A1", n))
    assert state.audio_bytes == 2400 and state.audio_ms == 300
    assert state.truncate_point(1840) == ("item_A1", 0, 300)
    truncate = orjson.loads(truncate_at(state, 1840) or "")
    assert truncate == {"type": "conversation.item.truncate", "item_id": "item_A1",
                        "content_index": 0, "audio_end_ms": 300}  # clamped to what arrived
    assert orjson.loads(truncate_at(state, 120) or "")["audio_end_ms"] == 120
    state.receive(orjson.dumps({"type": "conversation.item.truncated", "item_id": "item_A1",
                                "content_index": 0, "audio_end_ms": 120}))
    assert state.audio_ms == 120
    state.receive(orjson.dumps({"type": "response.done", "response": {
        "id": "resp_R1", "status": "cancelled",
        "status_details": {"type": "cancelled", "reason": "client_cancelled"}}}))
    assert not state.response_active
    state.receive(_delta("item_A2", 480, "resp_R2"))
    assert state.audio_item_id == "item_A2" and state.audio_ms == 60
    assert state.audio_ms_of("item_A1") == 120 and state.audio_ms_of("item_X") is None
    assert orjson.loads(truncate_at(state, 500, "item_A1") or "")["audio_end_ms"] == 120
    assert truncate_at(state, 10, "item_X") is None


def test_state_remembers_a_bounded_number_of_items() -> None:
    state = oe.RealtimeState("pcmu")
    for n in range(oe.RealtimeState.MAX_EARLIER_ITEMS + 3):
        state.receive(_delta(f"item_{n}", 80))
    assert state.audio_ms_of("item_0") is None
    assert state.audio_ms_of(f"item_{oe.RealtimeState.MAX_EARLIER_ITEMS + 1}") == 10


def test_state_pcm16_rate() -> None:
    state = oe.RealtimeState("pcm16")
    state.receive(_delta("item_A1", 4800))
    assert state.audio_ms == 100
