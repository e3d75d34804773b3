"""OpenAI Realtime client events, sans-I/O: the builders checked against the SDK's
client-event models (protocols.md section 2)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from agentic_fast.core.errors import LocalProtocolError
from agentic_fast.providers.openai import commands as oc
from tests.fakes.openai_realtime import InvalidEvent, validate_client_event

# --------------------------------------------------------------------------- builders

END_CALL = oc.function_tool("end_call", "Hang up politely.",
                            {"type": "object", "properties": {"reason": {"type": "string"}},
                             "required": []})

BUILT: dict[str, str] = {
    "session_update_full": oc.session_update(
        instructions="You are a concise phone assistant.", voice="marin", audio_format="pcmu",
        vad=oc.server_vad(threshold=0.6, prefix_padding_ms=200, silence_duration_ms=400),
        input_transcription_model="gpt-4o-mini-transcribe", transcription_language="en",
        noise_reduction="near_field", tools=[END_CALL], tool_choice="auto",
        output_modalities=["audio"], max_output_tokens="inf", speed=1.1, event_id="evt_1"),
    "session_update_pcm16_semantic": oc.session_update(
        audio_format="pcm16", vad=oc.semantic_vad(eagerness="high"),
        tool_choice={"type": "function", "name": "end_call"}),
    "session_update_manual_turns": oc.session_update(
        vad=None, input_transcription_model=None, noise_reduction=None),
    "session_update_instructions_only": oc.session_update(instructions="Be brief."),
    "session_update_split_formats": oc.session_update(audio_format="pcm16",
                                                      output_audio_format="pcmu"),
    "input_audio_append": oc.input_audio_append(base64.b64encode(b"\xff" * 160).decode()),
    "input_audio_append_id": oc.input_audio_append("AAAA", event_id="evt_2"),
    "input_audio_commit": oc.input_audio_commit(event_id="evt_3"),
    "input_audio_clear": oc.input_audio_clear(),
    "response_create_bare": oc.response_create(),
    "response_create_full": oc.response_create(
        "Say goodbye.", output_modalities=["audio"], tools=[END_CALL], tool_choice="required",
        conversation="none", metadata={"topic": "bye"}, max_output_tokens=200,
        input_items=[{"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "hi"}]}], event_id="evt_4"),
    "response_cancel": oc.response_cancel(),
    "response_cancel_id": oc.response_cancel("resp_R1", event_id="evt_5"),
    "truncate": oc.conversation_item_truncate("item_A1", 0, 1840, event_id="evt_6"),
    "user_text": oc.conversation_item_create_user_text("The caller pressed 5.",
                                                       previous_item_id="item_U1"),
    "system_text": oc.conversation_item_create_system_text("Caller is a VIP."),
    "function_output": oc.conversation_item_create_function_output("call_8xA", '{"ok":true}'),
    "function_output_mapping": oc.conversation_item_create_function_output(
        "call_8xA", {"ok": True, "note": 'quote " and \\ slash'}, event_id="evt_7"),
}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_built_event_validates_against_sdk_model(name: str) -> None:
    """Correct on the wire: the SDK's client-event model accepts it, with no unknown fields."""
    event = orjson.loads(BUILT[name])
    model = validate_client_event(event)
    assert model.type == event["type"]  # type: ignore[attr-defined]


def test_validator_has_teeth() -> None:
    """The check above rejects beta shapes and missing fields (so it can fail)."""
    beta = {"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"],
                                                  "input_audio_format": "g711_ulaw"}}
    with pytest.raises(InvalidEvent) as info:
        validate_client_event(beta)
    assert info.value.code == "unknown_parameter"
    with pytest.raises(InvalidEvent) as info:
        validate_client_event({"type": "session.update", "session": {"instructions": "x"}})
    assert info.value.param == "session.type"
    with pytest.raises(InvalidEvent):
        validate_client_event({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"format": "pcm16"}}}})


def test_session_update_is_ga_shape() -> None:
    session = orjson.loads(BUILT["session_update_full"])["session"]
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    audio_in, audio_out = session["audio"]["input"], session["audio"]["output"]
    assert audio_in["format"] == {"type": "audio/pcmu"} == audio_out["format"]
    assert audio_in["turn_detection"] == {
        "type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
        "silence_duration_ms": 400, "create_response": True, "interrupt_response": True}
    assert audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "en"}
    assert audio_in["noise_reduction"] == {"type": "near_field"}
    assert audio_out["voice"] == "marin"
    assert session["tools"][0]["name"] == "end_call"
    assert not {"modalities", "voice", "input_audio_format", "turn_detection"} & set(session)


def test_session_update_pcm16_and_partial_updates() -> None:
    session = orjson.loads(BUILT["session_update_pcm16_semantic"])["session"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    manual = orjson.loads(BUILT["session_update_manual_turns"])["session"]["audio"]["input"]
    assert manual == {"turn_detection": None, "transcription": None, "noise_reduction": None}
    only = orjson.loads(BUILT["session_update_instructions_only"])
    assert only == {"type": "session.update",
                    "session": {"type": "realtime", "instructions": "Be brief."}}
    split = orjson.loads(BUILT["session_update_split_formats"])["session"]["audio"]
    assert split["output"]["format"] == {"type": "audio/pcmu"}
    transcription_off = orjson.loads(oc.session_update(input_transcription_model=""))
    assert transcription_off["session"]["audio"]["input"]["transcription"] is None


def test_input_audio_append_is_plain_concatenation() -> None:
    payload = base64.b64encode(bytes(range(256)) * 4).decode()
    text = oc.input_audio_append(payload)
    assert text == '{"type":"input_audio_buffer.append","audio":"' + payload + '"}'
    assert orjson.loads(text) == {"type": "input_audio_buffer.append", "audio": payload}
    assert orjson.loads(oc.input_audio_append("AAAA", event_id='id"x')) == {
        "type": "input_audio_buffer.append", "audio": "AAAA", "event_id": 'id"x'}


def test_small_builders_exact_json() -> None:
    assert orjson.loads(BUILT["response_create_bare"]) == {"type": "response.create"}
    assert orjson.loads(BUILT["response_cancel"]) == {"type": "response.cancel"}
    assert orjson.loads(BUILT["truncate"]) == {
        "type": "conversation.item.truncate", "item_id": "item_A1", "content_index": 0,
        "audio_end_ms": 1840, "event_id": "evt_6"}
    out = orjson.loads(BUILT["function_output_mapping"])["item"]
    assert out["type"] == "function_call_output"
    assert orjson.loads(out["output"]) == {"ok": True, "note": 'quote " and \\ slash'}
    user = orjson.loads(BUILT["user_text"])
    assert user["item"]["content"] == [{"type": "input_text", "text": "The caller pressed 5."}]
    assert user["previous_item_id"] == "item_U1"


@pytest.mark.parametrize("build", [
    lambda: oc.session_update(audio_format="g711_ulaw"),  # type: ignore[arg-type]
    lambda: oc.session_update(vad={"type": "server_vad", "bogus": 1}),
    lambda: oc.session_update(vad={"type": "loud"}),
    lambda: oc.session_update(tool_choice="sometimes"),
    lambda: oc.session_update(tools=[{"name": "x"}]),
    lambda: oc.session_update(output_modalities=["text", "audio"]),
    lambda: oc.session_update(speed=3.0),
    lambda: oc.session_update(voice=""),
    lambda: oc.server_vad(threshold=1.5),
    lambda: oc.input_audio_commit(event_id=""),
    lambda: oc.conversation_item_truncate("item_A1", 0, -1),
    lambda: oc.conversation_item_truncate("item_A1", 0, 1.5),  # type: ignore[arg-type]
    lambda: oc.conversation_item_truncate("", 0, 10),
    lambda: oc.response_create(conversation="other"),  # type: ignore[arg-type]
    lambda: oc.conversation_item_create_function_output("", "x"),
])
def test_builder_misuse_is_local_protocol_error(build: Any) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert info.value.peer == "openai"
