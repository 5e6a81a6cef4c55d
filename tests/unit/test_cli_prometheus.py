"""`synapse cluster prometheus-config`'s pure part: the scrape config of a cluster file, printed as YAML
that a YAML parser (as Prometheus uses) reads back to the same document, whatever the strings hold;
a cluster file with an unusable node is refused, naming the node."""

import pytest
import yaml

from cluster.cli_prometheus import config_text, scrape_config, to_yaml
from node.errors import ClusterError


def node(index: int, url: str, validator: bool = True) -> dict:
    return {"index": index, "node_id": f"id-{index}", "api_url": url, "validator": validator,
            "token_file": f"/d/node-{index}/api_token"}


def test_every_node_is_a_target_with_its_labels(tmp_path):
    document = {"nodes": [node(0, "http://127.12.7.2:7000"), node(1, "http://127.12.7.3:7000/", validator=False)]}
    parsed = yaml.safe_load(config_text(document, tmp_path))
    assert parsed == scrape_config(document)
    (job,) = parsed["scrape_configs"]
    assert (job["scheme"], job["metrics_path"]) == ("http", "/metrics")
    assert job["static_configs"] == [
        {"targets": ["127.12.7.2:7000"], "labels": {"node": "node-1", "node_id": "id-0", "role": "validator"}},
        {"targets": ["127.12.7.3:7000"], "labels": {"node": "node-2", "node_id": "id-1", "role": "member"}}]
    assert "authorization" not in str(parsed), "/metrics is open: no token goes to Prometheus"


def test_the_yaml_reads_back_whatever_the_strings_hold():
    tricky = {"a": ['x: y', "# not a comment", "- not a list", 'quote " and \\ and \n newline', "", "yes", "null", "1e3"],
              "nested": {"key with space": {"k": [1, 2.5, True, None]}}, "empty": [], "none": {}}
    assert yaml.safe_load("\n".join(to_yaml(tricky))) == tricky


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:7000", "http://127.0.0.1", "http://:7000", "not a url",
                                 "http://127.0.0.1:99999", "http://127.0.0.1:7000/?x=1", None])
def test_a_node_without_a_usable_api_url_is_refused_by_name(url):
    with pytest.raises(ClusterError, match="node-2 in the cluster file"):
        scrape_config({"nodes": [node(0, "http://127.0.0.1:7000"), node(1, url)]})


def test_nodes_that_one_job_cannot_scrape_together_are_refused():
    with pytest.raises(ClusterError, match="one URL scheme and path"):
        scrape_config({"nodes": [node(0, "http://127.0.0.1:7000"), node(1, "https://127.0.0.1:7001")]})
    with pytest.raises(ClusterError, match="without an index"):
        scrape_config({"nodes": [{"index": "0", "node_id": "x", "api_url": "http://127.0.0.1:7000"}]})
