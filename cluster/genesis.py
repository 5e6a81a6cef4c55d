"""Create a network: one genesis.json plus one ready-to-run directory per node.

Why it works as it does:
- Genesis is the root of trust: members (node id, public key, addresses, reputation, validator
  flag), governance thresholds and the result-deciding limits. Every node loads and validates it at
  start (node/config.py), so this module builds the document and runs the SAME validation before
  writing anything: a genesis that a node would refuse is never written.
- Each node's key is created by `Identity.load_or_create` in its own directory (mode 0600), so the key
  file format is identity.py's alone. The API token is not created here: a node creates it at first
  start, so a copied directory never shares a token it did not make.
- Validators share one random Raft password (PySyncObj encrypts with it; without it anyone who reaches
  the Raft port could make the node unpickle arbitrary data). Each validator's directory holds it with
  mode 0600; genesis holds only its sha256, so a node can check its copy without genesis revealing it.
- Nothing is overwritten: creating a network over an existing one would mix keys of two networks.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from cluster.addresses import NODES_MAX, AddressBlock
from node.config import FIRST_VERSION, Genesis, Limits, api_url_for, join_host_port, parse_genesis, render_config
from node.core.canonical import sha256_hex
from node.core.gossip_settings import fanout_for
from node.fsutil import write_atomic
from node.errors import ConfigError
from node.identity import Identity
from node.sandbox_disk_cache import create_shared_cache

GENESIS_FILE_NAME = "genesis.json"
CONFIG_FILE_NAME = "config.toml"
RAFT_SECRET_FILE_NAME = "raft_secret"
SHARED_COMPILED_CACHE_DIR_NAME = "compiled-cache"   # DIR/compiled-cache: one compiled-module cache per local cluster
DEFAULT_API_PORT = 8000
DEFAULT_RAFT_PORT = 9000
DEFAULT_REPUTATION = 100
GOSSIP_INTERVAL_MS = Limits().gossip_interval_ms     # a node's default anti-entropy period
MACHINE_ANTI_ENTROPY_ROUNDS_PER_S = 100              # what the nodes of one machine start together, at most
MACHINE_REPORT_HOLD_PERIODS = 2                      # machine_report_hold_ms, in machine-paced periods
# The most nodes whose default periods stay within the machine's rounds a second (20): past it, pacing.
MACHINE_UNPACED_NODES_MAX = MACHINE_ANTI_ENTROPY_ROUNDS_PER_S * GOSSIP_INTERVAL_MS // 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatedNode:
    index: int  # 1-based, as in node-<index>
    node_id: str
    node_dir: Path
    config_path: Path
    api_url: str
    raft_address: str
    validator: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatedNetwork:
    genesis_path: Path
    genesis: Genesis
    nodes: tuple[CreatedNode, ...]


def node_dir_name(index: int) -> str:
    return f"node-{index}"


def _check_counts(nodes: int, validators: int, reputations: Sequence[int] | None) -> None:
    if type(nodes) is not int or not 1 <= nodes <= NODES_MAX:
        raise ConfigError(f"--nodes must be from 1 to {NODES_MAX}, got {nodes}")
    if type(validators) is not int or not 1 <= validators <= nodes:
        raise ConfigError(f"--validators must be from 1 to the number of nodes ({nodes}), got {validators}",
                          hint="validators are chosen among the members: K <= N")
    if reputations is not None and len(reputations) != nodes:
        raise ConfigError(f"{len(reputations)} reputations given for {nodes} nodes")


def _prepare_out_dir(out_dir: Path, nodes: int) -> None:
    if (out_dir / GENESIS_FILE_NAME).exists():
        raise ConfigError(f"{out_dir / GENESIS_FILE_NAME} already exists", hint="choose an empty --out directory: a network is never overwritten")
    for index in range(1, nodes + 1):
        node_dir = out_dir / node_dir_name(index)
        if node_dir.exists() and any(node_dir.iterdir()):
            raise ConfigError(f"{node_dir} already exists and is not empty", hint="choose an empty --out directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create {out_dir}: {error.strerror}") from None


def _member_document(identity: Identity, host: str, api_port: int, raft_port: int, reputation: int, validator: bool) -> dict:
    return {"node_id": identity.node_id, "public_key": identity.public_key.hex(), "api_url": api_url_for(host, api_port),
            "raft_address": join_host_port(host, raft_port), "reputation": reputation, "validator": validator}


def machine_gossip_interval_ms(nodes: int) -> int:
    """The anti-entropy period for `nodes` nodes sharing one machine: the default (200 ms) up to 20 nodes,
    then longer, so that all of them together start at most MACHINE_ANTI_ENTROPY_ROUNDS_PER_S rounds a
    second. Each node paces only itself; at the default, 100 nodes on 2 cores started 500 rounds a second,
    and while an upgrade's reports spread (every digest differing) those rounds alone saturated the cores:
    the upgrade took 44 s to execute everywhere instead of 6 s at 1 s."""
    return max(GOSSIP_INTERVAL_MS, math.ceil(nodes * 1000 / MACHINE_ANTI_ENTROPY_ROUNDS_PER_S))


def machine_gossip_fanout(nodes: int) -> int:
    """The push fanout for `nodes` nodes sharing one machine: 0 (the node's automatic ceil(ln N) + 1) up
    to 20 nodes, then the automatic value at 20 nodes (4) instead of 5-7. On one machine every push is
    CPU the whole network shares (an HTTP exchange, about 1 ms of CPU on both sides), and the pushes of an
    eager entry are N x fanout. Measured on 2 cores, runs of 4 and 6 (or 7) interleaved, last vote ->
    executed everywhere: N = 100 1.65-1.76 s against 1.71-1.84 s (4 runs each), N = 200 4.9-5.6 s against
    7.1-8.1 s (2 each). A node that no push reaches (about e^-4, 2 %, of them per entry) gets the entry
    from anti-entropy, which costs a little more CPU in the 10 s after an upgrade's reports (N = 100:
    0.19-0.21 cores against 0.17-0.19) and nothing once the network is quiet."""
    if machine_gossip_interval_ms(nodes) == GOSSIP_INTERVAL_MS:     # not paced: the same rule as the report hold
        return 0
    return fanout_for(MACHINE_UNPACED_NODES_MAX - 1, None)


def machine_report_hold_ms(nodes: int) -> int:
    """How long the nodes of one machine hold each EXECUTION_REPORT before sending it (0 up to 20 nodes):
    two machine-paced anti-entropy periods. Every node writes one report per upgrade and every node
    receives all of them, N x N deliveries; at N = 100 on 2 cores they took two thirds of the CPU until
    the last node executed, and the upgrade executed everywhere in 3-5 s instead of 2 s with them held."""
    interval_ms = machine_gossip_interval_ms(nodes)
    return 0 if interval_ms == GOSSIP_INTERVAL_MS else MACHINE_REPORT_HOLD_PERIODS * interval_ms


def create_network(out_dir: Path, *, nodes: int, validators: int, block: AddressBlock,
                   api_port: int = DEFAULT_API_PORT, raft_port: int = DEFAULT_RAFT_PORT,
                   reputations: Sequence[int] | None = None, governance: Mapping[str, int] | None = None,
                   network_limits: Mapping[str, int] | None = None, config_limits: Mapping[str, int] | None = None,
                   network_id: str | None = None, ipfs_gateways: Sequence[str] = (),
                   private_addresses_allowed: bool = True, shared_compiled_cache: bool = False,
                   one_machine: bool = False) -> CreatedNetwork:
    """Write out_dir/genesis.json and out_dir/node-<i>/{node_key, config.toml, raft_secret (validators)}.
    `shared_compiled_cache`: the nodes (all on this machine) share out_dir/compiled-cache, whose key is made here.
    `one_machine`: the nodes all run on this machine, so their anti-entropy is paced for the machine
    (`machine_gossip_interval_ms`), their EXECUTION_REPORTs held (`machine_report_hold_ms`) and their
    pushes fewer (`machine_gossip_fanout`), unless `config_limits` sets gossip_interval_ms /
    gossip_report_hold_ms / gossip_fanout.

    Members are node-1..node-N at block.host(i); node-1..node-K are the validators."""
    _check_counts(nodes, validators, reputations)
    if nodes > block.hosts_max:
        raise ConfigError(f"the address block {block.cidr} holds {block.hosts_max} nodes, not {nodes}",
                          hint="take the block with acquire_block(hosts=N) or parse_block(text, hosts=N)")
    if api_port == raft_port:
        raise ConfigError(f"--api-port and --raft-port are both {api_port}", hint="give each role its own port")
    out_dir = Path(out_dir).absolute()
    _prepare_out_dir(out_dir, nodes)
    raft_secret = secrets.token_hex(32)
    identities, documents = [], []
    for index in range(1, nodes + 1):
        node_dir = out_dir / node_dir_name(index)
        node_dir.mkdir(mode=0o700, exist_ok=True)
        identity = Identity.load_or_create(node_dir / "node_key")
        reputation = DEFAULT_REPUTATION if reputations is None else reputations[index - 1]
        identities.append(identity)
        documents.append(_member_document(identity, block.host(index), api_port, raft_port, reputation, index <= validators))
    document = {
        "network_id": network_id or f"synapse-{secrets.token_hex(4)}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "version": FIRST_VERSION,
        "members": documents,
        "governance": {"approval_threshold_pct": 50, "quorum_pct": 50, "voting_period_ms": 60_000, **(governance or {})},
        "limits": dict(network_limits or {}),
        "raft_secret_sha256": sha256_hex(raft_secret.encode()),
    }
    genesis = parse_genesis(document)  # the node's own validation, before anything is written
    created = []
    shared_cache_dir = None
    if shared_compiled_cache:
        create_shared_cache(out_dir / SHARED_COMPILED_CACHE_DIR_NAME)
        shared_cache_dir = f"../{SHARED_COMPILED_CACHE_DIR_NAME}"
    limits = dict(config_limits or {})
    if one_machine and "gossip_interval_ms" not in limits and machine_gossip_interval_ms(nodes) != GOSSIP_INTERVAL_MS:
        limits["gossip_interval_ms"] = machine_gossip_interval_ms(nodes)
    if one_machine and "gossip_report_hold_ms" not in limits and machine_report_hold_ms(nodes):
        limits["gossip_report_hold_ms"] = machine_report_hold_ms(nodes)
    if one_machine and "gossip_fanout" not in limits and machine_gossip_fanout(nodes):
        limits["gossip_fanout"] = machine_gossip_fanout(nodes)
    for index, member in enumerate(genesis.members, start=1):
        node_dir = out_dir / node_dir_name(index)
        config_text = render_config(data_dir=".", genesis=f"../{GENESIS_FILE_NAME}", api_host=block.host(index), api_port=api_port,
                                    raft_address=member.raft_address, limits=limits or None, ipfs_gateways=tuple(ipfs_gateways),
                                    private_addresses_allowed=private_addresses_allowed, sandbox_shared_cache_dir=shared_cache_dir)
        write_atomic(node_dir / CONFIG_FILE_NAME, config_text.encode(), mode=0o644)
        if member.validator:
            write_atomic(node_dir / RAFT_SECRET_FILE_NAME, raft_secret.encode(), mode=0o600)
        created.append(CreatedNode(index=index, node_id=member.node_id, node_dir=node_dir, config_path=node_dir / CONFIG_FILE_NAME,
                                   api_url=member.api_url, raft_address=member.raft_address, validator=member.validator))
    genesis_path = out_dir / GENESIS_FILE_NAME
    write_atomic(genesis_path, json.dumps(document, indent=2, sort_keys=True).encode() + b"\n", mode=0o644)
    return CreatedNetwork(genesis_path=genesis_path, genesis=genesis, nodes=tuple(created))
