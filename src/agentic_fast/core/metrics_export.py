"""The counters and timings of :mod:`agentic_fast.core.metrics` in Prometheus' terms.

Counters stay a dict of dotted names (``incr`` is one dict update); at scrape time
:class:`CounterCollector` maps each name to a metric family with labels by the first
matching rule of :data:`RULES` (full match; the named groups are the labels).
Each family is exposed as ``agentic_fast_<family>_total``:

========================================  ============================================
dotted name                               family {labels}
========================================  ============================================
<carrier>.media.rejected.<reason>         media_rejected {carrier, reason}
<carrier>.media.error_frames.<code>       carrier_stream_errors {carrier, code}
<carrier>.media.<event>                   media_stream_events {carrier, event}
<carrier>.webhook.rejected.<reason>       webhook_rejected {carrier, reason}
<carrier>.webhook.<event>                 carrier_webhooks {carrier, event}
<carrier>.rest.error.<op>                 carrier_api_errors {carrier, op}
<carrier>.stream_error.<code>             carrier_stream_errors {carrier, code}
<carrier>.<event>                         carrier_events {carrier, event}
<provider>.reconnect.attempts             provider_reconnects {provider}
<provider>.connect.refused.<code>         provider_refusals {provider, code}
<provider>.errors.<code>                  provider_errors {provider, code}
<provider>.<event>                        provider_events {provider, event}
calls.created.<direction>                 calls_created {direction}
calls.ended.<status>                      calls_ended {status}
calls.refused.<reason>                    calls_refused {reason}
calls.<event>                             call_events {event}
bridge.barge_in                           barge_ins
bridge.<event>                            bridge_events {event}
brain.command.sent.<source>               agent_commands {source}
brain.command.<outcome>                   agent_command_results {status}
brain.<event>                             brain_events {event}
gateway.<event>                           gateway_events {event}
api.rejected.<reason>                     api_rejected {reason}
api.store_unavailable                     api_store_unavailable
store.write.events                        store_events_written
store.write.{dropped,lost}.<reason>       store_events_dropped {reason}
store.<event>                             store_events {event}
notify.{delivered,retry,dead}.<channel>   notifications {outcome, channel}
notify.<event>                            notify_events {event}
events.<event>                            event_hub_events {event}
<component>.<event> (ws, listener...)     server_events {component, event}
anything else                             events {name}
========================================  ============================================

Nothing counted is invisible (the fallback), and no label carries a call id, a CallSid or a
phone number: label values are cut to 80 characters and digit runs of 7 or more, long hex
runs and UUIDs become ``_id_`` (:func:`scrub`).

Histograms (:data:`HISTOGRAMS`) are observed on events through ``metrics.observe``; gauges
are read at scrape time from callbacks (:class:`GaugeCollector`).

**Several processes.** When ``PROMETHEUS_MULTIPROC_DIR`` is set (prometheus-client reads it
at import), histograms live in its memory-mapped files, and :class:`MultiProcessSync` pushes
the counter dict (deltas) and the gauges (``livesum``) into mmap-backed metrics every
``metrics.multiprocess_sync_s`` and before each scrape; a scrape then reads every worker's
files (``MultiProcessCollector``), so the figures are the machine's. Process metrics are
per process and left out in that mode (prometheus-client's multiprocess limitation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.values import MutexValue, ValueClass

from agentic_fast.core import metrics
from agentic_fast.core.config import CARRIERS, MetricsConfig

NAMESPACE = "agentic_fast"
_CARRIER = "(?P<carrier>" + "|".join(CARRIERS) + ")"
_PROVIDER = "(?P<provider>openai|gemini)"
_OUTCOMES = "done|timeout|unavailable|error|cancelled|aborted"
_COMPONENTS = "ws|listener|pacer|replay_guard|client_address|config|readyz|server"


@dataclass(frozen=True, slots=True)
class Rule:
    """Dotted counter names that fully match ``pattern`` go to ``family`` (without the
    namespace and ``_total``); the pattern's named groups are the labels."""

    pattern: re.Pattern[str]
    family: str
    help: str

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.pattern.groupindex)


def _rule(pattern: str, family: str, help_text: str) -> Rule:
    return Rule(re.compile(pattern), family, help_text)


#: first match wins; every rule of one family has the same labels (checked below)
RULES: tuple[Rule, ...] = (
    _rule(_CARRIER + r"\.media\.rejected\.(?P<reason>.+)", "media_rejected",
          "Carrier media-stream messages rejected, by carrier and reason."),
    _rule(_CARRIER + r"\.media\.error_frames\.(?P<code>.+)", "carrier_stream_errors",
          "Stream errors the carrier reported, by its error code."),
    _rule(_CARRIER + r"\.media\.(?P<event>.+)", "media_stream_events",
          "Media-stream connection events (connections, refusals, token errors...)."),
    _rule(_CARRIER + r"\.webhook\.rejected\.(?P<reason>.+)", "webhook_rejected",
          "Carrier webhooks rejected, by carrier and reason."),
    _rule(_CARRIER + r"\.webhook\.(?P<event>.+)", "carrier_webhooks",
          "Carrier webhooks taken, by event type, and their handling (replayed, unknown "
          "call, failed...)."),
    _rule(_CARRIER + r"\.rest\.error\.(?P<op>.+)", "carrier_api_errors",
          "Carrier REST API errors, by operation."),
    _rule(_CARRIER + r"\.stream_error\.(?P<code>.+)", "carrier_stream_errors",
          "Stream errors the carrier reported, by its error code."),
    _rule(_CARRIER + r"\.(?P<event>.+)", "carrier_events",
          "Other carrier events (webhooks, status callbacks, REST calls)."),
    _rule(_PROVIDER + r"\.reconnect\.attempts", "provider_reconnects",
          "Reconnect attempts to the model provider."),
    _rule(_PROVIDER + r"\.connect\.refused\.(?P<code>.+)", "provider_refusals",
          "Model sessions the provider refused, by its error code."),
    _rule(_PROVIDER + r"\.errors\.(?P<code>.+)", "provider_errors",
          "Error events from the model provider, by code."),
    _rule(_PROVIDER + r"\.(?P<event>.+)", "provider_events",
          "Other model provider events (sessions, drops, interrupts, tool calls...)."),
    _rule(r"calls\.created\.(?P<direction>.+)", "calls_created", "Calls created, by direction."),
    _rule(r"calls\.ended\.(?P<status>.+)", "calls_ended", "Calls ended, by final status."),
    _rule(r"calls\.refused\.(?P<reason>.+)", "calls_refused", "Calls refused, by reason."),
    _rule(r"calls\.(?P<event>.+)", "call_events", "Other call lifecycle events."),
    _rule(r"bridge\.barge_in", "barge_ins", "Barge-ins: the caller interrupted the assistant."),
    _rule(r"bridge\.(?P<event>.+)", "bridge_events",
          "Audio bridge events (drops, marks, provider failures...)."),
    _rule(r"brain\.command\.sent\.(?P<source>.+)", "agent_commands",
          "Commands sent to the agent, by source (tool, transcript)."),
    _rule(r"brain\.command\.(?P<status>" + _OUTCOMES + ")", "agent_command_results",
          "Agent commands finished, by outcome."),
    _rule(r"brain\.(?P<event>.+)", "brain_events", "ConversationBrain events."),
    _rule(r"gateway\.(?P<event>.+)", "gateway_events", "OpenClaw gateway client events."),
    _rule(r"api\.rejected\.(?P<reason>.+)", "api_rejected", "API requests rejected, by reason."),
    _rule(r"api\.store_unavailable", "api_store_unavailable",
          "API requests answered without the call store (it was unreachable)."),
    _rule(r"store\.write\.events", "store_events_written", "Call events written to the store."),
    _rule(r"store\.write\.(?:dropped|lost)\.(?P<reason>.+)", "store_events_dropped",
          "Call events the store writer gave up on, by reason (queue_full, failed, "
          "shutdown)."),
    _rule(r"store\.(?P<event>.+)", "store_events",
          "Call store events (batches written, drops, prune failures...)."),
    _rule(r"notify\.(?P<outcome>delivered|retry|dead)\.(?P<channel>.+)", "notifications",
          "Post-call notifications by channel (webhook, telegram) and outcome (delivered, "
          "retry, dead)."),
    _rule(r"notify\.(?P<event>.+)", "notify_events",
          "Post-call delivery events (webhook, Telegram)."),
    _rule(r"events\.(?P<event>.+)", "event_hub_events",
          "Live event hub (GET /calls/events): subscribers, refusals, drops, publish errors."),
    _rule(r"stream\.handover\.(?P<event>.+)", "stream_handover",
          "Media streams passed between workers (sent, adopted, orphan, foreign...)."),
    _rule(r"workers\.(?P<event>.+)", "worker_events",
          "Worker processes that died and were restarted (the supervisor's)."),
    _rule(r"control\.(?P<event>.+)", "control_events",
          "Control actions between workers (forwarded, served, failures)."),
    _rule("(?P<component>" + _COMPONENTS + r")\.(?P<event>.+)",
          "server_events", "Server plumbing events (listener, WebSocket, pacer...)."),
)
FALLBACK = Rule(re.compile(r"(?P<name>.+)"), "events", "Counters no rule maps, by dotted name.")

_families: dict[str, Rule] = {}
for _r in (*RULES, FALLBACK):
    _first = _families.setdefault(_r.family, _r)
    if _first.labels != _r.labels:  # pragma: no cover - a mistake in the table above
        raise AssertionError(f"family {_r.family}: labels {_r.labels} != {_first.labels}")

_ID_LIKE = re.compile(r"\+?\d{7,}|[0-9a-fA-F]{16,}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-"
                      r"[0-9a-fA-F]{12}")
_MAX_LABEL = 80


def scrub(value: str) -> str:
    """A label value that carries no id or phone number (and is bounded)."""
    return _ID_LIKE.sub("_id_", value)[:_MAX_LABEL]


_mapped: dict[str, tuple[Rule, tuple[str, ...]]] = {}


def classify(name: str) -> tuple[Rule, tuple[str, ...]]:
    """The rule for counter ``name`` and its label values (cached: names are few)."""
    hit = _mapped.get(name)
    if hit is None:
        for rule in (*RULES, FALLBACK):
            match = rule.pattern.fullmatch(name)
            if match is not None:
                hit = (rule, tuple(scrub(v) for v in match.groups()))
                break
        assert hit is not None  # the fallback matches every name
        if len(_mapped) < 10_000:
            _mapped[name] = hit
    return hit


def _full(family: str) -> str:
    return f"{NAMESPACE}_{family}"


def aggregate(counts: dict[str, int]) -> dict[str, dict[tuple[str, ...], int]]:
    """Counter values per family and label values (names that scrub alike add up)."""
    out: dict[str, dict[tuple[str, ...], int]] = {}
    for name, value in counts.items():
        rule, labels = classify(name)
        series = out.setdefault(rule.family, {})
        series[labels] = series.get(labels, 0) + value
    return out


class CounterCollector(Collector):
    """The counter dict, as Prometheus counter families (read at scrape time)."""

    def collect(self) -> Iterator[Metric]:
        for family, series in sorted(aggregate(metrics.snapshot()).items()):
            rule = _families[family]
            metric = CounterMetricFamily(_full(family), rule.help, labels=rule.labels)
            for labels, value in sorted(series.items()):
                metric.add_metric(list(labels), value)
            yield metric


# -- histograms -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """A histogram observed through ``metrics.observe(name, seconds[, label])``."""

    name: str
    family: str
    help: str
    buckets: tuple[float, ...]
    label: str | None = None


HISTOGRAMS: tuple[HistogramSpec, ...] = (
    HistogramSpec("first_audio", "first_audio_seconds",
                  "From the media stream's start to the first assistant audio frame sent.",
                  (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)),
    HistogramSpec("bridge_latency", "bridge_latency_seconds",
                  "Time our code spends on one audio frame (inbound: carrier frame to model "
                  "socket write; outbound: model delta to queued carrier frames); sampled, "
                  "1 in metrics.latency_sample_every.",
                  (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                   0.025), label="direction"),
    HistogramSpec("barge_in", "barge_in_reaction_seconds",
                  "From the caller-speech event to the clear sent to the carrier.",
                  (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)),
    HistogramSpec("agent_command", "agent_command_seconds",
                  "From a command sent to the agent to its answer, by outcome.",
                  (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0), label="status"),
    HistogramSpec("call_duration", "call_duration_seconds",
                  "Call duration, by final status.",
                  (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0),
                  label="status"),
)

_histograms: dict[str, Histogram] = {}


def _histogram(spec: HistogramSpec) -> Histogram:
    hist = _histograms.get(spec.name)
    if hist is None:  # built once per process, in no registry (each app's registry adds it)
        labels = (spec.label,) if spec.label else ()
        hist = Histogram(spec.family, spec.help, labels, namespace=NAMESPACE,
                         buckets=spec.buckets, registry=None)
        _histograms[spec.name] = hist
    return hist


def _observer(hist: Histogram, labelled: bool) -> Callable[[float, str], None]:
    if labelled:
        def observe(seconds: float, label: str) -> None:
            hist.labels(scrub(label or "none")).observe(seconds)
    else:
        def observe(seconds: float, label: str) -> None:
            hist.observe(seconds)
    return observe


def configure(config: MetricsConfig) -> None:
    """Histograms and audio-path sampling on (``metrics.enabled``) or off."""
    if not config.enabled:
        metrics.set_observers({}, 0)
        return
    metrics.set_observers({s.name: _observer(_histogram(s), s.label is not None)
                           for s in HISTOGRAMS}, config.latency_sample_every)


# -- gauges -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GaugeSpec:
    """A gauge read at scrape time from ``read``."""

    family: str
    help: str
    read: Callable[[], float]


class GaugeCollector(Collector):
    """Gauges of one application (live calls, queued brain events, provider sockets)."""

    def __init__(self, gauges: Iterable[GaugeSpec]) -> None:
        self.gauges = list(gauges)

    def collect(self) -> Iterator[Metric]:
        for spec in self.gauges:
            yield GaugeMetricFamily(_full(spec.family), spec.help, value=float(spec.read()))


def multiprocess_mode() -> bool:
    """prometheus-client chose its multiprocess (mmap) values: PROMETHEUS_MULTIPROC_DIR."""
    return ValueClass is not MutexValue


class _HistogramsCollector(Collector):
    """The process's histograms (those built so far)."""

    def collect(self) -> Iterator[Metric]:
        for hist in list(_histograms.values()):
            yield from hist.collect()


class MultiProcessSync:
    """Pushes this process's counters and gauges into prometheus-client's mmap files."""

    def __init__(self, gauges: Iterable[GaugeSpec]) -> None:
        self._gauges = [(Gauge(s.family, s.help, namespace=NAMESPACE, registry=None,
                               multiprocess_mode="livesum"), s.read) for s in gauges]
        self._counters: dict[str, Counter] = {}
        self._pushed: dict[str, int] = {}

    def _counter(self, rule: Rule) -> Counter:
        counter = self._counters.get(rule.family)
        if counter is None:
            counter = Counter(rule.family, rule.help, rule.labels, namespace=NAMESPACE,
                              registry=None)
            self._counters[rule.family] = counter
        return counter

    def sync(self) -> None:
        for name, value in metrics.snapshot().items():
            delta = value - self._pushed.get(name, 0)
            if delta <= 0:  # unchanged (or reset by a test: counters never go down)
                self._pushed[name] = value
                continue
            self._pushed[name] = value
            rule, labels = classify(name)
            counter = self._counter(rule)
            (counter.labels(*labels) if labels else counter).inc(delta)
        for gauge, read in self._gauges:
            gauge.set(float(read()))


def build_registry(gauges: Iterable[GaugeSpec]) -> tuple[CollectorRegistry,
                                                          MultiProcessSync | None]:
    """The registry a ``/metrics`` scrape reads, and the syncer in multiprocess mode."""
    registry = CollectorRegistry(auto_describe=False)
    gauges = list(gauges)
    if multiprocess_mode():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry, MultiProcessSync(gauges)
    registry.register(CounterCollector())
    registry.register(_HistogramsCollector())
    registry.register(GaugeCollector(gauges))
    ProcessCollector(registry=registry)  # reads /proc/self (Linux); nothing elsewhere
    return registry, None
