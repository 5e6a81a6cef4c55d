"""The cost of the metrics hot path and of rendering /metrics (node/metrics.py), beside the
alternatives: prometheus_client's own Counter objects, and optionally an older node/metrics.py
(`--before FILE`, e.g. `git show main~N:node/metrics.py > /tmp/old_metrics.py`).

Measures, as medians of several runs: one `inc` with a label (the gossip path counts every message so),
one `observe`, and one render of a node-sized registry (40 counters x 5 label values, 10 gauges, and for
the histogram-capable registries the 5 node histograms with 2 series each). Writes
bench/results/metrics.json. Figures depend on the machine; compare the columns, not across machines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from prometheus_client import CollectorRegistry, Counter, generate_latest  # noqa: E402

from node.metrics import HISTOGRAMS, Metrics  # noqa: E402

COUNTERS, LABEL_VALUES, GAUGES = 40, 5, 10


def interleaved_medians_ns(functions: dict[str, object], loops: int, runs: int) -> dict[str, float]:
    """Median over `runs` of the mean time of one call (ns) of each function. The functions take turns
    within each run, so a machine whose load changes (shared CI, other jobs) weighs on all alike."""
    samples: dict[str, list[float]] = {label: [] for label in functions}
    for _ in range(runs):
        for label, function in functions.items():
            started = time.perf_counter_ns()
            for _ in range(loops):
                function()
            samples[label].append((time.perf_counter_ns() - started) / loops)
    return {label: statistics.median(values) for label, values in samples.items()}


def populate(metrics, histograms: bool) -> None:
    for number in range(COUNTERS):
        for value in range(LABEL_VALUES):
            metrics.inc(f"counter_{number}_total", 3, reason=f"reason_{value}")
    for number in range(GAUGES):
        metrics.set(f"gauge_{number}", number)
    if histograms:
        for name in HISTOGRAMS:
            for result in ("ok", "failed"):
                for step in range(100):
                    metrics.observe(name, step / 37, result=result)


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("metrics_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(quick: bool, before: Path | None) -> dict:
    loops, runs = (20_000, 5) if quick else (100_000, 15)
    render_loops = 50 if quick else 100
    factories = {"now": Metrics}
    if before is not None:
        factories["before"] = load_module(before).Metrics
    registries = {}
    for label, factory in factories.items():
        registries[label] = factory()
        populate(registries[label], histograms=False)
    with_histograms = Metrics()
    populate(with_histograms, histograms=True)
    native_registry = CollectorRegistry()
    counters = [Counter(f"counter_{number}", "", ["reason"], registry=native_registry) for number in range(COUNTERS)]
    for counter in counters:
        for value in range(LABEL_VALUES):
            counter.labels(reason=f"reason_{value}").inc(3)
    native = "prometheus_client Counter"

    def inc_of(metrics):
        return lambda: metrics.inc("counter_7_total", reason="reason_3")

    inc = interleaved_medians_ns({**{label: inc_of(metrics) for label, metrics in registries.items()},
                                  native: lambda: counters[7].labels(reason="reason_3").inc()}, loops, runs)
    observe = interleaved_medians_ns({"now": lambda: with_histograms.observe("entry_spread_seconds", 0.3)}, loops, runs)
    render = interleaved_medians_ns({**{label: metrics.render for label, metrics in registries.items()},
                                     "now with histograms": with_histograms.render,
                                     native: lambda: generate_latest(native_registry)}, render_loops, runs)
    return {"inc_ns": inc, "observe_ns": observe, "render_us": {label: ns / 1000 for label, ns in render.items()},
            "registry": f"{COUNTERS} counters x {LABEL_VALUES} label values, {GAUGES} gauges; 'with histograms' "
                        f"adds {len(HISTOGRAMS)} histograms x 2 series", "loops": loops, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", type=Path, help="an older node/metrics.py to compare with")
    arguments = parser.parse_args()
    figures = measure(arguments.quick, arguments.before)
    print(figures["registry"])
    for what, unit in (("inc_ns", "ns"), ("observe_ns", "ns"), ("render_us", "us")):
        for label, value in figures[what].items():
            print(f"{what.rsplit('_', 1)[0]:8} {label:28} {value:10.1f} {unit}")
    results = REPOSITORY / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
