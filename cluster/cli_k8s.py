"""`synapse cluster manifests --provider kubernetes`, `synapse cluster up-kubernetes|chaos-kubernetes|down-kubernetes`.

Why it works as it does:
- `manifests` needs nothing but this package: it writes a directory a person can read, commit (without
  its secrets) or `kubectl apply -f DIR/manifests`; `up-kubernetes` applies that same directory, so what
  was reviewed is what runs. The directory holds, besides the manifests, the operator's copy of what
  a client needs: genesis.json, network.json (nodes, pods, URLs) and tokens/ (0600, the API tokens the
  Secrets also carry). Node keys are only in the Secret manifests (0600 files).
- The Kubernetes client is optional (`synapse-ng[kubernetes]`); without it, or without a kubeconfig,
  `up-kubernetes` and `chaos-kubernetes --apply` stop with what to install and configure.
- `up-kubernetes` is its own command until `cluster up` dispatches on a provider interface
  (cluster/providers/): then it becomes that interface's `kubernetes` provider, `setup` = manifests,
  `start` = apply + wait, and faults = chaos-kubernetes's mapping.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from node.errors import SynapseError

EXIT_FAILED = 1
EXIT_USAGE = 2
UP_TIMEOUT_S = 300.0


def _fail(error: SynapseError, status: int = EXIT_FAILED) -> None:
    click.echo(f"error: {error.message}", err=True)
    if error.hint:
        click.echo(f"hint: {error.hint}", err=True)
    sys.exit(status)


def _write_private(path: Path, text: str) -> None:
    from node.fsutil import write_atomic

    write_atomic(path, text.encode(), mode=0o600)


def write_manifest_dir(out_dir: Path, network, options) -> dict:
    """Write OUT/{manifests/, chaos/, genesis.json, network.json, tokens/}; returns the network file's document."""
    from cluster.k8s.chaos import Topology, chaos_objects, example_faults
    from cluster.k8s.manifests import network_objects, write_objects
    from node.errors import ConfigError

    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty", hint="choose an empty -o directory: a network is never overwritten")
    write_objects(out_dir / "manifests", network_objects(network, options))
    topology = Topology(nodes=len(network.nodes), validators=len(network.validators), namespace=network.namespace,
                        network_id=network.network_id)
    examples = [item for name, fault in example_faults(topology).items() for item in chaos_objects(fault, topology, name=name)]
    (out_dir / "chaos").mkdir(mode=0o755)
    for document in examples:
        (out_dir / "chaos" / f"{document['kind'].lower()}-{document['metadata']['name']}.json").write_text(json.dumps(document, indent=2) + "\n")
    (out_dir / "genesis.json").write_text(network.genesis_text)
    (out_dir / "tokens").mkdir(mode=0o700)
    for node in network.nodes:
        _write_private(out_dir / "tokens" / node.name, node.api_token + "\n")
    document = {"provider": "kubernetes", "namespace": network.namespace, "network_id": network.network_id,
                "api_port": network.api_port, "raft_port": network.raft_port, "image": options.image,
                "nodes": [{"index": node.index, "node_id": node.node_id, "validator": node.validator, "pod": node.pod,
                           "statefulset": node.name, "api_url": node.api_url, "raft_address": node.raft_address,
                           "token_file": f"tokens/{node.name}"} for node in network.nodes]}
    (out_dir / "network.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


@click.command("manifests")
@click.option("--provider", type=click.Choice(["kubernetes"]), default="kubernetes", show_default=True,
              help="only kubernetes writes manifests")
@click.option("--nodes", "node_count", type=int, default=5, show_default=True, help="number of nodes N")
@click.option("--validators", "validator_count", type=int, default=3, show_default=True, help="validators K (node-1..node-K)")
@click.option("--image", default=None, help="the node image (built from the Dockerfile); default synapse-ng:0.1.0")
@click.option("--namespace", default="synapse-ng", show_default=True, help="the Kubernetes namespace, created by the manifests")
@click.option("--cluster-domain", default="cluster.local", show_default=True, help="the cluster's DNS domain")
@click.option("--storage", default="1Gi", show_default=True, help="each node's data volume")
@click.option("--voting-period-ms", type=int, default=None, help="genesis voting period (default 60000)")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True, help="an empty directory")
def manifests(provider: str, node_count: int, validator_count: int, image: str | None, namespace: str, cluster_domain: str,
              storage: str, voting_period_ms: int | None, out_dir: Path) -> None:
    """Write a network as Kubernetes manifests (and Chaos Mesh examples) into an empty directory."""
    from cluster.k8s.manifests import DEFAULT_IMAGE, PodOptions
    from cluster.k8s.network import build_network

    try:
        options = PodOptions(image=image or DEFAULT_IMAGE, storage=storage)
        network = build_network(nodes=node_count, validators=validator_count, namespace=namespace, cluster_domain=cluster_domain,
                                governance={"voting_period_ms": voting_period_ms} if voting_period_ms else None)
        write_manifest_dir(out_dir.absolute(), network, options)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    click.echo(f"network {network.network_id}: {node_count} nodes ({validator_count} validators) in namespace {namespace}")
    click.echo(f"  {out_dir / 'manifests'}: apply with 'synapse cluster up-kubernetes --data-dir {out_dir}' or 'kubectl apply -f {out_dir / 'manifests'}'")
    click.echo(f"  {out_dir / 'chaos'}: Chaos Mesh examples (not applied by up)")
    click.echo(f"  {out_dir / 'manifests'}/*-secret-*.json hold node keys: keep them private")


def _connect():
    from cluster.k8s.apply import connect

    try:
        return connect()
    except SynapseError as error:
        _fail(error)


@click.command("up-kubernetes")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="the directory 'synapse cluster manifests --provider kubernetes -o DIR' wrote")
@click.option("--timeout", "timeout_s", type=float, default=UP_TIMEOUT_S, show_default=True, help="seconds to wait for every pod")
@click.option("--json", "as_json", is_flag=True, help="print cluster.json on stdout (progress goes to stderr)")
def up_kubernetes(data_dir: Path, timeout_s: float, as_json: bool) -> None:
    """Apply the manifests to the cluster of your kubeconfig, wait until every node is healthy, write cluster.json."""
    from cluster.k8s.apply import apply_all, check_network_matches, cluster_document, load_network_file, wait_ready, write_cluster_file
    from cluster.k8s.manifests import read_objects

    say = functools.partial(click.echo, err=as_json)
    data_dir = data_dir.absolute()
    try:
        network = load_network_file(data_dir)
        documents = read_objects(data_dir / "manifests")
        check_network_matches(network, documents)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    api = _connect()
    try:
        say(f"applying {len(documents)} objects to {api.where()} (namespace {network['namespace']}) ...")
        apply_all(api, documents, say=say)
        say(f"waiting up to {timeout_s:.0f} s for {len(network['nodes'])} pods ...")
        wait_ready(api, network["namespace"], [node["pod"] for node in network["nodes"]], timeout_s, say=say)
    except SynapseError as error:
        _fail(error)
    document = cluster_document(data_dir, network, where=api.where())
    path = write_cluster_file(data_dir, document)
    if as_json:
        click.echo(json.dumps({"data_dir": str(data_dir), **document}, indent=2))
        return
    for node in document["nodes"]:
        click.echo(f"node-{node['index'] + 1}  {node['node_id']}  {'validator' if node['validator'] else 'member':9}  {node['api_url']}")
    click.echo(f"cluster file: {path}")
    click.echo(f"from outside the cluster: {document['nodes'][0]['port_forward']} (cluster.json has one per node)")


@click.command("down-kubernetes")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), required=True, help="the manifests directory")
@click.option("--yes", "confirmed", is_flag=True, help="confirm: the nodes' volumes (logs, state, Raft journal) are deleted too")
def down_kubernetes(data_dir: Path, confirmed: bool) -> None:
    """Delete the network's namespace: every pod, Secret and data volume of it. The manifests directory stays."""
    from cluster.k8s.apply import load_network_file

    try:
        network = load_network_file(data_dir)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    if not confirmed:
        click.echo(f"this deletes namespace {network['namespace']} with every node's data volume; run again with --yes", err=True)
        sys.exit(EXIT_USAGE)
    api = _connect()
    try:
        deleted = api.delete_namespace(network["namespace"])
    except SynapseError as error:
        _fail(error)
    click.echo(f"namespace {network['namespace']}: {'deleting (Kubernetes removes its objects and volumes)' if deleted else 'did not exist'}")


FAULT_CHOICES = ("partition", "delay", "loss", "bandwidth", "kill", "pause", "skew", "heal")


def _selector_option(value: str | None):
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return [int(item) if item.isdigit() else item for item in items] if len(items) > 1 else (int(items[0]) if items[0].isdigit() else items[0])


@click.command("chaos-kubernetes")
@click.argument("kind", type=click.Choice(FAULT_CHOICES))
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), required=True, help="the manifests directory")
@click.option("--from", "from_", default=None, help="delay/loss: sending nodes (validators, members, node-2, 1,3 ...)")
@click.option("--to", default=None, help="delay/loss: receiving nodes")
@click.option("--nodes", default=None, help="bandwidth/kill/pause: the nodes")
@click.option("--groups", default=None, help="partition: groups separated by '|', e.g. 'validators|members' or '1,2|rest'")
@click.option("--ms", type=int, default=None)
@click.option("--jitter-ms", type=int, default=None)
@click.option("--percent", type=int, default=None)
@click.option("--kbit", type=int, default=None)
@click.option("--duration", "duration_s", type=int, default=None, help="seconds; default: until healed")
@click.option("--name", default=None, help="the chaos object's name (default: the fault kind)")
@click.option("--apply", "apply_now", is_flag=True, help="create it with the Kubernetes client (default: print it for kubectl apply -f -)")
def chaos_kubernetes(kind: str, data_dir: Path, from_: str | None, to: str | None, nodes: str | None, groups: str | None,
                     ms: int | None, jitter_ms: int | None, percent: int | None, kbit: int | None, duration_s: int | None,
                     name: str | None, apply_now: bool) -> None:
    """A fault as Chaos Mesh objects for the network in DATA_DIR: printed as a List, or applied; heal deletes them all."""
    from cluster.k8s.apply import load_network_file
    from cluster.k8s.chaos import CHAOS_API_VERSION, LABEL_FAULT, Topology, chaos_objects, fault_from_params

    try:
        network = load_network_file(data_dir)
        topology = Topology(nodes=len(network["nodes"]), validators=sum(node["validator"] for node in network["nodes"]),
                            namespace=network["namespace"], network_id=network["network_id"])
        if kind == "heal":
            selector = f"app.kubernetes.io/instance={network['network_id']},{LABEL_FAULT}"
            if not apply_now:
                click.echo(f"kubectl -n {network['namespace']} delete networkchaos,podchaos -l {selector}")
                return
            api = _connect()
            for chaos_kind in ("NetworkChaos", "PodChaos"):
                api.delete_labelled(CHAOS_API_VERSION, chaos_kind, network["namespace"], selector)
            click.echo("healed: every chaos object of this network deleted")
            return
        given = {"from": _selector_option(from_), "to": _selector_option(to), "nodes": _selector_option(nodes),
                 "groups": [_selector_option(group) for group in groups.split("|")] if groups else None,
                 "ms": ms, "jitter_ms": jitter_ms, "percent": percent, "kbit": kbit}
        fault = fault_from_params(kind, {key: value for key, value in given.items() if value is not None}, topology, duration_s=duration_s)
        documents = chaos_objects(fault, topology, name=name or kind)
    except SynapseError as error:
        _fail(error, EXIT_USAGE)
    if not apply_now:
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}, indent=2))
        return
    api = _connect()
    try:
        for document in documents:
            api.apply(document)
            click.echo(f"applied {document['kind']} {document['metadata']['name']}")
    except SynapseError as error:
        _fail(error)


def register(cluster: click.Group) -> None:
    cluster.add_command(manifests)
    cluster.add_command(up_kubernetes)
    cluster.add_command(chaos_kubernetes)
    cluster.add_command(down_kubernetes)
