"""The metrics registry renders valid Prometheus text and stays bounded whatever labels it is fed.

The text is read back with prometheus_client's own parser (what a scraper does), not with a regex of
ours: a rendering both sides of a test agree on could still be unreadable to Prometheus."""

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.limits import METRICS_SERIES_PER_METRIC_MAX
from node.metrics import Metrics


def families(text: str) -> dict:
    """Family name -> family, as prometheus_client parses the text (it raises on anything invalid)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_counters_and_gauges_render_in_the_text_format():
    metrics = Metrics()
    metrics.inc("entries_refused_total", reason="bad_signature")
    metrics.inc("entries_refused_total", 2, reason="bad_signature")
    metrics.inc("entries_refused_total", reason="oversized")
    metrics.set("peers_up", 3)
    metrics.set("ratio", 0.25)
    metrics.describe("peers_up", "peers whose last call succeeded")
    text = metrics.render()
    parsed = families(text)
    assert {name: family.type for name, family in parsed.items()} == {
        "synapse_entries_refused": "counter", "synapse_peers_up": "gauge", "synapse_ratio": "gauge"}
    assert parsed["synapse_peers_up"].documentation == "peers whose last call succeeded"
    assert samples(text) == {
        ("synapse_entries_refused_total", frozenset({("reason", "bad_signature")})): 3,
        ("synapse_entries_refused_total", frozenset({("reason", "oversized")})): 1,
        ("synapse_peers_up", frozenset()): 3,
        ("synapse_ratio", frozenset()): 0.25,
    }
    assert text.endswith("\n")
    assert metrics.get("entries_refused_total", reason="bad_signature") == 3
    assert metrics.total("entries_refused_total") == 4


def test_label_values_and_help_text_are_escaped():
    metrics = Metrics()
    metrics.inc("x_total", reason='a"b\\c\nd')
    metrics.describe("x_total", "two\nlines and a \\ backslash")
    text = metrics.render()
    assert samples(text) == {("synapse_x_total", frozenset({("reason", 'a"b\\c\nd')})): 1}
    assert families(text)["synapse_x"].documentation == "two\nlines and a \\ backslash"


def test_special_and_large_values_parse():
    metrics = Metrics()
    metrics.set("not_a_number", math.nan)
    metrics.set("up_forever", math.inf)
    metrics.set("down_forever", -math.inf)
    metrics.set("big", 2**62)
    metrics.set("tiny", 1e-9)
    parsed = samples(metrics.render())
    assert math.isnan(parsed[("synapse_not_a_number", frozenset())])
    assert parsed[("synapse_up_forever", frozenset())] == math.inf
    assert parsed[("synapse_down_forever", frozenset())] == -math.inf
    assert parsed[("synapse_big", frozenset())] == 2**62 and parsed[("synapse_tiny", frozenset())] == 1e-9


def test_series_per_metric_are_bounded():
    metrics = Metrics()
    for number in range(METRICS_SERIES_PER_METRIC_MAX + 50):
        metrics.inc("refused_total", reason=f"r{number}")
    parsed = families(metrics.render())
    assert len(parsed["synapse_refused"].samples) == METRICS_SERIES_PER_METRIC_MAX
    assert metrics.get("metrics_series_dropped_total") == 50
    assert parsed["synapse_metrics_series_dropped"].samples[0].value == 50


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
    assert families("") == {}
