"""Bridge pump per frame, in process, and Twilio message parse/build.

``inbound``: one Twilio ``media`` text frame in -> the OpenAI ``input_audio_buffer.append``
text frame(s) out (parse, decode, resample, chunk, encode, build). ``outbound``: one
``response.output_audio.delta`` text frame in -> Twilio ``media`` text frames out.
The baseline is the common way: stdlib ``json`` + ``base64`` + ``audioop`` + one-shot
``soxr.resample`` per chunk. Inputs are prepared outside the timed part.
"""

from __future__ import annotations

import base64
import itertools
import json
import warnings

import numpy as np
import pytest
import soxr

from agentic_fast.audio import AudioConverter
from agentic_fast.carriers.twilio.media import TwilioOutbound, TwilioStreamState
from agentic_fast.providers.openai import commands as oc
from agentic_fast.providers.openai import events as oe
from bench.bench_hotpath import OPENAI_DELTAS, TWILIO_PAYLOADS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SID = "MZ" + "ab" * 16
CALL = "CA" + "cd" * 16
ACCOUNT = "AC" + "ef" * 16
TWILIO_MEDIA = [json.dumps({"event": "media", "sequenceNumber": str(i + 2), "streamSid": SID,
                            "media": {"track": "inbound", "chunk": str(i + 1),
                                      "timestamp": str(20 * i), "payload": p}})
                for i, p in enumerate(TWILIO_PAYLOADS)]
OPENAI_EVENTS = [json.dumps({"type": "response.output_audio.delta", "event_id": f"ev{i}",
                             "response_id": "resp_1", "item_id": "item_1", "output_index": 0,
                             "content_index": 0, "delta": d})
                 for i, d in enumerate(OPENAI_DELTAS)]


def _started_state() -> TwilioStreamState:
    state = TwilioStreamState()
    state.receive(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    state.receive(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
        "accountSid": ACCOUNT, "streamSid": SID, "callSid": CALL, "tracks": ["inbound"],
        "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw",
                                                "sampleRate": 8000, "channels": 1}}}))
    return state


@pytest.mark.benchmark(group="pump-inbound-openai")
def bench_pump_inbound_baseline_naive(benchmark) -> None:
    """json.loads -> b64decode -> ulaw2lin -> soxr HQ one-shot -> chunk -> b64 -> json.dumps."""
    buf = bytearray()
    frames = itertools.cycle(TWILIO_MEDIA)

    def step() -> list[str]:
        msg = json.loads(next(frames))
        pcm = audioop.ulaw2lin(base64.b64decode(msg["media"]["payload"]), 2)
        buf.extend(soxr.resample(np.frombuffer(pcm, np.int16), 8000, 24000,
                                 quality="HQ").tobytes())
        out = []
        while len(buf) >= 1920:
            out.append(json.dumps({"type": "input_audio_buffer.append",
                                   "audio": base64.b64encode(buf[:1920]).decode()}))
            del buf[:1920]
        return out

    benchmark(step)


@pytest.mark.benchmark(group="pump-inbound-openai")
def bench_pump_inbound(benchmark) -> None:
    """TwilioStreamState.receive -> AudioConverter.feed_twilio_b64 -> input_audio_append."""
    conv = AudioConverter("openai")
    state = _started_state()
    frames = itertools.cycle(TWILIO_MEDIA)  # a wrap-around only counts a sequence regression

    def step() -> list[str]:
        event = state.receive(next(frames))
        return [oc.input_audio_append(c) for c in conv.feed_twilio_b64(event.payload)]

    benchmark(step)


@pytest.mark.benchmark(group="pump-outbound-openai")
def bench_pump_outbound_baseline_naive(benchmark) -> None:
    """json.loads -> b64decode -> soxr HQ one-shot -> lin2ulaw -> frames -> json.dumps."""
    events = itertools.cycle(OPENAI_EVENTS)
    pending = bytearray()

    def step() -> list[str]:
        msg = json.loads(next(events))
        pcm = np.frombuffer(base64.b64decode(msg["delta"]), np.int16)
        pending.extend(audioop.lin2ulaw(soxr.resample(pcm, 24000, 8000,
                                                      quality="HQ").tobytes(), 2))
        out = []
        while len(pending) >= 160:
            out.append(json.dumps({"event": "media", "streamSid": SID,
                                   "media": {"payload": base64.b64encode(pending[:160]).decode()}}))
            del pending[:160]
        return out

    benchmark(step)


@pytest.mark.benchmark(group="pump-outbound-openai")
def bench_pump_outbound(benchmark) -> None:
    """parse_server_event -> AudioConverter.feed_provider_b64 -> TwilioOutbound.media."""
    conv = AudioConverter("openai")
    out = TwilioOutbound(SID)
    events = itertools.cycle(OPENAI_EVENTS)

    def step() -> list[str]:
        event = oe.parse_server_event(next(events))
        return [out.media(f) for f in conv.feed_provider_b64(event.delta)]

    frames = benchmark(step)
    assert len(frames) == 1 and json.loads(frames[0])["event"] == "media"


@pytest.mark.benchmark(group="twilio-parse")
def bench_twilio_parse_baseline_json(benchmark) -> None:
    """stdlib json.loads of a media message and the field lookups a handler does."""
    frames = itertools.cycle(TWILIO_MEDIA)

    def step() -> str:
        msg = json.loads(next(frames))
        assert msg["event"] == "media"
        return msg["media"]["payload"]

    benchmark(step)


@pytest.mark.benchmark(group="twilio-parse")
def bench_twilio_parse(benchmark) -> None:
    """parse_twilio_message: orjson + validation into a typed Media event."""
    from agentic_fast.carriers.twilio.media import parse_twilio_message

    frames = itertools.cycle(TWILIO_MEDIA)
    benchmark(lambda: parse_twilio_message(next(frames)).payload)


@pytest.mark.benchmark(group="twilio-build")
def bench_twilio_build_baseline_json(benchmark) -> None:
    """stdlib json.dumps of an outbound media message."""
    payloads = itertools.cycle(TWILIO_PAYLOADS)
    benchmark(lambda: json.dumps({"event": "media", "streamSid": SID,
                                  "media": {"payload": next(payloads)}}))


@pytest.mark.benchmark(group="twilio-build")
def bench_twilio_build(benchmark) -> None:
    """TwilioOutbound.media: concatenation around a per-stream prefix."""
    out = TwilioOutbound(SID)
    payloads = itertools.cycle(TWILIO_PAYLOADS)
    text = benchmark(lambda: out.media(next(payloads)))
    assert json.loads(text)["media"]["payload"]
