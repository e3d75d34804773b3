"""Telnyx sans-I/O pieces: media messages, webhook signatures, status mapping, the L16
converter, the REST client's error mapping, the config section."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agentic_fast.audio.l16 import L16_FRAME_BYTES, L16Converter
from agentic_fast.call.manager import CallStatus
from agentic_fast.carriers.base import L16_16K, EventKind
from agentic_fast.carriers.telnyx.media import (
    CODECS,
    HANGUP_AFTER_SPEAK,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    StreamError,
    TelnyxOutbound,
    TelnyxProtocolError,
    TelnyxStreamState,
    decode_client_state,
    encode_client_state,
    is_hangup_after_speak,
    parse_telnyx_message,
)
from agentic_fast.carriers.telnyx.rest import StreamOptions, TelnyxRestClient
from agentic_fast.carriers.telnyx.signature import TelnyxSignatureVerifier
from agentic_fast.carriers.telnyx.status import map_event, parse_webhook
from agentic_fast.core.config import Config
from agentic_fast.core.errors import AudioFormatError, ConfigError, TelnyxApiError


def _msg(**fields: object) -> bytes:
    return json.dumps(fields).encode()


START = _msg(event="start", sequence_number="1", stream_id="S1", start={
    "user_id": "u", "call_control_id": "v3:abc", "call_session_id": "cs", "from": "+1555",
    "to": "+1666", "client_state": "c3RhdGU=", "custom_parameters": {},
    "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}})


def _media(seq: int, payload: str = "////", **over: object) -> bytes:
    body = {"track": "inbound", "chunk": str(seq - 1), "timestamp": "20", "payload": payload}
    body.update(over)
    return _msg(event="media", sequence_number=str(seq), stream_id="S1", media=body)


# -- media messages ---------------------------------------------------------------------------


def test_a_stream_parses_in_order() -> None:
    state = TelnyxStreamState(CODECS["PCMU"])
    assert state.receive(_msg(event="connected", version="1.0.0")).version == "1.0.0"
    start = state.receive(START)
    assert isinstance(start, Start) and start.call_control_id == "v3:abc"
    assert start.client_state == "c3RhdGU=" and start.media_format.encoding == "PCMU"
    media = state.receive(_media(2))
    assert isinstance(media, Media) and (media.payload, media.chunk, media.timestamp_ms,
                                         media.track) == ("////", 1, 20, "inbound")
    dtmf = state.receive(_msg(event="dtmf", sequence_number="3", stream_id="S1",
                              occurred_at="x", dtmf={"digit": "#"}))
    assert isinstance(dtmf, Dtmf) and dtmf.digit == "#"
    mark = state.receive(_msg(event="mark", sequence_number="4", stream_id="S1",
                              mark={"name": "m1"}))
    assert isinstance(mark, Mark) and mark.name == "m1"
    with pytest.raises(TelnyxProtocolError) as refused:  # Telnyx refused a frame of ours
        state.receive(_msg(event="error", sequence_number="5", stream_id="S1",
                           payload={"code": 100003, "title": "malformed_frame",
                                    "detail": "bad"}))
    assert refused.value.reason == "error_frame" and "100003" in str(refused.value)
    err = parse_telnyx_message(_msg(event="error", payload={"code": 100003}))
    assert isinstance(err, StreamError) and err.code == 100003
    stop = state.receive(_msg(event="stop", sequence_number="7", stream_id="S1",
                              stop={"user_id": "u", "call_control_id": "v3:abc"}))
    assert isinstance(stop, Stop) and state.stopped
    assert state.media_count == 1 and state.seq_gaps == 1


@pytest.mark.parametrize(("frame", "reason"), [
    (b"{nope", "malformed_json"),
    (b"[1]", "not_object"),
    (_msg(event="ringing"), "unknown_event"),
    (_msg(sequence_number="2"), "missing_field"),
    (_media(2, payload=5), "bad_type"),
    (_media(2, chunk="1e3"), "bad_type"),
    (_msg(event="dtmf", stream_id="S1", dtmf={"digit": "x"}), "bad_value"),
])
def test_broken_frames_name_a_reason(frame: bytes, reason: str) -> None:
    state = TelnyxStreamState(CODECS["PCMU"])
    state.receive(START)
    with pytest.raises(TelnyxProtocolError) as exc:
        state.receive(frame)
    assert exc.value.reason == reason and exc.value.peer == "telnyx"


def test_order_stream_id_and_codec_are_enforced() -> None:
    state = TelnyxStreamState(CODECS["PCMU"])
    with pytest.raises(TelnyxProtocolError, match="while awaiting start"):
        state.receive(_media(2))
    state.receive(START)
    with pytest.raises(TelnyxProtocolError) as exc:
        state.receive(_msg(event="media", stream_id="OTHER", media={"payload": "////"}))
    assert exc.value.reason == "wrong_stream_id"
    l16 = TelnyxStreamState(CODECS["L16"])
    with pytest.raises(TelnyxProtocolError) as exc:
        l16.receive(START)  # we asked for L16 16 kHz, Telnyx streams PCMU
    assert exc.value.reason == "unsupported_media_format"


def test_outbound_frames_are_telnyx_rtp_mode_messages() -> None:
    out = TelnyxOutbound()
    assert json.loads(out.media("AAAA")) == {"event": "media", "media": {"payload": "AAAA"}}
    assert json.loads(out.mark('m"1')) == {"event": "mark", "mark": {"name": 'm"1'}}
    assert json.loads(out.clear()) == {"event": "clear"}
    assert parse_telnyx_message(out.media("AAAA")).payload == "AAAA"


# -- webhook signatures ---------------------------------------------------------------------


@pytest.fixture
def keys() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(public).decode()


def _signed(private: Ed25519PrivateKey, body: bytes, ts: int) -> dict[str, str]:
    sig = private.sign(str(ts).encode() + b"|" + body)
    return {"telnyx-signature-ed25519": base64.b64encode(sig).decode(),
            "telnyx-timestamp": str(ts)}


def test_signature_over_timestamp_and_body(keys: tuple[Ed25519PrivateKey, str]) -> None:
    private, public = keys
    now = 1_800_000_000
    verifier = TelnyxSignatureVerifier(public, tolerance_s=300, clock=lambda: now)
    body = b'{"data":{}}'
    assert verifier.check(body, _signed(private, body, now))
    assert verifier.check(body + b" ", _signed(private, body, now)).reason == "bad_signature"
    stamped = _signed(private, body, now)
    stamped["telnyx-timestamp"] = str(now + 1)  # the timestamp is signed too
    assert verifier.check(body, stamped).reason == "bad_signature"
    assert verifier.check(body, _signed(private, body, now - 301)).reason == "stale"
    assert verifier.check(body, _signed(private, body, now + 301)).reason == "stale"
    assert verifier.check(body, {}).reason == "missing_signature"
    assert verifier.check(body, {"telnyx-signature-ed25519": "x"}).reason == "missing_timestamp"
    assert verifier.check(body, {"telnyx-signature-ed25519": "x",
                                 "telnyx-timestamp": "12a"}).reason == "bad_timestamp"
    other = Ed25519PrivateKey.generate()
    assert verifier.check(body, _signed(other, body, now)).reason == "bad_signature"


def test_a_bad_public_key_names_the_config_key() -> None:
    with pytest.raises(ConfigError) as exc:
        TelnyxSignatureVerifier(base64.b64encode(b"short").decode())
    assert exc.value.key == "telnyx.public_key"


# -- webhooks -> lifecycle ---------------------------------------------------------------------


def _event(event_type: str, **payload: object) -> bytes:
    return json.dumps({"data": {"record_type": "event", "id": "e1", "event_type": event_type,
                                "payload": {"call_control_id": "v3:abc", **payload}}}).encode()


@pytest.mark.parametrize(("event_type", "payload", "answered", "want"), [
    ("call.initiated", {"direction": "outgoing"}, False, (CallStatus.RINGING, None)),
    ("call.answered", {}, False, (CallStatus.IN_PROGRESS, None)),
    ("call.hangup", {"hangup_cause": "normal_clearing"}, True,
     (CallStatus.COMPLETED, "hangup-normal_clearing")),
    ("call.hangup", {"hangup_cause": "user_busy"}, False, (CallStatus.FAILED, "busy")),
    ("call.hangup", {"hangup_cause": "timeout"}, False, (CallStatus.FAILED, "no-answer")),
    ("call.hangup", {"hangup_cause": "originator_cancel"}, False,
     (CallStatus.FAILED, "canceled")),
    ("call.hangup", {"hangup_cause": "user_busy"}, True,
     (CallStatus.COMPLETED, "hangup-user_busy")),
    ("streaming.started", {}, True, None),
])
def test_events_map_to_call_status(event_type: str, payload: dict[str, object],
                                   answered: bool, want: tuple[CallStatus, str | None] | None
                                   ) -> None:
    change = map_event(parse_webhook(_event(event_type, **payload)), answered)
    assert (None if change is None else (change.status, change.reason)) == want


def test_client_state_round_trips_and_foreign_ones_are_refused() -> None:
    params = {"callId": "2b0d-call", "streamToken": "tok_en.x+/="}
    state = encode_client_state(params)
    assert decode_client_state(state) == params
    assert decode_client_state(base64.b64encode(b"no-pairs").decode()) == {}
    assert decode_client_state("%%%") == {} and decode_client_state(None) == {}


def test_the_hang_up_marker_and_stream_params_are_never_mistaken() -> None:
    assert decode_client_state(HANGUP_AFTER_SPEAK) == {}  # never stream params
    assert base64.b64decode(HANGUP_AFTER_SPEAK).find(b"=") == -1
    params = encode_client_state({"callId": "c", "streamToken": "t"})
    assert not is_hangup_after_speak(params) and not is_hangup_after_speak(None)
    assert is_hangup_after_speak(HANGUP_AFTER_SPEAK)
    body = json.dumps({"data": {"id": "e1", "event_type": "call.speak.ended", "payload": {
        "call_control_id": "v3:x", "client_state": HANGUP_AFTER_SPEAK,
        "status": "call_hangup"}}}).encode()
    event = parse_webhook(body)
    assert event.speak_status == "call_hangup" and event.client_state == HANGUP_AFTER_SPEAK


def test_telnyx_events_are_the_neutral_events() -> None:
    state = TelnyxStreamState(CODECS["L16"])
    start = state.receive(START.replace(b'"PCMU", "sample_rate": 8000',
                                        b'"L16", "sample_rate": 16000').replace(
        b"c3RhdGU=", encode_client_state({"callId": "c1", "streamToken": "t"}).encode()))
    assert isinstance(start, Start) and start.kind is EventKind.START
    assert (start.carrier_call_id, start.stream_id, start.leg) == ("v3:abc", "S1", L16_16K)
    assert start.params == {"callId": "c1", "streamToken": "t"}
    media = state.receive(_media(2))
    assert media.kind is EventKind.MEDIA and isinstance(media, Media)
    with pytest.raises(TelnyxProtocolError) as exc:  # we asked for the inbound track only
        state.receive(_media(3, track="outbound"))
    assert exc.value.reason == "unexpected_track"
    assert state.outbound(start).media("AAAA") == '{"event":"media","media":{"payload":"AAAA"}}'


# -- L16 converter ----------------------------------------------------------------------------


def _be_frame(ms: int = 20, hz: float = 500.0) -> bytes:
    t = np.arange(16 * ms) / 16000.0
    return (9000 * np.sin(2 * np.pi * hz * t)).astype(">i2").tobytes()


def test_l16_to_gemini_is_a_byte_swap_only() -> None:
    conv = L16Converter("gemini", handoff_ms=20)
    assert not conv.resamples_inbound
    frame = _be_frame()
    [chunk] = conv.feed_twilio_b64(base64.b64encode(frame).decode())
    assert base64.b64decode(chunk) == np.frombuffer(frame, ">i2").astype("<i2").tobytes()


def test_l16_to_openai_is_resampled_to_24k_with_low_delay() -> None:
    conv = L16Converter("openai", handoff_ms=20)
    assert conv.resamples_inbound
    chunks = [c for _ in range(10)
              for c in conv.feed_twilio_b64(base64.b64encode(_be_frame()).decode())]
    assert [len(base64.b64decode(c)) for c in chunks] == [960] * 10  # one per frame


def test_provider_audio_becomes_whole_big_endian_l16_frames() -> None:
    conv = L16Converter("gemini")
    t = np.arange(24000 * 3 // 50) / 24000.0  # 60 ms at 24 kHz
    pcm = (8000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()
    frames = conv.feed_provider(pcm) + conv.flush_provider()
    raw = [base64.b64decode(f) for f in frames]
    assert {len(r) for r in raw} == {L16_FRAME_BYTES}
    samples = np.frombuffer(b"".join(raw), ">i2")
    assert np.abs(samples).max() > 7000  # big-endian read gives the tone's amplitude back
    assert conv.flush_provider() == []
    conv.feed_provider(pcm[:100])
    assert conv.clear_outbound() >= 0 and conv.flush_provider() == []


def test_bad_l16_payloads_raise_audio_format_errors() -> None:
    conv = L16Converter("gemini")
    with pytest.raises(AudioFormatError):
        conv.feed_twilio_b64("not base64!")
    with pytest.raises(AudioFormatError, match="even"):
        conv.feed_twilio_b64(base64.b64encode(b"abc").decode())
    with pytest.raises(ValueError, match="PCM16"):
        L16Converter("openai-pcmu")


# -- REST ---------------------------------------------------------------------------------------


def test_stream_options_ask_for_bidirectional_rtp_in_the_codec() -> None:
    assert StreamOptions("wss://x/s", "L16").params() == {
        "stream_url": "wss://x/s", "stream_track": "inbound_track", "stream_codec": "L16",
        "stream_bidirectional_mode": "rtp", "stream_bidirectional_codec": "L16",
        "stream_bidirectional_sampling_rate": 16000}
    assert "stream_bidirectional_sampling_rate" not in StreamOptions("wss://x/s").params()


async def test_telnyx_errors_become_peer_errors_with_the_code() -> None:
    async def refuse(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer KEY1"
        return web.json_response({"errors": [{"code": "90018", "title": "Call has already "
                                              "ended", "detail": "gone"}]}, status=422)

    app = web.Application()
    app.router.add_post("/v2/calls/{id}/actions/{action}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with TelnyxRestClient("KEY1", api_base=f"http://127.0.0.1:{port}/v2",
                                    timeout_s=2) as client:
            with pytest.raises(TelnyxApiError) as exc:
                await client.hangup("v3:abc")
        assert (exc.value.code, exc.value.status, exc.value.peer) == ("90018", 422, "telnyx")
        assert "Call has already ended" in str(exc.value)
        async with TelnyxRestClient("KEY1", api_base="http://127.0.0.1:9/v2",
                                    timeout_s=2) as client:
            with pytest.raises(TelnyxApiError) as exc:
                await client.hangup("v3:abc")
        assert exc.value.status is None  # never answered
    finally:
        await runner.cleanup()


# -- config --------------------------------------------------------------------------------------


def test_telnyx_config_errors_name_the_key() -> None:
    for text, key in [("carrier: plivo\n", "carrier"),
                      ("telnyx:\n  codec: OPUS\n", "telnyx.codec"),
                      ("telnyx:\n  public_key: abc\n", "telnyx.public_key"),
                      ("telnyx:\n  from_number: '555'\n", "telnyx.from_number"),
                      ("telnyx:\n  stream_url: https://x\n", "telnyx.stream_url"),
                      ("carrier: telnyx\naudio:\n  provider: openai-pcmu\n"
                       "telnyx:\n  codec: L16\n", "telnyx.codec")]:
        with pytest.raises(ConfigError) as exc:
            Config.from_text(text, env={})
        assert exc.value.key == key, text
    config = Config.from_text("carrier: telnyx\n", env={})
    assert config.telnyx.codec == "PCMU"
    assert config.telnyx.api_base_url == "https://api.telnyx.com/v2"
    assert any(w.startswith("telnyx.public_key") for w in config.warnings())
