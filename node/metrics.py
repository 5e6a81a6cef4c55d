"""The node's metrics: counters, gauges and histograms with labels, exposed through prometheus_client.

Why it works as it does:
- prometheus_client does the exposition: each node owns one `CollectorRegistry` (no global registry:
  two nodes in one test process must not share counters, STYLE rule 7) holding one collector, and
  /metrics is `generate_latest(registry)` with its content type. What Prometheus reads is therefore
  what prometheus_client writes, and tests read it back with prometheus_client's parser.
- The series themselves live here, not in prometheus_client's `Counter`/`Gauge`/`Histogram` objects,
  for three reasons: label values may come from the network (a refusal reason, a message type), and
  `Counter.labels(...)` creates a child for ANY value, without bound; those classes add a `_created`
  series per child unless a process-wide switch is flipped; and they need every label name and the
  help text at construction, where our call sites name labels where they count. So series are bounded
  per metric (`METRICS_SERIES_PER_METRIC_MAX`, names by `METRICS_NAMES_MAX`): a hostile peer cannot
  grow the registry. A series past the bound is dropped and counted in
  `synapse_metrics_series_dropped_total`. An `inc` stays one dict update under a lock.
- `inc` makes a counter (its name must end in `_total`, as the text format writes it), `set` a gauge,
  `observe` a histogram; a name is one kind for the registry's lifetime (mixing is a programmer error).
  Every name is exposed with the `synapse_` prefix.
- Histograms are declared once, in `HISTOGRAMS` (buckets in seconds, fixed: Prometheus can only add
  up buckets that are the same on every node). Each bucket list spans from what a healthy loopback
  cluster shows up to the timeout that ends the operation, so p50 and p95 stay inside the buckets in
  both good and bad weather. The clock the callers use is the node's wall clock in milliseconds: a
  duration under 1 ms is observed as 0 and lands in the first bucket.
- `Metrics.for_node()` declares the histograms and the refusal counters up front, so a dashboard (and
  the test that checks it against a real node) finds every family before the first event.
- A lock makes every call safe from executor threads (fsync, sandbox) as well as from the event loop.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from node.limits import METRICS_LABEL_VALUE_LENGTH_MAX, METRICS_NAMES_MAX, METRICS_SERIES_PER_METRIC_MAX

PREFIX = "synapse_"
# The content type prometheus_client pairs with generate_latest (the text format, 0.0.4) when a scraper
# asks for nothing in particular; asked this way, it is right for every prometheus_client version.
CONTENT_TYPE = choose_encoder("")[1]
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DROPPED = "metrics_series_dropped_total"
_RESERVED_HISTOGRAM_LABEL = "le"
# Label names our call sites use, valid by construction: the hot path skips the pattern for them.
_COMMON_LABEL_NAMES = frozenset({"type", "reason", "kind", "status", "result", "action", "this_node"})

LabelKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramSpec:
    help_text: str
    buckets_s: tuple[float, ...]     # upper bounds in seconds, ascending; +Inf is implicit

    def __post_init__(self) -> None:
        if not self.buckets_s or list(self.buckets_s) != sorted(set(self.buckets_s)) or self.buckets_s[0] <= 0:
            raise ValueError(f"histogram buckets must be positive, distinct and ascending, got {self.buckets_s}")


HISTOGRAMS: Mapping[str, HistogramSpec] = {
    # Deciding vote's HLC time (or the voting deadline, when the deadline decided) -> this node folds a
    # valid EXECUTE_UPGRADE (the majority certificate). Raft close, ratify and certify plus two gossip hops.
    "vote_to_ratified_seconds": HistogramSpec(
        help_text="Seconds from the deciding vote (its HLC time, or the voting deadline) to this node seeing the "
                  "ratification certificate (a valid EXECUTE_UPGRADE); every node, once per certified execution",
        buckets_s=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)),
    # This node sees the certificate -> its verdict is reported; download + sandbox + commit, at most
    # the download timeout (300 s) plus the run, larger when a local failure is retried.
    "ratified_to_executed_seconds": HistogramSpec(
        help_text="Seconds from this node seeing a valid EXECUTE_UPGRADE to this node reporting its execution "
                  "verdict (EXECUTION_REPORT), by action",
        buckets_s=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)),
    # Another member's entry: its HLC time of creation -> visible here (admitted, parents present).
    # Gossip rounds are ~1 s; the author's clock may be off by up to the admitted clock skew.
    "entry_spread_seconds": HistogramSpec(
        help_text="Seconds from an entry's creation (its HLC wall time, author's clock) to it becoming visible "
                  "on this node; entries of other members received live",
        buckets_s=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
    # Cache hit (sub-ms) to a slow gateway near the 300 s download timeout.
    "package_fetch_seconds": HistogramSpec(
        help_text="Seconds to fetch an upgrade package (the node's cache or a download), executions and dry runs, by result",
        buckets_s=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
    # Compile (cached after the first run) and run under fuel; the sandbox wall timeout is seconds.
    "sandbox_run_seconds": HistogramSpec(
        help_text="Seconds of one sandbox run of an upgrade package (compile or cache load, run, output), executions "
                  "and dry runs, by result",
        buckets_s=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
}

# Counters a dashboard queries before anything was refused: declared (no series yet) by for_node().
REFUSAL_COUNTERS: Mapping[str, str] = {
    "entries_refused_total": "Entries refused at the door (signature, author, parents, size, ...), by reason",
    "execute_refused_total": "EXECUTE_UPGRADE entries refused (no valid majority certificate), by reason",
    "gossip_requests_refused_total": "Gossip requests refused (inbox full, too large, too many from one source), by reason",
    "gossip_stream_fallbacks_total": "Gossip streams a peer would not open (404: an older node; 429/503: no free slot), "
                                     "by status: calls to it go as POSTs for a while",
    "gossip_stream_hellos_refused_total": "Signed hellos of gossip streams refused (not a member, wrong node, stale, "
                                          "replayed, bad signature), by reason: the stream only carries its "
                                          "opener's calls",
    "log_load_refused_total": "Stored entries refused when the log file was loaded at start, by reason",
    _DROPPED: "Series not recorded because their metric already had METRICS_SERIES_PER_METRIC_MAX series",
}


class _Histogram:
    __slots__ = ("bucket_counts", "count", "sum")

    def __init__(self, bucket_total: int) -> None:
        self.bucket_counts = [0] * bucket_total     # per bucket, not cumulative; the last is +Inf
        self.count = 0
        self.sum = 0.0


class Metrics:
    """Counters (`inc`), gauges (`set`) and histograms (`observe`) in a registry of their own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[str, str] = {}
        self._help: dict[str, str] = {}
        self._series: dict[str, dict[LabelKey, float]] = {}
        self._histograms: dict[str, dict[LabelKey, _Histogram]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    @classmethod
    def for_node(cls) -> Metrics:
        """A node's registry: every histogram and refusal counter declared, so each family is listed
        from the first scrape."""
        metrics = cls()
        for name in HISTOGRAMS:
            metrics.declare(name, "histogram")
        for name, help_text in REFUSAL_COUNTERS.items():
            metrics.declare(name, "counter", help_text)
        return metrics

    def declare(self, name: str, kind: str, help_text: str | None = None) -> None:
        """Make a metric known (listed, without series) before its first event."""
        self._check_name(name, kind)
        with self._lock:
            self._claim(name, kind)
            if help_text is not None:
                self._help[name] = help_text

    def describe(self, name: str, help_text: str) -> None:
        """Set the `# HELP` line of a metric (optional)."""
        self._check_name(name, None)
        with self._lock:
            self._help[name] = help_text

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        """Add `value` (>= 0) to a counter."""
        if value < 0:
            raise ValueError(f"counter {name} can only go up, got inc({value})")
        self._update(name, "counter", value, labels, add=True)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge to `value`."""
        self._update(name, "gauge", value, labels, add=False)

    def observe(self, name: str, value_s: float, **labels: str) -> None:
        """Count one duration (seconds) in a histogram of `HISTOGRAMS`. A negative duration (another
        node's clock ahead of ours) counts as 0."""
        self._check_name(name, "histogram")
        if math.isnan(value_s):
            raise ValueError(f"histogram {name} cannot observe NaN")
        value_s = max(0.0, float(value_s))
        label_key = self._label_key(labels, histogram=True)
        buckets_s = HISTOGRAMS[name].buckets_s
        index = bisect.bisect_left(buckets_s, value_s)     # first bucket whose bound is >= value (le)
        with self._lock:
            if not self._claim(name, "histogram"):
                return
            series = self._histograms[name]
            histogram = series.get(label_key)
            if histogram is None:
                if len(series) >= METRICS_SERIES_PER_METRIC_MAX:
                    self._count_dropped()
                    return
                histogram = series[label_key] = _Histogram(len(buckets_s) + 1)
            histogram.bucket_counts[index] += 1
            histogram.count += 1
            histogram.sum += value_s

    def get(self, name: str, **labels: str) -> float:
        """The current value of one counter or gauge series (0 if it was never touched)."""
        with self._lock:
            return self._series.get(name, {}).get(self._label_key(labels), 0.0)

    def total(self, name: str) -> float:
        """The sum over every series of a counter or gauge (e.g. refusals of all reasons)."""
        with self._lock:
            return sum(self._series.get(name, {}).values())

    def histogram(self, name: str, **labels: str) -> tuple[int, float]:
        """(count, sum) of one histogram series ((0, 0.0) if nothing was observed)."""
        with self._lock:
            histogram = self._histograms.get(name, {}).get(self._label_key(labels, histogram=True))
            return (0, 0.0) if histogram is None else (histogram.count, histogram.sum)

    def render(self) -> str:
        """The Prometheus text format, as prometheus_client writes it."""
        return self.render_bytes().decode()

    def render_bytes(self) -> bytes:
        """The body of GET /metrics: `generate_latest` over this registry (UTF-8)."""
        return generate_latest(self.registry)

    # --- internals ----------------------------------------------------------------------------

    def _claim(self, name: str, kind: str) -> bool:
        """Register `name` as `kind` (lock held). False when the registry is full (counted)."""
        known_kind = self._types.get(name)
        if known_kind == kind:
            return True
        if known_kind is not None:
            raise ValueError(f"metric {name} is a {known_kind}; it cannot also be a {kind}")
        if len(self._types) >= METRICS_NAMES_MAX:
            self._count_dropped()
            return False
        self._types[name] = kind
        if kind == "histogram":
            self._histograms[name] = {}
        else:
            self._series[name] = {}
        return True

    def _update(self, name: str, kind: str, value: float, labels: dict[str, str], *, add: bool) -> None:
        if self._types.get(name) != kind:     # a known name was checked when it was claimed (the hot path skips it)
            self._check_name(name, kind)
        label_key = self._label_key(labels)
        with self._lock:
            if not self._claim(name, kind):
                return
            series = self._series[name]
            if label_key not in series and len(series) >= METRICS_SERIES_PER_METRIC_MAX:
                self._count_dropped()
                return
            series[label_key] = (series.get(label_key, 0.0) + value) if add else float(value)

    def _count_dropped(self) -> None:
        # Called with the lock held; the dropped counter is exempt from the names bound.
        self._types.setdefault(_DROPPED, "counter")
        dropped = self._series.setdefault(_DROPPED, {})
        dropped[()] = dropped.get((), 0.0) + 1

    def snapshot(self) -> Iterator[Metric]:
        """prometheus_client metric families of every metric, sorted by name (the collector's `collect`)."""
        with self._lock:
            families = [self._family(name) for name in sorted(self._types)]
        return iter(families)

    def _family(self, name: str) -> Metric:
        # Called with the lock held.
        kind, full_name = self._types[name], PREFIX + name
        help_text = self._help.get(name, HISTOGRAMS[name].help_text if name in HISTOGRAMS else "")
        if kind == "counter":
            family = Metric(full_name.removesuffix("_total"), help_text, "counter")
            for label_key, value in sorted(self._series[name].items()):
                family.add_sample(full_name, dict(label_key), value)
        elif kind == "gauge":
            family = Metric(full_name, help_text, "gauge")
            for label_key, value in sorted(self._series[name].items()):
                family.add_sample(full_name, dict(label_key), value)
        else:
            family = Metric(full_name, help_text, "histogram")
            bounds = [*HISTOGRAMS[name].buckets_s, math.inf]
            for label_key, histogram in sorted(self._histograms[name].items()):
                labels, cumulative = dict(label_key), 0
                for bound, bucket_count in zip(bounds, histogram.bucket_counts):
                    cumulative += bucket_count
                    family.add_sample(full_name + "_bucket", {**labels, "le": _bound_text(bound)}, cumulative)
                family.add_sample(full_name + "_count", labels, histogram.count)
                family.add_sample(full_name + "_sum", labels, histogram.sum)
        return family

    @staticmethod
    def _check_name(name: str, kind: str | None) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end in _total (the text format names counters so)")
        if kind == "histogram" and name not in HISTOGRAMS:
            raise ValueError(f"histogram {name!r} is not declared in node/metrics.py HISTOGRAMS")

    @staticmethod
    def _label_key(labels: dict[str, str], *, histogram: bool = False) -> LabelKey:
        if not labels:
            return ()
        for label_name in labels:
            if label_name not in _COMMON_LABEL_NAMES and (not _LABEL_NAME.match(label_name) or label_name.startswith("__") or (
                    histogram and label_name == _RESERVED_HISTOGRAM_LABEL)):
                raise ValueError(f"invalid label name {label_name!r}")
        return tuple(sorted((key, _label_value(value)) for key, value in labels.items()))


def _label_value(value: object) -> str:
    """At most METRICS_LABEL_VALUE_LENGTH_MAX characters of valid UTF-8: a lone surrogate from the
    network must not make the whole exposition fail to encode."""
    text = str(value)[:METRICS_LABEL_VALUE_LENGTH_MAX]
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


class _Collector:
    """The one collector of a node's registry: hands prometheus_client a snapshot of the series."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.snapshot()
