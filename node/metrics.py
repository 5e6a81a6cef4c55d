"""A small metrics registry that renders the Prometheus text exposition format (0.0.4).

Why our own and not prometheus_client: the node needs counters and gauges with labels, one render
function, no global registry (two nodes in one test process must not share counters: STYLE rule 7),
and no I/O. That is ~100 lines.

- `inc` makes a counter, `set` makes a gauge; a name is one or the other for the registry's lifetime
  (mixing them is a programmer error). Every name is rendered with the `synapse_` prefix.
- Label values may come from the network (a refusal reason, a peer id), so the number of series per
  metric is bounded (`METRICS_SERIES_PER_METRIC_MAX`): a hostile peer cannot grow the registry without bound.
  Series past the bound are dropped and counted in `synapse_metrics_series_dropped_total`.
- A lock makes `inc` safe from executor threads (fsync, sandbox) as well as from the event loop.
"""

from __future__ import annotations

import math
import re
import threading

from node.limits import METRICS_LABEL_VALUE_LENGTH_MAX, METRICS_NAMES_MAX, METRICS_SERIES_PER_METRIC_MAX

PREFIX = "synapse_"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DROPPED = "metrics_series_dropped_total"

LabelKey = tuple[tuple[str, str], ...]


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))


class Metrics:
    """Counters (`inc`) and gauges (`set`), rendered as Prometheus text with names prefixed `synapse_`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[str, str] = {}
        self._help: dict[str, str] = {}
        self._series: dict[str, dict[LabelKey, float]] = {}

    def describe(self, name: str, help_text: str) -> None:
        """Set the `# HELP` line of a metric (optional)."""
        self._check_name(name)
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

    def get(self, name: str, **labels: str) -> float:
        """The current value of one series (0 if it was never touched)."""
        with self._lock:
            return self._series.get(name, {}).get(self._label_key(labels), 0.0)

    def total(self, name: str) -> float:
        """The sum over every series of a metric (e.g. refusals of all reasons)."""
        with self._lock:
            return sum(self._series.get(name, {}).values())

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []
            for name in sorted(self._series):
                full_name = PREFIX + name
                if name in self._help:
                    lines.append(f"# HELP {full_name} {_escape_help(self._help[name])}")
                lines.append(f"# TYPE {full_name} {self._types[name]}")
                for label_key, value in sorted(self._series[name].items()):
                    lines.append(f"{full_name}{self._render_labels(label_key)} {_format_value(value)}")
            return "\n".join(lines) + "\n" if lines else ""

    # --- internals ----------------------------------------------------------------------------

    def _update(self, name: str, kind: str, value: float, labels: dict[str, str], *, add: bool) -> None:
        self._check_name(name)
        label_key = self._label_key(labels)
        with self._lock:
            known_kind = self._types.get(name)
            if known_kind is not None and known_kind != kind:
                raise ValueError(f"metric {name} is a {known_kind}; it cannot also be a {kind}")
            if known_kind is None and len(self._types) >= METRICS_NAMES_MAX:
                self._count_dropped()
                return
            series = self._series.setdefault(name, {})
            self._types[name] = kind
            if label_key not in series and len(series) >= METRICS_SERIES_PER_METRIC_MAX:
                self._count_dropped()
                return
            series[label_key] = (series.get(label_key, 0.0) + value) if add else float(value)

    def _count_dropped(self) -> None:
        # Called with the lock held.
        self._types.setdefault(_DROPPED, "counter")
        dropped = self._series.setdefault(_DROPPED, {})
        dropped[()] = dropped.get((), 0.0) + 1

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")

    @staticmethod
    def _label_key(labels: dict[str, str]) -> LabelKey:
        for label_name in labels:
            if not _LABEL_NAME.match(label_name) or label_name.startswith("__"):
                raise ValueError(f"invalid label name {label_name!r}")
        return tuple(sorted((key, str(value)[:METRICS_LABEL_VALUE_LENGTH_MAX]) for key, value in labels.items()))

    @staticmethod
    def _render_labels(label_key: LabelKey) -> str:
        if not label_key:
            return ""
        inner = ",".join(f'{key}="{_escape_label_value(value)}"' for key, value in label_key)
        return "{" + inner + "}"
