"""Reading GET /metrics as a scraper does (prometheus_client's parser), and the metric names a
Grafana dashboard queries: shared by the unit and integration tests of the dashboard and histograms."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "synapse-dashboard.json"
_METRIC_NAME = re.compile(r"\bsynapse_[a-zA-Z0-9_:]+")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "untyped": ("",)}


def families(text: str) -> dict:
    """Family name -> family (the parser raises on anything a scraper could not read)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def exposed_names(text: str) -> set[str]:
    """Every series name a query may use against this exposition: each sample's name, and the names a
    declared family will have once it has samples (a counter's `_total`, a histogram's three)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression of every panel (rows nest panels)."""
    expressions = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            expressions.extend(target["expr"] for target in inner.get("targets", []))
    return expressions


def queried_metric_names(dashboard: dict) -> set[str]:
    return {name for expression in dashboard_expressions(dashboard) for name in _METRIC_NAME.findall(expression)}


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one series `name{labels}` (exact label set), or None when it is absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None
