"""The metrics registry renders valid Prometheus text and stays bounded whatever labels it is fed."""

import re

import pytest

from node.metrics import SERIES_PER_METRIC_MAX, Metrics

SAMPLE = re.compile(r'^synapse_[a-zA-Z0-9_:]+(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? \S+$')


def test_counters_and_gauges_render_in_the_text_format():
    metrics = Metrics()
    metrics.inc("entries_refused_total", reason="bad_signature")
    metrics.inc("entries_refused_total", 2, reason="bad_signature")
    metrics.inc("entries_refused_total", reason="oversized")
    metrics.set("peers_up", 3)
    metrics.set("ratio", 0.25)
    metrics.describe("peers_up", "peers whose last call succeeded")
    text = metrics.render()
    assert "# TYPE synapse_entries_refused_total counter" in text
    assert 'synapse_entries_refused_total{reason="bad_signature"} 3' in text
    assert 'synapse_entries_refused_total{reason="oversized"} 1' in text
    assert "# HELP synapse_peers_up peers whose last call succeeded" in text
    assert "# TYPE synapse_peers_up gauge\nsynapse_peers_up 3" in text
    assert "synapse_ratio 0.25" in text
    assert text.endswith("\n")
    assert metrics.get("entries_refused_total", reason="bad_signature") == 3
    assert metrics.total("entries_refused_total") == 4
    for line in text.splitlines():
        assert line.startswith("#") or SAMPLE.match(line), line


def test_label_values_are_escaped():
    metrics = Metrics()
    metrics.inc("x_total", reason='a"b\\c\nd')
    assert 'synapse_x_total{reason="a\\"b\\\\c\\nd"} 1' in metrics.render()


def test_series_per_metric_are_bounded():
    metrics = Metrics()
    for number in range(SERIES_PER_METRIC_MAX + 50):
        metrics.inc("refused_total", reason=f"r{number}")
    assert metrics.render().count("synapse_refused_total{") == SERIES_PER_METRIC_MAX
    assert metrics.get("metrics_series_dropped_total") == 50


def test_programmer_errors_are_refused():
    metrics = Metrics()
    metrics.inc("a_total")
    with pytest.raises(ValueError, match="is a counter"):
        metrics.set("a_total", 1)
    with pytest.raises(ValueError, match="can only go up"):
        metrics.inc("a_total", -1)
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.inc("bad name")
    with pytest.raises(ValueError, match="invalid label name"):
        metrics.inc("b_total", **{"__reserved": "x"})


def test_an_empty_registry_renders_nothing():
    assert Metrics().render() == ""
