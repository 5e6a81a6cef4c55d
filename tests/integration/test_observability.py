"""Observability on real node processes: after an upgrade executes on a 3-node cluster, each node's
/metrics, read with prometheus_client's parser as Prometheus would, holds the upgrade histograms with
counts and sane sums; the Grafana dashboard queries only names a real node exposes; and the scrape
config `synapse cluster prometheus-config` prints (run as a user runs it) names exactly the cluster's
nodes, each of which answers its scrape."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cluster.local import NodeApi
from node.metrics import CONTENT_TYPE
from tests.metrics_text import exposed_names, families, load_dashboard, queried_metric_names
from tests.polling import poll_until
from tests.wasm_build import REPOSITORY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WITHIN_S = 60.0
NODES = 3
FEATURE_FLAG = REPOSITORY / "examples" / "wat" / "feature_flag.wat"
UPGRADE_HISTOGRAMS = ("vote_to_ratified_seconds", "ratified_to_executed_seconds", "entry_spread_seconds",
                      "package_fetch_seconds", "sandbox_run_seconds")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def histogram_of(text: str, name: str) -> dict[str, float]:
    """{"count", "sum", "inf"} summed over the series of one histogram, checked for consistency:
    cumulative buckets never decrease and the +Inf bucket equals the count, per series."""
    family = families(text)["synapse_" + name]
    assert family.type == "histogram", family.type
    per_series: dict[tuple, dict[str, list | float]] = {}
    for sample in family.samples:
        labels = tuple(sorted((key, value) for key, value in sample.labels.items() if key != "le"))
        series = per_series.setdefault(labels, {"buckets": []})
        if sample.name.endswith("_bucket"):
            series["buckets"].append((float(sample.labels["le"]), sample.value))
        else:
            series[sample.name.rsplit("_", 1)[1]] = sample.value
    for labels, series in per_series.items():
        values = [value for _, value in sorted(series["buckets"])]
        assert values == sorted(values), (name, labels, values)
        assert sorted(series["buckets"])[-1] == (math.inf, series["count"]), (name, labels)
    return {"count": sum(series["count"] for series in per_series.values()),
            "sum": sum(series["sum"] for series in per_series.values())}


def executed_scrape(api: NodeApi) -> str | None:
    """The node's /metrics once its ratified -> executed histogram has counted the execution."""
    response = api.get("/metrics")
    assert response.status == 200, response.text
    return response.text if histogram_of(response.text, "ratified_to_executed_seconds")["count"] else None


def synapse(*arguments: str, tmp: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "TMPDIR": str(tmp)}
    environment.pop("SYNAPSE_CLUSTER_DIR", None)
    return subprocess.run([sys.executable, "-c", "from cluster.cli import main; main()", *arguments], cwd=REPOSITORY,
                          env=environment, capture_output=True, text=True, timeout=60)


def test_upgrade_histograms_dashboard_names_and_scrape_config_on_a_real_cluster(tmp_path, synapse_cluster, package_server):
    started_s = time.monotonic()
    network = synapse_cluster(nodes=NODES, validators=NODES, governance={"voting_period_ms": 60_000},
                              limits={"sandbox_fuel": 50_000_000})
    proposal_id = network.propose(package_server.add_file(FEATURE_FLAG), version="1.2.0")
    network.vote(proposal_id, "approval", by=[0, 1])     # 2 of the 3 validators' approvals decide
    network.wait_executed(proposal_id)
    texts = []
    for index in range(NODES):
        # The executor observes right after its report is written: poll the scrape, as Prometheus would.
        texts.append(poll_until(lambda: executed_scrape(network.api(index)), what=f"ratified_to_executed on node {index}",
                                timeout_s=WITHIN_S))
    elapsed_s = time.monotonic() - started_s

    for index, text in enumerate(texts):
        seen = {name: histogram_of(text, name) for name in UPGRADE_HISTOGRAMS}
        assert seen["ratified_to_executed_seconds"]["count"] == 1, (index, seen)     # one execution per node
        assert seen["vote_to_ratified_seconds"]["count"] == 1, (index, seen)         # one certified execution
        assert seen["vote_to_ratified_seconds"]["sum"] > 0, "Raft close, ratify and certify take time"
        assert seen["package_fetch_seconds"]["count"] >= 1 and seen["sandbox_run_seconds"]["count"] >= 1, seen
        assert seen["entry_spread_seconds"]["count"] >= NODES - 1, "the other nodes' proposal, votes, closes, certificates"
        for name, figures in seen.items():
            assert 0 <= figures["sum"] <= figures["count"] * elapsed_s, (index, name, figures, elapsed_s)
        assert 'result="ok"' in text and 'action="upgrade"' in text

    # The dashboard cannot drift: every name it queries is on a real node's /metrics.
    assert queried_metric_names(load_dashboard()) - exposed_names(texts[0]) == set()

    # The scrape config, as a user prints it, names exactly the cluster file's nodes, each scrapable.
    printed = synapse("cluster", "prometheus-config", "--data-dir", str(network.data_dir), tmp=tmp_path)
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert "no token" in printed.stdout, "the config says why it sends no token"
    (job,) = config["scrape_configs"]
    cluster_file = json.loads((network.data_dir / "cluster.json").read_text())
    expected = {node["api_url"].removeprefix("http://"): (f"node-{node['index'] + 1}", node["node_id"]) for node in cluster_file["nodes"]}
    assert {target: (group["labels"]["node"], group["labels"]["node_id"])
            for group in job["static_configs"] for target in group["targets"]} == expected
    assert {group["labels"]["role"] for group in job["static_configs"]} == {"validator"}
    for target in expected:
        with _NO_PROXY.open(f"{job['scheme']}://{target}{job['metrics_path']}", timeout=10) as scraped:
            assert scraped.headers["Content-Type"] == CONTENT_TYPE
            assert "synapse_vote_to_ratified_seconds" in families(scraped.read().decode())
