"""A network for Kubernetes: the same genesis, keys and configs as `synapse genesis create`, with stable DNS names.

Why it works as it does:
- Nothing about genesis is re-implemented here. `cluster/genesis.py` `create_network` writes genesis, the
  keys (identity.py's format) and the shared Raft secret, and runs the node's own genesis validation
  before writing; it only asks its address plan for `host(index)`. This module hands it a plan of DNS
  names instead of loopback addresses, in a private staging directory that is deleted afterwards: the
  keys leave it only inside the Secret manifests.
- PySyncObj identifies a peer by the address it dials, and gossip dials genesis' API URLs, so every
  address must be stable across pod restarts and rescheduling: the pod's own DNS name under a headless
  Service, `node-<i>-0.<validators|members>.<namespace>.svc.<cluster domain>`. Each node is a StatefulSet of
  one replica (`node-<i>`, pod `node-<i>-0`) because Kubernetes cannot mount a different Secret into each
  pod of one StatefulSet: a StatefulSet per role would have to mount every validator's key into every
  validator pod, and one compromised validator pod would then hold a majority of the validators' keys.
- The API token is made by the node's own `load_or_create_token`, so its format stays api.py's; the
  operator keeps a copy (cluster.json names it) and the Secret carries it to the pod.
- Each node's config is node/config.py's `render_config`, with absolute in-pod paths (a ConfigMap mount
  has no `..` next to genesis) and the DNS name as the address the node binds and announces.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cluster.genesis import DEFAULT_API_PORT, DEFAULT_RAFT_PORT, RAFT_SECRET_FILE_NAME, create_network
from node.api import load_or_create_token
from node.config import render_config
from node.errors import ConfigError

DEFAULT_NAMESPACE = "synapse-ng"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
NODES_MAX = 99                      # node-99-0.validators.<63>.svc.<domain> stays within a DNS name's 253 characters
VALIDATORS_SERVICE = "validators"
MEMBERS_SERVICE = "members"
# Paths inside the pod (manifests.py mounts them; the config names them).
CONFIG_DIR = "/etc/synapse-ng"
GENESIS_PATH = f"{CONFIG_DIR}/genesis.json"
CONFIG_PATH = f"{CONFIG_DIR}/config.toml"
DATA_DIR = "/var/lib/synapse-ng"
SECRET_DIR = "/run/synapse-ng/secret"
NODE_KEY_KEY, API_TOKEN_KEY, RAFT_SECRET_KEY = "node_key", "api_token", RAFT_SECRET_FILE_NAME

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.ASCII)
_DNS_NAME = re.compile(r"^(?=.{1,200}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodNode:
    index: int                 # 1-based, as node-<index> everywhere else
    node_id: str
    validator: bool
    host: str                  # the pod's stable DNS name: what it binds and what peers dial
    api_url: str
    raft_address: str
    config_text: str
    node_key: bytes = b""      # raw private key bytes (identity.py's file format)
    api_token: str = ""
    raft_secret: str | None = None

    def __repr__(self) -> str:  # never print a key or token by accident (logs, test failures)
        return f"PodNode(index={self.index}, node_id={self.node_id}, host={self.host}, validator={self.validator})"

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def pod(self) -> str:
        return f"node-{self.index}-0"

    @property
    def role(self) -> str:
        return "validator" if self.validator else "member"

    @property
    def service(self) -> str:
        return VALIDATORS_SERVICE if self.validator else MEMBERS_SERVICE


@dataclass(frozen=True, slots=True, kw_only=True)
class PodNetwork:
    namespace: str
    network_id: str
    genesis_text: str
    nodes: tuple[PodNode, ...]
    api_port: int
    raft_port: int

    @property
    def validators(self) -> tuple[PodNode, ...]:
        return tuple(node for node in self.nodes if node.validator)


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        raise ConfigError(f"namespace {namespace!r:.80} is not a valid Kubernetes namespace name",
                          hint="use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")
    return namespace


def check_cluster_domain(domain: object) -> str:
    if not isinstance(domain, str) or not _DNS_NAME.match(domain):
        raise ConfigError(f"cluster domain {domain!r:.80} is not a DNS name", hint="the default is cluster.local")
    return domain


class DnsHosts:
    """The address plan `create_network` asks: node i's stable DNS name (validators are node-1..node-K)."""

    def __init__(self, *, namespace: str, validators: int, cluster_domain: str) -> None:
        self._namespace, self._validators, self._domain = namespace, validators, cluster_domain

    hosts_max = NODES_MAX  # create_network's check of the plan's size (build_network refuses more first)

    @property
    def cidr(self) -> str:
        return f"the DNS names of namespace {self._namespace}"

    def host(self, index: int) -> str:
        service = VALIDATORS_SERVICE if index <= self._validators else MEMBERS_SERVICE
        return f"node-{index}-0.{service}.{self._namespace}.svc.{self._domain}"


def build_network(*, nodes: int, validators: int, namespace: str = DEFAULT_NAMESPACE,
                  cluster_domain: str = DEFAULT_CLUSTER_DOMAIN, governance: Mapping[str, int] | None = None,
                  api_port: int = DEFAULT_API_PORT, raft_port: int = DEFAULT_RAFT_PORT,
                  private_addresses_allowed: bool = True) -> PodNetwork:
    """Genesis, keys, tokens and in-pod configs for N pods (node-1..node-K validators); nothing is left on disk."""
    check_namespace(namespace)
    check_cluster_domain(cluster_domain)
    if type(nodes) is int and nodes > NODES_MAX:
        raise ConfigError(f"--nodes is {nodes}; the kubernetes provider makes at most {NODES_MAX} nodes")
    plan = DnsHosts(namespace=namespace, validators=validators if type(validators) is int else 0, cluster_domain=cluster_domain)
    with tempfile.TemporaryDirectory(prefix="synapse-k8s-") as staging:
        created = create_network(Path(staging) / "network", nodes=nodes, validators=validators, block=plan,  # type: ignore[arg-type]
                                 api_port=api_port, raft_port=raft_port, governance=governance,
                                 private_addresses_allowed=private_addresses_allowed)
        pods = []
        for node in created.nodes:
            host = plan.host(node.index)
            config_text = render_config(data_dir=DATA_DIR, genesis=GENESIS_PATH, api_host=host, api_port=api_port,
                                        raft_address=node.raft_address, private_addresses_allowed=private_addresses_allowed)
            secret_path = node.node_dir / RAFT_SECRET_FILE_NAME
            pods.append(PodNode(index=node.index, node_id=node.node_id, validator=node.validator, host=host, api_url=node.api_url,
                                raft_address=node.raft_address, config_text=config_text,
                                node_key=(node.node_dir / NODE_KEY_KEY).read_bytes(), api_token=load_or_create_token(node.node_dir),
                                raft_secret=secret_path.read_text() if node.validator else None))
        genesis_text = created.genesis_path.read_text()
    return PodNetwork(namespace=namespace, network_id=created.genesis.network_id, genesis_text=genesis_text, nodes=tuple(pods),
                      api_port=api_port, raft_port=raft_port)
