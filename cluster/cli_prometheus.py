"""`synapse cluster prometheus-config --data-dir D`: a Prometheus scrape config for every node of a cluster.

Why it works as it does:
- The targets come from the cluster's own file (DIR/cluster.json, written by `cluster up`), so the config
  names exactly the nodes `cluster status` shows, with labels a dashboard can group by: `node`
  (node-1, ...), `node_id` and `role` (validator or member).
- Registered into `synapse cluster` by cli_cluster.register (by name, as cli.py registers the areas:
  this module uses cli_cluster's helpers).
- GET /metrics needs no token: reads are open on every node (node/api.py `require_token` guards only
  the routes that change something). So the config sends none, and says so; the API token must not
  travel to a monitoring system that has no use for it.
- The output is YAML that uses only JSON-quoted scalars (every string through `json.dumps`): valid
  YAML whatever a URL or id holds, and readable by a person. `--json` prints the same document as JSON.
- The cluster file is input: each `api_url` must be an http(s) URL with a host and a port (anything else
  is refused, naming the node); every node must share one scheme and path prefix, as one Prometheus job
  scrapes them all.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from cluster.cli_cluster import EXIT_USAGE, _fail, _resolve_dir, load_cluster_file
from node.errors import ClusterError, SynapseError

JOB_NAME = "synapse"
SCRAPE_INTERVAL = "5s"        # a local cluster's events take seconds; a finer interval only adds load
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _target_of(node: dict) -> tuple[str, str, str]:
    """(scheme, host:port, metrics path) of one node of the cluster file."""
    url = node.get("api_url") if isinstance(node, dict) else None
    if not isinstance(node, dict) or type(node.get("index")) is not int or not isinstance(node.get("node_id"), str):
        raise ClusterError(f"the cluster file lists a node without an index and a node id ({str(node)[:100]})",
                           hint="the cluster file is written by 'synapse cluster up'; start the cluster again if it was edited")
    parts = urlsplit(url) if isinstance(url, str) else None
    try:
        port = parts.port if parts is not None else None
    except ValueError:
        port = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.query:
        raise ClusterError(f"node-{node['index'] + 1} in the cluster file has no usable api_url ({str(url)[:100]!r})",
                           hint="the cluster file is written by 'synapse cluster up'; start the cluster again if it was edited")
    return parts.scheme, parts.netloc, parts.path.rstrip("/") + "/metrics"


def scrape_config(document: dict) -> dict:
    """The Prometheus configuration (as a dict) that scrapes every node of `document` (a cluster file)."""
    static_configs, schemes, paths = [], set(), set()
    for node in document["nodes"]:
        scheme, address, path = _target_of(node)
        schemes.add(scheme)
        paths.add(path)
        static_configs.append({"targets": [address], "labels": {
            "node": f"node-{node['index'] + 1}", "node_id": node["node_id"],
            "role": "validator" if node.get("validator") else "member"}})
    if len(schemes) > 1 or len(paths) > 1:
        raise ClusterError("the cluster's nodes do not share one URL scheme and path", hint="one Prometheus job scrapes them all; "
                           "write a job per node by hand for such a network")
    return {"scrape_configs": [{"job_name": JOB_NAME, "scrape_interval": SCRAPE_INTERVAL,
                                "scheme": schemes.pop() if schemes else "http",
                                "metrics_path": paths.pop() if paths else "/metrics",
                                "static_configs": static_configs}]}


def _yaml_key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)


def to_yaml(value: object, indent: int = 0) -> list[str]:
    """Block-style YAML lines of dicts, lists and scalars; every scalar as JSON (valid YAML)."""
    pad, lines = " " * indent, []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{_yaml_key(str(key))}:")
                lines.extend(to_yaml(item, indent + 2))
            else:
                lines.append(f"{pad}{_yaml_key(str(key))}: {json.dumps(item)}")
    elif isinstance(value, list):
        for item in value:
            nested = to_yaml(item, indent + 2) if isinstance(item, (dict, list)) and item else [f"{pad}  {json.dumps(item)}"]
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines.extend(nested[1:])
    else:
        lines.append(f"{pad}{json.dumps(value)}")
    return lines


def config_text(document: dict, data_dir: Path) -> str:
    config = scrape_config(document)
    header = [f"# Prometheus scrape config for the Synapse-NG cluster in {data_dir} ({len(document['nodes'])} nodes),",
              "# from its cluster.json ('synapse cluster prometheus-config'). Merge into your prometheus.yml.",
              "# GET /metrics needs no token (reads are open on every node; the API token in each node's",
              "# token_file guards only writes), so no 'authorization' is configured."]
    return "\n".join(header + to_yaml(config)) + "\n"


@click.command("prometheus-config")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True, help="print the same configuration as one JSON document")
def prometheus_config(data_dir: Path | None, as_json: bool) -> None:
    """Print a Prometheus scrape config (YAML) for every node of the cluster."""
    data_dir = _resolve_dir(data_dir)
    try:
        document = load_cluster_file(data_dir)
        text = json.dumps(scrape_config(document), indent=2) + "\n" if as_json else config_text(document, data_dir)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    sys.stdout.write(text)


def register(cluster_group: click.Group) -> None:
    cluster_group.add_command(prometheus_config)
