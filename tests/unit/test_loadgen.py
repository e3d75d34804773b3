"""The load generator's own logic (bench/loadgen.py and its load_* modules).

Pure parts without sockets: histogram percentiles, the hash joins, barge-in matching, the
playout model (underruns, silences, clear, marks, jitter), run validity, the capacity
search, Twilio signing and TwiML mapping, the WebSocket frame codec, and the assumption the
outbound latency join rests on (a response's first frames do not depend on the responses
before it). Then the fake providers' wire shapes over loopback, and an end-to-end smoke run
(two calls against a real ``agentic-fast serve``, ~9 s; ``AGENTIC_FAST_LOADGEN_SMOKE=0``
skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from bench import load_report as rep
from bench.load_callers import (
    OP_BINARY,
    OP_TEXT,
    Playout,
    WsClient,
    WsParser,
    call_frames,
    frame_at,
    load_speech_pcm,
    loopback_url,
    parse_stream_twiml,
    twilio_signature,
    ws_frame,
)
from bench.loadgen import next_probe, parse_cores

from agentic_fast.audio import AudioConverter

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- histograms


def test_hist_percentiles_match_exact_within_resolution() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(1 / 3.0) for _ in range(5000)] + [150.0, 2500.0]
    h = rep.Hist()
    for v in values:
        h.add(v)
    for q in (50, 90, 99):
        exact = rep.percentile(values, q)
        assert exact is not None
        got = h.percentile(q)
        assert got is not None
        assert abs(got - exact) <= max(0.011, exact * 0.011)
    assert h.max == max(values)
    assert h.percentile(100) == max(values)


def test_hist_merge_and_json_round_trip() -> None:
    a, b = rep.Hist(), rep.Hist()
    for v in (0.5, 1.5, 30.0):
        a.add(v)
    for v in (0.25, 700.0):
        b.add(v)
    merged = rep.Hist.from_json(json.loads(json.dumps(a.to_json()))).merge(
        rep.Hist.from_json(b.to_json()))
    assert merged.n == 5
    assert merged.max == 700.0
    assert merged.min == 0.25
    assert merged.percentile(50) == pytest.approx(1.5, abs=0.01)
    assert rep.Hist().percentile(99) is None
    assert rep.merged([None, a.to_json()]).n == 3


def test_nearest_rank_percentile() -> None:
    assert rep.percentile([], 50) is None
    assert rep.percentile([5.0], 99) == 5.0
    values = [float(i) for i in range(1, 101)]
    assert rep.percentile(values, 50) == 50.0
    assert rep.percentile(values, 99) == 99.0
    assert rep.percentile(values, 100) == 100.0


# --------------------------------------------------------------------------- joins


def test_sample_key_keeps_the_same_pieces_on_both_sides_and_about_one_in_n() -> None:
    pieces = [random.Random(i).randbytes(160) for i in range(4000)]
    keys = [rep.sample_key(p, 4) for p in pieces]
    assert keys == [rep.sample_key(bytes(p), 4) for p in pieces]  # deterministic
    kept = [k for k in keys if k is not None]
    assert 800 < len(kept) < 1200 and len(set(kept)) == len(kept)
    assert all(rep.sample_key(p, 1) is not None for p in pieces[:10])


def test_fake_sizes_base64_audio_and_decodes_a_sample_strictly() -> None:
    from bench.load_fakes import DECODE_EVERY, FakeProvider, build_parser

    fake = FakeProvider(build_parser().parse_args(
        ["provider", "--protocol", "openai", "--port", "1", "--result", "/dev/null"]))
    for n in (0, 1, 2, 3, 320, 1919, 1920):
        b64 = base64.b64encode(bytes(n)).decode()
        assert [fake.audio_size(b64) for _ in range(DECODE_EVERY)] == [n] * DECODE_EVERY
    with pytest.raises(binascii.Error):
        fake.audio_size("AAA")                  # not a whole number of quads
    bad = "A*AA" * 10                           # a character outside the alphabet
    errors = 0
    for _ in range(DECODE_EVERY):
        try:
            fake.audio_size(bad)
        except binascii.Error:
            errors += 1
    assert errors == 1                          # the strictly decoded one of each DECODE_EVERY


def test_machine_pauses_need_every_process_and_count_the_underruns_after_them() -> None:
    callers = [[10.00, 10.02, 20.0], [10.01, 30.0]]
    fake = [10.03, 40.0]
    got = rep.machine_pauses([*callers, fake], [9.0, 10.2, 10.9, 11.5, 20.01])
    assert got["count"] == 1 and got["times"] == [10.00]  # 20/30/40: one process each
    assert got["underruns_after"] == 2                     # 10.2 and 10.9, not 9.0/11.5
    assert rep.machine_pauses([callers[0], []], [10.1])["count"] == 0  # a quiet process


def test_playout_records_when_underruns_happened() -> None:
    times: list[float] = []
    p = Playout(expected=10, lead=1, underrun_times=times)
    p.frame(0.0, True)
    p.frame(0.050, True)  # 30 ms after the first frame ran out: an underrun
    assert p.underruns == 1 and times == [0.050]


def test_join_drops_duplicates_and_filters_by_window() -> None:
    sent = [(1, 10.000, "c1"), (2, 10.100, "c1"), (3, 10.200, "c2"), (3, 11.0, "c2"),
            (4, 20.0, "c2")]
    received = [(1, 10.002, "p1"), (2, 10.1005, "p1"), (3, 10.201, "p2"), (4, 20.001, "p2"),
                (5, 1.0, "p1")]
    pairs = rep.join(sent, received, window=(9.0, 15.0))
    got = sorted((round(lat, 3), tx, rx) for lat, tx, rx in pairs)
    # hash 3 was sent twice (dropped), hash 4 is outside the window, hash 5 never sent
    assert got == [(0.5, "c1", "p1"), (2.0, "c1", "p1")]


def test_connection_mapping_and_barge_in_matching() -> None:
    inbound = [(1.0, "callA", "conn1"), (1.0, "callA", "conn1"), (1.0, "callB", "conn1"),
               (1.0, "callB", "conn2")]
    mapping = rep.conn_to_call(inbound)
    assert mapping == {"conn1": "callA", "conn2": "callB"}
    interrupts = {"conn1": [10.0, 20.0], "conn2": [30.0], "conn9": [12.0]}
    clears = {"callA": [10.004, 25.0], "callB": [30.002, 40.0]}
    out = rep.barge_in_join(interrupts, clears, mapping, window=(0.0, 50.0))
    assert [round(x, 3) for x in out["latencies_ms"]] == [4.0, 2.0]
    assert out["missed"] == 1         # 20.0 -> next clear is 5 s later
    assert out["unmapped"] == 1       # conn9 has no call
    assert out["unexpected_clears"] == 2  # 25.0 and 40.0 answer no interrupt


def test_barge_in_mapping_also_comes_from_the_outbound_join() -> None:
    """Calls without inbound tracing are still matched to their provider connection."""
    calls = [{"id": "g0c1", "t_start": 1.0, "sustained": True, "clears": [30.002]}]
    gen = {"name": "gen0", "calls": calls, "in_samples": [],
           "out_samples": [(9, 25.001, "g0c1")]}
    fake = {"name": "fake0", "out_samples": [(9, 25.0, "f.7")], "interrupts": {"f.7": [30.0]}}
    meta = {"n": 1, "mode": "openai", "target": "server", "window": (10.0, 70.0)}
    run = rep.analyse_run(meta, [gen], [fake], {})
    assert run["barge_in_ms"]["n"] == 1 and run["barge_in_unmapped"] == 0
    assert run["unexpected_clears"] == 0


def _gen(name: str, late: list[float], lag: list[float], **extra: object) -> dict:
    h_late, h_lag = rep.Hist(), rep.Hist()
    for v in late:
        h_late.add(v)
    for v in lag:
        h_lag.add(v)
    return {"name": name, "calls": [], "send_late": h_late.to_json(),
            "loop_lag": h_lag.to_json(), **extra}


def test_run_is_invalid_when_the_generator_lags() -> None:
    meta = {"n": 0, "mode": "openai", "target": "server", "window": (0.0, 60.0),
            "thresholds": {"gen_late_p99_ms": 5.0, "loop_lag_p99_ms": 5.0}}
    server = {"cpu_window_s": 1.0, "rss_idle_kb": 1000, "rss_end_kb": 2000}
    good = rep.analyse_run(meta, [_gen("gen0", [0.5] * 100, [0.2] * 100)], [], server)
    assert good["valid"] and good["lagging_processes"] == []
    slow = rep.analyse_run(meta, [_gen("gen0", [0.5] * 90 + [12.0] * 10, [0.2] * 100)],
                           [], server)
    assert not slow["valid"]
    assert slow["lagging_processes"] == ["gen0"]
    assert "send lateness" in slow["invalid_reasons"][0]


def test_analyse_run_figures() -> None:
    calls = [{"id": "g0c0", "t_start": 1.0, "sustained": True, "first_audio_ms": 2.0,
              "clears": [30.003]},
             {"id": "g0c1", "t_start": 1.5, "sustained": False, "first_audio_ms": None,
              "clears": []}]
    gen = _gen("gen0", [0.1], [0.1], calls=calls, in_samples=[(7, 20.0, "g0c0")],
               out_samples=[(9, 25.0015, "g0c0")], underruns=1, stalls=0,
               errors={"closed_early": 1})
    fake = {"name": "fake0", "in_samples": [(7, 20.001, "f.1")],
            "out_samples": [(9, 25.0, "f.1")], "interrupts": {"f.1": [30.0]},
            "violations": {"truncate_beyond_audio": 2}, "notes": {"cancel_not_active": 3}}
    meta = {"n": 2, "mode": "openai", "target": "server", "window": (10.0, 70.0)}
    server = {"cpu_window_s": 3.0, "rss_idle_kb": 10 * 1024, "rss_end_kb": 12 * 1024,
              "log_errors": {"bridge.provider_failed": 1}, "exit_code": 0}
    run = rep.analyse_run(meta, [gen], [fake], server)
    assert run["sustained"] == 1
    assert run["cpu_s_per_call_min"] == pytest.approx(3.0)  # 3 s / (1 call x 1 min)
    assert run["rss_mb_per_call"] == pytest.approx(1.0)
    assert run["inbound_ms"]["p50"] == pytest.approx(1.0)
    assert run["outbound_ms"]["p50"] == pytest.approx(1.5)
    assert run["barge_in_ms"]["p50"] == pytest.approx(3.0)
    assert run["errors"] == 4
    assert run["error_kinds"]["provider.truncate_beyond_audio"] == 2
    assert run["notes"] == {"cancel_not_active": 3}
    assert not rep.capacity_pass(run)
    assert "cpu s/call-min" in rep.table([run])
    assert "target CPU s per call-minute" in rep.details(run)


def test_ratios_against_the_relay() -> None:
    server = {"target": "server", "mode": "openai", "n": 100, "cpu_s_per_call_min": 0.2,
              "rss_mb_per_call": 0.5, "inbound_ms": {"p99": 2.0}}
    relay = {"target": "relay", "mode": "openai-pcmu", "n": 100, "cpu_s_per_call_min": 0.1,
             "rss_mb_per_call": 0.25, "inbound_ms": {"p99": 1.0}}
    (row,) = rep.ratios([server, relay])
    assert row["cpu_s_per_call_min"] == pytest.approx(2.0)
    assert row["inbound_ms_p99"] == pytest.approx(2.0)
    assert row["outbound_ms_p99"] is None


# --------------------------------------------------------------------------- playout


def test_playout_counts_an_underrun_inside_a_response_only() -> None:
    p = Playout(expected=10, lead=6)
    t = 100.0
    for _ in range(6):           # lead burst at once
        p.frame(t, True)
    for i in range(6, 8):        # then paced
        p.frame(t + 0.02 * (i - 5), True)
    assert p.underruns == 0
    # playout of 8 frames ends at t + 0.16; frame 9 comes 50 ms after that: an underrun
    p.frame(t + 0.21, True)
    assert p.underruns == 1
    assert p.gaps.n == 1 and p.gaps.max == pytest.approx(50.0, abs=0.01)
    p.frame(t + 0.22, True)      # frame 10: response complete
    # two seconds of silence, then the next response: not an underrun
    p.frame(t + 2.5, True)
    assert p.underruns == 0 + 1 and p.stalls == 0
    assert p.frames == 1


def test_playout_long_gap_is_a_stall_and_window_is_respected() -> None:
    p = Playout(expected=50, lead=6, max_gap_s=1.0)
    p.frame(0.0, True)
    p.frame(3.0, True)           # 3 s hole inside a response
    assert (p.underruns, p.stalls) == (0, 1)
    q = Playout(expected=50, lead=6)
    q.frame(0.0, False)
    q.frame(0.5, False)          # outside the window: not counted
    assert (q.underruns, q.stalls, q.gaps.n) == (0, 0, 0)


def test_playout_clear_resets_and_echoes_pending_marks() -> None:
    p = Playout(expected=100, lead=6)
    for _ in range(6):
        p.frame(1.0, True)
    p.mark("m1", 1.0)            # due when the 6 frames have played: 1.12
    assert p.due(1.05) == []
    assert p.due(1.121) == ["m1"]
    for _ in range(3):
        p.frame(1.1, True)       # before the playout ran dry (1.12): no underrun
    p.mark("m2", 1.1)            # due at 1.18
    assert p.clear(1.15) == ["m2"]
    # after a clear the next audio starts a new response: no underrun despite few frames
    p.frame(3.0, True)
    assert p.underruns == 0 and p.frames == 1
    p.mark("m3", 5.0)            # nothing queued any more: due at once
    assert p.due(5.0) == ["m3"]


def test_playout_jitter_skips_the_lead_burst() -> None:
    p = Playout(expected=100, lead=3)
    for _ in range(3):
        p.frame(0.0, True)       # burst: no jitter samples
    assert p.jitter.n == 0
    p.frame(0.020, True)         # 4th frame, 20 ms after the 3rd: jitter 0
    p.frame(0.045, True)         # 25 ms: jitter 5
    p.frame(0.045, True)         # together with the previous: jitter 20
    assert p.jitter.n == 3
    assert sorted(round(v) for v in (p.jitter.min, p.jitter.max)) == [0, 20]


class _CountingCall:
    """Stands in for a Call on the shared clock: counts the frames it was asked to send."""

    def __init__(self, playout: Playout) -> None:
        self.active = True
        self.sent: list[float] = []
        self.playout = playout
        self.echoed: list[str] = []

    def send_media(self, ideal: float, count: bool) -> None:
        self.sent.append(ideal)

    def echo_marks(self, names: list[str]) -> None:
        self.echoed += names


async def test_one_shared_clock_sends_one_frame_per_call_per_tick_in_its_sub_tick() -> None:
    from bench.load_callers import CallerProcess, build_parser

    args = build_parser().parse_args([
        "--port", "1", "--public-url", "https://x.test", "--auth-token", "t",
        "--account-sid", "AC" + "0" * 32, "--calls", "0,1,2", "--n-total", "3",
        "--slots", "2", "--result", "/dev/null"])
    proc = CallerProcess(args)
    calls = [_CountingCall(Playout(100, 6)) for _ in range(3)]
    calls[1].playout.mark("m1", 0.0)  # nothing queued: due at once, echoed by the clock
    calls[2].active = False           # a call that ended is dropped from the clock
    proc.active = [[calls[0], calls[2]], [calls[1]]]  # sub-ticks at +0 and +10 ms
    first = time.monotonic()
    proc.window = (first, first + 1.0)
    await proc.clock(first, first + 0.095)  # sub-ticks at +0, 10, 20, ..., 90 ms
    assert [len(c.sent) for c in calls] == [5, 5, 0]
    assert calls[0].sent == pytest.approx([first + 0.02 * k for k in range(5)])
    assert calls[1].sent == pytest.approx([first + 0.01 + 0.02 * k for k in range(5)])
    assert calls[1].echoed == ["m1"]
    assert proc.tick_lag.hist.n == 10 and proc.tick_busy.n == 10
    assert proc.active == [[calls[0]], [calls[1]]]


def test_playout_jitter_ignores_the_top_up_to_the_lead_but_not_late_ticks() -> None:
    p = Playout(expected=100, lead=6)
    for _ in range(5):
        p.frame(0.0, True)       # first delta: 100 ms at once (the lead is 120 ms)
    for _ in range(3):
        p.frame(0.040, True)     # next delta 40 ms later: the bridge tops up to its lead
    assert p.jitter.n == 0 and p.filled
    p.frame(0.060, True)         # paced from here: on time
    p.frame(0.090, True)         # a late tick: 30 ms
    p.frame(0.090, True)         # and its catch-up: with the previous one
    assert p.jitter.n == 3
    assert (p.paced, p.bunched, p.spread) == (3, 1, 0)
    assert round(p.jitter.max) == 20


# --------------------------------------------------------------------------- Twilio side


def test_twilio_signature_matches_the_protocols_md_vector() -> None:
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    sig = twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params)
    assert sig == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_twiml_stream_url_is_mapped_to_loopback() -> None:
    twiml = ('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
             '<Stream url="wss://agent.example.test/twilio/media-stream">'
             '<Parameter name="callId" value="c1"/><Parameter name="streamToken" value="t"/>'
             '</Stream></Connect></Response>')
    url, params = parse_stream_twiml(twiml)
    assert params == {"callId": "c1", "streamToken": "t"}
    assert loopback_url(url, 8123) == "ws://127.0.0.1:8123/twilio/media-stream"
    with pytest.raises(ValueError):
        parse_stream_twiml("<Response><Say>busy</Say></Response>")


def test_caller_frames_are_unique_across_passes_and_calls() -> None:
    pcm = load_speech_pcm()
    a, b = call_frames(pcm, 0.9), call_frames(pcm, 0.6)
    n = len(a)
    seen = {frame_at(a, k, 5, 11) for k in range(3 * n)}
    assert len(seen) == 3 * n    # three passes of the loop, no frame repeats
    assert frame_at(a, 0, 0, 1) != frame_at(b, 0, 0, 1)


# --------------------------------------------------------------------------- latency joins


def test_outbound_prediction_holds_after_flush_and_after_clear() -> None:
    """The fake hashes a response's first frames with a FRESH converter; the bridge's
    converter has seen earlier responses, ended by flush_provider (done) or
    clear_outbound (barge-in). Both must leave no state behind."""
    rng = random.Random(3)

    def pcm(ms: int) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(ms * 48))

    first = pcm(100)
    expected = AudioConverter("openai").feed_provider(first)
    bridge = AudioConverter("openai")
    bridge.feed_provider(pcm(100))
    bridge.feed_provider(pcm(230))
    bridge.flush_provider()
    assert bridge.feed_provider(first) == expected
    bridge.feed_provider(pcm(170))
    bridge.clear_outbound()
    assert bridge.feed_provider(first) == expected


def test_inbound_prediction_equals_what_the_server_sends() -> None:
    """Caller and server run the same converter over the same frames: same chunks."""
    pcm = load_speech_pcm()
    frames = call_frames(pcm, 0.7)
    caller, server = AudioConverter("gemini"), AudioConverter("gemini")
    for k in range(20):
        payload = base64.b64encode(frame_at(frames, k, 9, 3)).decode()
        assert caller.feed_twilio_b64(payload) == server.feed_twilio_b64(payload)


# --------------------------------------------------------------------------- WebSocket codec


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_ws_frames_round_trip_masked_and_not(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    parser = WsParser()
    data = ws_frame(OP_TEXT, payload, b"\x01\x02\x03\x04") + ws_frame(OP_BINARY, payload)
    got = []
    for i in range(0, len(data), 1000):  # arbitrary TCP segmentation
        got += parser.feed(data[i:i + 1000])
    assert got == [(OP_TEXT, payload), (OP_BINARY, payload)]


def test_ws_parser_joins_fragments_and_passes_control_frames() -> None:
    first = bytes((0x01, 3)) + b"abc"          # text, not final
    ping = bytes((0x89, 1)) + b"p"             # a control frame in between
    last = bytes((0x80, 2)) + b"de"            # continuation, final
    assert WsParser().feed(first + ping + last) == [(9, b"p"), (OP_TEXT, b"abcde")]


# --------------------------------------------------------------------------- search, cores


def test_capacity_search_doubles_then_bisects() -> None:
    assert next_probe(50, None, 50, 1000, 10) == 100
    assert next_probe(800, None, 800, 1000, 10) == 1000
    assert next_probe(1000, None, 1000, 1000, 10) is None
    assert next_probe(200, 400, 400, 1000, 10) == 300
    assert next_probe(300, 310, 310, 1000, 10) is None
    assert next_probe(None, 50, 50, 1000, 10) == 25
    assert parse_cores("0,2-4") == [0, 2, 3, 4]


# --------------------------------------------------------------------------- fake providers


def _fake_args(protocol: str) -> argparse.Namespace:
    return argparse.Namespace(
        name="t", protocol=protocol, port=0, result="/dev/null", seed=1, response_ms=400,
        first_delta_ms=100, delta_ms=100, speedup=50.0, turn_every_ms=1000,
        interrupt_every=0, interrupt_reply_ms=300)


async def _serve_fake(protocol: str):  # -> (fake, server, url)
    from bench.load_fakes import FakeProvider, WsServerConn

    fake = FakeProvider(_fake_args(protocol))
    fake.keep_from = 0.0
    fake.window = (0.0, 1e12)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: WsServerConn(fake), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return fake, server, f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"


async def _collect(until, inbox: asyncio.Queue, timeout: float = 5.0) -> list:
    out = []
    async with asyncio.timeout(timeout):
        while True:
            msg = orjson.loads(await inbox.get())
            out.append(msg)
            if until(msg):
                return out


async def test_fake_openai_speaks_the_ga_wire_shapes() -> None:
    fake, server, url = await _serve_fake("openai")
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    ws = await WsClient.connect(url, inbox.put_nowait)
    try:
        created = await _collect(lambda m: True, inbox)
        assert created[0]["type"] == "session.created"
        ws.send_text(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}},
                                          "output": {"format": {"type": "audio/pcmu"}}}}}))
        (updated,) = await _collect(lambda m: True, inbox)
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["output"]["format"]["type"] == "audio/pcmu"
        chunk = base64.b64encode(b"\x10" * 320).decode()
        ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        ws.send_text(json.dumps({"type": "response.create"}))
        events = await _collect(lambda m: m["type"] == "response.done", inbox)
        kinds = [e["type"] for e in events]
        assert kinds[:4] == ["response.created", "response.output_item.added",
                             "conversation.item.added", "response.content_part.added"]
        deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
        audio = b"".join(binascii.a2b_base64(d["delta"]) for d in deltas)
        assert len(audio) == 400 * 8  # exactly response_ms of mu-law
        assert len(binascii.a2b_base64(deltas[0]["delta"])) == 100 * 8
        assert events[-1]["response"]["status"] == "completed"
        item_id = deltas[0]["item_id"]
        ws.send_text(json.dumps({"type": "conversation.item.truncate", "item_id": item_id,
                                 "content_index": 0, "audio_end_ms": 300}))
        (truncated,) = await _collect(lambda m: True, inbox)
        assert truncated["type"] == "conversation.item.truncated"
        ws.send_text(json.dumps({"type": "conversation.item.truncate", "item_id": item_id,
                                 "content_index": 0, "audio_end_ms": 5000, "event_id": "x"}))
        (err,) = await _collect(lambda m: True, inbox)
        assert err["type"] == "error" and err["error"]["event_id"] == "x"
        ws.send_text(json.dumps({"type": "response.cancel"}))
        (err,) = await _collect(lambda m: True, inbox)
        assert err["error"]["code"] == "response_cancel_not_active"
        assert fake.violations == {"truncate_beyond_audio": 1}
        assert fake.notes["cancel_not_active"] == 1
    finally:
        await ws.close()
        server.close()


async def test_fake_gemini_answers_setup_and_turns_in_binary_frames() -> None:
    fake, server, url = await _serve_fake("gemini")
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    ws = await WsClient.connect(url, inbox.put_nowait)
    try:
        ws.send_text(json.dumps({"setup": {"model": "models/gemini-live"}}))
        (done,) = await _collect(lambda m: True, inbox)
        assert done == {"setupComplete": {}}
        audio = base64.b64encode(b"\x00\x01" * 640).decode()  # 40 ms at 16 kHz
        ws.send_text(json.dumps({"realtimeInput": {"audio": {
            "mimeType": "audio/pcm;rate=16000", "data": audio}}}))
        ws.send_text(json.dumps({"clientContent": {"turns": [{"role": "user", "parts": [
            {"text": "hi"}]}], "turnComplete": True}}))
        msgs = await _collect(lambda m: m.get("serverContent", {}).get("turnComplete"), inbox)
        parts = [m["serverContent"]["modelTurn"]["parts"][0]["inlineData"] for m in msgs
                 if "modelTurn" in m.get("serverContent", {})]
        assert {p["mimeType"] for p in parts} == {"audio/pcm;rate=24000"}
        assert sum(len(binascii.a2b_base64(p["data"])) for p in parts) == 400 * 48
        assert any(m.get("serverContent", {}).get("generationComplete") for m in msgs)
        ws.send_text(json.dumps({"realtimeInput": {"audio": {
            "mimeType": "audio/pcm;rate=8000", "data": audio}}}))
        ws.send_text(json.dumps({"bogus": {}}))
        async with asyncio.timeout(5):
            while sum(fake.violations.values()) < 2:
                await asyncio.sleep(0.01)
        assert set(fake.violations) == {"audio_blob", "unknown_client_message"}
    finally:
        await ws.close()
        server.close()


async def test_ws_client_answers_a_close_from_the_server() -> None:
    fake, server, url = await _serve_fake("gemini")
    ws = await WsClient.connect(url, lambda m: None)
    ws.send_text(json.dumps({"setup": {"model": "not-prefixed"}}))  # -> close 1007
    async with asyncio.timeout(5):
        await ws.closed
    assert fake.violations == {"first_message_not_setup": 1}
    assert not ws.open
    server.close()


# --------------------------------------------------------------------------- end to end

SMOKE = os.environ.get("AGENTIC_FAST_LOADGEN_SMOKE", "1") != "0"


@pytest.mark.skipif(not SMOKE, reason="AGENTIC_FAST_LOADGEN_SMOKE=0 (the smoke run takes "
                    "~9 s: it spawns a real server and the load processes)")
@pytest.mark.skipif(importlib.util.find_spec("agentic_fast.providers.openai.provider") is None,
                    reason="the OpenAI provider is not there yet")
def test_smoke_two_calls_against_a_real_server(tmp_path: Path) -> None:
    out = tmp_path / "lg"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "-n", "2", "--duration", "3", "--warmup", "1",
         "--ramp", "0.5", "--no-pin", "--quiet", "--out", str(out),
         "--response-ms", "400", "--turn-every-ms", "1000",  # responses inside the window
         "--max-gen-late-ms", "50", "--max-loop-lag-ms", "50"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "loadgen.json").read_text())
    (run,) = doc["runs"]
    assert run["sustained"] == 2, run
    assert run["errors"] == 0, run["error_kinds"]
    assert run["inbound_ms"]["n"] > 0 and run["outbound_ms"]["n"] > 0
    assert run["first_audio_ms"]["n"] == 2
    assert run["cpu_s_per_call_min"] is not None
    assert (out / "loadgen.png").exists() or "matplotlib" not in sys.modules


def _capacity_args(**kw: object) -> argparse.Namespace:
    base = {"duration": 60.0, "capacity_duration": 60.0, "capacity_start": 100,
            "capacity_max": 1000, "capacity_runs": 12, "capacity_resolution": 25,
            "max_jitter_ms": 20.0, "mode": "openai", "server_core": 0, "gen_cores": "1"}
    base.update(kw)
    return argparse.Namespace(**base)


def _fake_runs(server_limit: int, generator_limit: int,
               lag_harmless_to: int = 0) -> tuple[list[int], object]:
    """A stand-in for run_one: the server passes up to ``server_limit`` calls, the
    generator keeps its cadence up to ``generator_limit``; beyond it, its lag adds
    underruns unless N <= ``lag_harmless_to``."""
    probed: list[int] = []

    async def run_one(args: object, n: int, *_: object) -> dict[str, object]:
        probed.append(n)
        valid = n <= generator_limit
        ok = n <= server_limit and (valid or n <= lag_harmless_to)
        return {"n": n, "sustained": n, "underruns": 0 if ok else 3, "stalls": 0,
                "errors": 0, "jitter_ms": {"p99": 5.0}, "valid": valid,
                "invalid_reasons": [] if valid else ["gen0: send lateness p99 9 ms > 5.0"]}

    return probed, run_one


def test_capacity_search_bisects_below_a_generator_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.loadgen as lg

    probed, fake = _fake_runs(server_limit=10_000, generator_limit=260)
    monkeypatch.setattr(lg, "run_one", fake)
    _, cap = asyncio.run(lg.capacity(_capacity_args()))
    assert probed[:3] == [100, 200, 400]  # doubling until the generator gives out
    assert 200 <= cap["capacity_calls"] <= 260 < cap["generator_limit_calls"] <= 400
    assert cap["first_failing_calls"] is None
    assert cap["verdict"].startswith("generator-limited")


def test_capacity_search_finds_the_server_limit_below_the_generators(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.loadgen as lg

    _, fake = _fake_runs(server_limit=330, generator_limit=10_000)
    monkeypatch.setattr(lg, "run_one", fake)
    _, cap = asyncio.run(lg.capacity(_capacity_args()))
    assert cap["generator_limit_calls"] is None
    assert 300 <= cap["capacity_calls"] <= 330 < cap["first_failing_calls"]
    assert cap["verdict"] == "converged"


def test_capacity_search_counts_a_pass_despite_a_lagging_generator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.loadgen as lg

    probed, fake = _fake_runs(server_limit=10_000, generator_limit=150, lag_harmless_to=310)
    monkeypatch.setattr(lg, "run_one", fake)
    runs, cap = asyncio.run(lg.capacity(_capacity_args()))
    assert probed[:3] == [100, 200, 400]
    assert 200 in cap["passes_despite_generator_lag"]
    assert runs[1]["pass_despite_generator_lag"] is True
    assert 300 <= cap["capacity_calls"] <= 310 < cap["generator_limit_calls"] <= 400
    assert "lagging generator" in cap["verdict"]


# --------------------------------------------------------------------------- /calls poller


async def test_api_poller_walks_every_page_reads_one_call_and_probes_healthz() -> None:
    from bench.load_api import ApiPoller, summary_line

    from tests.integration.harness import start_harness

    h = await start_harness(None, api_token="poll-token-123")
    try:
        manager = h.services.manager
        for i in range(5):
            manager.create_outbound(f"+1555000000{i}").add_transcript("caller", "hi")
        now = time.monotonic()
        poller = ApiPoller(h.base_url, 100.0, t_start=now, t_end=now + 30, limit=2,
                           token="poll-token-123", max_polls=3)
        result = await poller.run()
    finally:
        await h.__aexit__(None, None, None)
    assert result["polls"] == 3 and result["errors"] == {}
    assert result["statuses"] == {"200": 3 * 3 + 3 + 3}  # 3 pages + 1 call + 1 healthz
    assert result["list_ms"]["n"] == 9 and result["detail_ms"]["n"] == 3
    assert result["healthz_ms"]["n"] == 3 and result["max_calls_listed"] == 5
    assert "/healthz (loop-lag probe)" in summary_line(result)


async def test_api_poller_counts_refusals() -> None:
    from bench.load_api import ApiPoller

    from tests.integration.harness import start_harness

    h = await start_harness(None, api_token="poll-token-123")
    try:
        now = time.monotonic()
        result = await ApiPoller(h.base_url, 100.0, t_start=now, t_end=now + 30,
                                 token="wrong", max_polls=2).run()
    finally:
        await h.__aexit__(None, None, None)
    assert result["statuses"] == {"200": 2, "401": 2} and result["detail_ms"]["n"] == 0


async def test_abuse_slowloris_counts_the_connections_the_server_closes() -> None:
    """``--abuse slowloris``: a server that closes every second connection at once."""
    from bench.load_abuse import run_abuse

    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        if seen % 2:
            writer.close()
            return
        with contextlib.suppress(OSError):
            await reader.read()  # hold until the client goes

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        out = await run_abuse("slowloris", port, start_at=0.0, seconds=1.0, conns=10)
    finally:
        server.close()
    assert (out["opened"], out["refused"], out["closed_by_server"]) == (10, 0, 5)


def test_server_config_turns_admission_off_where_the_server_has_it() -> None:
    from bench.loadgen import _admission_keys

    assert "inbound: open" in _admission_keys()  # this tree's server has calls.inbound


def test_no_metrics_turns_the_servers_metrics_off_and_the_config_loads() -> None:
    from bench.loadgen import build_parser, server_config

    from agentic_fast.core.config import Config

    def config(*argv: str) -> Config:
        args = build_parser().parse_args(["-n", "10", *argv])
        text = server_config(8080, 9090, "openai", 10, args, "tok", "AC" + "0" * 32)
        return Config.from_text(text, env={})

    assert config().metrics.enabled is True
    off = config("--no-metrics").metrics
    assert off.enabled is False


def test_server_under_test_is_one_process() -> None:
    """The figure is one process on one core: serve's default (a worker per core) would put
    a supervisor and several workers on the pinned core."""
    from bench.loadgen import build_parser, server_config

    from agentic_fast.core.config import Config

    args = build_parser().parse_args(["-n", "10"])
    text = server_config(8080, 9090, "openai", 10, args, "tok", "AC" + "0" * 32)
    assert Config.from_text(text, env={}).server.workers == 1


def test_server_under_test_keeps_its_store_in_the_run_or_in_the_given_redis(
        tmp_path: Path) -> None:
    """Never the user's own ``~/.agentic_fast/calls.db``: SQLite in the run's directory, or
    ``--store-url`` (Redis, a key prefix of its own)."""
    from bench.loadgen import build_parser, server_config

    from agentic_fast.core.config import Config, StoreConfig

    def store(*argv: str) -> StoreConfig:
        args = build_parser().parse_args(["-n", "10", *argv])
        text = server_config(8080, 9090, "openai", 10, args, "tok", "AC" + "0" * 32,
                             "", tmp_path / "calls.db")
        return Config.from_text(text, env={}).store

    sqlite = store()
    assert sqlite.backend == "sqlite" and sqlite.file == tmp_path / "calls.db"
    redis = store("--store-url", "redis://127.0.0.1:6390/0")
    assert redis.backend == "redis" and redis.url == "redis://127.0.0.1:6390/0"
    assert redis.key_prefix.startswith("loadgen-")


def test_server_cpu_counts_a_supervisors_workers() -> None:
    """With ``--server-workers N`` the server is a supervisor and N workers: its CPU is the
    sum over the process tree."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in rep.proc_tree(os.getpid())
        own, tree = rep.proc_cpu_s(os.getpid()), rep.tree_cpu_s(os.getpid())
        assert own is not None and tree is not None and tree >= own
        assert rep.tree_rss_kb(os.getpid()) > rep.proc_rss_kb(os.getpid())  # type: ignore[operator]
    finally:
        child.kill()
        child.wait()
    assert rep.tree_cpu_s(2**22 + 1) is None  # no such process


def test_server_workers_option_reaches_the_config() -> None:
    from bench.loadgen import build_parser, server_config

    from agentic_fast.core.config import Config

    args = build_parser().parse_args(["-n", "10", "--server-workers", "2"])
    text = server_config(8080, 9090, "openai", 10, args, "tok", "AC" + "0" * 32)
    assert Config.from_text(text, env={}).server.workers == 2
