"""Measurement math and the report of the load generator (``python -m bench.loadgen``).

Shared by the three kinds of process of a run (orchestrator, simulated callers, fake
providers), so everything here is pure and cheap:

* :class:`Hist`: a mergeable histogram of milliseconds (10 us resolution below 10 ms,
  100 us below 100 ms, 1 ms above) for the per-frame figures (send lateness, loop lag,
  inter-arrival jitter, underrun gaps) that would be too many to keep one by one.
* hashing and sampling of audio for the cross-process latency joins: every process passes
  audio to :func:`sample_key`, which keeps 1 in ``sample`` pieces by a rule on the audio
  itself (its CRC-32: both sides keep the same pieces without talking to each other, and the
  ~7/8 of pieces not kept cost only the CRC) and keys a kept piece by an 8-byte BLAKE2b
  digest; keys seen more than once on a side are dropped (silence collides).
* the joins (:func:`join`, :func:`conn_to_call`, :func:`barge_in_join`), :func:`analyse_run`
  turning the raw results of one run into its figures, and the outputs: :func:`table`,
  :func:`write_json`, :func:`plot_png` (matplotlib, imported lazily).

Times are ``time.monotonic()`` seconds everywhere: CLOCK_MONOTONIC is one clock for every
process of the machine, so a time taken in one process can be subtracted from a time taken
in another.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from hashlib import blake2b
from pathlib import Path
from typing import Any
from zlib import crc32

#: Inbound (caller -> provider) chunks kept for the latency join: 1 in 8 (by CRC-32).
SAMPLE_IN = 8
#: Outbound (provider -> caller) frames kept: 1 in 4 (by CRC-32).
SAMPLE_OUT = 4
#: A barge-in's ``clear`` must reach the caller within this long of the interrupt.
BARGE_IN_MATCH_S = 2.0
#: A tick or timer this late (ms) is a *spike*; spikes of every generator process at once
#: are a pause of the machine (see :func:`machine_pauses`).
SPIKE_MS = 20.0
#: Bound on the spike times and underrun times a process keeps.
MAX_EVENTS = 5000


def sample_key(data: bytes, sample: int) -> int | None:
    """The join key of ``data`` when the deterministic sampling rule keeps it (CRC-32 a
    multiple of ``sample``), else None. Cheap for the pieces it drops."""
    if crc32(data) % sample:
        return None
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


# --------------------------------------------------------------------------- histograms


def _bucket(ms: float) -> int:
    if ms < 10.0:
        return int(ms * 100.0) if ms > 0.0 else 0
    if ms < 100.0:
        return 1000 + int((ms - 10.0) * 10.0)
    if ms < 100_000.0:
        return 1900 + int(ms - 100.0)
    return 101_800


def _bucket_mid(k: int) -> float:
    if k < 1000:
        return (k + 0.5) / 100.0
    if k < 1900:
        return 10.0 + (k - 1000 + 0.5) / 10.0
    return 100.0 + (k - 1900 + 0.5)


class Hist:
    """Histogram of millisecond values; exact count, sum, min and max."""

    __slots__ = ("counts", "max", "min", "n", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.total = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, ms: float) -> None:
        k = _bucket(ms)
        counts = self.counts
        counts[k] = counts.get(k, 0) + 1
        self.n += 1
        self.total += ms
        if ms > self.max:
            self.max = ms
        if ms < self.min:
            self.min = ms

    def merge(self, other: Hist) -> Hist:
        for k, c in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + c
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)
        return self

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (bucket middle, clamped to the exact min/max)."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.n))
        seen = 0
        for k in sorted(self.counts):
            seen += self.counts[k]
            if seen >= rank:
                return min(max(_bucket_mid(k), self.min), self.max)
        return self.max

    def summary(self) -> dict[str, float | int | None]:
        return {"n": self.n, "p50": self.percentile(50), "p99": self.percentile(99),
                "max": self.max if self.n else None,
                "mean": self.total / self.n if self.n else None}

    def to_json(self) -> dict[str, Any]:
        return {"counts": {str(k): c for k, c in self.counts.items()}, "n": self.n,
                "total": self.total, "max": self.max,
                "min": self.min if self.n else None}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Hist:
        h = cls()
        h.counts = {int(k): int(c) for k, c in doc.get("counts", {}).items()}
        h.n = int(doc.get("n", 0))
        h.total = float(doc.get("total", 0.0))
        h.max = float(doc.get("max", 0.0))
        mn = doc.get("min")
        h.min = math.inf if mn is None else float(mn)
        return h


def merged(docs: Iterable[Mapping[str, Any] | None]) -> Hist:
    total = Hist()
    for doc in docs:
        if doc:
            total.merge(Hist.from_json(doc))
    return total


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of a list (``None`` when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else None,
            "mean": sum(values) / len(values) if values else None}


# --------------------------------------------------------------------------- joins

#: One hashed sample: (hash as int, monotonic time, who: call id or provider connection id).
Sample = tuple[int, float, str]


def unique(samples: Iterable[Sequence[Any]]) -> dict[int, tuple[float, str]]:
    """Hash -> (time, who), without the hashes that occur more than once."""
    out: dict[int, tuple[float, str]] = {}
    dup: set[int] = set()
    for h, t, who in samples:
        if h in dup:
            continue
        if h in out:
            del out[h]
            dup.add(h)
            continue
        out[h] = (t, who)
    return out


def join(sent: Iterable[Sequence[Any]], received: Iterable[Sequence[Any]],
         window: tuple[float, float] | None = None) -> list[tuple[float, str, str]]:
    """Match hashes sent on one side with hashes received on the other.

    Returns ``(latency_ms, sender, receiver)`` per hash found once on each side, keeping only
    those sent inside ``window`` (monotonic seconds) when one is given.
    """
    tx = unique(sent)
    rx = unique(received)
    out = []
    for h, (t_send, who_tx) in tx.items():
        hit = rx.get(h)
        if hit is None:
            continue
        if window is not None and not window[0] <= t_send <= window[1]:
            continue
        out.append(((hit[0] - t_send) * 1000.0, who_tx, hit[1]))
    return out


def conn_to_call(inbound_pairs: Iterable[tuple[float, str, str]]) -> dict[str, str]:
    """Provider connection -> call, by majority over the inbound join (call sent, conn got)."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for _lat, call, conn in inbound_pairs:
        votes[conn][call] += 1
    return {conn: c.most_common(1)[0][0] for conn, c in votes.items()}


def barge_in_join(interrupts: Mapping[str, Sequence[float]],
                  clears: Mapping[str, Sequence[float]], mapping: Mapping[str, str],
                  window: tuple[float, float]) -> dict[str, Any]:
    """Each interrupt the provider sent (per connection) -> the caller's next ``clear``.

    ``latencies_ms`` for matched pairs; ``missed``: interrupts in the window with no clear
    within :data:`BARGE_IN_MATCH_S`; ``unmapped``: interrupts on a connection whose call the
    inbound join could not name; ``unexpected_clears``: clears in the window that answer no
    interrupt.
    """
    used: dict[str, set[int]] = defaultdict(set)
    lat: list[float] = []
    missed = unmapped = 0
    for conn, times in interrupts.items():
        call = mapping.get(conn)
        for t_i in times:
            if not window[0] <= t_i <= window[1]:
                continue
            if call is None:
                unmapped += 1
                continue
            cl = clears.get(call, ())
            hit = None
            for idx, t_c in enumerate(cl):
                if t_c >= t_i and idx not in used[call]:
                    if t_c - t_i <= BARGE_IN_MATCH_S:
                        hit = idx
                    break
            if hit is None:
                missed += 1
                continue
            used[call].add(hit)
            lat.append((cl[hit] - t_i) * 1000.0)
    unexpected = 0
    for call, cl in clears.items():
        for idx, t_c in enumerate(cl):
            if window[0] <= t_c <= window[1] + BARGE_IN_MATCH_S and idx not in used[call]:
                unexpected += 1
    return {"latencies_ms": lat, "missed": missed, "unmapped": unmapped,
            "unexpected_clears": unexpected}


# --------------------------------------------------------------------------- one run


def analyse_run(meta: Mapping[str, Any], gens: Sequence[Mapping[str, Any]],
                fakes: Sequence[Mapping[str, Any]],
                server: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of one run from the raw results of its processes.

    ``meta``: n, mode, target, window (t_steady, t_end), thresholds. ``gens``: one result
    per caller process (load_callers). ``fakes``: one per fake provider process
    (load_fakes). ``server``: cpu seconds over the window, RSS, log counts (loadgen).
    """
    window = (float(meta["window"][0]), float(meta["window"][1]))
    minutes = (window[1] - window[0]) / 60.0
    n = int(meta["n"])
    calls = [c for g in gens for c in g.get("calls", [])]
    sustained = sum(1 for c in calls if c.get("sustained"))
    connected = sum(1 for c in calls if c.get("t_start") is not None)

    inbound = join((s for g in gens for s in g.get("in_samples", [])),
                   (s for f in fakes for s in f.get("in_samples", [])), window)
    outbound = join((s for f in fakes for s in f.get("out_samples", [])),
                    (s for g in gens for s in g.get("out_samples", [])), window)
    # which provider connection carried which call: both joins over the whole run (the
    # inbound one covers only the traced calls, the outbound one every call with audio)
    pairs = join((s for g in gens for s in g.get("in_samples", [])),
                 (s for f in fakes for s in f.get("in_samples", [])))
    pairs += [(lat, call, conn) for lat, conn, call in
              join((s for f in fakes for s in f.get("out_samples", [])),
                   (s for g in gens for s in g.get("out_samples", [])))]
    mapping = conn_to_call(pairs)
    interrupts: dict[str, list[float]] = {}
    for f in fakes:
        interrupts.update(f.get("interrupts", {}))
    clears = {c["id"]: c.get("clears", []) for c in calls}
    barge = barge_in_join(interrupts, clears, mapping, window)

    first_audio = [c["first_audio_ms"] for c in calls if c.get("first_audio_ms") is not None]
    jitter = merged(g.get("jitter") for g in gens)
    gaps = merged(g.get("underrun_gaps") for g in gens)
    late = merged(g.get("send_late") for g in gens)
    lag = merged(g.get("loop_lag") for g in gens)
    fake_lag = merged(f.get("loop_lag") for f in fakes)
    per_gen = [{"name": g.get("name"), "calls": len(g.get("calls", [])),
                "send_late": Hist.from_json(g["send_late"]).summary() if g.get("send_late")
                else None,
                "loop_lag": Hist.from_json(g["loop_lag"]).summary() if g.get("loop_lag")
                else None,
                "tick_busy": Hist.from_json(g["tick_busy"]).summary() if g.get("tick_busy")
                else None, "cpu_s": g.get("cpu_s")} for g in gens]

    errors: Counter[str] = Counter()
    for g in gens:
        errors.update({f"caller.{k}": v for k, v in g.get("errors", {}).items()})
    for f in fakes:
        errors.update({f"provider.{k}": v for k, v in f.get("violations", {}).items()})
    for k, v in server.get("log_errors", {}).items():
        errors[f"server.{k}"] += v
    if server.get("exit_code") not in (0, None):
        errors["server.exit_code"] += 1
    notes: Counter[str] = Counter()
    for f in fakes:
        notes.update(f.get("notes", {}))
    notes.update({f"server_warning.{k}": v for k, v in server.get("log_warnings", {}).items()})

    thresholds = meta.get("thresholds", {})
    invalid = []
    lagging: list[str] = []  # generator/fake processes that missed their own cadence
    max_late = thresholds.get("gen_late_p99_ms", 5.0)
    max_lag = thresholds.get("loop_lag_p99_ms", 5.0)
    for g in per_gen:
        sl, ll = g["send_late"], g["loop_lag"]
        if sl and sl["p99"] is not None and sl["p99"] > max_late:
            invalid.append(f"{g['name']}: send lateness p99 {sl['p99']:.1f} ms > {max_late}")
            lagging.append(str(g["name"]))
        if ll and ll["p99"] is not None and ll["p99"] > max_lag:
            invalid.append(f"{g['name']}: loop lag p99 {ll['p99']:.1f} ms > {max_lag}")
            lagging.append(str(g["name"]))
    for f in fakes:
        fl = Hist.from_json(f["loop_lag"]).summary() if f.get("loop_lag") else None
        if fl and fl["p99"] is not None and fl["p99"] > max_lag:
            invalid.append(f"{f.get('name')}: loop lag p99 {fl['p99']:.1f} ms > {max_lag}")
            lagging.append(str(f.get("name")))

    cpu = server.get("cpu_window_s")
    call_minutes = sustained * minutes
    rss_delta = None
    if server.get("rss_end_kb") is not None and server.get("rss_idle_kb") is not None:
        rss_delta = (server["rss_end_kb"] - server["rss_idle_kb"]) / 1024.0
    underruns = sum(g.get("underruns", 0) for g in gens)
    pauses = machine_pauses([p.get("spikes", []) for p in (*gens, *fakes)],
                            (u for g in gens for u in g.get("underrun_times", [])))
    paced = sum(g.get("paced", 0) for g in gens)
    bunched = sum(g.get("bunched", 0) for g in gens)
    spread = sum(g.get("spread", 0) for g in gens)
    stalls = sum(g.get("stalls", 0) for g in gens)
    return {
        "target": meta.get("target", "server"), "mode": meta.get("mode"), "n": n,
        "duration_s": window[1] - window[0], "valid": not invalid, "invalid_reasons": invalid,
        "lagging_processes": sorted(set(lagging)),
        "calls_started": connected, "sustained": sustained,
        "cpu_s_per_call_min": cpu / call_minutes if cpu is not None and call_minutes else None,
        "server_cpu_pct": 100.0 * cpu / (window[1] - window[0]) if cpu is not None else None,
        "rss_idle_mb": (server.get("rss_idle_kb") or 0) / 1024.0,
        "rss_end_mb": (server.get("rss_end_kb") or 0) / 1024.0,
        "rss_mb_per_call": rss_delta / n if rss_delta is not None and n else None,
        "underruns": underruns, "underrun_gap_ms": gaps.summary(), "stalls": stalls,
        "machine_pauses": pauses["count"], "underruns_after_pauses": pauses["underruns_after"],
        "jitter_ms": jitter.summary(),
        "paced_frames": paced,
        "bunched_pct": 100.0 * bunched / paced if paced else None,
        "spread_pct": 100.0 * spread / paced if paced else None,
        "inbound_ms": stats([x[0] for x in inbound]),
        "outbound_ms": stats([x[0] for x in outbound]),
        "barge_in_ms": stats(barge["latencies_ms"]),
        "barge_in_missed": barge["missed"], "barge_in_unmapped": barge["unmapped"],
        "unexpected_clears": barge["unexpected_clears"],
        "first_audio_ms": stats(first_audio),
        "errors": sum(errors.values()), "error_kinds": dict(errors.most_common()),
        "notes": dict(notes.most_common()),
        "generator": {"send_late_ms": late.summary(), "loop_lag_ms": lag.summary(),
                      "processes": per_gen},
        "provider_fake": {"loop_lag_ms": fake_lag.summary(),
                          "processes": [{"name": f.get("name"), "conns": f.get("conns"),
                                         "cpu_s": f.get("cpu_s")} for f in fakes]},
        "joins": {"inbound_pairs": len(inbound), "outbound_pairs": len(outbound),
                  "connections_mapped": len(mapping)},
    }


def machine_pauses(spikes: Sequence[Sequence[float]], underrun_times: Iterable[float],
                   together_s: float = 0.05, after_s: float = 1.0) -> dict[str, Any]:
    """Moments when EVERY generator process (callers and fakes: ``spikes``, one list of
    spike times per process) was >= :data:`SPIKE_MS` late within ``together_s`` of each
    other: the machine paused (a VM or host hiccup), not one process. Such a pause delays
    the server too, so the underruns that came within ``after_s`` after one are counted
    apart (they are still reported as underruns). Pauses closer than 0.1 s are one."""
    from bisect import bisect_left

    lists = [sorted(x) for x in spikes]
    if len(lists) < 2 or any(not x for x in lists):
        return {"count": 0, "times": [], "underruns_after": 0}
    times: list[float] = []
    for t in lists[0]:
        if times and t - times[-1] < 0.1:
            continue
        if all(_near(other, t, together_s, bisect_left) for other in lists[1:]):
            times.append(t)
    near = sum(1 for u in underrun_times
               if any(p - together_s <= u <= p + after_s for p in times))
    return {"count": len(times), "times": times, "underruns_after": near}


def _near(sorted_times: list[float], t: float, tol: float, bisect_left: Any) -> bool:
    i = bisect_left(sorted_times, t - tol)
    return i < len(sorted_times) and sorted_times[i] <= t + tol


# --------------------------------------------------------------------------- targets

def target_checks(run: Mapping[str, Any]) -> list[tuple[str, Any, str, bool | None]]:
    """``(what, value, limit, passed)`` against the issue's targets (None: not applicable)."""
    out: list[tuple[str, Any, str, bool | None]] = []
    if run.get("target") != "server":
        return out
    cpu_limit = 0.10 if run.get("mode") == "openai-pcmu" else 0.15
    if run.get("mode") == "gemini":
        cpu_limit = 0.15
    cpu = run.get("cpu_s_per_call_min")
    out.append(("CPU s per call-minute", cpu, f"<= {cpu_limit}",
                None if cpu is None else cpu <= cpu_limit))
    rss = run.get("rss_mb_per_call")
    out.append(("RSS MB per call", rss, "<= 1.0", None if rss is None else rss <= 1.0))
    out.append(("underruns", run.get("underruns"), "== 0", run.get("underruns") == 0))
    j = run.get("jitter_ms", {}).get("p99")
    out.append(("jitter p99 ms", j, "< 20", None if j is None else j < 20.0))
    if run.get("n") == 100:
        for key, label in (("inbound_ms", "inbound p99 ms"), ("outbound_ms", "outbound p99 ms")):
            v = run.get(key, {}).get("p99")
            out.append((label + " (at 100 calls)", v, "< 5", None if v is None else v < 5.0))
        v = run.get("barge_in_ms", {}).get("p99")
        out.append(("barge-in p99 ms (at 100 calls)", v, "< 10",
                    None if v is None else v < 10.0))
    return out


def capacity_pass(run: Mapping[str, Any], max_jitter_ms: float = 20.0) -> bool:
    """The capacity criterion: every call sustained, zero underruns and stalls, jitter p99
    under ``max_jitter_ms``, no errors. (Validity of the generator is checked separately.)"""
    j = run.get("jitter_ms", {}).get("p99")
    return (run.get("sustained") == run.get("n") and run.get("underruns") == 0
            and run.get("stalls") == 0 and run.get("errors") == 0
            and (j is None or j < max_jitter_ms))


# --------------------------------------------------------------------------- outputs


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pp(d: Mapping[str, Any] | None, digits: int = 1) -> str:
    if not d or not d.get("n"):
        return "-"
    return f"{_f(d.get('p50'), digits)}/{_f(d.get('p99'), digits)}"


COLUMNS = ("target", "N", "valid", "sustained", "cpu s/call-min", "rss MB/call", "underruns",
           "jitter p50/p99", "in p50/p99", "out p50/p99", "barge p50/p99", "1st audio p50/p99",
           "errors", "gen late p99/max")

LEGEND = """\
columns (times in ms; p50/p99 = median / 99th percentile over the steady-state window):
  cpu s/call-min   server CPU seconds (utime+stime of the server process and of its workers
                   with --server-workers, /proc/<pid>/stat) over the window, divided by
                   sustained calls x window minutes
  rss MB/call      (server VmRSS at the end of the window - idle server VmRSS) / N (with
                   workers: their sum; idle may be read before they started)
  underruns        the caller's 20 ms playout needed a frame of a response that had not
                   arrived (silences between responses and after a clear excluded)
  jitter           |inter-arrival - 20 ms| of outbound frames once the caller's buffer
                   holds the bridge's lead (the fill up to the lead is bursty by design)
  in               bridge-added inbound latency: caller sent the frame completing a provider
                   chunk -> fake provider received that chunk (joined on chunk hashes)
  out              bridge-added outbound latency: fake sent the first delta of a response ->
                   caller received its frames (joined on frame hashes)
  barge            fake sent the interrupt (speech_started / interrupted) -> caller got clear
  1st audio        stream start sent -> first assistant frame at the caller (greeting)
  gen late         generator's frame send time minus its ideal 20 ms tick (p99 / max);
                   a run whose generator or fake lagged is marked invalid (valid = no)
  relay rows       the bare relay forwards each delta's frames at once (no pacing): its
                   jitter is ~20 ms by construction; compare its CPU, RSS and latencies"""


def table(runs: Sequence[Mapping[str, Any]]) -> str:
    rows = [COLUMNS]
    for r in runs:
        late = r.get("generator", {}).get("send_late_ms", {})
        rows.append((
            f"{r.get('target')}:{r.get('mode')}", str(r.get("n")),
            "yes" if r.get("valid") else "NO", f"{r.get('sustained')}/{r.get('n')}",
            _f(r.get("cpu_s_per_call_min"), 3), _f(r.get("rss_mb_per_call"), 3),
            f"{r.get('underruns')}" + (f" (+{r['stalls']} stalls)" if r.get("stalls") else ""),
            _pp(r.get("jitter_ms")), _pp(r.get("inbound_ms"), 2), _pp(r.get("outbound_ms"), 2),
            _pp(r.get("barge_in_ms"), 2), _pp(r.get("first_audio_ms")), str(r.get("errors")),
            f"{_f(late.get('p99'), 1)}/{_f(late.get('max'), 1)}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ratios(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Server figures divided by the relay's at the same N and mode (same invocation)."""
    relay = {(r["mode"], r["n"]): r for r in runs if r.get("target") == "relay"}
    out = []
    for r in runs:
        base = relay.get((r.get("mode"), r.get("n"))) if r.get("target") == "server" else None
        if base is None:
            # a relay runs in pcmu; compare any server mode at the same N
            base = next((b for (m, n), b in relay.items() if n == r.get("n")), None) \
                if r.get("target") == "server" else None
        if base is None:
            continue
        row: dict[str, Any] = {"mode": r.get("mode"), "n": r.get("n")}
        for key in ("cpu_s_per_call_min", "rss_mb_per_call"):
            a, b = r.get(key), base.get(key)
            row[key] = a / b if a is not None and b else None
        for key in ("inbound_ms", "outbound_ms", "barge_in_ms"):
            a, b = r.get(key, {}).get("p99"), base.get(key, {}).get("p99")
            row[key + "_p99"] = a / b if a is not None and b else None
        out.append(row)
    return out


def ratio_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    lines = ["server / bare relay at the same N (x = times the relay's figure):",
             f"  {'mode':<12} {'N':>5} {'cpu/call-min':>13} {'rss/call':>9} "
             f"{'in p99':>7} {'out p99':>8} {'barge p99':>10}"]
    for r in rows:
        lines.append(f"  {r['mode']:<12} {r['n']:>5} {_x(r['cpu_s_per_call_min']):>13} "
                     f"{_x(r['rss_mb_per_call']):>9} {_x(r['inbound_ms_p99']):>7} "
                     f"{_x(r['outbound_ms_p99']):>8} {_x(r['barge_in_ms_p99']):>10}")
    return "\n".join(lines)


def _x(v: float | None) -> str:
    return "-" if v is None else f"x{v:.2f}"


def details(run: Mapping[str, Any]) -> str:
    """A few lines under the table for one run: validity, errors, joins, targets."""
    lines = [f"[{run.get('target')}:{run.get('mode')} N={run.get('n')}] "
             f"server CPU {_f(run.get('server_cpu_pct'), 1)}% of a core, RSS idle "
             f"{_f(run.get('rss_idle_mb'), 1)} MB -> {_f(run.get('rss_end_mb'), 1)} MB; "
             f"joins: {run['joins']['inbound_pairs']} inbound, "
             f"{run['joins']['outbound_pairs']} outbound, "
             f"{run.get('barge_in_ms', {}).get('n', 0)} barge-ins "
             f"(missed {run.get('barge_in_missed')}, unexpected clears "
             f"{run.get('unexpected_clears')})"]
    if run.get("paced_frames"):
        lines.append(f"  outbound pacing: of {run['paced_frames']} paced frames "
                     f"{_f(run.get('bunched_pct'), 2)}% came < 5 ms after the previous one "
                     f"and {_f(run.get('spread_pct'), 2)}% > 35 ms after it (each counts "
                     "~20 ms of jitter)")
    cadence = []
    for g in run.get("generator", {}).get("processes", []):
        sl, ll = g.get("send_late") or {}, g.get("loop_lag") or {}
        cadence.append(f"{g['name']} ({g['calls']} calls) late {_f(sl.get('p50'), 1)}/"
                       f"{_f(sl.get('p99'), 1)}/{_f(sl.get('max'), 1)} lag p99 "
                       f"{_f(ll.get('p99'), 1)}")
    if cadence:
        lines.append("  caller cadence, ms (send lateness p50/p99/max, loop lag p99): "
                     + "; ".join(cadence))
    if run.get("peer_cpu_pct"):
        peers = ", ".join(f"{k} {v:.0f}%" for k, v in run["peer_cpu_pct"].items())
        lines.append(f"  generator side CPU over the window: {peers} (cores "
                     f"{run.get('generator_cores_busy_pct')}% busy on average)")
    if run.get("machine_pauses"):
        lines.append(f"  machine pauses: {run['machine_pauses']} moment(s) when every generator "
                     f"process was >= {SPIKE_MS:.0f} ms late at once; "
                     f"{run.get('underruns_after_pauses', 0)} of the {run.get('underruns', 0)} "
                     "underruns came within 1 s after one (the server was paused too)")
    for reason in run.get("invalid_reasons", []):
        lines.append(f"  INVALID: {reason}")
    if run.get("invalid_reasons") and capacity_pass(run):
        lines.append("  ... yet the server met the capacity criterion: a lagging generator can "
                     "only add underruns and jitter, so this is a conservative pass")
    if run.get("error_kinds"):
        kinds = ", ".join(f"{k}={v}" for k, v in list(run["error_kinds"].items())[:8])
        lines.append(f"  errors: {kinds}")
    if run.get("notes"):
        kinds = ", ".join(f"{k}={v}" for k, v in list(run["notes"].items())[:8])
        lines.append(f"  notes (expected in normal operation): {kinds}")
    for what, value, limit, ok in target_checks(run):
        mark = "n/a" if ok is None else ("ok" if ok else "MISS")
        lines.append(f"  target {what:<32} {_f(value, 3):>8}  {limit:<6} {mark}")
    return "\n".join(lines)


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")


def plot_png(path: Path, runs: Sequence[Mapping[str, Any]], title: str = "") -> str | None:
    """Latency percentiles, jitter/underruns, CPU and RSS per call against the call count;
    returns an explanation instead of raising when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("matplotlib is not installed: no PNG (pip install matplotlib; it is a "
                "bench-only dependency)")
    series: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in runs:
        series[f"{r.get('target')}:{r.get('mode')}"].append(r)
    if not series:
        return "no runs to plot"

    def values(rs: Sequence[Mapping[str, Any]], key: str, sub: str | None = None) -> list[float]:
        out = []
        for r in rs:
            v = r.get(key)
            if sub is not None:
                v = (v or {}).get(sub)
            out.append(math.nan if v is None else float(v))
        return out

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (lat_ax, jit_ax), (cpu_ax, rss_ax) = axes
    for name, rs in series.items():
        rs = sorted(rs, key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        for key, label, style in (("inbound_ms", "in", "o-"), ("outbound_ms", "out", "s-"),
                                  ("barge_in_ms", "barge-in", "^-")):
            line = lat_ax.plot(ns, values(rs, key, "p99"), style, label=f"{name} {label} p99")
            lat_ax.plot(ns, values(rs, key, "p50"), style, alpha=0.3,
                        color=line[0].get_color())
        jit_ax.plot(ns, values(rs, "jitter_ms", "p99"), "x-", label=f"{name} jitter p99")
        jit_ax.plot(ns, values(rs, "underruns"), "v--", label=f"{name} underruns")
        cpu_ax.plot(ns, values(rs, "cpu_s_per_call_min"), "o-", label=name)
        rss_ax.plot(ns, values(rs, "rss_mb_per_call"), "o-", label=name)
        for r in rs:
            if not r.get("valid"):
                cpu_ax.annotate("invalid", (r["n"], r.get("cpu_s_per_call_min") or 0),
                                fontsize=7, color="red")
    lat_ax.set(title="bridge-added latency, ms (p99; faint: p50)",
               xlabel="concurrent calls", ylabel="ms")
    lat_ax.axhline(5.0, color="grey", ls=":", lw=1)
    lat_ax.axhline(10.0, color="grey", ls="--", lw=1)
    jit_ax.set(title="outbound jitter p99 (ms) and underruns (count)",
               xlabel="concurrent calls")
    jit_ax.axhline(20.0, color="grey", ls="--", lw=1)
    cpu_ax.set(title="server CPU s per call-minute", xlabel="concurrent calls")
    cpu_ax.axhline(0.10, color="grey", ls=":", lw=1)
    cpu_ax.axhline(0.15, color="grey", ls="--", lw=1)
    rss_ax.set(title="server RSS MB per call", xlabel="concurrent calls")
    rss_ax.axhline(1.0, color="grey", ls="--", lw=1)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- process plumbing
# Used by the child processes (callers, fakes) and the orchestrator.

try:
    _CLK_TCK = os.sysconf("SC_CLK_TCK")
except (ValueError, OSError):  # pragma: no cover
    _CLK_TCK = 100


def proc_cpu_s(pid: int | str = "self") -> float | None:
    """utime + stime of a process (all threads) in seconds, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_tree(pid: int | str) -> list[int | str]:
    """``pid`` and every live descendant (a supervisor's workers), from
    /proc/<pid>/task/*/children."""
    found: list[int | str] = [pid]
    i = 0
    while i < len(found):
        for task in Path(f"/proc/{found[i]}/task").glob("*/children"):
            try:
                found += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
        i += 1
    return found


def tree_cpu_s(pid: int | str) -> float | None:
    """CPU seconds of ``pid`` and its live descendants together (None: ``pid`` is gone)."""
    own = proc_cpu_s(pid)
    if own is None:
        return None
    return own + sum(proc_cpu_s(child) or 0.0 for child in proc_tree(pid)[1:])


def tree_rss_kb(pid: int | str) -> int | None:
    """VmRSS of ``pid`` and its live descendants together, in kB."""
    own = proc_rss_kb(pid)
    if own is None:
        return None
    return own + sum(proc_rss_kb(child) or 0 for child in proc_tree(pid)[1:])


def proc_rss_kb(pid: int | str = "self") -> int | None:
    """VmRSS of a process in kB, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def emit(kind: str, **fields: Any) -> None:
    """One JSON line on stdout for the orchestrator (``ready``, ``progress``, ``done``)."""
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


class LagProbe:
    """Event-loop lag: a timer every ``every_s``; lag = how late it fired (ms).

    ``window`` (monotonic start, end) limits what goes into :attr:`hist`; ``recent_max``
    is the largest lag since the last :meth:`take_recent` (for progress lines).
    """

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.hist = Hist()
        self.window: tuple[float, float] | None = None
        self.recent_max = 0.0
        self.spikes: list[float] = []  # when a lag >= SPIKE_MS happened (inside the window)
        self._handle: Any = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = time.monotonic() + self.every_s
        self._handle = loop.call_at(loop.time() + self.every_s, self._fire)

    def _fire(self) -> None:
        now = time.monotonic()
        lag = max(0.0, (now - self._due) * 1000.0)
        if lag > self.recent_max:
            self.recent_max = lag
        w = self.window
        if w is not None and w[0] <= now <= w[1]:
            self.hist.add(lag)
            if lag >= SPIKE_MS and len(self.spikes) < MAX_EVENTS:
                self.spikes.append(now)
        self._due = now + self.every_s
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + self.every_s, self._fire)

    def take_recent(self) -> float:
        v, self.recent_max = self.recent_max, 0.0
        return v

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
