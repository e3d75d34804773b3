"""``agentic-fast demo``: run one simulated call's audio through the converter and report.

Needs no network and no keys: it synthesises a few seconds of caller audio, sends it
through ``AudioConverter`` exactly as the media-stream handler does (Twilio payloads in,
provider chunks out, provider audio back to Twilio frames), and prints sizes, delays and
the per-frame cost of the active implementation.
"""

from __future__ import annotations

import argparse
import base64
import time

import numpy as np

from agentic_fast import audio


def _voice(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(130 + 30 * np.sin(2 * np.pi * 0.5 * t)) / rate
    sig = sum(np.sin(k * phase) / k for k in range(1, 20) if k * 160 < rate / 2)
    return np.round(7000 * sig / 2.2).astype(np.int16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentic-fast demo", description=__doc__)
    parser.add_argument("--provider", default="openai", choices=sorted(audio.PROVIDER_FORMATS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--handoff-ms", type=int, default=40)
    args = parser.parse_args(argv)

    conv = audio.AudioConverter(args.provider, handoff_ms=args.handoff_ms)
    ulaw = audio.ulaw_encode(_voice(8000, args.seconds))
    payloads = [base64.b64encode(ulaw[i:i + 160]).decode() for i in range(0, len(ulaw), 160)]
    in_rate, out_rate, passthrough = audio.PROVIDER_FORMATS[args.provider]
    reply = ulaw if passthrough else _voice(out_rate, args.seconds).tobytes()
    deltas = [reply[i:i + 4800] for i in range(0, len(reply), 4800)]

    t0 = time.perf_counter()
    chunks = [c for p in payloads for c in conv.feed_twilio_b64(p)]
    t1 = time.perf_counter()
    frames = [f for d in deltas for f in conv.feed_provider(d)] + conv.flush_provider()
    t2 = time.perf_counter()

    n_frames = len(payloads)
    print(f"implementation      {audio.IMPLEMENTATION}")
    print(f"provider            {args.provider} (in {in_rate} Hz, out {out_rate} Hz"
          f"{', mu-law passthrough' if passthrough else ''})")
    print(f"caller audio        {n_frames} Twilio frames of 20 ms")
    print(f"to the provider     {len(chunks)} chunks of {conv.chunk_bytes} bytes "
          f"({args.handoff_ms} ms), resampler delay {conv.inbound_delay_ms} ms")
    print(f"back to the caller  {len(frames)} frames of 160 bytes, "
          f"resampler delay {conv.outbound_delay_ms} ms")
    print(f"cost per frame      inbound {1e6 * (t1 - t0) / n_frames:.2f} us, "
          f"outbound {1e6 * (t2 - t1) / max(len(frames), 1):.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
