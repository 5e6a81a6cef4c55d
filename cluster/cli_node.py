"""`synapse genesis create` and `synapse node run|health|note`: make a network, run and poke one node.

Why here and not in node/: the node process itself only needs `python -m node --config FILE`; these
commands are the operator's tools around it (creating keys and configs, reading the API token of a
local node). Every SynapseError becomes one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from node.errors import SynapseError


def _fail(error: SynapseError) -> click.ClickException:
    return click.ClickException(error.one_line())


@click.group()
def genesis() -> None:
    """Create a network: genesis.json plus one directory per node."""


@genesis.command("create")
@click.option("--nodes", "node_count", type=int, required=True, help="number of members N")
@click.option("--validators", "validator_count", type=int, required=True, help="number of validators K (node-1..node-K), K <= N")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True, help="an empty directory")
@click.option("--address-block", default="127.0.0", show_default=True, help="loopback block 127.A.B: node i gets 127.A.B.i (beyond 254 nodes: 127.A.B.0/23, B even)")
@click.option("--api-port", type=int, default=8000, show_default=True, help="API (and gossip) port of every node")
@click.option("--raft-port", type=int, default=9000, show_default=True, help="Raft port of every validator")
@click.option("--voting-period-ms", type=int, default=60_000, show_default=True, help="how long a proposal is open for votes")
def create(node_count: int, validator_count: int, out_dir: Path, address_block: str, api_port: int, raft_port: int,
           voting_period_ms: int) -> None:
    """Write OUT/genesis.json and OUT/node-<i>/{node_key, config.toml, raft_secret (validators)}."""
    from cluster.addresses import parse_block
    from cluster.genesis import create_network

    try:
        network = create_network(out_dir, nodes=node_count, validators=validator_count, block=parse_block(address_block, hosts=node_count),
                                 api_port=api_port, raft_port=raft_port, governance={"voting_period_ms": voting_period_ms})
    except SynapseError as error:
        raise _fail(error) from None
    click.echo(f"network {network.genesis.network_id}: {network.genesis_path}")
    for created in network.nodes:
        role = "validator" if created.validator else "member"
        click.echo(f"  node-{created.index}  {created.node_id}  {created.api_url}  {role}")
    click.echo(f"start a node with: synapse node run --config {network.nodes[0].config_path}")


@click.group()
def node() -> None:
    """Run one node, or talk to a running one."""


@node.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), required=True, help="the node's config.toml")
def run(config_path: Path) -> None:
    """Run one node until SIGTERM/SIGINT (the same as `python -m node --config FILE`)."""
    from node.runtime import run_node

    sys.exit(run_node(config_path))


def _client(config_path: Path):
    from cluster.local import NodeApi
    from node.api import API_TOKEN_FILE_NAME, read_token
    from node.config import load_config

    try:
        config = load_config(config_path)
        token_path = config.data_dir / API_TOKEN_FILE_NAME
        token = read_token(token_path) if token_path.exists() else None
    except SynapseError as error:
        raise _fail(error) from None
    return NodeApi(config.api_url, token)


def _show(response) -> None:
    click.echo(json.dumps(response.data, indent=2) if response.data is not None else response.text)
    if not response.ok:
        sys.exit(1)


@node.command("health")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
def health(config_path: Path) -> None:
    """GET /health of the node configured by FILE."""
    try:
        _show(_client(config_path).get("/health"))
    except OSError as error:
        raise click.ClickException(f"the node does not answer: {error}") from None


@node.command("note")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.argument("text")
def note(config_path: Path, text: str) -> None:
    """Append a NOTE entry (uses the node's API token from its data dir)."""
    try:
        _show(_client(config_path).post("/log/notes", {"text": text}))
    except OSError as error:
        raise click.ClickException(f"the node does not answer: {error}") from None


def register(group: click.Group) -> None:
    group.add_command(genesis)
    group.add_command(node)
