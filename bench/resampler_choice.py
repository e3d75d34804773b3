"""Why the call legs use our integer FIR and not soxr's stream: measure both.

For each candidate and rate pair, stream 20 ms frames of a tone and report
* first_out_frame: the first frame (1-based) for which any output comes back,
* max_block_ms: the largest single release of audio (how bursty the output is),
* algorithmic_ms: how late a click comes out against where it belongs (filter delay),
* hold_back_ms: how long output is kept back past the frame whose input made it (median,
  max); the caller feels algorithmic + hold-back,
* snr_db: fidelity against a whole-signal ``soxr.resample(..., quality="HQ")`` (tones
  300-3400 Hz, worst case), aligned by each candidate's own delay.

Run: ``python -m bench.resampler_choice [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import soxr

from agentic_fast.audio import FIR_DESIGNS, Resampler

PAIRS = [(8000, 24000), (8000, 16000), (24000, 8000)]
QUALITIES = ["QQ", "LQ", "MQ", "HQ", "VHQ"]


class _Soxr:
    def __init__(self, rin: int, rout: int, quality: str) -> None:
        self.s = soxr.ResampleStream(rin, rout, 1, dtype="int16", quality=quality)

    def process(self, x: np.ndarray) -> np.ndarray:
        return self.s.resample_chunk(x)


class _Fir:
    def __init__(self, rin: int, rout: int) -> None:
        self.r = Resampler(rin, rout)

    def process(self, x: np.ndarray) -> np.ndarray:
        return np.frombuffer(self.r.process(x.tobytes()), np.int16)


def _stream(make, rin: int, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    r = make()
    frame = rin // 50
    outs = [r.process(x[i:i + frame]) for i in range(0, len(x), frame)]
    return np.concatenate(outs).astype(np.float64), [len(o) for o in outs]


def measure(make, rin: int, rout: int) -> dict[str, float]:
    frame_in, frame_out = rin // 50, rout // 50
    # algorithmic delay: where a click comes out against where it belongs
    click = np.zeros(rin, np.int16)
    pos = 10 * frame_in + frame_in // 2
    click[pos] = 20000
    out, sizes = _stream(make, rin, click)
    alg_samples = int(np.argmax(np.abs(out))) - round(pos * rout / rin)
    # hold-back: output sample k comes back with frame r_k; a converter that holds nothing
    # returns it with frame k // frame_out (both measured in 20 ms frames of wall time)
    released = np.repeat(np.arange(len(sizes)), sizes)
    own_frame = np.arange(len(released)) // frame_out
    hold_ms = (released - own_frame)[frame_out * 5:] * 20.0
    worst = np.inf
    for f in (300, 1000, 2000, 3400):
        t = np.arange(rin) / rin
        x = np.round(16000 * np.sin(2 * np.pi * f * t)).astype(np.int16)
        y, _ = _stream(make, rin, x)
        ref = soxr.resample(x.astype(np.float64), rin, rout, quality="HQ")
        d = max(alg_samples, 0)
        n = min(len(y) - d, len(ref)) - rout // 10
        e = y[d + rout // 20: d + rout // 20 + n] - ref[rout // 20: rout // 20 + n]
        worst = min(worst, 10 * np.log10(np.sum(ref**2) / np.sum(e**2)))
    return {
        "first_out_frame": next((i + 1 for i, s in enumerate(sizes) if s), len(sizes)),
        "max_block_ms": round(max(sizes) * 1000.0 / rout, 1),
        "algorithmic_ms": round(alg_samples * 1000.0 / rout, 2),
        "hold_back_ms_median": float(np.median(hold_ms)),
        "hold_back_ms_max": float(np.max(hold_ms)),
        "snr_db": round(float(worst), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the table as JSON to this path")
    args = parser.parse_args(argv)
    rows = []
    for rin, rout in PAIRS:
        cands = [(f"soxr-{q}", lambda q=q, a=rin, b=rout: _Soxr(a, b, q)) for q in QUALITIES]
        if (rin, rout) in FIR_DESIGNS:
            cands.append(("agentic-fir", lambda a=rin, b=rout: _Fir(a, b)))
        for name, make in cands:
            row = {"pair": f"{rin}->{rout}", "method": name, **measure(make, rin, rout)}
            rows.append(row)
    cols = ["pair", "method", "first_out_frame", "max_block_ms", "algorithmic_ms",
            "hold_back_ms_median", "hold_back_ms_max", "snr_db"]
    print(" ".join(f"{c:>12.12}" for c in cols))
    for row in rows:
        print(" ".join(f"{row[c]!s:>12.12}" for c in cols))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
