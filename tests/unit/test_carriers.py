"""The carrier seam: the bridge imports no carrier, carriers are picked by name, Twilio
implements the interface."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentic_fast.call.status import CallStatus
from agentic_fast.carriers.base import L16_16K, PCMU_8K, AudioCodec, EventKind, LegFormat
from agentic_fast.carriers.registry import build_carrier, register, registered
from agentic_fast.carriers.twilio.carrier import TwilioCarrier
from agentic_fast.carriers.twilio.media import Media, TwilioStreamState
from agentic_fast.core.config import Config
from agentic_fast.core.errors import CarrierProtocolError, ConfigError

SID = "MZ" + "1" * 32


def test_the_bridge_stream_handler_and_factory_import_no_carrier() -> None:
    code = ("import sys, agentic_fast.call.bridge, agentic_fast.call.stream_handler, "
            "agentic_fast.call.factory; "
            "print(sorted(m for m in sys.modules if m.startswith('agentic_fast.carriers.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert eval(out) == ["agentic_fast.carriers.base"]


def test_leg_formats_carry_the_frame_size() -> None:
    assert (PCMU_8K.codec, PCMU_8K.sample_rate, PCMU_8K.frame_bytes) == (AudioCodec.PCMU,
                                                                         8000, 160)
    assert L16_16K.frame_bytes == 640
    with pytest.raises(ValueError, match=r"frame_bytes .* must be 320"):
        LegFormat(AudioCodec.L16, 8000, 160)


def test_carrier_key_defaults_to_twilio_and_rejects_unknown_names() -> None:
    assert Config.from_text("").carrier == "twilio"
    assert Config.from_text("carrier: telnyx").carrier == "telnyx"
    with pytest.raises(ConfigError, match=r"<string>:1: carrier: must be one of twilio, "
                       r"telnyx, got 'twillio' \(did you mean 'twilio'\?\)") as info:
        Config.from_text("carrier: twillio")
    assert info.value.key == "carrier"


def test_registry_builds_twilio_by_name() -> None:
    carrier = build_carrier("twilio", Config())
    assert isinstance(carrier, TwilioCarrier)
    assert "twilio" in registered()
    assert carrier.media_path == "/twilio/media-stream"
    assert carrier.control is None and carrier.verifier is None  # nothing configured
    assert "auth token" in (carrier.verifier_problem or "")


def test_registry_takes_a_new_carrier_without_edits_and_names_the_key() -> None:
    sentinel = object()
    register("telnyx", lambda config: sentinel)  # type: ignore[arg-type,return-value]
    try:
        assert build_carrier("telnyx", Config()) is sentinel
    finally:
        from agentic_fast.carriers import registry
        registry._BUILDERS.pop("telnyx", None)
    with pytest.raises(ConfigError, match=r"carriers\.x: unknown carrier 'sip'") as info:
        build_carrier("sip", Config(), key="carriers.x")
    assert info.value.key == "carriers.x"


def test_twilio_events_are_the_neutral_events() -> None:
    state = TwilioStreamState()
    state.receive('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    start = state.receive(
        '{"event":"start","sequenceNumber":"1","streamSid":"' + SID + '","start":{'
        '"streamSid":"' + SID + '","callSid":"CA' + "2" * 32 + '","accountSid":"AC'
        + "3" * 32 + '","tracks":["inbound"],"customParameters":{"streamToken":"t"},'
        '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}')
    assert start.kind is EventKind.START
    assert (start.carrier_call_id, start.stream_id, start.leg) == ("CA" + "2" * 32, SID,
                                                                   PCMU_8K)
    assert dict(start.params) == {"streamToken": "t"}
    media = state.receive('{"event":"media","sequenceNumber":"2","streamSid":"' + SID
                          + '","media":{"track":"inbound","chunk":"1","timestamp":"20",'
                          '"payload":"//8="}}')
    assert type(media) is Media and media.kind is EventKind.MEDIA
    assert state.outbound(start).clear() == '{"event":"clear","streamSid":"' + SID + '"}'
    with pytest.raises(CarrierProtocolError) as info:
        state.receive("{")
    assert info.value.peer == "twilio" and info.value.reason == "malformed_json"


def test_twilio_status_maps_to_our_call_status() -> None:
    change = TwilioCarrier(Config()).map_status("no-answer")
    assert change.status is CallStatus.FAILED and change.terminal
    assert TwilioCarrier(Config()).map_status("ringing").status is CallStatus.RINGING
