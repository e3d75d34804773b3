"""Gemini Live messages (protocols.md 3): builders checked against google-genai's Live types
and against what the SDK's own converters put on the wire; the parser over every server
message kind, checked against ``LiveServerMessage``."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from google.genai import types

from agentic_fast.brain.intent import run_command_declaration
from agentic_fast.core import metrics
from agentic_fast.core.errors import GeminiProtocolError, LocalProtocolError, RemoteProtocolError
from agentic_fast.providers.gemini import events as g
from agentic_fast.providers.gemini.events import (
    AudioChunk,
    ContextCompression,
    FunctionCall,
    FunctionResponse,
    GeminiSetup,
    GenerationComplete,
    GoAway,
    InputTranscription,
    Interrupted,
    ModelText,
    OutputTranscription,
    SessionResumptionUpdate,
    SetupComplete,
    ToolCall,
    ToolCallCancellation,
    TurnComplete,
    UsageMetadata,
    VadSettings,
    parse_server_message,
)

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
PCM = bytes(range(256)) * 5  # 640 bytes = 20 ms at 16 kHz
B64 = base64.b64encode(PCM).decode()
END_CALL = {"name": "end_call", "description": "Hang up politely.",
            "parameters": {"type": "OBJECT", "properties": {"reason": {"type": "STRING"}}}}


def sdk_accepts(text: str) -> types.LiveClientMessage:
    """Validate one client frame with google-genai's Live types (camelCase aliases, extra
    fields forbidden, bytes as base64). ``LiveClientSetup`` lacks ``realtimeInputConfig``
    (the SDK adds it from ``LiveConnectConfig``), so that part is checked on its own."""
    msg = json.loads(text)
    assert len(msg) == 1, "one message type per frame"
    setup = msg.get("setup")
    if setup is not None and "realtimeInputConfig" in setup:
        types.RealtimeInputConfig.model_validate_json(json.dumps(setup.pop(
            "realtimeInputConfig")))
    return types.LiveClientMessage.model_validate_json(json.dumps(msg))


def camel(obj: Any) -> Any:
    """The SDK sends a mix of spellings; the server reads both. Compare in camelCase."""
    if isinstance(obj, dict):
        return {re.sub(r"_([a-z])", lambda m: m[1].upper(), k): camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camel(v) for v in obj]
    return obj


async def sdk_setup_wire(model: str, config: types.LiveConnectConfig) -> dict[str, Any]:
    """The ``setup`` dict ``google.genai.live.AsyncLive.connect`` would send (Gemini API,
    API key), computed offline with the SDK's own converters."""
    from google import genai
    from google.genai import _common
    from google.genai import _live_converters as conv
    from google.genai import _transformers as t
    from google.genai.live import _t_live_connect_config

    api = genai.Client(api_key="offline-test")._api_client
    name = t.t_model(api, model)
    params = await _t_live_connect_config(api, config)
    wire = _common.convert_to_dict(conv._LiveConnectParameters_to_mldev(
        api_client=api,
        from_object=types.LiveConnectParameters(model=name, config=params).model_dump(
            exclude_none=True)))
    del wire["config"]
    wire = _common.encode_unserializable_types(wire)
    wire["setup"]["model"] = name
    return wire


def sdk_realtime_wire(**kw: Any) -> dict[str, Any]:
    """What ``AsyncSession.send_realtime_input(**kw)`` sends."""
    from google.genai import _common
    from google.genai import _live_converters as conv

    params = types.LiveSendRealtimeInputParameters.model_validate(kw)
    return {"realtime_input": _common.encode_unserializable_types(_common.convert_to_dict(
        conv._LiveSendRealtimeInputParameters_to_mldev(from_object=params)))}


# =========================================================================== builders


def test_setup_defaults() -> None:
    text = g.setup_message(MODEL, "Puck", "You are a concise phone assistant.")
    assert json.loads(text) == {"setup": {
        "model": "models/" + MODEL,
        "generationConfig": {"responseModalities": ["AUDIO"], "speechConfig": {
            "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}}}},
        "systemInstruction": {"parts": [{"text": "You are a concise phone assistant."}]},
        "inputAudioTranscription": {}, "outputAudioTranscription": {},
        "sessionResumption": {}}}
    setup = sdk_accepts(text).setup
    assert setup is not None and setup.model == "models/" + MODEL
    assert setup.generation_config.speech_config.voice_config.prebuilt_voice_config.voice_name \
        == "Puck"


async def test_full_setup_matches_what_the_sdk_sends() -> None:
    setup = GeminiSetup(
        MODEL, voice="Kore", system_instruction="Be brief.", tools=[g.function_tool(END_CALL)],
        vad=VadSettings(start_of_speech_sensitivity="START_SENSITIVITY_HIGH",
                        end_of_speech_sensitivity="END_SENSITIVITY_LOW", prefix_padding_ms=20,
                        silence_duration_ms=500,
                        activity_handling="START_OF_ACTIVITY_INTERRUPTS",
                        turn_coverage="TURN_INCLUDES_ONLY_ACTIVITY"),
        compression=ContextCompression(trigger_tokens=25600, target_tokens=12800),
        language_code="en-US", temperature=0.7, initial_history_in_client_content=True)
    ours = json.loads(setup.to_json(resumption_handle="handle-1"))
    sdk_accepts(setup.to_json(resumption_handle="handle-1"))
    config = types.LiveConnectConfig(
        response_modalities=["AUDIO"], temperature=0.7,
        speech_config=types.SpeechConfig(
            language_code="en-US", voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name="Kore"))),
        system_instruction="Be brief.",
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(**END_CALL)])],
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(
                disabled=False, start_of_speech_sensitivity="START_SENSITIVITY_HIGH",
                end_of_speech_sensitivity="END_SENSITIVITY_LOW", prefix_padding_ms=20,
                silence_duration_ms=500),
            activity_handling="START_OF_ACTIVITY_INTERRUPTS",
            turn_coverage="TURN_INCLUDES_ONLY_ACTIVITY"),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(handle="handle-1"),
        context_window_compression=types.ContextWindowCompressionConfig(
            trigger_tokens=25600, sliding_window=types.SlidingWindow(target_tokens=12800)),
        history_config=types.HistoryConfig(initial_history_in_client_content=True))
    sdk = camel(await sdk_setup_wire(MODEL, config))
    # The SDK's t_content adds role "user" to the system instruction; role is optional.
    assert sdk["setup"]["systemInstruction"].pop("role") == "user"
    assert ours == sdk


async def test_brain_tool_setup_matches_what_the_sdk_sends() -> None:
    """The brain's ``run_command`` (a JSON-Schema declaration shared with OpenAI) goes out
    as one Tool of functionDeclarations, its Schema types as the SDK spells them."""
    decl = run_command_declaration()
    assert decl["parameters"]["type"] == "object"  # JSON Schema spelling on our side
    setup = GeminiSetup(MODEL, tools=[g.function_tool(decl)])
    sdk_accepts(setup.to_json())
    ours = json.loads(setup.to_json())
    sdk = camel(await sdk_setup_wire(MODEL, types.LiveConnectConfig(
        response_modalities=["AUDIO"], input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(),
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(**decl)])])))
    assert ours["setup"]["tools"] == sdk["setup"]["tools"]
    assert ours == sdk
    assert decl["parameters"]["type"] == "object"  # the caller's declaration is not changed


@pytest.mark.parametrize(("given", "wire"), [
    ("gemini-2.5-flash", "models/gemini-2.5-flash"),
    ("models/gemini-2.5-flash", "models/gemini-2.5-flash"),
    ("tunedModels/abc", "tunedModels/abc"),
])
def test_model_prefix(given: str, wire: str) -> None:
    assert GeminiSetup(given).model == wire
    assert json.loads(g.setup_message(given))["setup"]["model"] == wire


def test_setup_options() -> None:
    plain = json.loads(g.setup_message(MODEL, input_transcription=False,
                                       output_transcription=False, session_resumption=False))
    assert plain == {"setup": {"model": "models/" + MODEL,
                               "generationConfig": {"responseModalities": ["AUDIO"]}}}
    manual = GeminiSetup(MODEL, vad=VadSettings(disabled=True), compression=ContextCompression())
    wire = json.loads(manual.to_json())["setup"]
    assert wire["realtimeInputConfig"] == {"automaticActivityDetection": {"disabled": True}}
    assert wire["contextWindowCompression"] == {"slidingWindow": {}}
    sdk_accepts(manual.to_json())


@pytest.mark.parametrize("make", [
    lambda: GeminiSetup(""),
    lambda: GeminiSetup("models/../x"),
    lambda: GeminiSetup(MODEL, voice=""),
    lambda: GeminiSetup(MODEL, response_modality="VIDEO"),
    lambda: GeminiSetup(MODEL, tools={"functionDeclarations": []}),  # type: ignore[arg-type]
    lambda: GeminiSetup(MODEL, tools=[END_CALL]),  # a bare declaration: the server says 1007
    lambda: g.function_tool(),
    lambda: GeminiSetup(MODEL, session_resumption=False).to_json("h"),
    lambda: GeminiSetup(MODEL).to_json(""),
    lambda: VadSettings(start_of_speech_sensitivity="HIGH"),
    lambda: VadSettings(silence_duration_ms=-1),
    lambda: ContextCompression(trigger_tokens=1.5),  # type: ignore[arg-type]
    lambda: g.live_url(api_version="v2"),
])
def test_setup_rejects_bad_input(make: Any) -> None:
    with pytest.raises(LocalProtocolError) as info:
        make()
    assert info.value.peer == "gemini"


def test_live_url() -> None:
    assert g.live_url() == ("wss://generativelanguage.googleapis.com/ws/google.ai."
                            "generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
    assert g.live_url("ws://127.0.0.1:9/", "v1alpha").startswith("ws://127.0.0.1:9/ws/google.ai.")


def test_realtime_audio_matches_the_sdk() -> None:
    text = g.realtime_audio(B64)
    assert text == ('{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":"'
                    + B64 + '"}}}')
    msg = sdk_accepts(text)
    assert msg.realtime_input.audio.data == PCM
    assert msg.realtime_input.audio.mime_type == "audio/pcm;rate=16000"
    sdk = camel(sdk_realtime_wire(audio=types.Blob(data=PCM, mime_type="audio/pcm;rate=16000")))
    # The SDK writes bytes as URL-safe base64; we follow protocols.md 3.2 (standard base64,
    # which is also what the audio layer produces). The server accepts both.
    assert base64.urlsafe_b64decode(sdk["realtimeInput"]["audio"].pop("data")) == PCM
    ours = json.loads(text)
    assert base64.b64decode(ours["realtimeInput"]["audio"].pop("data"), validate=True) == PCM
    assert ours == sdk


@pytest.mark.parametrize(("ours", "kw"), [
    (g.realtime_text("The caller pressed 5."), {"text": "The caller pressed 5."}),
    (g.audio_stream_end(), {"audio_stream_end": True}),
    (g.activity_start(), {"activity_start": {}}),
    (g.activity_end(), {"activity_end": {}}),
])
def test_other_realtime_inputs_match_the_sdk(ours: str, kw: dict[str, Any]) -> None:
    sdk_accepts(ours)
    assert json.loads(ours) == camel(sdk_realtime_wire(**kw))


def test_realtime_text_escapes_and_rejects() -> None:
    text = 'say "hi"\n\u00e9'
    assert sdk_accepts(g.realtime_text(text)).realtime_input.text == text
    with pytest.raises(LocalProtocolError):
        g.realtime_text("")


def test_tool_response_matches_the_sdk() -> None:
    from google.genai import _common
    from google.genai import _transformers as t

    ours = g.tool_response([FunctionResponse("fc-7", "end_call", {"result": "ok"},
                                             scheduling="SILENT", will_continue=False)])
    msg = sdk_accepts(ours)
    [fr] = msg.tool_response.function_responses
    assert (fr.id, fr.name, fr.response, fr.scheduling) == ("fc-7", "end_call",
                                                            {"result": "ok"}, "SILENT")
    sdk = _common.convert_to_dict(t.t_tool_response(types.FunctionResponse(
        id="fc-7", name="end_call", response={"result": "ok"}, scheduling="SILENT",
        will_continue=False)), convert_keys=True)
    assert json.loads(ours) == {"toolResponse": camel(sdk)}


def test_tool_response_from_mappings_and_calls() -> None:
    call = FunctionCall("fc-1", "lookup", {"q": "x"})
    assert json.loads(call.args_json) == {"q": "x"}
    text = g.tool_response([call.reply({"result": 1}),
                            {"id": "fc-2", "name": "other", "response": {"error": "no"}}])
    responses = json.loads(text)["toolResponse"]["functionResponses"]
    assert responses == [{"id": "fc-1", "name": "lookup", "response": {"result": 1}},
                         {"id": "fc-2", "name": "other", "response": {"error": "no"}}]
    sdk_accepts(text)
    for bad in ([], [{"name": "x", "response": {}}],
                [{"id": "a", "name": "x", "response": "not an object"}]):
        with pytest.raises(LocalProtocolError):
            g.tool_response(bad)
    with pytest.raises(LocalProtocolError):
        FunctionResponse("a", "x", {}, scheduling="LATER")
    with pytest.raises(LocalProtocolError):  # the Gemini API needs the call id echoed
        FunctionCall(None, "x", {}).reply({})


def test_client_content() -> None:
    text = g.client_content([("user", "My name is Ada."), ("model", "Hi Ada.")],
                            turn_complete=False)
    msg = sdk_accepts(text)
    assert [c.role for c in msg.client_content.turns] == ["user", "model"]
    assert msg.client_content.turn_complete is False
    assert json.loads(g.client_content("Summarise the call so far.")) == {"clientContent": {
        "turns": [{"role": "user", "parts": [{"text": "Summarise the call so far."}]}],
        "turnComplete": True}}
    sdk_accepts(g.client_content([{"role": "user", "parts": [{"text": "x"}]}]))
    for bad in ([], [("system", "x")], [{"role": "user"}], [42]):
        with pytest.raises(LocalProtocolError):
            g.client_content(bad)  # type: ignore[arg-type]
    assert "1007" in (g.client_content.__doc__ or "")


# =========================================================================== parser

AUDIO_MSG = ('{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":'
             '"audio/pcm;rate=24000","data":"AAAAAP7/"}}]}}}')
TURN_END = {"serverContent": {"turnComplete": True}, "usageMetadata": {
    "promptTokenCount": 812, "responseTokenCount": 96, "totalTokenCount": 908,
    "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 700},
                            {"modality": "TEXT", "tokenCount": 112}],
    "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 96}]}}

#: (server message, events) for every kind in protocols.md 3.5.
EXAMPLES: list[tuple[Any, list[Any]]] = [
    ({"setupComplete": {}}, [SetupComplete()]),
    ({"setupComplete": {"sessionId": "s-1"}}, [SetupComplete("s-1")]),
    (json.loads(AUDIO_MSG), [AudioChunk("AAAAAP7/")]),
    ({"serverContent": {"inputTranscription": {"text": "I'd like to book"}}},
     [InputTranscription("I'd like to book")]),
    ({"serverContent": {"outputTranscription": {"text": "Sure,", "finished": True}}},
     [OutputTranscription("Sure,", True)]),
    ({"serverContent": {"interrupted": True}}, [Interrupted()]),
    ({"serverContent": {"generationComplete": True}}, [GenerationComplete()]),
    (TURN_END, [TurnComplete(), UsageMetadata(812, 96, 908, {})]),
    ({"serverContent": {"turnComplete": True, "turnCompleteReason": "NEED_MORE_INPUT",
                        "waitingForInput": True}}, [TurnComplete("NEED_MORE_INPUT")]),
    ({"toolCall": {"functionCalls": [{"id": "fc-7", "name": "end_call",
                                      "args": {"reason": "caller said goodbye"}}]}},
     [ToolCall((FunctionCall("fc-7", "end_call", {"reason": "caller said goodbye"}),))]),
    ({"toolCallCancellation": {"ids": ["fc-7", "fc-8"]}}, [ToolCallCancellation(("fc-7",
                                                                                  "fc-8"))]),
    ({"sessionResumptionUpdate": {"newHandle": "CiQ4ZTY", "resumable": True}},
     [SessionResumptionUpdate("CiQ4ZTY", True)]),
    ({"sessionResumptionUpdate": {}}, [SessionResumptionUpdate(None, False)]),
    ({"sessionResumptionUpdate": {"newHandle": "h", "resumable": True,
                                  "lastConsumedClientMessageIndex": "12"}},
     [SessionResumptionUpdate("h", True, 12)]),
    ({"goAway": {"timeLeft": "50s"}}, [GoAway(50.0)]),
    ({"goAway": {"timeLeft": "9.5s"}}, [GoAway(9.5)]),
    ({"goAway": {}}, [GoAway(None)]),
    ({"usageMetadata": {"totalTokenCount": 3}}, [UsageMetadata(0, 0, 3, {})]),
]


@pytest.mark.parametrize(("msg", "events"), EXAMPLES)
def test_parse_every_kind(msg: dict[str, Any], events: list[Any]) -> None:
    text = json.dumps(msg)
    assert parse_server_message(text) == events
    assert parse_server_message(text.encode()) == events  # binary frames carry the same JSON
    types.LiveServerMessage.model_validate_json(text)  # the example is a valid server message


def test_audio_chunk_is_the_base64_text_undecoded() -> None:
    [chunk] = parse_server_message(AUDIO_MSG.encode())
    assert type(chunk) is AudioChunk and chunk.rate == 24000
    sdk = types.LiveServerMessage.model_validate_json(AUDIO_MSG)
    assert base64.b64decode(chunk.data) == sdk.server_content.model_turn.parts[0].inline_data.data


def test_multi_part_message_in_turn_order() -> None:
    msg = {"usageMetadata": {"totalTokenCount": 9},
           "serverContent": {
               "turnComplete": True, "generationComplete": True,
               "outputTranscription": {"text": "bye"},
               "modelTurn": {"parts": [
                   {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "AAAA"}},
                   {"text": "thinking...", "thought": True},
                   {"executableCode": {"language": "PYTHON", "code": "1"}},
                   {"inlineData": {"mimeType": "audio/pcm;rate=16000", "data": "AQAB"}},
                   {"inlineData": {"mimeType": "image/png", "data": "AA=="}}]},
               "inputTranscription": {"text": "hi"}, "interrupted": False},
           "sessionResumptionUpdate": {"resumable": False}}
    types.LiveServerMessage.model_validate_json(json.dumps(msg))
    assert parse_server_message(json.dumps(msg)) == [
        InputTranscription("hi"), AudioChunk("AAAA"), ModelText("thinking...", True),
        AudioChunk("AQAB", 16000), OutputTranscription("bye"), GenerationComplete(),
        TurnComplete(), SessionResumptionUpdate(None, False), UsageMetadata(0, 0, 9, {})]


def test_unknown_fields_are_tolerated_and_counted() -> None:
    metrics.reset()
    assert parse_server_message('{"brandNew": {"x": 1}}') == []
    assert parse_server_message('{"voiceActivity": {"voiceActivityType": "ACTIVITY_START"}}') \
        == []
    assert parse_server_message('{"serverContent": {"futureField": 1, "interrupted": true}}') \
        == [Interrupted()]
    assert parse_server_message('{"setupComplete": {"newThing": 1}}') == [SetupComplete()]
    assert parse_server_message("{}") == []
    assert metrics.get("gemini.message.unknown_key") == 1


@pytest.mark.parametrize(("data", "reason"), [
    (b"{not json", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b"", "malformed_json"),
    ("[1, 2]", "not_object"),
    ('{"serverContent": []}', "bad_type"),
    ('{"serverContent": {"modelTurn": {"parts": {"a": 1}}}}', "bad_type"),
    ('{"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": 5}}]}}}', "bad_type"),
    ('{"serverContent": {"modelTurn": {"parts": [{"inlineData": {}}]}}}', "missing_field"),
    ('{"serverContent": {"inputTranscription": {"text": 1}}}', "bad_type"),
    ('{"toolCall": {"functionCalls": [{"id": "a", "args": {}}]}}', "missing_field"),
    ('{"toolCall": {"functionCalls": [{"name": "a", "args": [1]}]}}', "bad_type"),
    ('{"goAway": {"timeLeft": "soon"}}', "bad_value"),
    ('{"goAway": "50s"}', "bad_type"),
    ('{"usageMetadata": {"totalTokenCount": "many"}}', "bad_type"),
])
def test_malformed_messages_raise_with_reason(data: str | bytes, reason: str) -> None:
    with pytest.raises(GeminiProtocolError) as info:
        parse_server_message(data)
    assert info.value.reason == reason
    assert isinstance(info.value, RemoteProtocolError) and info.value.peer == "gemini"
