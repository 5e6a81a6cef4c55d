"""The Grafana dashboard in docs/grafana is valid JSON that Grafana can import, and queries only metrics
the node declares (tests/integration/test_observability.py checks the same against a real node's
/metrics after an upgrade)."""

import copy
import json
import re

from node.metrics import HISTOGRAMS, REFUSAL_COUNTERS, Metrics
from tests.metrics_text import DASHBOARD, dashboard_expressions, exposed_names, load_dashboard, queried_metric_names


def missing_names(dashboard: dict, metrics_text: str) -> set[str]:
    return queried_metric_names(dashboard) - exposed_names(metrics_text)


def test_the_dashboard_is_valid_json_with_what_grafana_needs():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "window"}
    panel_ids = []
    for panel in dashboard["panels"]:
        panel_ids.append(panel["id"])
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert all(variable in variables for variable in re.findall(r"\$(\w+)", target["expr"])), target["expr"]
    assert len(panel_ids) == len(set(panel_ids))


def test_the_dashboard_shows_p50_and_p95_of_every_histogram_and_every_refusal_counter():
    expressions = dashboard_expressions(load_dashboard())
    for name in HISTOGRAMS:
        for quantile in ("0.5", "0.95"):
            assert any(f"histogram_quantile({quantile}," in expression and f"synapse_{name}_bucket" in expression
                       for expression in expressions), (name, quantile)
    assert {f"synapse_{name}" for name in REFUSAL_COUNTERS} <= queried_metric_names(load_dashboard())


def test_every_queried_metric_is_declared_by_a_node_registry():
    assert missing_names(load_dashboard(), Metrics.for_node().render()) == set()


def test_the_check_finds_a_misspelled_metric():
    dashboard = copy.deepcopy(load_dashboard())
    target = dashboard["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace("synapse_vote_to_ratified_seconds_bucket", "synapse_vote_to_ratify_seconds_bucket")
    assert missing_names(dashboard, Metrics.for_node().render()) == {"synapse_vote_to_ratify_seconds_bucket"}
