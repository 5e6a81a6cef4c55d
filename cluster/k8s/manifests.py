"""Kubernetes objects for a network (network.py): what `synapse cluster manifests --provider kubernetes` writes.

Why it works as it does:
- Plain dicts, written as JSON (which kubectl and the API read like YAML): no YAML dependency in the
  node's image, and no YAML surprises (`no` read as false, octal modes).
- One StatefulSet of one replica per node (network.py says why: a Secret per pod). Each keeps the
  stable name, the volume claim template (`data-node-<i>-0`, the node's log, store and Raft journal) and
  the ordered identity a StatefulSet gives; `podManagementPolicy: Parallel` so a restarted pod never
  waits for another. Two headless Services (validators, members) with `publishNotReadyAddresses: true`:
  a node's DNS name must resolve before it is ready, because Raft needs the others to elect a leader
  and the node binds its own name at start.
- A Secret's files are symlinks into `..data/` with the wrong owner, and the node refuses a key it
  reaches through a symlink or that others can read. So an init container (cluster/k8s/pod_init.py) copies
  the node's key, token and Raft secret into the data volume as regular 0600 files, refusing to replace
  a different identity already there, and waits until the pod's DNS name resolves to its own address.
  The Secret is mounted into that init container only.
- Least privilege: non-root user 10001, no service account token, read-only root filesystem, no
  privilege escalation, all capabilities dropped, the runtime's seccomp profile; a NetworkPolicy lets
  only validator pods reach the Raft port (the Raft secret keeps strangers out; this keeps them from even
  trying), while the API port (gossip, authenticated writes) stays reachable for the operator.
- Applied in this order (apply.py): namespace, config, secrets, services, policy, StatefulSets, so a pod
  never starts before what it mounts exists.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cluster.k8s.network import (
    API_TOKEN_KEY, CONFIG_DIR, CONFIG_PATH, DATA_DIR, MEMBERS_SERVICE, NODE_KEY_KEY, RAFT_SECRET_KEY, SECRET_DIR,
    VALIDATORS_SERVICE, PodNetwork, PodNode,
)
from node.errors import ConfigError

DEFAULT_IMAGE = "synapse-ng:0.1.0"
DEFAULT_STORAGE = "1Gi"
NODE_USER_ID = 10001
FIELD_MANAGER = "synapse-ng"
# Labels: Chaos Mesh selectors (chaos.py) and `up` (apply.py) find pods by these.
LABEL_NAME, LABEL_INSTANCE, LABEL_COMPONENT = "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"
LABEL_MANAGED_BY, LABEL_NODE = "app.kubernetes.io/managed-by", "synapse-ng.io/node"
APP_NAME = "synapse-ng"
NETWORK_CONFIG_MAP = "synapse-network"
MANIFESTS_DIR_NAME = "manifests"
# An image reference: [registry[:port]/]path[:tag][@sha256:digest]; no spaces, quotes or newlines.
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._\-/:]{0,254}(@sha256:[0-9a-f]{64})?$", re.ASCII)
_QUANTITY = re.compile(r"^[1-9][0-9]{0,5}(Mi|Gi|Ti)$", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodOptions:
    image: str = DEFAULT_IMAGE
    storage: str = DEFAULT_STORAGE           # the data volume of each node
    cpu_request: str = "100m"
    cpu_limit: str = "1"
    memory_request: str = "256Mi"
    memory_limit: str = "1Gi"                # above the sandbox's 256 MiB memory and 64 MiB output limits
    dns_wait_s: int = 120                    # how long the init step waits for the pod's own DNS name

    def __post_init__(self) -> None:
        if not isinstance(self.image, str) or not _IMAGE.match(self.image):
            raise ConfigError(f"--image {self.image!r:.80} is not an image reference",
                              hint="for example registry.example.com/synapse-ng:0.1.0 (lowercase, no spaces)")
        if not isinstance(self.storage, str) or not _QUANTITY.match(self.storage):
            raise ConfigError(f"--storage {self.storage!r:.40} is not a size like 1Gi or 512Mi")
        if type(self.dns_wait_s) is not int or not 1 <= self.dns_wait_s <= 3600:
            raise ConfigError("the DNS wait must be 1 to 3600 seconds")


def labels(network: PodNetwork, node: PodNode | None = None) -> dict[str, str]:
    found = {LABEL_NAME: APP_NAME, LABEL_INSTANCE: network.network_id, LABEL_MANAGED_BY: FIELD_MANAGER}
    if node is not None:
        found.update({LABEL_COMPONENT: node.role, LABEL_NODE: node.name})
    return found


def _metadata(network: PodNetwork, name: str, node: PodNode | None = None) -> dict:
    return {"name": name, "namespace": network.namespace, "labels": labels(network, node)}


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def namespace_object(network: PodNetwork) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": network.namespace, "labels": {LABEL_NAME: APP_NAME, LABEL_MANAGED_BY: FIELD_MANAGER}}}


def config_map(network: PodNetwork) -> dict:
    """Genesis (public) and every node's config (public: addresses and paths); each pod mounts its own."""
    data = {"genesis.json": network.genesis_text}
    data.update({f"{node.name}.toml": node.config_text for node in network.nodes})
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(network, NETWORK_CONFIG_MAP),
            "immutable": True, "data": data}


def secret(network: PodNetwork, node: PodNode) -> dict:
    data = {NODE_KEY_KEY: _b64(node.node_key), API_TOKEN_KEY: _b64(node.api_token + "\n")}
    if node.raft_secret is not None:
        data[RAFT_SECRET_KEY] = _b64(node.raft_secret)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": _metadata(network, f"{node.name}-secret", node),
            "immutable": True, "data": data}


def headless_service(network: PodNetwork, validators: bool) -> dict:
    ports = [{"name": "api", "port": network.api_port, "targetPort": "api", "protocol": "TCP"}]
    if validators:
        ports.append({"name": "raft", "port": network.raft_port, "targetPort": "raft", "protocol": "TCP"})
    selector = {LABEL_NAME: APP_NAME, LABEL_INSTANCE: network.network_id, LABEL_COMPONENT: "validator" if validators else "member"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(network, VALIDATORS_SERVICE if validators else MEMBERS_SERVICE),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector, "ports": ports}}


def raft_network_policy(network: PodNetwork) -> dict:
    validator_pods = {"matchLabels": {LABEL_NAME: APP_NAME, LABEL_INSTANCE: network.network_id, LABEL_COMPONENT: "validator"}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _metadata(network, "raft-from-validators-only"),
            "spec": {"podSelector": validator_pods, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"port": "api", "protocol": "TCP"}]},
                                 {"from": [{"podSelector": validator_pods}], "ports": [{"port": "raft", "protocol": "TCP"}]}]}}


_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                       "runAsUser": NODE_USER_ID, "runAsGroup": NODE_USER_ID, "capabilities": {"drop": ["ALL"]}}


def _probe(*, period_s: int, failures: int) -> dict:
    return {"httpGet": {"path": "/health", "port": "api"}, "periodSeconds": period_s, "timeoutSeconds": 2, "failureThreshold": failures}


def _node_container(network: PodNetwork, node: PodNode, options: PodOptions) -> dict:
    ports = [{"name": "api", "containerPort": network.api_port, "protocol": "TCP"}]
    if node.validator:
        ports.append({"name": "raft", "containerPort": network.raft_port, "protocol": "TCP"})
    return {
        "name": "node", "image": options.image, "imagePullPolicy": "IfNotPresent",
        "command": ["synapse", "node", "run", "--config", CONFIG_PATH],
        "ports": ports,
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}, {"name": "HOME", "value": "/tmp"}],
        # startup: up to 5 minutes (a slow image pull is not counted; a slow volume is); then liveness takes over.
        "startupProbe": _probe(period_s=2, failures=150),
        "readinessProbe": _probe(period_s=5, failures=3),
        "livenessProbe": _probe(period_s=10, failures=6),
        "resources": {"requests": {"cpu": options.cpu_request, "memory": options.memory_request},
                      "limits": {"cpu": options.cpu_limit, "memory": options.memory_limit}},
        "securityContext": _CONTAINER_SECURITY,
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }


def _init_container(node: PodNode, options: PodOptions) -> dict:
    return {
        "name": "install-secrets", "image": options.image, "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "cluster.k8s.pod_init", "--config", CONFIG_PATH, "--secret-dir", SECRET_DIR,
                    "--dns-wait", str(options.dns_wait_s)],
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": _CONTAINER_SECURITY,
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "secret", "mountPath": SECRET_DIR, "readOnly": True}],
    }


def stateful_set(network: PodNetwork, node: PodNode, options: PodOptions) -> dict:
    pod_labels = labels(network, node)
    selector = {key: pod_labels[key] for key in (LABEL_NAME, LABEL_INSTANCE, LABEL_NODE)}
    pod_spec = {
        "automountServiceAccountToken": False,     # a node never talks to the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": True, "runAsUser": NODE_USER_ID, "runAsGroup": NODE_USER_ID, "fsGroup": NODE_USER_ID,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [_init_container(node, options)],
        "containers": [_node_container(network, node, options)],
        "volumes": [
            {"name": "config", "configMap": {"name": NETWORK_CONFIG_MAP, "defaultMode": 0o444,
                                             "items": [{"key": "genesis.json", "path": "genesis.json"},
                                                       {"key": f"{node.name}.toml", "path": "config.toml"}]}},
            {"name": "secret", "secret": {"secretName": f"{node.name}-secret", "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    claim = {"metadata": {"name": "data", "labels": labels(network, node)},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": options.storage}}}}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _metadata(network, node.name, node),
            "spec": {"serviceName": node.service, "replicas": 1, "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
                     "volumeClaimTemplates": [claim]}}


def network_objects(network: PodNetwork, options: PodOptions = PodOptions()) -> list[dict]:
    """Every object, in the order they must be applied."""
    return ([namespace_object(network), config_map(network)]
            + [secret(network, node) for node in network.nodes]
            + [headless_service(network, True)] + ([headless_service(network, False)] if len(network.validators) < len(network.nodes) else [])
            + [raft_network_policy(network)]
            + [stateful_set(network, node, options) for node in network.nodes])


def _file_name(position: int, document: dict) -> str:
    return f"{position:03d}-{document['kind'].lower()}-{document['metadata']['name']}.json"


def write_objects(directory: Path, documents: list[dict]) -> list[Path]:
    """One JSON file per object, numbered in apply order (`kubectl apply -f DIR` reads them in that order).
    Secrets are written 0600: they hold node keys. Refuses a directory that already has manifests."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty", hint="choose an empty -o directory: manifests of two networks must never mix")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for position, document in enumerate(documents):
        path = directory / _file_name(position, document)
        mode = 0o600 if document["kind"] == "Secret" else 0o644
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
        written.append(path)
    return written


def read_objects(directory: Path) -> list[dict]:
    """The objects `write_objects` wrote, in apply order (the file names' numbers)."""
    paths = sorted(Path(directory).glob("[0-9][0-9][0-9]-*.json"))
    if not paths:
        raise ConfigError(f"{directory} holds no manifests", hint="write them with 'synapse cluster manifests --provider kubernetes -o DIR'")
    documents = []
    for path in paths:
        try:
            documents.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the manifest {path}: {error}") from None
    return documents


__all__ = ["PodOptions", "labels", "network_objects", "read_objects", "write_objects"]
