"""The metrics registry renders valid Prometheus text (through prometheus_client) and stays bounded
whatever labels it is fed.

The text is read back with prometheus_client's own parser (what a scraper does), not with a regex of
ours: a rendering both sides of a test agree on could still be unreadable to Prometheus."""

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.limits import METRICS_LABEL_VALUE_LENGTH_MAX, METRICS_NAMES_MAX, METRICS_SERIES_PER_METRIC_MAX
from node.metrics import HISTOGRAMS, REFUSAL_COUNTERS, Metrics


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


# --- prometheus_client: registries, histograms, hostile labels ----------------------------------


def test_two_registries_share_nothing():
    first, second = Metrics(), Metrics()
    first.inc("a_total")
    first.observe("sandbox_run_seconds", 0.5)
    assert first.registry is not second.registry
    assert second.render() == "" and second.get("a_total") == 0 and second.histogram("sandbox_run_seconds") == (0, 0.0)


def test_a_histogram_renders_cumulative_buckets_count_and_sum():
    metrics = Metrics()
    bounds = HISTOGRAMS["package_fetch_seconds"].buckets_s
    for value_s in (0.0, 0.0005, bounds[1], bounds[1] + 1e-6, 10_000.0, -3.0):     # -3: a clock ahead counts as 0
        metrics.observe("package_fetch_seconds", value_s, result="ok")
    family = families(metrics.render())["synapse_package_fetch_seconds"]
    assert family.type == "histogram"
    buckets = {float(sample.labels["le"]): sample.value for sample in family.samples if sample.name.endswith("_bucket")}
    assert list(buckets) == [*bounds, math.inf]
    assert buckets[bounds[0]] == 3 and buckets[bounds[1]] == 4 and buckets[bounds[2]] == 5 and buckets[math.inf] == 6
    assert list(buckets.values()) == sorted(buckets.values())
    by_name = {sample.name: sample.value for sample in family.samples if not sample.name.endswith("_bucket")}
    assert by_name["synapse_package_fetch_seconds_count"] == 6
    assert by_name["synapse_package_fetch_seconds_sum"] == pytest.approx(0.0005 + 2 * bounds[1] + 1e-6 + 10_000.0)
    assert metrics.histogram("package_fetch_seconds", result="ok") == (6, pytest.approx(10_000.0105 + 1e-6, rel=1e-6))


def test_a_node_registry_lists_every_histogram_and_refusal_counter_before_any_event():
    parsed = families(Metrics.for_node().render())
    for name in HISTOGRAMS:
        assert parsed["synapse_" + name].type == "histogram"
    for name in REFUSAL_COUNTERS:
        family = parsed["synapse_" + name.removesuffix("_total")]
        assert family.type == "counter" and family.samples == []


def test_histogram_misuse_is_refused():
    metrics = Metrics()
    with pytest.raises(ValueError, match="not declared"):
        metrics.observe("made_up_seconds", 1)
    with pytest.raises(ValueError, match="invalid label name"):
        metrics.observe("sandbox_run_seconds", 1, le="5")
    with pytest.raises(ValueError, match="NaN"):
        metrics.observe("sandbox_run_seconds", math.nan)
    with pytest.raises(ValueError, match="must end in _total"):
        metrics.inc("requests")


def test_hostile_label_values_cannot_grow_the_registry_or_break_the_text():
    """What a hostile peer can send as a label value: many distinct values, huge ones, quotes, newlines,
    lone surrogates. The series stay bounded per metric, drops are counted, and the text still parses."""
    metrics = Metrics()
    hostile = ['x"} 1\nsynapse_fake 9', "\\", "\ud800lone", "é" * 10_000, ""]
    for number in range(3 * METRICS_SERIES_PER_METRIC_MAX):
        metrics.inc("gossip_messages_received_total", type=f"t{number}")
        metrics.observe("entry_spread_seconds", 0.1, peer=f"p{number}")
    for value in hostile:
        metrics.inc("entries_refused_total", reason=value)
    text = metrics.render()
    parsed = families(text)
    assert len(parsed["synapse_gossip_messages_received"].samples) == METRICS_SERIES_PER_METRIC_MAX
    spread = parsed["synapse_entry_spread_seconds"].samples
    assert len({tuple(sorted(sample.labels.items())) for sample in spread if sample.name.endswith("_count")}) == \
        METRICS_SERIES_PER_METRIC_MAX
    assert metrics.get("metrics_series_dropped_total") == 2 * 2 * METRICS_SERIES_PER_METRIC_MAX
    reasons = {sample.labels["reason"] for sample in parsed["synapse_entries_refused"].samples}
    assert 'x"} 1\nsynapse_fake 9' in reasons and "\\" in reasons and "" in reasons
    assert "synapse_fake" not in parsed, "a label value injected a sample"
    assert "é" * METRICS_LABEL_VALUE_LENGTH_MAX in reasons, "a long value is cut to the bound"
    assert all(len(reason) <= METRICS_LABEL_VALUE_LENGTH_MAX for reason in reasons)
    assert "?lone" in reasons, "a lone surrogate is replaced, and the text still encodes"


def test_the_number_of_metric_names_is_bounded():
    metrics = Metrics()
    for number in range(METRICS_NAMES_MAX + 7):
        metrics.set(f"gauge_{number}", 1)
    assert len(families(metrics.render())) == METRICS_NAMES_MAX + 1      # + synapse_metrics_series_dropped
    assert metrics.get("metrics_series_dropped_total") == 7


def test_the_bound_check_would_fail_without_the_bound(monkeypatch):
    """The bound test above can fail: with the bound lifted, the same feed grows the registry."""
    monkeypatch.setattr("node.metrics.METRICS_SERIES_PER_METRIC_MAX", 10 ** 9)
    metrics = Metrics()
    for number in range(METRICS_SERIES_PER_METRIC_MAX + 5):
        metrics.inc("gossip_messages_received_total", type=f"t{number}")
    assert len(families(metrics.render())["synapse_gossip_messages_received"].samples) > METRICS_SERIES_PER_METRIC_MAX
