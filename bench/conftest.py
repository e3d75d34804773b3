"""Benchmark helpers: print each group's figures as ratios against its baseline.

Every group has one benchmark whose name contains ``baseline``; after a run with
``--benchmark-enable`` the summary shows ``baseline median / this median`` for the others,
measured in the same run (the machines are shared and noisy, so only ratios are reported).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest


def _benchmarks(config: pytest.Config) -> list[Any]:
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled:
        return []
    return [b for b in session.benchmarks if getattr(b, "stats", None) is not None]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    benches = _benchmarks(config)
    if not benches:
        return
    groups: dict[str, list[Any]] = {}
    for bench in benches:
        groups.setdefault(bench.group or "", []).append(bench)
    rows = []
    terminalreporter.section("speed-up against the same run's baseline (median)")
    for group, items in sorted(groups.items()):
        base = next((b for b in items if "baseline" in b.name), None)
        if base is None:
            continue
        base_median = base.stats.median
        for b in sorted(items, key=lambda b: b.stats.median):
            ratio = base_median / b.stats.median
            rows.append({"group": group, "name": b.name, "median_us": b.stats.median * 1e6,
                         "speedup_vs_baseline": ratio})
            terminalreporter.write_line(
                f"{group:<28} {b.name:<48} {b.stats.median * 1e6:9.2f} us  x{ratio:6.2f}"
            )
    out = os.environ.get("AGENTIC_FAST_BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))
