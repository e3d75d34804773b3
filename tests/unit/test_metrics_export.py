"""The counter -> Prometheus family mapping, the label scrub, the bridge's sampled timings
and histograms (on an injected clock), ``metrics.enabled: false``, and multiprocess mode."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentic_fast.call.bridge import AudioBridge, BridgeSettings
from agentic_fast.call.manager import CallManager
from agentic_fast.core import metrics, metrics_export
from agentic_fast.core.config import MetricsConfig
from agentic_fast.core.metrics_export import FALLBACK, RULES, classify, scrub
from tests.unit.test_bridge import ManualPacer, RecordingProvider, RecordingSender, _delta

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def _metrics_off_after() -> Iterator[None]:
    yield
    metrics_export.configure(MetricsConfig(enabled=False))


@pytest.mark.parametrize(("name", "family", "labels"), [
    ("twilio.media.rejected.bad_base64", "media_rejected", ("twilio", "bad_base64")),
    ("telnyx.media.token.expired", "media_stream_events", ("telnyx", "token.expired")),
    ("twilio.webhook.rejected.bad_signature", "webhook_rejected", ("twilio", "bad_signature")),
    ("twilio.rest.error.create", "carrier_api_errors", ("twilio", "create")),
    ("twilio.stream_error.31920", "carrier_stream_errors", ("twilio", "31920")),
    ("twilio.status.rejected", "carrier_events", ("twilio", "status.rejected")),
    ("openai.reconnect.attempts", "provider_reconnects", ("openai",)),
    ("gemini.reconnect.attempts", "provider_reconnects", ("gemini",)),
    ("openai.connect.refused.invalid_api_key", "provider_refusals",
     ("openai", "invalid_api_key")),
    ("openai.errors.rate_limit_exceeded", "provider_errors", ("openai", "rate_limit_exceeded")),
    ("gemini.go_away", "provider_events", ("gemini", "go_away")),
    ("calls.created.inbound", "calls_created", ("inbound",)),
    ("calls.ended.completed", "calls_ended", ("completed",)),
    ("calls.refused.draining", "calls_refused", ("draining",)),
    ("calls.silence.prompted", "call_events", ("silence.prompted",)),
    ("bridge.barge_in", "barge_ins", ()),
    ("bridge.queue.overflow_frames", "bridge_events", ("queue.overflow_frames",)),
    ("brain.command.sent.tool", "agent_commands", ("tool",)),
    ("brain.command.timeout", "agent_command_results", ("timeout",)),
    ("brain.command.duplicate", "brain_events", ("command.duplicate",)),
    ("gateway.request.timeouts", "gateway_events", ("request.timeouts",)),
    ("api.rejected.auth", "api_rejected", ("auth",)),
    ("ws.protocol_error.1002", "server_events", ("ws", "protocol_error.1002")),
    ("listener.head_timeout", "server_events", ("listener", "head_timeout")),
    ("telnyx.media.error_frames.40001", "carrier_stream_errors", ("telnyx", "40001")),
    ("telnyx.webhook.call.answered", "carrier_webhooks", ("telnyx", "call.answered")),
    ("twilio.webhook.replayed", "carrier_webhooks", ("twilio", "replayed")),
    ("events.subscribers.opened", "event_hub_events", ("subscribers.opened",)),
    ("events.dropped", "event_hub_events", ("dropped",)),
    ("store.write.events", "store_events_written", ()),
    ("store.write.dropped.queue_full", "store_events_dropped", ("queue_full",)),
    ("store.write.lost.shutdown", "store_events_dropped", ("shutdown",)),
    ("store.prune.failed", "store_events", ("prune.failed",)),
    ("notify.delivered.telegram", "notifications", ("delivered", "telegram")),
    ("notify.dead.webhook", "notifications", ("dead", "webhook")),
    ("notify.outbox.full", "notify_events", ("outbox.full",)),
    ("server.desk.task.failed", "server_events", ("server", "desk.task.failed")),
    ("something.new", "events", ("something.new",)),
])
def test_dotted_names_map_to_families_with_labels(name: str, family: str,
                                                  labels: tuple[str, ...]) -> None:
    rule, values = classify(name)
    assert (rule.family, values) == (family, labels)


def test_every_literal_counter_name_in_the_code_has_a_family_of_its_own() -> None:
    """The fallback is a safety net, not where today's counters end up."""
    names = set()
    for path in SRC.rglob("*.py"):
        for m in re.finditer(r'incr\(f?"([^"{]+)(\{[^"]*)?"', path.read_text()):
            names.add(m.group(1) + ("x" if m.group(2) or m.group(1).endswith(".") else ""))
    assert len(names) > 120
    unmapped = sorted(n for n in names if classify(n)[0] is FALLBACK)
    assert not unmapped


def test_no_two_rules_of_a_family_disagree_on_labels() -> None:
    seen: dict[str, tuple[str, ...]] = {}
    for rule in RULES:
        assert seen.setdefault(rule.family, rule.labels) == rule.labels


@pytest.mark.parametrize(("raw", "clean"), [
    ("bad_base64", "bad_base64"),
    ("31920", "31920"),
    ("CA0123456789abcdef0123456789abcdef", "_id_"),
    ("+15551234567", "_id_"),
    ("call-6f1c2a9e-1b2c-4d5e-8f90-123456789abc", "call-_id_"),
    ("x" * 200, "x" * 80),
])
def test_label_values_carry_no_ids_or_numbers(raw: str, clean: str) -> None:
    assert scrub(raw) == clean


def _scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry, _ = metrics_export.build_registry([])
    from prometheus_client import generate_latest
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _count(name: str, **labels: str) -> float:
    return _scrape().get(f"agentic_fast_{name}_count", {}).get(
        tuple(sorted(labels.items())), 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _bridge(clock: Clock) -> tuple[AudioBridge, RecordingSender]:
    session = CallManager().create_inbound("CA" + "1" * 32, "+15551230000", "+15557654321")
    sender = RecordingSender()
    bridge = AudioBridge(session, sender, RecordingProvider(), ManualPacer(),  # type: ignore[arg-type]
                         settings=BridgeSettings(), clock=clock)
    await bridge.start()
    return bridge, sender


FRAME = base64.b64encode(b"\xff" * 160).decode()


async def test_one_frame_in_n_is_timed_each_way() -> None:
    metrics_export.configure(MetricsConfig(latency_sample_every=3))
    before_in = _count("bridge_latency_seconds", direction="inbound")
    before_out = _count("bridge_latency_seconds", direction="outbound")
    bridge, _ = await _bridge(Clock())
    for _ in range(7):
        bridge.on_media(FRAME, 0)
    for i in range(6):
        bridge.on_audio(_delta(100), f"item{i}")
    assert _count("bridge_latency_seconds", direction="inbound") - before_in == 2
    assert _count("bridge_latency_seconds", direction="outbound") - before_out == 2


async def test_first_audio_and_barge_in_reaction_are_observed_on_the_bridge_clock() -> None:
    metrics_export.configure(MetricsConfig())
    clock = Clock()
    first = _scrape().get("agentic_fast_first_audio_seconds_sum", {}).get((), 0.0)
    n_first = _count("first_audio_seconds")
    bridge, sender = await _bridge(clock)  # the stream starts at 100.0
    clock.now = 100.75
    bridge.on_audio(_delta(1000), "item1")
    bridge.pump(5.0)
    bridge.pump(5.1)  # later frames are not "first"
    assert sender.media_count() > 0
    assert _count("first_audio_seconds") - n_first == 1
    got = _scrape()["agentic_fast_first_audio_seconds_sum"][()] - first
    assert got == pytest.approx(0.75)
    n_barge = _count("barge_in_reaction_seconds")
    bridge.on_speech_started()
    assert _count("barge_in_reaction_seconds") - n_barge == 1


async def test_disabled_metrics_time_nothing_on_the_audio_path() -> None:
    metrics_export.configure(MetricsConfig(enabled=False))
    assert metrics.sample_every() == 0
    bridge, _ = await _bridge(Clock())
    def timings() -> dict[str, object]:
        return {k: v for k, v in _scrape().items()
                if k.startswith("agentic_fast_") and "_seconds" in k}

    before = timings()
    for _ in range(200):
        bridge.on_media(FRAME, 0)
        bridge.on_audio(_delta(20), "item")
    bridge.pump(5.0)
    metrics.observe("call_duration", 3.0, "completed")
    assert timings() == before
    assert bridge._in_sample < 0  # the countdown never reaches zero again


def test_multiprocess_mode_adds_up_every_workers_counters(tmp_path: Path) -> None:
    """Two worker processes count and sync; a scrape in a third sees the machine's sum."""
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "PYTHONPATH": str(SRC)}
    worker = textwrap.dedent("""
        from agentic_fast.core import metrics, metrics_export
        from agentic_fast.core.config import MetricsConfig
        from agentic_fast.core.metrics_export import GaugeSpec
        assert metrics_export.multiprocess_mode()
        metrics_export.configure(MetricsConfig())
        _, sync = metrics_export.build_registry([GaugeSpec("live_calls", "x", lambda: 2)])
        metrics.incr("twilio.media.rejected.bad_base64", 3)
        metrics.observe("first_audio", 0.4)
        sync.sync()
        print(os.getpid())
    """)
    pids = [subprocess.run([sys.executable, "-c", "import os\n" + worker], env=env, check=True,
                           timeout=60, capture_output=True, text=True).stdout.strip()
            for _ in range(2)]
    scrape = textwrap.dedent("""
        import sys
        from prometheus_client import generate_latest
        from prometheus_client.multiprocess import mark_process_dead
        from agentic_fast.core import metrics_export
        for pid in sys.argv[1:]:  # what the supervisor does when a worker exits
            mark_process_dead(int(pid))
        registry, _ = metrics_export.build_registry([])
        print(generate_latest(registry).decode())
    """)

    def scrape_with(*dead: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = subprocess.run([sys.executable, "-c", scrape, *dead], env=env, check=True,
                             timeout=60, capture_output=True, text=True).stdout
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(out) for s in f.samples}

    samples = scrape_with()
    key = ("agentic_fast_media_rejected_total",
           (("carrier", "twilio"), ("reason", "bad_base64")))
    assert samples[key] == 6
    assert samples[("agentic_fast_first_audio_seconds_count", ())] == 2
    assert samples[("agentic_fast_live_calls", ())] == 4  # livesum of the live workers
    after = scrape_with(*pids)  # both workers marked dead: their gauges go, counters stay
    assert after.get(("agentic_fast_live_calls", ()), 0) == 0
    assert after[key] == 6
